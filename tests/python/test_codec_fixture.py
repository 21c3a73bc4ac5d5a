"""The real-KV fixture in tests/data/smollm2_kv is complete and self-consistent."""
import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "data", "smollm2_kv")


def _meta():
    with open(os.path.join(FIX, "meta.json")) as f:
        return json.load(f)


def _load(entry):
    dt = {"float32": "<f4", "float16": "<f2"}[entry["dtype"]]
    return np.fromfile(os.path.join(FIX, entry["file"]), dtype=dt).reshape(entry["shape"])


def test_files_match_meta():
    m = _meta()
    assert m["n_kv_heads"] * m["gqa_group"] == m["n_heads"]
    assert len(m["files"]) == 5 * len(m["layers"])
    for e in m["files"]:
        size = os.path.getsize(os.path.join(FIX, e["file"]))
        assert size == int(np.prod(e["shape"])) * (4 if e["dtype"] == "float32" else 2), e
        x = _load(e)
        assert np.isfinite(x).all(), e["file"]
        assert np.abs(x).max() > 0, e["file"]


@pytest.mark.parametrize("layer", [0, 1, 15, 29])
def test_fp16_copies_round_the_fp32_arrays(layer):
    m = _meta()
    files = {(e["tensor"], e["dtype"]): e for e in m["files"] if e["layer"] == layer}
    for t in ("k", "v"):
        a, b = _load(files[(t, "float32")]), _load(files[(t, "float16")])
        assert np.array_equal(a.astype(np.float16), b)


def _rope(x, pos0, theta, sign):
    t, d = x.shape[-2], x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = np.arange(pos0, pos0 + t)[:, None] * inv[None, :] * sign
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def test_rope_description_matches_the_keys():
    """Keys with RoPE removed by the stated description are position-independent in the way
    real keys are: each pre-RoPE channel has a stable sign/magnitude pattern across tokens, so
    the per-channel mean is far larger (relative to spread) than for the RoPE'd keys. A wrong
    description (theta, or interleaved pairing) destroys that structure."""
    m = _meta()
    e = next(f for f in m["files"] if f["layer"] == 15 and f["tensor"] == "k"
             and f["dtype"] == "float32")
    k = _load(e).astype(np.float64)
    theta = m["rope"]["theta"]
    assert m["rope"]["style"] == "split_half" and m["rope"]["rotary_dim"] == m["head_dim"]

    def coherence(x):
        return float((np.abs(x.mean(axis=1)) / (x.std(axis=1) + 1e-9)).mean())

    right = coherence(_rope(k, 0, theta, -1))
    wrong_theta = coherence(_rope(k, 0, 10000.0, -1))
    assert right > 1.5 * coherence(k), (right, coherence(k))
    assert right > 1.2 * wrong_theta, (right, wrong_theta)
