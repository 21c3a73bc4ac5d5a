"""The quality harness's own parts (bench/quality), without the model: baseline codecs write
honest bytes and invert them, the E8 rounding is a lattice rounding, the statistics are right."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from bench.quality import baselines as B, kvbytes, metrics, report  # noqa: E402
from bench.quality.rope import rope_apply, rope_remove  # noqa: E402

ROPE = {"theta": 100000.0, "rotary_dim": 64, "style": "split_half", "scaling": None}
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "smollm2_kv")


def real(kind):
    return np.fromfile(os.path.join(FIX, f"layer15.{kind}.f32"), "<f4").reshape(3, 256, 64)


def snr(x, y):
    return 10 * np.log10((x.astype(float) ** 2).sum() / ((x - y).astype(float) ** 2).sum())


CODECS = [(B.Identity(), 32.0, None), (B.Int8(), 8.25, 35), (B.Kivi(2), 4.0, 5),
          (B.Kivi(4), 5.0, 15), (B.TurboQuant(2), 2.25, 8.5), (B.TurboQuant(3), 3.25, 14),
          (B.TurboQuant(4), 4.25, 19.5), (B.NexusQuant(2, 2, ROPE), None, 8),
          (B.NexusQuant(4, 4, ROPE), None, 19)]


@pytest.mark.parametrize("codec,min_bpe,min_snr", CODECS, ids=[c.label() for c, _, _ in CODECS])
def test_baseline_roundtrip_on_real_kv(codec, min_bpe, min_snr):
    for kind in "kv":
        x = real(kind)
        f = codec.encode(x, kind, 0)
        assert isinstance(f, bytes)
        bpe = len(f) * 8 / x.size
        if min_bpe:
            assert bpe >= min_bpe                     # scales, headers, windows all counted
        y = codec.decode(f)
        assert y.shape == x.shape and y.dtype == np.float32
        if min_snr is None:
            assert np.array_equal(x, y)
        else:
            assert snr(x, y) > min_snr, (codec.label(), kind, snr(x, y))
        assert np.array_equal(codec.decode(f), y)     # deterministic, from the bytes only


def test_kivi_keeps_the_recent_window_in_fp16():
    x = real("v")
    y = B.Kivi(2, window=128).decode(B.Kivi(2, window=128).encode(x, "v", 0))
    assert np.array_equal(y[:, 128:], x[:, 128:].astype(np.float16).astype(np.float32))
    assert not np.array_equal(y[:, :128], x[:, :128].astype(np.float16).astype(np.float32))


def test_e8_rounding_lands_on_the_relaxed_lattice_and_is_nearest_in_its_coset():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 8)) * 3
    p = B.e8_nearest_relaxed(x)
    frac = p - np.floor(p)
    integer = (frac == 0).all(axis=1)
    half = (frac == 0.5).all(axis=1)
    assert (integer | half).all()
    assert (p[integer].sum(axis=1) % 2 == 0).all()       # D8: even coordinate sum
    d = ((x - p) ** 2).sum(axis=1)
    d_half = ((x - (np.floor(x) + 0.5)) ** 2).sum(axis=1)
    assert (d <= d_half + 1e-12).all()
    r = np.rint(x)                                      # integer candidate no better than D8's
    even = r.sum(axis=1) % 2 == 0
    assert np.allclose(d[even & integer], ((x - r) ** 2).sum(axis=1)[even & integer])


def test_lloyd_max_gaussian_levels():
    _, l1 = B.lloyd_max_gaussian(1)
    _, l2 = B.lloyd_max_gaussian(2)
    assert np.allclose(l1, [-0.7979, 0.7979], atol=1e-3)
    assert np.allclose(l2, [-1.5104, -0.4528, 0.4528, 1.5104], atol=1e-3)


def test_bit_packing_roundtrip_and_size():
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        c = rng.integers(0, 1 << bits, 1001).astype(np.uint8)
        b = kvbytes.pack_bits(c, bits)
        assert len(b) == (1001 * bits + 7) // 8
        assert np.array_equal(kvbytes.unpack_bits(b, bits, 1001), c)
    with pytest.raises(ValueError):
        kvbytes.pack_bits(np.array([4], np.uint8), 2)


def test_rope_helpers_invert():
    k = real("k")
    assert np.abs(rope_apply(rope_remove(k, ROPE, 7), ROPE, 7) - k).max() < 1e-5


def test_kl_and_bootstrap():
    lp = torch.log_softmax(torch.randn(10, 50, dtype=torch.float64), -1)
    assert torch.equal(metrics.kl_per_token(lp, lp), torch.zeros(10, dtype=torch.float64))
    lq = torch.log_softmax(torch.randn(10, 50, dtype=torch.float64), -1)
    assert (metrics.kl_per_token(lp, lq) > 0).all()
    base = np.array([2.0, 2.5, 3.0, 1.5])
    ci = metrics.bootstrap_ci(base, base + 0.01)
    assert ci["dnll"] == pytest.approx(0.01) and ci["dnll_ci95"] == pytest.approx([0.01, 0.01])
    assert ci["dppl_pct"] == pytest.approx((np.exp(0.01) - 1) * 100)
    zero = metrics.bootstrap_ci(base, base)
    assert zero["dppl_pct"] == 0.0 and zero["dppl_ci95"] == [0.0, 0.0]


def test_attention_output_matches_a_plain_implementation():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(9, 16, 64, generator=g), torch.randn(3, 20, 64, generator=g),
               torch.randn(3, 20, 64, generator=g))
    kc, vc = torch.randn(3, 16, 64, generator=g), torch.randn(3, 16, 64, generator=g)
    o = metrics.attention_output(q, k, v, kc, vc)
    K = torch.cat([k, kc], 1).repeat_interleave(3, 0)
    V = torch.cat([v, vc], 1).repeat_interleave(3, 0)
    s = q @ K.transpose(1, 2) / 8
    for i in range(16):
        s[:, i, 20 + i + 1:] = float("-inf")
    assert torch.allclose(o, torch.softmax(s, -1) @ V, atol=1e-5)


def test_matched_bpe_comparison_interpolates_and_flags_losses():
    pts = [{"codec": "e8", "config": "a", "bpe": 2.0, "kl_mean": 0.1},
           {"codec": "e8", "config": "b", "bpe": 4.0, "kl_mean": 0.001},
           {"codec": "tq", "config": "x", "bpe": 3.0, "kl_mean": 0.005}]
    rows = report.compare(pts)
    assert len(rows) == 1 and rows[0]["other"] == "tq"
    assert abs(rows[0]["e8_kl"] - 0.01) < 1e-12 and rows[0]["e8_wins"] is False


# -- bench/quality/torchcodecs.py: the device run's baselines, frame for frame ----------------

from bench.quality import torchcodecs as T  # noqa: E402


def real_cache(layers=3, tokens=200):
    """[L, 2, 3, T, 64] float32 from the fixture (layers 0, 1, 15, 29 are stored)."""
    out = []
    for layer in ("00", "15", "29")[:layers]:
        kv = [np.fromfile(os.path.join(FIX, f"layer{layer}.{k}.f32"), "<f4").reshape(3, 256, 64)
              for k in "kv"]
        out.append(np.stack(kv)[:, :, :tokens])
    return np.ascontiguousarray(np.stack(out))


NUMPY_TWIN = {"identity:fp32": B.Identity(), "int8:per-token absmax": B.Int8(),
              "kivi:2bit g32 r128": B.Kivi(2), "kivi:4bit g32 r128": B.Kivi(4),
              "kivi:2bit g32 r32": B.Kivi(2, window=32), "turboquant:2bit": B.TurboQuant(2),
              "turboquant:3bit": B.TurboQuant(3), "turboquant:4bit": B.TurboQuant(4)}


@pytest.mark.parametrize("tokens", [200, 1])
@pytest.mark.parametrize("codec", T.baselines(ROPE), ids=lambda c: c.label())
def test_torch_codec_frames_equal_the_numpy_codec(codec, tokens):
    raw = real_cache(tokens=tokens)
    kv = torch.from_numpy(raw)
    fr = codec.encode(kv)
    dec = codec.decode(fr, kv.shape)
    twin = NUMPY_TWIN[codec.label()]
    for layer in range(raw.shape[0]):
        for kind, kn in ((0, "k"), (1, "v")):
            want = twin.encode(raw[layer, kind], kn, 0)
            assert bytes(fr[layer, kind].numpy()) == want
            assert np.array_equal(dec[layer, kind].numpy(), twin.decode(want))


@pytest.mark.parametrize("cfg", [(2, 2), (3, 2), (4, 4)])
def test_torch_nexusquant_frames_equal_the_numpy_codec(cfg):
    raw = real_cache(tokens=100)
    t, n = T.NexusQuant(*cfg, ROPE), B.NexusQuant(*cfg, ROPE, level=3)
    sc, delta = t.quantize(torch.from_numpy(raw))
    dec = t.decode(sc, delta)
    for layer in range(raw.shape[0]):
        for kind, kn in ((0, "k"), (1, "v")):
            want = n.encode(raw[layer, kind], kn, 0)
            z = kvbytes.zstd_compress(delta[layer, kind].numpy().tobytes(), 3)
            assert t.frame(sc[layer, kind], z, kind, raw[layer, kind].shape) == want
            assert np.array_equal(dec[layer, kind].numpy(), n.decode(want))


def test_f64_to_f16_rounds_once_like_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200000) * np.exp(rng.uniform(-20, 12, 200000))
    # values just beside float16 midpoints, where float64 -> float32 -> float16 rounds twice
    h = rng.standard_normal(20000).astype(np.float16).astype(np.float64)
    up = np.nextafter(h.astype(np.float16), np.float16(np.inf)).astype(np.float64)
    mid = (h + up) / 2
    x = np.concatenate([x, mid + np.abs(mid) * 2.0 ** -30, mid - np.abs(mid) * 2.0 ** -30, mid,
                        [0.0, -0.0, 1e-300, 65504.0, 1e5]])
    got = T.f64_to_f16(torch.from_numpy(x)).numpy()
    with np.errstate(over="ignore"):                  # 1e5 -> inf, in both
        want = x.astype(np.float16)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_torch_bit_packing_matches_kvbytes():
    rng = np.random.default_rng(4)
    for bits in range(1, 9):
        codes = rng.integers(0, 1 << bits, size=(3, 1003), dtype=np.uint8)
        packed = T.pack_bits(torch.from_numpy(codes), bits)
        for r in range(3):
            assert bytes(packed[r].numpy()) == kvbytes.pack_bits(codes[r], bits)
        assert np.array_equal(T.unpack_bits(packed, bits, 1003).numpy(), codes)
