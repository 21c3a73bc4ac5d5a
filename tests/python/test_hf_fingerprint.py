"""e8kv.hf.model_fingerprint on tiny random Llama models, one per RoPE variant.

The check that matters: the RoPE description we derive from model.config makes the codec
compute the very inverse frequencies the model uses (libe8codec's e8c_rope_inv_freq against
the model's own rotary_emb.inv_freq), so RoPE removal in the codec is exact for that model.
And e8kvd accepts every such fingerprint.
"""
import ctypes

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

import e8kv
import e8kv.hf as hf
from e8kv import _lib, codec

BASE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
            intermediate_size=64, vocab_size=32, max_position_embeddings=4096)
CASES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 1024},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0,
                 "short_factor": [1.0 + i / 16 for i in range(16)], "long_factor": [2.0] * 16,
                 "original_max_position_embeddings": 1024},
    "partial": None,            # Phi: partial_rotary_factor 0.5 (Llama has no partial RoPE)
}


def tiny(rope):
    torch.manual_seed(0)
    if rope is None:
        cfg = {k: v for k, v in BASE.items() if k != "num_key_value_heads"}
        return PhiForCausalLM(PhiConfig(partial_rotary_factor=0.5, num_key_value_heads=1,
                                        **cfg)).eval()
    return LlamaForCausalLM(LlamaConfig(rope_parameters=dict(rope), **BASE)).eval()


def model_inv_freq(model):
    return next(m for m in model.modules() if hasattr(m, "inv_freq")).inv_freq.float().numpy()


def codec_inv_freq(fp, rope_seq_len):
    lib = _lib.lib()
    f = lib.e8c_rope_inv_freq
    f.restype = ctypes.c_int64
    f.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p]
    c_fp = codec.fingerprint_from_proto(fp).to_c()
    rot = fp.rope.rotary_dim or fp.head_dim
    out = (ctypes.c_float * (rot // 2))()
    rc = f(ctypes.addressof(c_fp), rope_seq_len, out)
    assert rc == 0, f"e8c_rope_inv_freq: {rc}"
    return np.frombuffer(out, dtype=np.float32).copy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_fingerprint_rope_matches_model(name):
    model = tiny(CASES[name])
    fp = hf.model_fingerprint(model, model_id=f"tiny-{name}")
    assert (fp.n_layers, fp.n_kv_heads, fp.head_dim) == (2, 1, 32)
    assert fp.source_dtype == e8kv.pb.DTYPE_FP32
    want = model_inv_freq(model)
    got = codec_inv_freq(fp, 16)                # a short sequence, as the model's init assumes
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
    if name == "partial":
        assert fp.rope.rotary_dim == 16
    if name in ("yarn", "longrope"):            # HF's default attention factors
        assert fp.rope.attention_factor == pytest.approx(
            {"yarn": 0.1 * np.log(4.0) + 1, "longrope": np.sqrt(1 + np.log(4) / np.log(1024))}[
                name])


def test_hf_fingerprint_accepted_by_daemon_and_codec(client):
    for name, rope in CASES.items():
        fp = hf.model_fingerprint(tiny(rope), model_id=f"tiny-{name}", preset="K4V4")
        lk = client.lookup(fp, [1, 2, 3])
        assert lk.matched_tokens == 0
        assert lk.fingerprint_id == codec.fingerprint_from_proto(fp).id(), name


def test_hf_fingerprint_differs_by_dtype_preset_and_rope():
    m = tiny(CASES["default"])
    a = hf.model_fingerprint(m, model_id="x")
    assert hf.model_fingerprint(m.to(torch.bfloat16), model_id="x").source_dtype == \
        e8kv.pb.DTYPE_BF16
    k4 = hf.model_fingerprint(m, model_id="x", preset="K4V4")
    assert k4.codec.preset == "K4V4"
    assert k4.codec.sink_tokens == codec.default_config().sink_tokens == 1   # default sink kept
    assert not a.HasField("codec")               # unset: the daemon's default configuration
    assert codec.fingerprint_from_proto(a).id() == codec.Fingerprint(
        model_id="x", n_layers=2, n_kv_heads=1, head_dim=32, src_dtype="float32",
        rope=codec.Rope(theta=10000.0)).id()
    own = hf.model_fingerprint(m, model_id="x", codec={"sink_tokens": 0, "preset": "K2V2"})
    assert own.codec.sink_tokens == 0 and own.codec.preset == "K2V2"
    with pytest.raises(ValueError, match="not supported"):
        hf.model_fingerprint(m.to(torch.float64), model_id="x")


def test_hf_fingerprint_unknown_rope_type_refused():
    m = tiny(CASES["default"])
    m.config.rope_parameters = {"rope_type": "mystery", "rope_theta": 1.0}
    m.config.standardize_rope_params = lambda: None
    with pytest.raises(ValueError, match="mystery"):
        hf.model_fingerprint(m)
