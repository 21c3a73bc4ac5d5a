"""e8kv.codec on real KV (tests/data/smollm2_kv): frames and chunks through the library's bytes,
numpy and torch, strided views, RoPE at new positions, and every kind of bad input."""
import json
import os

import numpy as np
import pytest
import torch

from e8kv import codec as C

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "smollm2_kv")
META = json.load(open(os.path.join(FIX, "meta.json")))
LAYERS = META["layers"]


def load(layer, t, dt="f32"):
    a = np.fromfile(os.path.join(FIX, f"layer{layer:02d}.{t}.{dt}"),
                    dtype="<f4" if dt == "f32" else "<f2")
    return a.reshape(META["n_kv_heads"] if t != "q" else META["n_heads"], -1, META["head_dim"])


def fingerprint(preset="K3V2", src="float32", n_layers=30, **cfg):
    return C.Fingerprint(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", n_layers=n_layers,
                         n_kv_heads=3, head_dim=64, src_dtype=src,
                         rope=C.Rope(theta=META["rope"]["theta"]),
                         config=C.Config(preset=preset, **cfg))


def snr_db(x, y):
    x = np.asarray(x, np.float64)
    return 10 * np.log10((x ** 2).sum() / ((x - np.asarray(y, np.float64)) ** 2).sum())


def rope(x, pos0, sign):
    t, d = x.shape[-2], x.shape[-1]
    inv = (META["rope"]["theta"] ** (-np.arange(0, d, 2) / d))
    ang = np.arange(pos0, pos0 + t)[:, None] * inv[None, :] * sign
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


# Minimum SNR (dB) per preset on real K and V; lattice steps give ~6 dB per bit.
MIN_SNR = {"K4V4": (20, 20), "K3V3": (14, 14), "K3V2": (14, 8), "K2V2": (8, 8)}


@pytest.mark.parametrize("preset", sorted(MIN_SNR))
@pytest.mark.parametrize("layer", LAYERS)
def test_frame_roundtrip_real_kv(preset, layer):
    c = C.Codec(fingerprint(preset))
    for i, kind in enumerate("kv"):
        x = load(layer, kind)
        frame = c.encode_frame(x, layer=layer, kind=kind, first_pos=0)
        info = C.frame_info(frame)
        assert (info["layer"], info["kind"], info["n_tokens"]) == (layer, i, x.shape[1])
        assert info["frame_size"] == len(frame)
        y = c.decode_frame(frame, dtype="float32")
        assert y.shape == x.shape and y.dtype == np.float32
        assert snr_db(x, y) > MIN_SNR[preset][i], (preset, layer, kind, snr_db(x, y))
        assert len(frame) * 8 / x.size < 16          # well below fp16


def test_numpy_torch_and_strided_views_give_the_same_bytes():
    c = C.Codec(fingerprint("K3V2", src="float16"))
    x = load(15, "k", "f16")
    ref = c.encode_frame(x, 15, "k")
    assert c.encode_frame(torch.from_numpy(x), 15, "k") == ref
    tok_major = np.ascontiguousarray(x.transpose(1, 0, 2))       # [T, H, D] buffer
    assert c.encode_frame(tok_major.transpose(1, 0, 2), 15, "k") == ref
    assert c.encode_frame(torch.from_numpy(tok_major).permute(1, 0, 2), 15, "k") == ref
    rev = np.ascontiguousarray(x[:, ::-1])[:, ::-1]               # negative stride: copied
    assert c.encode_frame(rev, 15, "k") == ref


def test_decode_into_torch_dtypes_and_out():
    c = C.Codec(fingerprint("K4V4"))
    x = load(1, "v")
    f = c.encode_frame(x, 1, "v")
    a = c.decode_frame(f, dtype="float32")
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        t = c.decode_frame(f, dtype=dt, as_torch=True)
        assert t.dtype == dt and tuple(t.shape) == x.shape
        assert torch.allclose(t.float(), torch.from_numpy(a), rtol=1e-2, atol=1e-2)
    out = np.empty((x.shape[1], 3, 64), np.float32).transpose(1, 0, 2)   # strided out
    assert c.decode_frame(f, out=out) is out
    assert np.array_equal(out, a)
    with pytest.raises(ValueError, match="out must be"):
        c.decode_frame(f, out=np.empty((3, 5, 64), np.float32))
    with pytest.raises(TypeError, match="bfloat16"):
        c.decode_frame(f, dtype="bfloat16")                          # numpy has none


def test_keys_restored_at_new_positions():
    c = C.Codec(fingerprint("K4V4"))
    k = load(15, "k")
    f = c.encode_frame(k, 15, "k", first_pos=0)
    at0 = c.decode_frame(f, dtype="float32").astype(np.float64)
    at1000 = c.decode_frame(f, dtype="float32", new_first_pos=1000).astype(np.float64)
    want = rope(rope(at0, 0, -1), 1000, +1)
    assert np.abs(at1000 - want).max() < 1e-3 * np.abs(want).max()
    assert snr_db(rope(rope(k, 0, -1), 1000, +1), at1000) > 20


def test_chunk_roundtrip_and_layer_ranges():
    fp = fingerprint("K3V2", n_layers=4)
    c = C.Codec(fp)
    raw = np.stack([np.stack([load(l, "k"), load(l, "v")]) for l in LAYERS])   # [4,2,3,256,64]
    ch = c.encode_chunk(raw, first_pos=0)
    info = C.chunk_info(ch)
    assert info["chunk_size"] == len(ch) and info["n_tokens"] == 256
    assert info["fingerprint_id"] == c.id == fp.id()
    full = c.decode_chunk(ch, dtype="float32")
    assert full.shape == raw.shape
    assert snr_db(raw[:, 0], full[:, 0]) > 14 and snr_db(raw[:, 1], full[:, 1]) > 8
    part = c.decode_chunk(ch, layer_begin=1, layer_end=3, dtype="float32")
    assert np.array_equal(part, full[1:3])
    t = C.decode_chunk(fp, ch, dtype=torch.float32)          # module level, torch dtype
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(full))
    assert C.encode_chunk(fp, torch.from_numpy(raw)) == ch
    assert len(C.chunk_fingerprint(ch)) > 0


def test_bad_inputs_raise_before_any_bytes():
    c = C.Codec(fingerprint())
    k = load(0, "k")
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        c.encode_frame(k[:2], 0, "k")
    with pytest.raises(ValueError, match="head_dim=64"):
        c.encode_frame(k[:, :, :32], 0, "k")
    with pytest.raises(ValueError, match="n_kv_heads"):
        c.encode_frame(k[0], 0, "k")
    with pytest.raises(ValueError, match="n_tokens"):
        c.encode_frame(k[:, :0], 0, "k")
    with pytest.raises(TypeError, match="float64"):
        c.encode_frame(k.astype(np.float64), 0, "k")
    with pytest.raises(TypeError, match="numpy array or a torch"):
        c.encode_frame(k.tolist(), 0, "k")
    with pytest.raises(TypeError, match="meta"):
        c.encode_frame(torch.empty(3, 4, 64, device="meta"), 0, "k")
    with pytest.raises(ValueError, match="layer"):
        c.encode_frame(k, 30, "k")
    with pytest.raises(ValueError, match="kind"):
        c.encode_frame(k, 0, "q")
    with pytest.raises(ValueError, match="first_pos"):
        c.encode_frame(k, 0, "k", first_pos=-1)
    with pytest.raises(ValueError, match="seq_len"):
        c.encode_frame(k, 0, "k", first_pos=10, seq_len=100)
    with pytest.raises(ValueError, match="raw must be"):
        c.encode_chunk(np.zeros((30, 2, 3, 4, 32), np.float32))
    bad = k.copy()
    bad[1, 7, 3] = np.nan
    with pytest.raises(C.CodecError) as e:
        c.encode_frame(bad, 0, "k")
    assert e.value.name == "E8C_ERR_NONFINITE"


@pytest.mark.parametrize("rope,msg", [
    (C.Rope(theta=0.0), "theta"), (C.Rope(theta=-1.0), "theta"),
    (C.Rope(theta=1e4, rotary_dim=63), "rotary_dim"), (C.Rope(theta=1e4, rotary_dim=128),
                                                       "rotary_dim"),
    (C.Rope(theta=1e4, type="ntk"), "type"), (C.Rope(theta=1e4, layout="zigzag"), "layout"),
    (C.Rope(theta=1e4, type="linear"), "factor"),
    (C.Rope(theta=1e4, type="yarn", factor=4.0, original_max_pos=4096), "beta_fast"),
    (C.Rope(theta=1e4, type="llama3", factor=8.0, original_max_pos=8192, low_freq_factor=4.0,
            high_freq_factor=1.0), "high_freq_factor"),
])
def test_bad_rope_descriptions_are_refused(rope, msg):
    fp = fingerprint()
    fp.rope = rope
    with pytest.raises(ValueError, match=msg):
        C.Codec(fp)


def test_bad_fingerprints_are_refused():
    for kw, msg in ((dict(head_dim=60), "head_dim"), (dict(n_kv_heads=0), "n_kv_heads"),
                    (dict(src_dtype="float64"), "src_dtype"), (dict(model_id=""), "model_id")):
        fp = fingerprint()
        for k, v in kw.items():
            setattr(fp, k, v)
        with pytest.raises(ValueError, match=msg):
            C.Codec(fp)
    with pytest.raises(ValueError, match="preset"):
        C.Codec(fingerprint("K9V9"))
    with pytest.raises(ValueError, match="protect_layers"):
        C.Codec(fingerprint(protect_layers=[30]))


def test_corrupted_truncated_and_foreign_frames():
    c = C.Codec(fingerprint())
    f = c.encode_frame(load(15, "v"), 15, "v")
    flipped = bytearray(f)
    flipped[len(f) // 2] ^= 0x10
    with pytest.raises(C.CodecError) as e:
        c.decode_frame(bytes(flipped))
    assert e.value.name in ("E8C_ERR_CHECKSUM", "E8C_ERR_CORRUPT")
    with pytest.raises(C.CodecError) as e:
        c.decode_frame(f[: len(f) - 7])
    assert e.value.name == "E8C_ERR_TRUNCATED"
    with pytest.raises(C.CodecError) as e:
        c.decode_frame(b"\0" * 64)
    assert e.value.name in ("E8C_ERR_MAGIC", "E8C_ERR_TRUNCATED")
    with pytest.raises(ValueError, match="empty"):
        c.decode_frame(b"")
    other = C.Codec(fingerprint("K2V2"))
    with pytest.raises(C.CodecError) as e:
        other.decode_frame(f)
    assert e.value.name == "E8C_ERR_FINGERPRINT"


def test_fingerprint_from_proto_follows_the_daemon_rules():
    """The message goes through libe8kv's conversion (the daemon's own code, with the
    wire's default rule); tests/python/test_fingerprint_parity.py compares the ids with a
    running e8kvd."""
    from e8kv import pb
    m = pb.ModelFingerprint(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", n_layers=30,
                            n_kv_heads=3, head_dim=64, source_dtype=pb.DTYPE_FP32,
                            rope=pb.RopeConfig(theta=100000.0, layout=pb.ROPE_LAYOUT_SPLIT_HALF))
    m.codec.key_bits, m.codec.value_bits, m.codec.sink_tokens = 3, 2, 1
    fp = C.fingerprint_from_proto(m)
    assert fp.rope.rotary_dim == 64 and fp.rope.type == "default"
    assert fp.config.preset == "K3V2"
    assert fp.id() == fingerprint("K3V2", sink_tokens=1).id()
    m.ClearField("codec")                       # unset: the default configuration
    assert C.fingerprint_from_proto(m).id() == fingerprint(None).id()
    m.rope.theta = 0.0
    assert C.fingerprint_from_proto(m).rope.type == "none"
    m.codec.key_bits = 2.5
    with pytest.raises(ValueError, match="key_bits"):
        C.fingerprint_from_proto(m)


def test_rope_from_hf_config():
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=64, rope_theta=100000.0)
    r = C.Rope.from_hf_config(cfg)
    assert (r.theta, r.type, r.rotary_dim, r.layout) == (100000.0, "default", 64, "split_half")
    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192})
    r = C.Rope.from_hf_config(cfg)
    assert (r.type, r.factor, r.original_max_pos, r.theta) == ("llama3", 8.0, 8192, 500000.0)
    r.check(128)


def test_presets_and_version():
    assert C.presets() == ["K4V4", "K4V3", "K4V2", "K3V3", "K3V2", "K2V2"]
    assert "format 1" in C.version()
