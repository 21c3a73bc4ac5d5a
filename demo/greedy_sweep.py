"""How many greedy tokens a restored SmolLM2 cache keeps, per codec setting, on plain WikiText-2.

For each window of WikiText-2 (no repeated passage, no selection) and each codec setting:
  1. prefill the window's first --prompt tokens exactly (fp32, CPU);
  2. encode that cache chunk by chunk (--chunk tokens, e8kv.hf's layout and positions) through
     libe8codec, decode the bytes back (what e8kvd stores is these bytes verbatim);
  3. keep the restored cache of the first `prompt - prompt % chunk` tokens (whole chunks, as
     restore_prefix does; at least one token is left), compute the rest of the prompt on it;
  4. generate --gen tokens greedily from that and from the exact cache; count the leading
     tokens that agree (16/16 = the issue's goal), and note the exact path's smallest top-2
     logit margin (a near-tie flips under any perturbation, fp16 rounding included).
The "fp16" / "bf16" rows round the cache to that dtype and back (no codec): the perturbation
an engine keeping its cache in that dtype applies anyway.
bpe: all chunk bytes x 8 / elements, for a --bpe-tokens sequence in chunks of 256, with raw
tokens stored in fp32 (this fp32 CPU model) and in fp16 (what an fp16/bf16 engine stores).

    PYTHONPATH=clients/python E8KV_BUILD=build/py python demo/greedy_sweep.py --windows 8
"""
import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))
sys.path.insert(0, str(REPO / "demo"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import e8kv.hf as hf  # noqa: E402
from e8kv import codec  # noqa: E402
from e8kv_demo import MODEL_ID, read_wikitext, smollm2_gguf  # noqa: E402

SETTINGS = {
    "fp16": None,
    "bf16": None,
    "K3V2": dict(preset="K3V2"),
    "K4V4": dict(preset="K4V4"),
    "K4V4 sink0": dict(preset="K4V4", sink_tokens=0),
    "K4V4 recent32": dict(preset="K4V4", recent_tokens=32),
    "K4V4 recent64": dict(preset="K4V4", recent_tokens=64),
    "K4V4 protect1/1": dict(preset="K4V4", protect_first=1, protect_last=1),
    "K4V4 sink4 recent64 protect1/1": dict(preset="K4V4", sink_tokens=4, recent_tokens=64,
                                           protect_first=1, protect_last=1),
    "K3V2 recent64": dict(preset="K3V2", recent_tokens=64),
    "K4V4 recent128": dict(preset="K4V4", recent_tokens=128),
    "K3V2 recent128": dict(preset="K3V2", recent_tokens=128),
    "step 0.125 (K5V5-class)": dict(preset="K4V4", k_step=0.125, v_step=0.125),
    "step 0.0625 (K6V6-class)": dict(preset="K4V4", k_step=0.0625, v_step=0.0625),
    "step 0.0625 recent64": dict(preset="K4V4", k_step=0.0625, v_step=0.0625,
                                 recent_tokens=64),
    "step 0.125 recent64": dict(preset="K4V4", k_step=0.125, v_step=0.125, recent_tokens=64),
    "step 0.0625 recent32": dict(preset="K4V4", k_step=0.0625, v_step=0.0625,
                                 recent_tokens=32),
}
ROUND = {"fp16": torch.float16, "bf16": torch.bfloat16}


def codec_fp(model, settings, dtype="float32"):
    f = codec.fingerprint_from_proto(hf.model_fingerprint(model, model_id=MODEL_ID))
    f.src_dtype = dtype
    f.config = codec.Config(**{"sink_tokens": 1, **settings})   # the library's default sink
    return f


def roundtrip(fp, layers, n_tokens, chunk, seq_len):
    """Restored [(K, V)] of the first n_tokens (encoded per chunk, decoded from bytes) and the
    total encoded bytes of the n_tokens."""
    dt = {"float32": torch.float32, "float16": torch.float16}[fp.src_dtype]
    cols = torch.arange(n_tokens)
    out, nbytes = [], 0
    for s in range(0, n_tokens, chunk):
        e = min(n_tokens, s + chunk)
        raw = hf._chunk_raw(layers, 0, cols[s:e], dt)
        data = codec.encode_chunk(fp, raw, first_pos=s, seq_len=seq_len)
        nbytes += len(data)
        out.append(codec.decode_chunk(fp, data, dtype=torch.float32))
    kv = torch.cat(out, dim=3)                                  # [L, 2, H, n, D]
    return [(kv[li, 0][None], kv[li, 1][None]) for li in range(kv.shape[0])], nbytes


@torch.no_grad()
def greedy(model, cache, ids, n):
    kw = {hf.cache_kwarg(model): copy.deepcopy(cache)}
    out = model.generate(ids[None], attention_mask=torch.ones_like(ids[None]),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, **kw)
    toks = out.sequences[0, len(ids):].tolist()
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    return toks, margins


def leading_equal(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("E8KV_BUILD", "build"))
    ap.add_argument("--data", default=None, help="directory of a plain "
                    "wikitext-2-raw-test.txt (default: $E8KV_DATA, else data/'s, checked)")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2500, help="tokens between window starts")
    ap.add_argument("--offset", type=int, default=0, help="token where window 0 starts")
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--recent-scope", choices=["sequence", "chunk"], default="sequence",
                    help="seq_len given to the codec: the stored sequence's length (recent "
                         "window = its last tokens) or 0 (= each chunk's end)")
    ap.add_argument("--bpe-tokens", type=int, default=1024)
    ap.add_argument("--only", default="", help="comma-separated setting names")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok, model = hf.load_gguf(smollm2_gguf(), cache_dir=Path(a.build) / "python" / "models")
    text = read_wikitext(a.data)
    ids = tok(text[:(a.offset + a.windows * a.stride) * 6], return_tensors="pt").input_ids[0]
    names = [s for s in a.only.split(",") if s] or list(SETTINGS)
    n_keep = a.prompt - (a.prompt % a.chunk or a.chunk)
    res = {n: dict(equal=[], bpe32=None, bpe16=None) for n in names}
    margins_all = []
    for w in range(a.windows):
        w0 = a.offset + w * a.stride
        p = ids[w0:w0 + a.prompt]
        _, exact = hf.prefill(model, p[None])
        layers = hf.cache_layers(exact)
        want, margins = greedy(model, hf.new_cache(model, [(k[:, :, :n_keep], v[:, :, :n_keep])
                                                           for k, v in layers]), p, a.gen)
        margins_all.append(min(margins))
        for n in names:
            if SETTINGS[n] is None:
                r = ROUND[n]
                rl = [(k[:, :, :n_keep].to(r).float(), v[:, :, :n_keep].to(r).float())
                      for k, v in layers]
            else:
                fp = codec_fp(model, SETTINGS[n])
                seq = a.prompt if a.recent_scope == "sequence" else 0
                rl, _ = roundtrip(fp, layers, n_keep, a.chunk, seq)
            got, _ = greedy(model, hf.new_cache(model, rl), p, a.gen)
            res[n]["equal"].append(leading_equal(want, got))
        print(f"window {w} (tokens {w0}..): min margin {min(margins):.2f}; " +
              ", ".join(f"{n} {res[n]['equal'][-1]}" for n in names), flush=True)
    # bpe at chunks of 256 over a longer sequence (same encoder; quality-independent)
    p = ids[:a.bpe_tokens]
    _, exact = hf.prefill(model, p[None])
    layers = hf.cache_layers(exact)
    elems = 2 * len(layers) * layers[0][0].shape[1] * layers[0][0].shape[3] * a.bpe_tokens
    for n in names:
        if SETTINGS[n] is None:
            res[n]["bpe32"] = res[n]["bpe16"] = 16.0
            continue
        for key, dt in (("bpe32", "float32"), ("bpe16", "float16")):
            seq = a.bpe_tokens if a.recent_scope == "sequence" else 0
            _, nb = roundtrip(codec_fp(model, SETTINGS[n], dt), layers, a.bpe_tokens, 256, seq)
            res[n][key] = nb * 8 / elems
    print(f"\n{a.windows} WikiText-2 windows, prompt {a.prompt} tokens ({n_keep} restored in "
          f"chunks of {a.chunk}, recent scope {a.recent_scope}), {a.gen} greedy tokens; "
          f"exact-path min top-2 margins {[round(m, 2) for m in margins_all]}")
    print(f"{'setting':34s} {'16/16 windows':>13s} {'mean equal':>10s} {'min':>4s} "
          f"{'bpe(fp32 raw)':>13s} {'bpe(fp16 raw)':>13s}")
    for n in names:
        eq = res[n]["equal"]
        full = sum(e == a.gen for e in eq)
        print(f"{n:34s} {full:>6d}/{len(eq):<6d} {sum(eq) / len(eq):>10.2f} {min(eq):>4d} "
              f"{res[n]['bpe32']:>13.3f} {res[n]['bpe16']:>13.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(args=vars(a), margins=margins_all,
                                               results=res), indent=1) + "\n")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"{time.time() - t0:.0f} s")
