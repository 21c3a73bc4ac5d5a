"""Capture the real-KV fixture in tests/data/smollm2_kv/ (see tests/data/README.md).

Runs SmolLM2-135M-Instruct on the first N_PREFIX + N_QUERY tokens of WikiText-2 (test split) in
one forward pass, and saves for a few layers: K (RoPE applied, as the model's cache holds it),
V, and the RoPE'd queries of the N_QUERY tokens that follow the prefix. It checks, before
writing, that its own RoPE description reproduces the cache's keys from the pre-RoPE k_proj
outputs, and the queries' RoPE the same way.

usage: python -m bench.quality.capture_fixture [--out tests/data/smollm2_kv]
"""
import argparse
import json
import os

import numpy as np
import torch

from . import model as M
from .rope import rope_apply

LAYERS = [0, 1, 15, 29]
N_PREFIX = 256
N_QUERY = 64


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/smollm2_kv")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    model, tok = M.load(a.threads)
    info = M.shape_info(model.config)
    rope = M.rope_description(model.config)
    ids = M.tokenize_text(tok)[: N_PREFIX + N_QUERY]
    cap = M.QKVCapture(model)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids)[None], use_cache=True)
    cap.close()
    kv = M.cache_layers(out.past_key_values)

    os.makedirs(a.out, exist_ok=True)
    files = []
    for layer in LAYERS:
        k = kv[layer][0][0, :, :N_PREFIX].float().numpy()
        v = kv[layer][1][0, :, :N_PREFIX].float().numpy()
        k_mine = rope_apply(cap.k[layer][:, :N_PREFIX], rope, 0)
        err = np.abs(k_mine - k).max() / np.abs(k).max()
        if err > 1e-5:
            raise SystemExit(f"layer {layer}: RoPE description does not reproduce the cache "
                             f"keys (rel err {err:.2e})")
        if not np.array_equal(cap.v[layer][:, :N_PREFIX], v):
            raise SystemExit(f"layer {layer}: v_proj output differs from the cached V")
        q = rope_apply(cap.q[layer][:, N_PREFIX:], rope, N_PREFIX).astype(np.float32)
        for name, arr, dt in (("k", k, "f32"), ("v", v, "f32"), ("q", q, "f32"),
                              ("k", k, "f16"), ("v", v, "f16")):
            fn = f"layer{layer:02d}.{name}.{dt}"
            np.ascontiguousarray(arr).astype("<f4" if dt == "f32" else "<f2").tofile(
                os.path.join(a.out, fn))
            files.append({"file": fn, "layer": layer, "tensor": name,
                          "dtype": "float32" if dt == "f32" else "float16",
                          "shape": list(arr.shape),
                          "first_position": 0 if name != "q" else N_PREFIX})
    meta = {
        "model": M.MODEL_ID, "gguf": os.path.basename(M.find_gguf()),
        "text": "wikitext-2-raw-test.txt, first tokens (add_special_tokens=False)",
        "n_layers": info["n_layers"], "n_heads": info["n_heads"],
        "n_kv_heads": info["n_kv_heads"], "head_dim": info["head_dim"],
        "gqa_group": info["n_heads"] // info["n_kv_heads"],
        "rope": rope, "layers": LAYERS,
        "kv_first_position": 0, "kv_tokens": N_PREFIX,
        "q_first_position": N_PREFIX, "q_tokens": N_QUERY,
        "attention_scale": 1.0 / float(np.sqrt(info["head_dim"])),
        "token_ids": [int(t) for t in ids],
        "byte_order": "little", "layout": "[heads, tokens, head_dim], C order",
        "files": files,
    }
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"fixture written to {a.out}: layers {LAYERS}, {N_PREFIX} KV tokens, "
          f"{N_QUERY} queries, rope {rope}")


if __name__ == "__main__":
    main()
