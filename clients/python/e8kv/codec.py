"""e8kv.codec: the E8 lattice KV codec (libe8codec) for numpy arrays and torch CPU tensors.

    from e8kv import codec
    fp = codec.Fingerprint(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", n_layers=30,
                           n_kv_heads=3, head_dim=64, src_dtype="float16",
                           rope=codec.Rope(theta=100000.0), config=codec.Config("K3V2"))
    c = codec.Codec(fp)
    frame = c.encode_frame(k, layer=0, kind="k", first_pos=0)  # k: [n_kv_heads, T, head_dim]
    k2 = c.decode_frame(frame, dtype="float32")                 # numpy [n_kv_heads, T, head_dim]
    chunk = c.encode_chunk(raw, first_pos=0)   # raw: [n_layers, 2, n_kv_heads, T, head_dim]
    raw2 = c.decode_chunk(chunk, as_torch=True)

Shapes are those of codec/e8codec.h: a frame holds one layer's K or V,
``[n_kv_heads, n_tokens, head_dim]`` (any strides: views of a larger cache are read in place);
a chunk holds all layers, ``[n_layers, 2 (K then V), n_kv_heads, n_tokens, head_dim]``,
contiguous. Keys are given with RoPE applied, as the engine caches them; ``first_pos`` is the
absolute position of token 0. dtypes: float16, bfloat16 (torch only; numpy has none), float32.

Every argument is checked here before the library sees it (shape against the fingerprint,
dtype, device, token counts and positions against the codec's limits, the RoPE description
field by field), so mistakes raise ValueError / TypeError naming the argument, before any
bytes are produced. Errors the library reports raise CodecError (with .code and .name, the
stable E8C_ERR_* name, and the library's one-line message). CUDA tensors are refused with
TypeError: these bindings drive the CPU codec only.

Thread safety: a Codec holds one e8c_ctx (workspace, last error), so use one Codec per thread.
The module-level ``encode_chunk`` / ``decode_chunk`` keep one Codec per (thread, fingerprint).

The fingerprint may also be given as an ``e8kv.v1.ModelFingerprint`` protobuf message; it is
converted by the C code e8kvd itself runs (proto/e8kv_fp.c, through libe8kv.so), so the
fingerprint id, which every chunk carries, is the daemon's. ``Config()`` with nothing set is
the library's (and the daemon's) default configuration.
"""
import ctypes
import math
import threading
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from . import _fplib
from . import _lib as L

__all__ = ["CodecError", "Rope", "Config", "Fingerprint", "Codec", "presets", "version",
           "frame_info", "chunk_info", "chunk_fingerprint", "encode_chunk", "decode_chunk",
           "fingerprint_from_proto", "default_config"]

DTYPES = {"float16": L.DTYPE_F16, "bfloat16": L.DTYPE_BF16, "float32": L.DTYPE_F32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {L.DTYPE_F16: 2, L.DTYPE_BF16: 2, L.DTYPE_F32: 4}
ROPE_TYPES = {"none": L.ROPE_NONE, "default": L.ROPE_DEFAULT, "linear": L.ROPE_LINEAR,
              "dynamic": L.ROPE_DYNAMIC, "yarn": L.ROPE_YARN, "llama3": L.ROPE_LLAMA3,
              "longrope": L.ROPE_LONGROPE}
LAYOUTS = {"split_half": L.LAYOUT_SPLIT_HALF, "interleaved": L.LAYOUT_INTERLEAVED}
ROPE_NAMES = {v: k for k, v in ROPE_TYPES.items()}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
DECORS = {"auto": L.DECOR_AUTO, "none": L.DECOR_NONE, "delta": L.DECOR_DELTA,
          "mean": L.DECOR_MEAN}
DECOR_NAMES = {v: k for k, v in DECORS.items()}
ENTROPIES = {"rans32": L.ENTROPY_RANS32, "best": L.ENTROPY_BEST, "v1": L.ENTROPY_V1}
ENTROPY_NAMES = {v: k for k, v in ENTROPIES.items()}
KINDS = {"k": L.KIND_K, "v": L.KIND_V, 0: L.KIND_K, 1: L.KIND_V}


class CodecError(RuntimeError):
    """An error the library returned: .code (negative int), .name ("E8C_ERR_CHECKSUM")."""

    def __init__(self, code: int, what: str, detail: str = ""):
        lib = L.lib()
        self.code = int(code)
        self.name = lib.e8c_error_name(code).decode()
        msg = f"{what}: {self.name} ({lib.e8c_error_string(code).decode()})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


def _check_rc(rc: int, what: str, ctx=None) -> int:
    if rc < 0:
        detail = L.lib().e8c_ctx_last_error(ctx).decode() if ctx else ""
        raise CodecError(rc, what, detail)
    return rc


# --------------------------------------------------------------------------- descriptions

@dataclass
class Rope:
    """The model's RoPE, as e8c_rope describes it (HF transformers' rope_type meanings).
    rotary_dim None = head_dim. Unused fields stay 0."""
    theta: float = 10000.0
    type: str = "default"               # none default linear dynamic yarn llama3 longrope
    layout: str = "split_half"          # split_half (HF rotate_half) or interleaved
    rotary_dim: Optional[int] = None
    original_max_pos: int = 0
    factor: float = 0.0
    low_freq_factor: float = 0.0
    high_freq_factor: float = 0.0
    beta_fast: float = 0.0
    beta_slow: float = 0.0
    attention_factor: float = 0.0
    yarn_no_truncate: bool = False
    short_factor: Sequence[float] = ()
    long_factor: Sequence[float] = ()

    def check(self, head_dim: int) -> None:
        """ValueError naming the field when the description is incomplete or impossible."""
        if self.type not in ROPE_TYPES:
            raise ValueError(f"rope.type {self.type!r} unknown (one of {sorted(ROPE_TYPES)})")
        if self.type == "none":
            return
        if self.layout not in LAYOUTS:
            raise ValueError(f"rope.layout {self.layout!r} unknown (split_half, interleaved)")
        if not (isinstance(self.theta, (int, float)) and math.isfinite(self.theta)
                and self.theta > 0):
            raise ValueError(f"rope.theta must be a finite number > 0, got {self.theta!r}")
        rd = head_dim if self.rotary_dim is None else self.rotary_dim
        if rd % 2 or not 2 <= rd <= head_dim:
            raise ValueError(f"rope.rotary_dim {rd} must be even and in [2, head_dim={head_dim}]")
        need = {"linear": ["factor"], "dynamic": ["factor", "original_max_pos"],
                "yarn": ["factor", "original_max_pos", "beta_fast", "beta_slow",
                         "attention_factor"],
                "llama3": ["factor", "original_max_pos", "low_freq_factor", "high_freq_factor"],
                "longrope": ["original_max_pos", "attention_factor"]}.get(self.type, [])
        for f in need:
            v = getattr(self, f)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"rope.{f} must be > 0 for rope type {self.type!r}, got {v!r}")
        if self.type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError("rope.high_freq_factor must exceed rope.low_freq_factor (llama3)")
        if self.type == "longrope":
            for f in ("short_factor", "long_factor"):
                v = list(getattr(self, f))
                if len(v) != rd // 2 or not all(x > 0 for x in v):
                    raise ValueError(f"rope.{f} must hold rotary_dim/2 = {rd // 2} values > 0")

    def to_c(self, head_dim: int) -> L.Rope:
        self.check(head_dim)
        r = L.Rope()
        r.type = ROPE_TYPES[self.type]
        if self.type == "none":
            return r
        r.layout = LAYOUTS[self.layout]
        r.rotary_dim = head_dim if self.rotary_dim is None else self.rotary_dim
        for f in ("original_max_pos", "theta", "factor", "low_freq_factor", "high_freq_factor",
                  "beta_fast", "beta_slow", "attention_factor"):
            setattr(r, f, getattr(self, f))
        r.yarn_no_truncate = 1 if self.yarn_no_truncate else 0
        if self.type == "longrope":
            r.n_longrope = len(self.short_factor)
            for i, (s, lo) in enumerate(zip(self.short_factor, self.long_factor)):
                r.short_factor[i], r.long_factor[i] = s, lo
        return r

    @classmethod
    def from_c(cls, r: L.Rope) -> "Rope":
        """Every value of a C e8c_rope, explicit."""
        kind = ROPE_NAMES.get(r.type, r.type)
        if kind == "none":
            return cls(type="none")
        n = r.n_longrope
        return cls(theta=r.theta, type=kind, layout=LAYOUT_NAMES.get(r.layout, r.layout),
                   rotary_dim=r.rotary_dim, original_max_pos=r.original_max_pos,
                   factor=r.factor, low_freq_factor=r.low_freq_factor,
                   high_freq_factor=r.high_freq_factor, beta_fast=r.beta_fast,
                   beta_slow=r.beta_slow, attention_factor=r.attention_factor,
                   yarn_no_truncate=bool(r.yarn_no_truncate),
                   short_factor=list(r.short_factor[:n]), long_factor=list(r.long_factor[:n]))

    @classmethod
    def from_hf_config(cls, config, layout: str = "split_half") -> "Rope":
        """From a transformers config: e8kv.hfrope's reading of it (every rope_type HF
        defines, partial_rotary_factor), resolved by the daemon's conversion. HF's
        Llama-family models use split_half."""
        from . import hfrope
        from .v1 import kvstore_pb2 as pb
        head_dim = getattr(config, "head_dim", None) or \
            config.hidden_size // config.num_attention_heads
        m = pb.ModelFingerprint(model_id="rope", n_layers=1, n_kv_heads=1, head_dim=head_dim,
                                source_dtype=pb.DTYPE_FP32,
                                rope=hfrope.rope_config(config, head_dim, layout))
        return fingerprint_from_proto(m).rope


@dataclass
class Config:
    """Codec configuration (e8c_config). Every field left None takes the library's default
    (e8c_config_default: preset K3V2, sink_tokens 1, ...), which is also what e8kvd uses
    for a fingerprint whose codec is unset: ``Config()`` is the daemon's default
    configuration and gets its fingerprint id. ``preset`` names the key/value steps;
    k_step/v_step override them; the counts (protect_*, sink_tokens, recent_tokens) mean
    what they say, 0 = none."""
    preset: Optional[str] = None
    k_step: Optional[float] = None
    v_step: Optional[float] = None
    protect_first: Optional[int] = None
    protect_last: Optional[int] = None
    protect_layers: Sequence[int] = ()
    sink_tokens: Optional[int] = None
    recent_tokens: Optional[int] = None
    decorrelation: Optional[str] = None      # auto none delta mean
    zstd_level: Optional[int] = None
    hadamard_seed: Optional[int] = None
    entropy: Optional[str] = None            # rans32 best v1 (codec/e8codec.h e8c_entropy)

    def to_c(self, n_layers: int) -> L.Config:
        lib = L.lib()
        c = L.Config()
        lib.e8c_config_default(ctypes.byref(c))
        if self.preset is not None:
            if not isinstance(self.preset, str):
                raise TypeError(f"config.preset must be a str, got {type(self.preset).__name__}")
            if self.preset == "":
                c.preset = b""                       # no name (custom steps)
            elif lib.e8c_preset_apply(self.preset.encode(), ctypes.byref(c)) < 0:
                raise ValueError(f"config.preset {self.preset!r} unknown (one of {presets()})")
        if self.k_step is not None:
            c.k_step = self.k_step
        if self.v_step is not None:
            c.v_step = self.v_step
        for name in ("protect_first", "protect_last", "sink_tokens", "recent_tokens"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"config.{name} must be an int >= 0, got {v!r}")
            setattr(c, name, int(v))
        for layer in self.protect_layers:
            if not 0 <= layer < n_layers:
                raise ValueError(f"config.protect_layers: layer {layer} not in [0, {n_layers})")
            c.protect_mask[layer // 64] |= 1 << (layer % 64)
        if self.decorrelation is not None:
            if self.decorrelation not in DECORS:
                raise ValueError(f"config.decorrelation {self.decorrelation!r} unknown "
                                 f"({sorted(DECORS)})")
            c.decorrelation = DECORS[self.decorrelation]
        if self.zstd_level is not None:
            c.zstd_level = int(self.zstd_level)
        if self.hadamard_seed is not None:
            c.hadamard_seed = int(self.hadamard_seed)
        if self.entropy is not None:
            if self.entropy not in ENTROPIES:
                raise ValueError(f"config.entropy {self.entropy!r} unknown ({sorted(ENTROPIES)})")
            c.entropy = ENTROPIES[self.entropy]
        return c

    @classmethod
    def from_c(cls, c: L.Config, n_layers: int) -> "Config":
        """Every value of a C e8c_config, explicit."""
        return cls(preset=c.preset.decode(), k_step=c.k_step, v_step=c.v_step,
                   protect_first=c.protect_first, protect_last=c.protect_last,
                   protect_layers=[i for i in range(n_layers)
                                   if c.protect_mask[i // 64] >> (i % 64) & 1],
                   sink_tokens=c.sink_tokens, recent_tokens=c.recent_tokens,
                   decorrelation=DECOR_NAMES.get(c.decorrelation, c.decorrelation),
                   zstd_level=c.zstd_level, hadamard_seed=c.hadamard_seed,
                   entropy=ENTROPY_NAMES.get(c.entropy, c.entropy))


def default_config(n_layers: int = L.MAX_LAYERS) -> Config:
    """The library's default configuration (e8c_config_default), every field explicit."""
    c = L.Config()
    L.lib().e8c_config_default(ctypes.byref(c))
    return Config.from_c(c, n_layers)


@dataclass
class Fingerprint:
    """What makes KV bytes comparable (e8c_fingerprint): model, shape, source dtype, RoPE,
    codec configuration."""
    model_id: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    src_dtype: str = "float16"
    rope: Rope = field(default_factory=Rope)
    config: Config = field(default_factory=Config)

    def to_c(self) -> L.Fingerprint:
        """The C struct, checked here field by field and then by e8c_fingerprint_validate."""
        mid = self.model_id.encode() if isinstance(self.model_id, str) else None
        if not mid or len(mid) >= L.MODEL_ID_MAX:
            raise ValueError(f"model_id must be a non-empty str of < {L.MODEL_ID_MAX} bytes")
        for name, hi in (("n_layers", L.MAX_LAYERS), ("n_kv_heads", L.MAX_KV_HEADS)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or not 1 <= v <= hi:
                raise ValueError(f"{name} must be an int in [1, {hi}], got {v!r}")
        hd = self.head_dim
        if not isinstance(hd, (int, np.integer)) or hd % 8 or not 8 <= hd <= L.MAX_HEAD_DIM:
            raise ValueError(f"head_dim must be a multiple of 8 in [8, {L.MAX_HEAD_DIM}], "
                             f"got {hd!r}")
        if self.src_dtype not in DTYPES:
            raise ValueError(f"src_dtype {self.src_dtype!r} unknown ({sorted(DTYPES)})")
        f = L.Fingerprint()
        f.model_id = mid
        f.n_layers, f.n_kv_heads, f.head_dim = self.n_layers, self.n_kv_heads, hd
        f.src_dtype = DTYPES[self.src_dtype]
        f.rope = self.rope.to_c(hd)
        f.config = self.config.to_c(self.n_layers)
        msg = ctypes.create_string_buffer(256)
        rc = L.lib().e8c_fingerprint_validate(ctypes.byref(f), msg, len(msg))
        if rc < 0:
            raise ValueError(f"fingerprint refused by the codec: {msg.value.decode()} "
                             f"({L.lib().e8c_error_name(rc).decode()})")
        return f

    @classmethod
    def from_c(cls, f: L.Fingerprint) -> "Fingerprint":
        """Every value of a C e8c_fingerprint, explicit."""
        return cls(model_id=f.model_id.decode(), n_layers=f.n_layers, n_kv_heads=f.n_kv_heads,
                   head_dim=f.head_dim, src_dtype=DTYPE_NAMES[f.src_dtype],
                   rope=Rope.from_c(f.rope), config=Config.from_c(f.config, f.n_layers))

    def id(self) -> bytes:
        """The 32-byte fingerprint id (SHA-256 of the canonical serialization)."""
        out = (ctypes.c_uint8 * L.ID_SIZE)()
        _check_rc(L.lib().e8c_fingerprint_id(ctypes.byref(self.to_c()), out), "fingerprint id")
        return bytes(out)

    def to_proto(self):
        """The e8kv.v1.ModelFingerprint e8kvd resolves to this fingerprint (same id), every
        value explicit, written by libe8kv's e8kv_fingerprint_to_pb."""
        from .v1 import kvstore_pb2
        return kvstore_pb2.ModelFingerprint.FromString(_fplib.to_wire(self.to_c()))


def fingerprint_from_proto(pb) -> Fingerprint:
    """The codec fingerprint of an e8kv.v1.ModelFingerprint message, exactly as e8kvd reads
    it: the message's bytes go through libe8kv's e8kv_fingerprint_from_pb
    (proto/e8kv_fp.c, the code e8kvd runs: "codec unset = the default configuration",
    "0 = default" fields, rotary_dim 0 = head_dim, ...), so ``.id()`` is e8kvd's
    fingerprint id. ValueError naming the field when the daemon would refuse it."""
    if not hasattr(pb, "SerializeToString"):
        raise TypeError(f"expected an e8kv.v1.ModelFingerprint message, got "
                        f"{type(pb).__name__}")
    c, fid = _fplib.from_wire(pb.SerializeToString())
    fp = Fingerprint.from_c(c)
    if fp.id() != fid:
        raise RuntimeError("e8kv.codec rebuilds another fingerprint than libe8kv resolved "
                           f"for {fp.model_id!r}: e8kv.codec and libe8kv come from different "
                           "builds (rebuild both: make)")
    return fp


def _as_fingerprint(fp) -> Fingerprint:
    if isinstance(fp, Fingerprint):
        return fp
    if hasattr(fp, "source_dtype") and hasattr(fp, "rope") and hasattr(fp, "codec"):
        return fingerprint_from_proto(fp)
    raise TypeError(f"expected e8kv.codec.Fingerprint or an e8kv.v1.ModelFingerprint, "
                    f"got {type(fp).__name__}")


# --------------------------------------------------------------------------- tensors

def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def _is_torch(x) -> bool:
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def _view(x, what: str):
    """(data pointer, dtype code, strides in elements, keep-alive object) of an array/tensor.
    Negative strides or strides that are not whole elements are copied to contiguous."""
    if _is_torch(x):
        torch = _torch()
        if x.device.type != "cpu":
            raise TypeError(f"{what}: {x.device} tensor; these bindings run the CPU codec "
                            "(move it with .cpu())")
        names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
        if x.dtype not in names:
            raise TypeError(f"{what}: dtype {x.dtype} not supported (float16, bfloat16, float32)")
        if any(s < 0 for s in x.stride()):
            x = x.contiguous()
        return x.data_ptr(), DTYPES[names[x.dtype]], list(x.stride()), x
    if isinstance(x, np.ndarray):
        name = x.dtype.name
        if name not in DTYPES or x.dtype.byteorder == ">":
            raise TypeError(f"{what}: dtype {x.dtype} not supported (float16, float32; "
                            "bfloat16 as a torch tensor)")
        item = x.dtype.itemsize
        if any(s < 0 or s % item for s in x.strides):
            x = np.ascontiguousarray(x)
        return x.ctypes.data, DTYPES[name], [s // item for s in x.strides], x
    raise TypeError(f"{what}: expected a numpy array or a torch CPU tensor, got "
                    f"{type(x).__name__}")


def _check_type(x, what: str) -> None:
    if not (isinstance(x, np.ndarray) or _is_torch(x)):
        raise TypeError(f"{what}: expected a numpy array or a torch CPU tensor, got "
                        f"{type(x).__name__}")


def _dtype_name(dtype, default: str) -> str:
    if dtype is None:
        return default
    t = _torch()
    if t is not None and isinstance(dtype, t.dtype):
        m = {t.float16: "float16", t.bfloat16: "bfloat16", t.float32: "float32"}
        if dtype not in m:
            raise TypeError(f"dtype {dtype} not supported (float16, bfloat16, float32)")
        return m[dtype]
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"dtype {dtype!r} not supported (float16, bfloat16, float32)")
    return name


def _alloc(shape, dtype_name: str, as_torch: bool):
    if as_torch:
        torch = _torch()
        if torch is None:
            raise TypeError("as_torch=True needs torch")
        return torch.empty(shape, dtype=getattr(torch, dtype_name))
    if dtype_name == "bfloat16":
        raise TypeError("numpy has no bfloat16: ask for a torch tensor (as_torch=True) or "
                        "another dtype")
    return np.empty(shape, dtype=dtype_name)


def _u32(v, what: str, lo: int = 0, hi: int = 0xFFFFFFFF) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{what} must be an int in [{lo}, {hi}], got {v!r}")
    return int(v)


def _bytes_arg(data, what: str):
    if isinstance(data, (bytes, bytearray, memoryview)):
        b = bytes(data)
    elif isinstance(data, np.ndarray) and data.dtype == np.uint8:
        b = data.tobytes()
    else:
        raise TypeError(f"{what}: expected bytes, got {type(data).__name__}")
    if not b:
        raise ValueError(f"{what} is empty")
    return b


def _decode_params(new_first_pos, new_rope_seq_len):
    if new_first_pos is None:
        return None
    dp = L.DecodeParams()
    dp.use_new_pos = 1
    dp.new_first_pos = _u32(new_first_pos, "new_first_pos", 0, L.MAX_POSITION)
    dp.new_rope_seq_len = _u32(new_rope_seq_len or 0, "new_rope_seq_len")
    return ctypes.byref(dp)


# --------------------------------------------------------------------------- the codec

class Codec:
    """One codec context (e8c_ctx) for one fingerprint. Not shared between threads."""

    def __init__(self, fingerprint, backend: str = "auto"):
        self.fingerprint = _as_fingerprint(fingerprint)
        self._c_fp = self.fingerprint.to_c()
        lib = L.lib()
        err = ctypes.c_int64(0)
        self._ctx = lib.e8c_ctx_create(ctypes.byref(self._c_fp), ctypes.byref(err))
        if not self._ctx:
            raise CodecError(err.value, "e8c_ctx_create")
        backends = {"auto": L.BACKEND_AUTO, "ref": L.BACKEND_REF,
                    "fast_scalar": L.BACKEND_FAST_SCALAR}
        if backend not in backends:
            self.close()
            raise ValueError(f"backend {backend!r} unknown ({sorted(backends)})")
        _check_rc(lib.e8c_ctx_set_backend(self._ctx, backends[backend]), "set backend",
                  self._ctx)

    def close(self):
        if getattr(self, "_ctx", None):
            L.lib().e8c_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def id(self) -> bytes:
        return bytes(ctypes.string_at(L.lib().e8c_ctx_id(self._ctx), L.ID_SIZE))

    def _live(self):
        if not self._ctx:
            raise ValueError("codec is closed")
        return self._ctx

    def _positions(self, n_tokens, first_pos, seq_len, rope_seq_len):
        n = _u32(n_tokens, "n_tokens", 1, L.MAX_TOKENS)
        p0 = _u32(first_pos, "first_pos", 0, L.MAX_POSITION)
        if p0 + n > L.MAX_POSITION:
            raise ValueError(f"first_pos {p0} + n_tokens {n} exceeds {L.MAX_POSITION}")
        sl = _u32(seq_len or 0, "seq_len")
        if sl and sl < p0 + n:
            raise ValueError(f"seq_len {sl} < first_pos + n_tokens = {p0 + n}")
        return n, p0, sl, _u32(rope_seq_len or 0, "rope_seq_len")

    # -- frames: one layer's K or V --------------------------------------------------

    def encode_frame(self, x, layer: int, kind, first_pos: int = 0, seq_len: int = 0,
                     rope_seq_len: int = 0) -> bytes:
        """x: [n_kv_heads, n_tokens, head_dim] (K with RoPE applied). kind "k" or "v".
        Returns the frame's bytes."""
        fp = self.fingerprint
        if kind not in KINDS:
            raise ValueError(f"kind must be 'k' or 'v', got {kind!r}")
        _u32(layer, "layer", 0, fp.n_layers - 1)
        _check_type(x, "x")
        shape = tuple(x.shape)
        if len(shape) != 3 or shape[0] != fp.n_kv_heads or \
                shape[2] != fp.head_dim:
            raise ValueError(f"x must be [n_kv_heads={fp.n_kv_heads}, n_tokens, "
                             f"head_dim={fp.head_dim}], got {shape}")
        n, p0, sl, rsl = self._positions(shape[1], first_pos, seq_len, rope_seq_len)
        ptr, dt, st, keep = _view(x, "x")
        t = L.Tensor(ptr, dt, st[0], st[1], st[2])
        p = L.FrameParams(layer, KINDS[kind], n, p0, sl, rsl)
        lib = L.lib()
        cap = _check_rc(lib.e8c_frame_max_size(self._live(), n), "frame max size", self._ctx)
        buf = ctypes.create_string_buffer(cap)
        size = _check_rc(lib.e8c_frame_encode(self._ctx, ctypes.byref(p), ctypes.byref(t),
                                              buf, cap), "e8c_frame_encode", self._ctx)
        del keep
        return buf.raw[:size]

    def decode_frame(self, frame, out=None, dtype=None, as_torch: bool = False,
                     new_first_pos: Optional[int] = None, new_rope_seq_len: int = 0):
        """Decodes a frame into `out` ([n_kv_heads, n_tokens, head_dim], any strides) or a new
        array (numpy, or torch with as_torch) of `dtype` (default: the source dtype).
        new_first_pos re-applies RoPE to keys at other positions."""
        data = _bytes_arg(frame, "frame")
        info = frame_info(data)
        fp = self.fingerprint
        if info["n_kv_heads"] != fp.n_kv_heads or info["head_dim"] != fp.head_dim:
            raise ValueError(f"frame is [{info['n_kv_heads']}, *, {info['head_dim']}], this "
                             f"codec's fingerprint [{fp.n_kv_heads}, *, {fp.head_dim}]")
        shape = (fp.n_kv_heads, info["n_tokens"], fp.head_dim)
        if out is None:
            out = _alloc(shape, _dtype_name(dtype, fp.src_dtype), as_torch)
        elif tuple(out.shape) != shape:
            raise ValueError(f"out must be {list(shape)}, got {list(out.shape)}")
        ptr, dt, st, keep = _view(out, "out")
        if keep is not out:
            raise ValueError("out must have non-negative whole-element strides")
        t = L.Tensor(ptr, dt, st[0], st[1], st[2])
        lib = L.lib()
        dp = _decode_params(new_first_pos, new_rope_seq_len)
        if hasattr(lib, "e8c_frame_decode_into"):
            rc = lib.e8c_frame_decode_into(self._live(), data, len(data), dp, ctypes.byref(t),
                                           info["n_tokens"])
        else:
            rc = lib.e8c_frame_decode(self._live(), data, len(data), dp, ctypes.byref(t))
        _check_rc(rc, "e8c_frame_decode", self._ctx)
        return out

    # -- chunks: all layers, K and V ----------------------------------------------------

    def encode_chunk(self, raw, first_pos: int = 0, seq_len: int = 0,
                     rope_seq_len: int = 0) -> bytes:
        """raw: [n_layers, 2, n_kv_heads, n_tokens, head_dim] (K then V; K with RoPE)."""
        fp = self.fingerprint
        _check_type(raw, "raw")
        shape = tuple(raw.shape)
        if len(shape) != 5 or shape[:3] != (fp.n_layers, 2, fp.n_kv_heads) \
                or shape[4] != fp.head_dim:
            raise ValueError(f"raw must be [n_layers={fp.n_layers}, 2, n_kv_heads="
                             f"{fp.n_kv_heads}, n_tokens, head_dim={fp.head_dim}], got {shape}")
        n, p0, sl, rsl = self._positions(shape[3], first_pos, seq_len, rope_seq_len)
        if _is_torch(raw):
            raw = raw.contiguous() if raw.device.type == "cpu" else raw
        elif isinstance(raw, np.ndarray):
            raw = np.ascontiguousarray(raw)
        ptr, dt, _, keep = _view(raw, "raw")
        lib = L.lib()
        cap = _check_rc(lib.e8c_chunk_max_size(self._live(), n), "chunk max size", self._ctx)
        buf = ctypes.create_string_buffer(cap)
        p = L.ChunkParams(n, p0, sl, rsl)
        size = _check_rc(lib.e8c_chunk_encode(self._ctx, ctypes.byref(p), ptr, dt, buf, cap),
                         "e8c_chunk_encode", self._ctx)
        del keep
        return buf.raw[:size]

    def decode_chunk(self, chunk, layer_begin: int = 0, layer_end: Optional[int] = None,
                     dtype=None, as_torch: bool = False, new_first_pos: Optional[int] = None,
                     new_rope_seq_len: int = 0):
        """Layers [layer_begin, layer_end) of a chunk as [layers, 2, n_kv_heads, n_tokens,
        head_dim] (numpy, or torch with as_torch), dtype default the source dtype."""
        data = _bytes_arg(chunk, "chunk")
        info = chunk_info(data)
        fp = self.fingerprint
        le = fp.n_layers if layer_end is None else layer_end
        _u32(layer_begin, "layer_begin", 0, fp.n_layers - 1)
        _u32(le, "layer_end", layer_begin + 1, fp.n_layers)
        name = _dtype_name(dtype, fp.src_dtype)
        out = _alloc((le - layer_begin, 2, fp.n_kv_heads, info["n_tokens"], fp.head_dim),
                     name, as_torch)
        ptr, dt, _, keep = _view(out, "out")
        nbytes = out.numel() * out.element_size() if _is_torch(out) else out.nbytes
        rc = L.lib().e8c_chunk_decode(self._live(), data, len(data), layer_begin, le,
                                      _decode_params(new_first_pos, new_rope_seq_len), ptr, dt,
                                      nbytes)
        _check_rc(rc, "e8c_chunk_decode", self._ctx)
        return out


# --------------------------------------------------------------------------- inspection

def frame_info(frame) -> dict:
    """A frame's header (checks header and stream CRCs, decodes nothing)."""
    data = _bytes_arg(frame, "frame")
    info = L.FrameInfo()
    _check_rc(L.lib().e8c_frame_info_get(data, len(data), ctypes.byref(info)), "frame info")
    d = {f: getattr(info, f) for f, _ in L.FrameInfo._fields_}
    d["id_prefix"] = bytes(info.id_prefix)
    d["src_dtype"] = DTYPE_NAMES.get(info.src_dtype, info.src_dtype)
    return d


def chunk_info(chunk) -> dict:
    """A chunk's header, fingerprint id and sizes (checks every CRC, decodes nothing)."""
    data = _bytes_arg(chunk, "chunk")
    info = L.ChunkInfo()
    _check_rc(L.lib().e8c_chunk_info_get(data, len(data), ctypes.byref(info)), "chunk info")
    d = {f: getattr(info, f) for f, _ in L.ChunkInfo._fields_}
    d["fingerprint_id"] = bytes(info.fingerprint_id)
    d["src_dtype"] = DTYPE_NAMES.get(info.src_dtype, info.src_dtype)
    return d


def chunk_fingerprint(chunk) -> bytes:
    """The canonical serialization of the fingerprint a chunk carries (bytes)."""
    data = _bytes_arg(chunk, "chunk")
    f = L.Fingerprint()
    lib = L.lib()
    _check_rc(lib.e8c_chunk_fingerprint(data, len(data), ctypes.byref(f)), "chunk fingerprint")
    n = _check_rc(lib.e8c_fingerprint_serialize(ctypes.byref(f), None, 0), "serialize")
    buf = ctypes.create_string_buffer(n)
    _check_rc(lib.e8c_fingerprint_serialize(ctypes.byref(f), buf, n), "serialize")
    return buf.raw


def presets() -> list:
    lib = L.lib()
    out, i = [], 0
    while True:
        name = lib.e8c_preset_name(i)
        if not name:
            return out
        out.append(name.decode())
        i += 1


def version() -> str:
    return L.lib().e8c_version().decode()


# --------------------------------------------------------------------------- module level

_tls = threading.local()


def _codec_for(fp) -> Codec:
    f = _as_fingerprint(fp)
    key = f.id()
    cache = getattr(_tls, "codecs", None)
    if cache is None:
        cache = _tls.codecs = {}
    if key not in cache:
        if len(cache) >= 8:
            cache.pop(next(iter(cache))).close()
        cache[key] = Codec(f)
    return cache[key]


def encode_chunk(fingerprint, raw, first_pos: int = 0, seq_len: int = 0,
                 rope_seq_len: int = 0) -> bytes:
    """Codec(fingerprint).encode_chunk(...), with one codec per thread and fingerprint."""
    return _codec_for(fingerprint).encode_chunk(raw, first_pos, seq_len, rope_seq_len)


def decode_chunk(fingerprint, chunk, dtype=None, layer_begin: int = 0,
                 layer_end: Optional[int] = None, as_torch: Optional[bool] = None):
    """Codec(fingerprint).decode_chunk(...). A torch dtype (or as_torch) returns a tensor."""
    if as_torch is None:
        t = _torch()
        as_torch = t is not None and isinstance(dtype, t.dtype)
    return _codec_for(fingerprint).decode_chunk(chunk, layer_begin, layer_end, dtype, as_torch)
