"""The harness's baseline codecs in torch, for the device run (bench/quality/fastrun.py).

Same frames as bench/quality/baselines.py (the numpy reference that QUICK and the tests use), written
as uint8 tensors on the model's device: a whole cache kv [L, 2, H, T, D] float32 (K with RoPE as
cached, then V) is coded at once into frames [L, 2, nbytes] uint8 (every frame of one of these codecs
has the same length: header, fp16 parameters, packed codes, fp16 window), and decoded back from
those bytes only. Frame (l, 0) is layer l's K frame, (l, 1) its V frame, as in the numpy harness.

Exactness against the numpy codecs: float32 arithmetic is done in the same operation order (IEEE
division and rounding give the same bits); float64 -> float16 conversions round once (round-to-odd
to float32 first, which makes the second rounding exact, as numpy's direct conversion); RoPE angles
come from bench/quality/rope.py's numpy code; the 8-term sums of the E8 search are added in numpy's
pairwise order. Float64 matrix products (TurboQuant's rotation, NexusQuant's Hadamard) may differ
from numpy's BLAS in the last bit, which could move a value across a rounding boundary (not seen in
practice); fastrun checks every frame of its first window against the numpy codecs and reports the
bytes that differ.

NexusQuant: `nexus_quantize` does the lossy part (RoPE removal, Hadamard, one fp16 scale per head
vector, E8 rounding, int8 doubled coordinates, delta over tokens); the deltas go through zstd on the
CPU (fastrun's worker threads, which decompress and check every frame), and `nexus_decode` reads the
decoded values back from the deltas (what zstd decompresses to) and the fp16 scales.
"""
import numpy as np
import torch

from .baselines import TAG, Header, hadamard, lloyd_max_gaussian, random_orthogonal
from .rope import _angles, check_rope

U8 = torch.uint8


# --------------------------------------------------------------------------- byte helpers

def f64_to_f16(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float16 rounded once to nearest-even (numpy's astype(float16)), through
    float32 with round-to-odd (a plain x.half() may round twice)."""
    f = x.to(torch.float32)
    bits = f.view(torch.int32)
    away = f.to(torch.float64).abs() > x.abs()              # rounded up in magnitude
    bits = torch.where(away, bits - 1, bits)                # truncate toward zero
    inexact = bits.view(torch.float32).to(torch.float64) != x
    bits = torch.where(inexact, bits | 1, bits)
    return bits.view(torch.float32).to(torch.float16)


def as_bytes(x: torch.Tensor) -> torch.Tensor:
    """[L, 2, ...] tensor of any dtype -> its little-endian bytes [L, 2, n] uint8."""
    x = x.contiguous()
    return x.view(U8).reshape(x.shape[0], x.shape[1], -1)


def from_bytes(b: torch.Tensor, dtype, shape) -> torch.Tensor:
    """Inverse of as_bytes for a byte range [L, 2, n] (a slice of frames)."""
    return b.contiguous().view(dtype).reshape(shape)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Rows of b-bit codes [F, n] uint8 -> [F, ceil(n*bits/8)] uint8, the layout of
    kvbytes.pack_bits (bit j of code i is bit i*bits + j of the row's stream, LSB first)."""
    f, n = codes.shape
    sh = torch.arange(bits, device=codes.device, dtype=U8)
    stream = ((codes.unsqueeze(-1) >> sh) & 1).reshape(f, n * bits)
    pad = (-(n * bits)) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(f, pad)], 1)
    w = (1 << torch.arange(8, device=codes.device)).to(U8)
    return (stream.reshape(f, -1, 8) * w).sum(-1, dtype=torch.int32).to(U8)


def unpack_bits(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_bits: [F, nbytes] uint8 -> [F, n] uint8 codes."""
    f = data.shape[0]
    sh = torch.arange(8, device=data.device, dtype=U8)
    stream = ((data.unsqueeze(-1) >> sh) & 1).reshape(f, -1)[:, :n * bits]
    w = (1 << torch.arange(bits, device=data.device)).to(U8)
    return (stream.reshape(f, n, bits) * w).sum(-1, dtype=torch.int32).to(U8)


def headers(codec: str, bits: int, shape, param: int, extra: int, L: int, dev) -> torch.Tensor:
    """The 24-byte numpy-harness header of every frame: [L, 2, 24] uint8."""
    _, _, h, t, d = shape
    hk = Header(TAG[codec], 0, bits, 0, h, t, d, 0, param, extra).pack()
    hv = Header(TAG[codec], 1, bits, 0, h, t, d, 0, param, extra).pack()
    hb = torch.tensor(list(hk) + list(hv), dtype=U8, device=dev).reshape(1, 2, Header.SIZE)
    return hb.expand(L, 2, Header.SIZE)


# --------------------------------------------------------------------------- codecs

class TorchCodec:
    """encode(kv [L,2,H,T,D] f32) -> frames [L, 2, nbytes] uint8; decode(frames, shape) -> kv."""
    codec = "?"
    config = "?"

    def label(self) -> str:
        return f"{self.codec}:{self.config}"


class Identity(TorchCodec):
    codec, config = "identity", "fp32"

    def encode(self, kv):
        return torch.cat([headers("identity", 32, kv.shape, 0, 0, kv.shape[0], kv.device),
                          as_bytes(kv)], -1)

    def decode(self, fr, shape):
        return from_bytes(fr[..., Header.SIZE:], torch.float32, shape)


class Int8(TorchCodec):
    codec, config = "int8", "per-token absmax"

    def encode(self, kv):
        amax = kv.abs().amax(-1, keepdim=True)
        scale = (amax / 127.0).to(torch.float16)
        s = scale.float()
        q = torch.where(s > 0, torch.round(kv / torch.where(s > 0, s, 1.0)), 0.0)
        q = q.clamp(-127, 127).to(torch.int8)
        return torch.cat([headers("int8", 8, kv.shape, 0, 0, kv.shape[0], kv.device),
                          as_bytes(scale), as_bytes(q)], -1)

    def decode(self, fr, shape):
        L, _, h, t, d = shape
        o = Header.SIZE
        s = from_bytes(fr[..., o:o + 2 * h * t], torch.float16, (L, 2, h, t, 1)).float()
        q = from_bytes(fr[..., o + 2 * h * t:], torch.int8, shape)
        return q.float() * s


def _asym_quant(x, bits, dim):
    """baselines._asym_quant in torch: (codes uint8, scale fp16, minimum fp16)."""
    lo = x.amin(dim, keepdim=True).to(torch.float16)
    hi = x.amax(dim, keepdim=True)
    lo32 = lo.float()
    scale = ((hi - lo32) / ((1 << bits) - 1)).to(torch.float16)
    s32 = scale.float()
    safe = torch.where(s32 > 0, s32, 1.0)
    q = torch.where(s32 > 0, torch.round((x - lo32) / safe), 0.0).clamp(0, (1 << bits) - 1)
    return q.to(U8), scale, lo


class Kivi(TorchCodec):
    codec = "kivi"

    def __init__(self, bits: int, group: int = 32, window: int = 128):
        self.bits, self.group, self.window = bits, group, window
        self.config = f"{bits}bit g{group} r{window}"

    def _nq(self, t):
        return max(0, (t - self.window) // self.group) * self.group

    def encode(self, kv):
        L, _, h, t, d = kv.shape
        g, nq = self.group, self._nq(t)
        if d % g:
            raise ValueError(f"head_dim {d} not a multiple of group {g}")
        parts = [headers("kivi", self.bits, kv.shape, self.window, g, L, kv.device)]
        if nq:
            old = kv[:, :, :, :nq, :]
            qk, sk, lk = _asym_quant(old[:, 0].reshape(L, h, nq // g, g, d), self.bits, 3)
            qv, sv, lv = _asym_quant(old[:, 1].reshape(L, h, nq, d // g, g), self.bits, 4)
            sc = torch.stack([sk.reshape(L, -1), sv.reshape(L, -1)], 1)
            lo = torch.stack([lk.reshape(L, -1), lv.reshape(L, -1)], 1)
            q = torch.stack([qk.reshape(L, -1), qv.reshape(L, -1)], 1).reshape(2 * L, -1)
            parts += [as_bytes(sc), as_bytes(lo),
                      pack_bits(q, self.bits).reshape(L, 2, -1)]
        parts.append(as_bytes(kv[:, :, :, nq:, :].to(torch.float16)))
        return torch.cat(parts, -1)

    def decode(self, fr, shape):
        L, _, h, t, d = shape
        g, nq, bits = self.group, self._nq(t), self.bits
        o = Header.SIZE
        out = torch.empty(shape, dtype=torch.float32, device=fr.device)
        if nq:
            npar = h * nq * d // g
            sc = from_bytes(fr[..., o:o + 2 * npar], torch.float16, (L, 2, npar)).float()
            lo = from_bytes(fr[..., o + 2 * npar:o + 4 * npar], torch.float16,
                            (L, 2, npar)).float()
            o += 4 * npar
            n = h * nq * d
            nb = (n * bits + 7) // 8
            q = unpack_bits(fr[..., o:o + nb].reshape(2 * L, nb), bits, n).float()
            q = q.reshape(L, 2, n)
            o += nb
            k = q[:, 0].reshape(L, h, nq // g, g, d) * sc[:, 0].reshape(L, h, nq // g, 1, d) \
                + lo[:, 0].reshape(L, h, nq // g, 1, d)
            v = q[:, 1].reshape(L, h, nq, d // g, g) * sc[:, 1].reshape(L, h, nq, d // g, 1) \
                + lo[:, 1].reshape(L, h, nq, d // g, 1)
            out[:, 0, :, :nq] = k.reshape(L, h, nq, d)
            out[:, 1, :, :nq] = v.reshape(L, h, nq, d)
        out[:, :, :, nq:] = from_bytes(fr[..., o:], torch.float16, (L, 2, h, t - nq, d)).float()
        return out


def _sum8(sq):
    """Sum over the last axis of size 8 in numpy's pairwise order."""
    s = [sq[..., i] for i in range(8)]
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


def _sum_np(x):
    """Sum over the last axis (a multiple of 8, at most 128) in numpy's pairwise order:
    8 running partial sums, then combined pairwise."""
    n = x.shape[-1]
    v = x.reshape(*x.shape[:-1], n // 8, 8)
    r = v[..., 0, :]
    for i in range(1, n // 8):
        r = r + v[..., i, :]
    return _sum8(r)


class TurboQuant(TorchCodec):
    codec = "turboquant"

    def __init__(self, bits: int, seed: int = 1234):
        self.bits, self.seed = bits, seed
        self.config = f"{bits}bit"
        self.thr, self.levels = lloyd_max_gaussian(bits)
        self._t = {}

    def _tables(self, d, dev):
        if (d, dev) not in self._t:
            self._t[(d, dev)] = (torch.from_numpy(random_orthogonal(d, self.seed)).to(dev),
                                 torch.from_numpy(self.thr).to(dev),
                                 torch.from_numpy(self.levels).to(dev))
        return self._t[(d, dev)]

    def encode(self, kv):
        L, _, h, t, d = kv.shape
        if d % 8 or d > 128:
            raise ValueError("head_dim must be a multiple of 8, at most 128")
        rot, thr, _ = self._tables(d, kv.device)
        x64 = kv.double()
        norm = torch.sqrt(_sum_np(x64 * x64)).unsqueeze(-1)
        unit = x64 / torch.where(norm > 0, norm, 1.0)
        y = (unit.reshape(-1, d) @ rot.T).reshape(kv.shape) * np.sqrt(d)
        q = torch.bucketize(y, thr).to(U8)
        return torch.cat([headers("turboquant", self.bits, kv.shape, self.seed, 0, L, kv.device),
                          as_bytes(f64_to_f16(norm)),
                          pack_bits(q.reshape(2 * L, -1), self.bits).reshape(L, 2, -1)], -1)

    def decode(self, fr, shape):
        L, _, h, t, d = shape
        rot, _, levels = self._tables(d, fr.device)
        o = Header.SIZE
        nrm = from_bytes(fr[..., o:o + 2 * h * t], torch.float16, (L, 2, h, t, 1)).double()
        q = unpack_bits(fr[..., o + 2 * h * t:].reshape(2 * L, -1), self.bits, h * t * d)
        y = levels[q.long()].reshape(-1, d) / np.sqrt(d)
        return ((y @ rot).reshape(shape) * nrm).to(torch.float32)


class Rope:
    """cos/sin tables of bench/quality/rope.py (numpy, float64) on the device, per (pos0, T)."""

    def __init__(self, rope: dict, head_dim: int, dev):
        check_rope(rope, head_dim)
        self.rope, self.dev, self._c = rope, dev, {}

    def rotate(self, x, pos0: int, sign: float) -> torch.Tensor:
        """x [..., T, D] -> float64, rotated by angle(pos0 + t) * sign (rope.py's _rotate)."""
        t = x.shape[-2]
        key = (pos0, t, sign)
        if key not in self._c:
            ang = _angles(self.rope, np.arange(pos0, pos0 + t)) * sign
            self._c[key] = (torch.from_numpy(np.cos(ang)).to(self.dev),
                            torch.from_numpy(np.sin(ang)).to(self.dev))
        cos, sin = self._c[key]
        rd = self.rope["rotary_dim"]
        y = x.double().clone()
        if self.rope["style"] == "split_half":
            a, b = y[..., :rd // 2].clone(), y[..., rd // 2:rd].clone()
            y[..., :rd // 2] = a * cos - b * sin
            y[..., rd // 2:rd] = b * cos + a * sin
        else:
            a, b = y[..., 0:rd:2].clone(), y[..., 1:rd:2].clone()
            y[..., 0:rd:2] = a * cos - b * sin
            y[..., 1:rd:2] = b * cos + a * sin
        return y


def e8_nearest_relaxed(x: torch.Tensor) -> torch.Tensor:
    """baselines.e8_nearest_relaxed in torch (float64 [..., 8])."""
    r = torch.round(x)
    odd = torch.remainder(r.sum(-1), 2) != 0
    res = x - r
    i = res.abs().argmax(-1, keepdim=True)
    take = torch.gather(res, -1, i)
    step = torch.where(take >= 0, 1.0, -1.0) * odd.unsqueeze(-1)
    r = r.scatter_add(-1, i, step.to(r.dtype))
    hcand = torch.floor(x) + 0.5
    d_int = _sum8((x - r) ** 2)
    d_half = _sum8((x - hcand) ** 2)
    return torch.where((d_half < d_int).unsqueeze(-1), hcand, r)


class NexusQuant(TorchCodec):
    """The lossy half of baselines.NexusQuant; zstd of the deltas is done by the caller."""
    codec = "nexusquant"

    def __init__(self, kbits: int, vbits: int, rope: dict):
        self.kbits, self.vbits, self.rope = kbits, vbits, rope
        self.config = f"K{kbits}V{vbits}"
        self._r, self._h = {}, {}

    def _tables(self, d, dev):
        if dev not in self._r:
            self._r[dev] = Rope(self.rope, d, dev)
            self._h[dev] = torch.from_numpy(hadamard(d)).to(dev)
        return self._r[dev], self._h[dev]

    def quantize(self, kv):
        """kv [L, 2, H, T, D] f32 -> (scales fp16 [L, 2, H, T], delta int8 [L, 2, H, T, D])."""
        L, _, h, t, d = kv.shape
        if d % 8:
            raise ValueError("head_dim must be a multiple of 8")
        rope, had = self._tables(d, kv.device)
        scs, deltas = [], []
        for kind, bits in ((0, self.kbits), (1, self.vbits)):
            half = (1 << bits) / 2
            x = kv[:, kind]
            y = rope.rotate(x, 0, -1.0) if kind == 0 else x.double()
            y = (y.reshape(-1, d) @ had).reshape(x.shape)
            amax = y.abs().amax(-1, keepdim=True)
            sc16 = f64_to_f16(amax / half)
            sc = sc16.double()
            z = y / torch.where(sc > 0, sc, 1.0)
            p = e8_nearest_relaxed(z.reshape(L, h, t, d // 8, 8)).reshape(x.shape)
            c = torch.round(2 * p.clamp(-half, half)).to(torch.int16)
            delta = torch.diff(c, dim=2, prepend=torch.zeros_like(c[:, :, :1]))
            scs.append(sc16[..., 0])
            deltas.append(delta.to(torch.int8))
        return torch.stack(scs, 1), torch.stack(deltas, 1)

    def decode(self, sc16, delta):
        L, _, h, t, d = delta.shape
        rope, had = self._tables(d, delta.device)
        c = torch.cumsum(delta.to(torch.int32), dim=3).double()
        y = (c / 2) * sc16.double().unsqueeze(-1)
        y = (y.reshape(-1, d) @ had).reshape(delta.shape)
        out = torch.empty(delta.shape, dtype=torch.float32, device=delta.device)
        out[:, 0] = rope.rotate(y[:, 0], 0, 1.0).to(torch.float32)
        out[:, 1] = y[:, 1].to(torch.float32)
        return out

    def frame(self, sc16_lk: torch.Tensor, z: bytes, kind: int, shape) -> bytes:
        """One frame's bytes, as baselines.NexusQuant writes it (for the byte check)."""
        h, t, d = shape
        bits = self.kbits if kind == 0 else self.vbits
        hdr = Header(TAG["nexusquant"], kind, bits, 0, h, t, d, 0, len(z)).pack()
        return hdr + sc16_lk.cpu().numpy().astype("<f2").tobytes() + z


def baselines(rope: dict):
    """The fixed-length codecs of run.build_codecs, in the same order (NexusQuant apart)."""
    return [Identity(), Int8(), Kivi(2), Kivi(4), Kivi(2, window=32),
            TurboQuant(2), TurboQuant(3), TurboQuant(4)]


def nexusquants(rope: dict):
    return [NexusQuant(2, 2, rope), NexusQuant(3, 2, rope), NexusQuant(3, 3, rope),
            NexusQuant(4, 4, rope)]
