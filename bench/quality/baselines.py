"""Baseline KV codecs, implemented from their papers, each producing real frames (bytes).

Every codec takes one layer's K or V as float32 [n_kv_heads, n_tokens, head_dim] (K with RoPE
applied, as the model stores it; `pos0` = position of token 0) and returns one byte string; its
decoder takes only those bytes back. bpe is always len(frame) * 8 / elements, headers included.

  identity    raw float32 (the exactness check: must change nothing).
  int8        per-token absmax: one fp16 scale per (head, token) vector, int8 codes.
  kivi        KIVI (Liu et al. 2024, arXiv:2402.02750): keys quantized per channel, values per
              token, asymmetric (fp16 scale + fp16 min per group of G=32), the last R tokens kept
              in fp16 (paper: G=32, R=128). Tokens older than the window are quantized in whole
              groups of G; what does not fill a group also stays fp16.
  turboquant  TurboQuant-style MSE quantizer (Zandieh et al. 2025, arXiv:2504.19874): a random
              rotation (seeded orthogonal matrix, seed in the header), the vector's norm in fp16,
              each rotated coordinate quantized with the b-bit Lloyd-Max quantizer for a
              Gaussian N(0, 1/d), codes bit-packed.
  nexusquant  NexusQuant's quantization path as its README and paper describe it (RoPE removed
              from keys, normalized Walsh-Hadamard, one amax scale per head vector
              (scale = amax / (L/2), L = 2^bits levels), nearest point of the E8 lattice with
              the paper's relaxed half-integer parity, clamp to [-L/2, L/2], coordinates stored
              doubled as int8, first-order delta across tokens, zstd level 22; fp16 scales).
              Token eviction, its other stage, is not part of a storage codec and is left out.
"""
import numpy as np

from . import kvbytes
from .kvbytes import Header
from .rope import rope_apply, rope_remove

TAG = {"identity": 1, "int8": 2, "kivi": 3, "turboquant": 4, "nexusquant": 5}


class Codec:
    """Base class. Subclasses set `codec` (family name) and `config` (a short label)."""
    codec = "?"
    config = "?"

    def encode(self, x: np.ndarray, kind: str, pos0: int) -> bytes:
        raise NotImplementedError

    def decode(self, frame: bytes) -> np.ndarray:
        raise NotImplementedError

    def label(self) -> str:
        return f"{self.codec}:{self.config}"


def _check(x: np.ndarray) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected [heads, tokens, head_dim], got shape {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"expected float32, got {x.dtype}")
    return np.ascontiguousarray(x)


def _kind_id(kind: str) -> int:
    if kind not in ("k", "v"):
        raise ValueError("kind must be 'k' or 'v'")
    return 0 if kind == "k" else 1


class Identity(Codec):
    codec, config = "identity", "fp32"

    def encode(self, x, kind, pos0):
        x = _check(x)
        h, t, d = x.shape
        return Header(TAG["identity"], _kind_id(kind), 32, 0, h, t, d, pos0, 0).pack() + \
            x.astype("<f4").tobytes()

    def decode(self, frame):
        hd = Header.unpack(frame)
        n = hd.h * hd.t * hd.d
        body = np.frombuffer(frame, dtype="<f4", count=n, offset=Header.SIZE)
        return body.reshape(hd.h, hd.t, hd.d).astype(np.float32)


class Int8(Codec):
    codec, config = "int8", "per-token absmax"

    def encode(self, x, kind, pos0):
        x = _check(x)
        h, t, d = x.shape
        amax = np.abs(x).max(axis=-1, keepdims=True)
        scale = (amax / 127.0).astype(np.float16)
        s = scale.astype(np.float32)
        q = np.where(s > 0, np.rint(x / np.where(s > 0, s, 1)), 0).clip(-127, 127).astype(np.int8)
        return Header(TAG["int8"], _kind_id(kind), 8, 0, h, t, d, pos0, 0).pack() + \
            scale.astype("<f2").tobytes() + q.tobytes()

    def decode(self, frame):
        hd = Header.unpack(frame)
        nv = hd.h * hd.t
        off = Header.SIZE
        s = np.frombuffer(frame, "<f2", nv, off).astype(np.float32).reshape(hd.h, hd.t, 1)
        q = np.frombuffer(frame, np.int8, nv * hd.d, off + 2 * nv).reshape(hd.h, hd.t, hd.d)
        return (q.astype(np.float32) * s).astype(np.float32)


def _asym_quant(x: np.ndarray, bits: int, axis: int):
    """Asymmetric min/max quantization of x along `axis` (the group axis).
    Returns (codes uint8, scale fp16, minimum fp16) with scale/min reduced over axis."""
    lo = x.min(axis=axis, keepdims=True).astype(np.float16)
    hi = x.max(axis=axis, keepdims=True)
    lo32 = lo.astype(np.float32)
    scale = ((hi - lo32) / ((1 << bits) - 1)).astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1.0)
    q = np.where(s32 > 0, np.rint((x - lo32) / safe), 0).clip(0, (1 << bits) - 1)
    return q.astype(np.uint8), scale, lo


class Kivi(Codec):
    codec = "kivi"

    def __init__(self, bits: int, group: int = 32, window: int = 128):
        self.bits, self.group, self.window = bits, group, window
        self.config = f"{bits}bit g{group} r{window}"

    def _split(self, t):
        nq = max(0, (t - self.window) // self.group) * self.group
        return nq

    def encode(self, x, kind, pos0):
        x = _check(x)
        h, t, d = x.shape
        g = self.group
        if kind == "v" and d % g:
            raise ValueError(f"head_dim {d} not a multiple of group {g}")
        nq = self._split(t)
        parts = [Header(TAG["kivi"], _kind_id(kind), self.bits, 0, h, t, d, pos0,
                        self.window, g).pack()]
        old = x[:, :nq, :]
        if nq:
            if kind == "k":   # per channel: groups of g tokens, one (scale, min) per channel
                grp = old.reshape(h, nq // g, g, d)
                q, sc, lo = _asym_quant(grp, self.bits, axis=2)
            else:             # per token: groups of g channels, one (scale, min) per group
                grp = old.reshape(h, nq, d // g, g)
                q, sc, lo = _asym_quant(grp, self.bits, axis=3)
            parts += [sc.astype("<f2").tobytes(), lo.astype("<f2").tobytes(),
                      kvbytes.pack_bits(q, self.bits)]
        parts.append(x[:, nq:, :].astype("<f2").tobytes())
        return b"".join(parts)

    def decode(self, frame):
        hd = Header.unpack(frame)
        h, t, d, g, bits = hd.h, hd.t, hd.d, hd.extra, hd.bits
        self.window = hd.param
        nq = max(0, (t - hd.param) // g) * g
        off = Header.SIZE
        out = np.empty((h, t, d), np.float32)
        if nq:
            if hd.kind == 0:
                pshape, qshape = (h, nq // g, 1, d), (h, nq // g, g, d)
            else:
                pshape, qshape = (h, nq, d // g, 1), (h, nq, d // g, g)
            npar = int(np.prod(pshape))
            sc = np.frombuffer(frame, "<f2", npar, off).astype(np.float32).reshape(pshape)
            lo = np.frombuffer(frame, "<f2", npar, off + 2 * npar).astype(np.float32)
            lo = lo.reshape(pshape)
            off += 4 * npar
            n = h * nq * d
            nb = (n * bits + 7) // 8
            q = kvbytes.unpack_bits(frame[off:off + nb], bits, n).astype(np.float32)
            off += nb
            out[:, :nq, :] = (q.reshape(qshape) * sc + lo).reshape(h, nq, d)
        rest = np.frombuffer(frame, "<f2", h * (t - nq) * d, off)
        out[:, nq:, :] = rest.astype(np.float32).reshape(h, t - nq, d)
        return out


def lloyd_max_gaussian(bits: int, iters: int = 300) -> tuple:
    """Lloyd-Max quantizer for N(0,1) with 2^bits levels: (thresholds, levels), numerically on a
    fine grid (Lloyd 1982 / Max 1960). For 1 bit the levels are +-0.7979."""
    n = 1 << bits
    grid = np.linspace(-8, 8, 160001)
    pdf = np.exp(-0.5 * grid ** 2)
    levels = np.linspace(-2, 2, n) if n > 2 else np.array([-0.8, 0.8])
    for _ in range(iters):
        thr = (levels[:-1] + levels[1:]) / 2
        idx = np.searchsorted(thr, grid)
        w = np.bincount(idx, weights=pdf, minlength=n)
        m = np.bincount(idx, weights=pdf * grid, minlength=n)
        levels = m / w
    return (levels[:-1] + levels[1:]) / 2, levels


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


class TurboQuant(Codec):
    codec = "turboquant"

    def __init__(self, bits: int, seed: int = 1234):
        self.bits, self.seed = bits, seed
        self.config = f"{bits}bit"
        self.thr, self.levels = lloyd_max_gaussian(bits)
        self._rot = {}

    def _rotation(self, d, seed):
        if (d, seed) not in self._rot:
            self._rot[(d, seed)] = random_orthogonal(d, seed)
        return self._rot[(d, seed)]

    def encode(self, x, kind, pos0):
        x = _check(x)
        h, t, d = x.shape
        rot = self._rotation(d, self.seed)
        norm = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
        nrm16 = norm.astype(np.float16)
        unit = x / np.where(norm > 0, norm, 1.0)
        y = (unit.reshape(-1, d) @ rot.T).reshape(h, t, d) * np.sqrt(d)   # coordinates ~ N(0,1)
        q = np.searchsorted(self.thr, y).astype(np.uint8)
        return Header(TAG["turboquant"], _kind_id(kind), self.bits, 0, h, t, d, pos0,
                      self.seed).pack() + nrm16.astype("<f2").tobytes() + \
            kvbytes.pack_bits(q, self.bits)

    def decode(self, frame):
        hd = Header.unpack(frame)
        h, t, d = hd.h, hd.t, hd.d
        _, levels = lloyd_max_gaussian(hd.bits) if hd.bits != self.bits else (None, self.levels)
        off = Header.SIZE
        nrm = np.frombuffer(frame, "<f2", h * t, off).astype(np.float64).reshape(h, t, 1)
        off += 2 * h * t
        q = kvbytes.unpack_bits(frame[off:], hd.bits, h * t * d).reshape(h, t, d)
        y = levels[q] / np.sqrt(d)
        rot = self._rotation(d, hd.param)
        return ((y.reshape(-1, d) @ rot).reshape(h, t, d) * nrm).astype(np.float32)


def hadamard(d: int) -> np.ndarray:
    """Normalized Sylvester Walsh-Hadamard matrix (d a power of two); symmetric, orthogonal."""
    if d & (d - 1):
        raise ValueError("head_dim must be a power of two for the Hadamard transform")
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(d)


def e8_nearest_relaxed(x: np.ndarray) -> np.ndarray:
    """NexusQuant's E8 rounding, from its paper: for each 8-block, the integer candidate is
    Conway-Sloane's (round, and if the coordinate sum is odd re-round the coordinate with the
    largest rounding residual the other way); the half-integer candidate is rounded without the
    parity constraint (the paper's 'relaxed half-integer parity'); the closer one wins.
    x: [..., 8] float64."""
    r = np.rint(x)
    odd = (r.sum(axis=-1) % 2) != 0
    if odd.any():
        res = x - r
        i = np.abs(res).argmax(axis=-1)
        take = np.take_along_axis(res, i[..., None], -1)[..., 0]
        step = np.where(take >= 0, 1.0, -1.0)
        flat_r = r.reshape(-1, 8)
        idx = np.nonzero(odd.reshape(-1))[0]
        flat_r[idx, i.reshape(-1)[idx]] += step.reshape(-1)[idx]
        r = flat_r.reshape(x.shape)
    hcand = np.floor(x) + 0.5
    d_int = ((x - r) ** 2).sum(-1)
    d_half = ((x - hcand) ** 2).sum(-1)
    return np.where((d_half < d_int)[..., None], hcand, r)


class NexusQuant(Codec):
    codec = "nexusquant"

    def __init__(self, kbits: int, vbits: int, rope: dict, level: int = 22):
        self.kbits, self.vbits, self.rope, self.level = kbits, vbits, rope, level
        self.config = f"K{kbits}V{vbits}"
        self._had = {}

    def _h(self, d):
        if d not in self._had:
            self._had[d] = hadamard(d)
        return self._had[d]

    def encode(self, x, kind, pos0):
        x = _check(x)
        h, t, d = x.shape
        if d % 8:
            raise ValueError("head_dim must be a multiple of 8")
        bits = self.kbits if kind == "k" else self.vbits
        half = (1 << bits) / 2
        y = rope_remove(x, self.rope, pos0) if kind == "k" else x.astype(np.float64)
        y = (y.reshape(-1, d) @ self._h(d)).reshape(h, t, d)
        amax = np.abs(y).max(axis=-1, keepdims=True)
        sc16 = (amax / half).astype(np.float16)
        sc = sc16.astype(np.float64)
        z = y / np.where(sc > 0, sc, 1.0)
        p = e8_nearest_relaxed(z.reshape(h, t, d // 8, 8)).reshape(h, t, d)
        p = np.clip(p, -half, half)
        c = np.rint(2 * p).astype(np.int16)                     # doubled: integers in [-2L, 2L]
        if np.abs(c).max() > 127:
            raise ValueError("coordinates exceed int8")
        c8 = c.astype(np.int8)
        delta = np.diff(c8.astype(np.int16), axis=1, prepend=0).astype(np.int8)   # mod 256
        z = kvbytes.zstd_compress(delta.tobytes(), self.level)
        hdr = Header(TAG["nexusquant"], _kind_id(kind), bits, 0, h, t, d, pos0, len(z))
        return hdr.pack() + sc16.astype("<f2").tobytes() + z

    def decode(self, frame):
        hd = Header.unpack(frame)
        h, t, d = hd.h, hd.t, hd.d
        off = Header.SIZE
        sc = np.frombuffer(frame, "<f2", h * t, off).astype(np.float64).reshape(h, t, 1)
        off += 2 * h * t
        raw = kvbytes.zstd_decompress(frame[off:off + hd.param], h * t * d)
        delta = np.frombuffer(raw, np.int8).reshape(h, t, d)
        c = np.cumsum(delta.astype(np.uint8), axis=1, dtype=np.uint8).view(np.int8)
        y = (c.astype(np.float64) / 2) * sc
        y = (y.reshape(-1, d) @ self._h(d)).reshape(h, t, d)   # the Hadamard is its own inverse
        if hd.kind == 0:
            y = rope_apply(y, self.rope, hd.pos0)
        return y.astype(np.float32)
