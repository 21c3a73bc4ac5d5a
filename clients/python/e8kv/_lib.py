"""ctypes declarations of libe8codec (codec/e8codec.h): structs, enums and prototypes.

This module mirrors the C header one to one and does nothing else; e8kv.codec is the Python
API on top. The library is found, in order, at $E8KV_LIB (a path to libe8codec.so), then at
$E8KV_BUILD/lib/libe8codec.so, then in the checkout's build/lib/ (when this package lies in
a checkout; a pip-installed one needs E8KV_BUILD or E8KV_LIB). tests/python/
test_codec_abi.py compiles a C program against the header and checks every struct's size and
field offsets against the declarations here, so a header change that is not mirrored fails.
"""
import ctypes
import os
from pathlib import Path

FORMAT_VERSION = 2
MAX_LAYERS = 512
MAX_KV_HEADS = 256
MAX_HEAD_DIM = 512
MAX_TOKENS = 65536
MAX_POSITION = 0x7FFFFFFF
MODEL_ID_MAX = 128
PRESET_NAME_MAX = 16
MAX_ROPE_FACTORS = MAX_HEAD_DIM // 2
ID_SIZE = 32

DTYPE_F16, DTYPE_BF16, DTYPE_F32 = 1, 2, 3
ROPE_NONE, ROPE_DEFAULT, ROPE_LINEAR, ROPE_DYNAMIC, ROPE_YARN, ROPE_LLAMA3, ROPE_LONGROPE = \
    1, 2, 3, 4, 5, 6, 7
LAYOUT_SPLIT_HALF, LAYOUT_INTERLEAVED = 1, 2
DECOR_AUTO, DECOR_NONE, DECOR_DELTA, DECOR_MEAN = 0, 1, 2, 3
KIND_K, KIND_V = 0, 1
BACKEND_AUTO, BACKEND_REF, BACKEND_FAST_SCALAR = 0, 1, 2
ENTROPY_RANS32, ENTROPY_BEST, ENTROPY_V1 = 0, 1, 2

u32, i32, u64, i64, f32, f64 = (ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64,
                                ctypes.c_int64, ctypes.c_float, ctypes.c_double)


class Rope(ctypes.Structure):
    _fields_ = [("type", u32), ("layout", u32), ("rotary_dim", u32), ("original_max_pos", u32),
                ("theta", f64), ("factor", f64), ("low_freq_factor", f64),
                ("high_freq_factor", f64), ("beta_fast", f64), ("beta_slow", f64),
                ("attention_factor", f64), ("yarn_no_truncate", u32), ("n_longrope", u32),
                ("short_factor", f32 * MAX_ROPE_FACTORS), ("long_factor", f32 * MAX_ROPE_FACTORS)]


class Config(ctypes.Structure):
    _fields_ = [("preset", ctypes.c_char * PRESET_NAME_MAX), ("k_step", f32), ("v_step", f32),
                ("protect_first", u32), ("protect_last", u32),
                ("protect_mask", u64 * (MAX_LAYERS // 64)), ("sink_tokens", u32),
                ("recent_tokens", u32), ("decorrelation", u32), ("zstd_level", i32),
                ("hadamard_seed", u64), ("entropy", u32)]


class Fingerprint(ctypes.Structure):
    _fields_ = [("model_id", ctypes.c_char * MODEL_ID_MAX), ("n_layers", u32),
                ("n_kv_heads", u32), ("head_dim", u32), ("src_dtype", u32), ("rope", Rope),
                ("config", Config)]


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", u32), ("stride_head", i64),
                ("stride_token", i64), ("stride_dim", i64)]


class FrameParams(ctypes.Structure):
    _fields_ = [("layer", u32), ("kind", u32), ("n_tokens", u32), ("first_pos", u32),
                ("seq_len", u32), ("rope_seq_len", u32)]


class FrameInfo(ctypes.Structure):
    _fields_ = [("version", u32), ("kind", u32), ("layer", u32), ("method", u32),
                ("n_kv_heads", u32), ("head_dim", u32), ("n_tokens", u32), ("first_pos", u32),
                ("rope_seq_len", u32), ("n_raw_head", u32), ("n_raw_tail", u32),
                ("src_dtype", u32), ("hadamard_seed", u64), ("id_prefix", ctypes.c_uint8 * 8),
                ("frame_size", u64)]


class DecodeParams(ctypes.Structure):
    _fields_ = [("use_new_pos", u32), ("new_first_pos", u32), ("new_rope_seq_len", u32)]


class ChunkParams(ctypes.Structure):
    _fields_ = [("n_tokens", u32), ("first_pos", u32), ("seq_len", u32), ("rope_seq_len", u32)]


class ChunkInfo(ctypes.Structure):
    _fields_ = [("version", u32), ("fingerprint_id", ctypes.c_uint8 * ID_SIZE),
                ("n_layers", u32), ("n_kv_heads", u32), ("head_dim", u32), ("src_dtype", u32),
                ("n_tokens", u32), ("first_pos", u32), ("seq_len", u32), ("rope_seq_len", u32),
                ("chunk_size", u64), ("payload_size", u64)]


STRUCTS = {"e8c_rope": Rope, "e8c_config": Config, "e8c_fingerprint": Fingerprint,
           "e8c_tensor": Tensor, "e8c_frame_params": FrameParams,
           "e8c_frame_info": FrameInfo, "e8c_decode_params": DecodeParams,
           "e8c_chunk_params": ChunkParams, "e8c_chunk_info": ChunkInfo}

P = ctypes.POINTER
vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t

# name: (restype, argtypes)
PROTOTYPES = {
    "e8c_is_error": (ctypes.c_int, [i64]),
    "e8c_error_name": (cp, [i64]),
    "e8c_error_string": (cp, [i64]),
    "e8c_dtype_size": (sz, [ctypes.c_int]),
    "e8c_fingerprint_validate": (i64, [P(Fingerprint), ctypes.c_char_p, sz]),
    "e8c_fingerprint_id": (i64, [P(Fingerprint), P(ctypes.c_uint8)]),
    "e8c_fingerprint_serialize": (i64, [P(Fingerprint), vp, sz]),
    "e8c_fingerprint_parse": (i64, [vp, sz, P(Fingerprint)]),
    "e8c_preset_apply": (i64, [cp, P(Config)]),
    "e8c_preset_name": (cp, [ctypes.c_uint]),
    "e8c_config_default": (None, [P(Config)]),
    "e8c_ctx_create": (vp, [P(Fingerprint), P(i64)]),
    "e8c_ctx_free": (None, [vp]),
    "e8c_ctx_reserve": (i64, [vp, u32]),
    "e8c_ctx_id": (P(ctypes.c_uint8), [vp]),
    "e8c_ctx_last_error": (cp, [vp]),
    "e8c_ctx_set_backend": (i64, [vp, ctypes.c_int]),
    "e8c_frame_max_size": (i64, [vp, u32]),
    "e8c_frame_encode": (i64, [vp, P(FrameParams), P(Tensor), vp, sz]),
    "e8c_frame_info_get": (i64, [vp, sz, P(FrameInfo)]),
    "e8c_frame_decode": (i64, [vp, vp, sz, P(DecodeParams), P(Tensor)]),
    "e8c_chunk_raw_size": (i64, [vp, u32, u32, u32, ctypes.c_int]),
    "e8c_chunk_max_size": (i64, [vp, u32]),
    "e8c_chunk_encode": (i64, [vp, P(ChunkParams), vp, ctypes.c_int, vp, sz]),
    "e8c_chunk_info_get": (i64, [vp, sz, P(ChunkInfo)]),
    "e8c_chunk_fingerprint": (i64, [vp, sz, P(Fingerprint)]),
    "e8c_chunk_decode": (i64, [vp, vp, sz, u32, u32, P(DecodeParams), vp, ctypes.c_int, sz]),
    "e8c_version": (cp, []),
}
# Declared where the library has them (added after format v1's first header).
OPTIONAL = {
    "e8c_frame_decode_into": (i64, [vp, vp, sz, P(DecodeParams), P(Tensor), u32]),
}

_lib = None


def checkout_build_lib(name: str):
    """build/lib/name of the e8kv checkout this package lies in (clients/python/e8kv), or None
    for a package installed elsewhere (pip), whose parent directories mean nothing."""
    here = Path(__file__).resolve().parent
    root = here.parents[2] if len(here.parents) > 2 else None
    if (root is not None and here.parent.name == "python" and here.parents[1].name == "clients"
            and (root / "Makefile").is_file()):
        return root / "build" / "lib" / name
    return None


def find_library(name: str, env_var: str, first=()) -> str:
    """Path of our shared library `name`: $env_var if set (it must exist), else the first file
    found among `first`, $E8KV_BUILD/lib/name and, in a checkout, its build/lib/name; raises
    OSError naming every place looked at and the variables that would find it."""
    env = os.environ.get(env_var)
    if env:
        if not os.path.isfile(env):
            raise OSError(f"{env_var}={env} does not exist (build it: make)")
        return env
    cands = list(first)
    if os.environ.get("E8KV_BUILD"):
        cands.append(Path(os.environ["E8KV_BUILD"]) / "lib" / name)
    own = checkout_build_lib(name)
    if own is not None:
        cands.append(own)
    cands = list(dict.fromkeys(Path(c).resolve() for c in cands))   # each place once
    for c in cands:
        if c.is_file():
            return str(c)
    msg = (f"{name} not found: set E8KV_BUILD to the build directory of an e8kv checkout "
           f"(`make` builds {name} there) or {env_var} to the path of {name}")
    if own is None:
        msg += (f"; this e8kv package ({Path(__file__).resolve().parent}) is not inside a "
                "checkout, so no build directory is known without them")
    if cands:
        msg += " (looked at " + ", ".join(str(c) for c in cands) + ")"
    raise OSError(msg)


def library_path() -> str:
    """Where the library is taken from (see the module doc); raises if nowhere."""
    return find_library("libe8codec.so", "E8KV_LIB")


def declare(handle, prototypes, optional=None, path=None):
    """Declares {name: (restype, argtypes)} on a ctypes library handle; functions of `optional`
    are declared where the library has them. A missing required function raises OSError naming
    `path` when it is given, else ctypes' AttributeError. Returns the handle."""
    for name, (res, args) in prototypes.items():
        fn = getattr(handle, name, None)
        if fn is None:
            if path is not None:
                raise OSError(f"{path} lacks {name}: rebuild it (make)")
            fn = getattr(handle, name)
        fn.restype, fn.argtypes = res, args
    for name, (res, args) in (optional or {}).items():
        fn = getattr(handle, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = res, args
    return handle


def lib():
    """The loaded library with every prototype declared (loaded once)."""
    global _lib
    if _lib is None:
        _lib = declare(ctypes.CDLL(library_path()), PROTOTYPES, OPTIONAL)
    return _lib
