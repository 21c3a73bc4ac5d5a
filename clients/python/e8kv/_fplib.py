"""ctypes bindings of libe8kv's fingerprint conversion (proto/e8kv_fp.h), and nothing else.

What an e8kv.v1.ModelFingerprint means as a codec fingerprint (defaults, "codec unset = the
default configuration", rotary_dim 0 = head_dim, ...) is decided in C in one place,
proto/e8kv_fp.c, which e8kvd and libe8kv both link. e8kv.codec calls that same code here,
on the message's wire bytes, so a fingerprint id computed in Python is e8kvd's by
construction. The library is found at $E8KV_CLIENT_LIB (a path to libe8kv.so), else beside
$E8KV_LIB (e8kv.codec's libe8codec.so), else $E8KV_BUILD/lib/, else the checkout's
build/lib/. Only the functions below are called (no gRPC call is made through it).
Thread safety: the functions are pure.
"""
import ctypes
import os
from pathlib import Path

from . import _lib as L

_P = ctypes.POINTER
_vp, _sz = ctypes.c_void_p, ctypes.c_size_t
_PROTOTYPES = {
    "e8kv__v1__model_fingerprint__unpack": (_vp, [_vp, _sz, ctypes.c_char_p]),
    "e8kv__v1__model_fingerprint__free_unpacked": (None, [_vp, _vp]),
    "e8kv__v1__model_fingerprint__get_packed_size": (_sz, [_vp]),
    "e8kv__v1__model_fingerprint__pack": (_sz, [_vp, _vp]),
    "e8kv_fingerprint_from_pb": (ctypes.c_int, [_vp, _P(L.Fingerprint), _P(ctypes.c_uint8),
                                                ctypes.c_char_p, _sz]),
    "e8kv_fingerprint_to_pb": (None, [_P(L.Fingerprint), _vp]),
}
# e8kv_fingerprint_pb (proto/e8kv_fp.h) is about 7 KiB: three protobuf-c messages, the model
# id, the preset name and fixed arrays (E8C_MAX_LAYERS u32, 2 x E8C_MAX_ROPE_FACTORS doubles).
# It is only ever allocated here, with about 9 times that room (checked by tests/python/
# test_fingerprint_parity.py against the C header).
_PB_STORAGE = 64 << 10
_handle = None


def library_path() -> str:
    """Where libe8kv.so is taken from (see the module doc); OSError if nowhere."""
    first = []
    if os.environ.get("E8KV_LIB"):             # the libe8codec.so e8kv.codec uses: same build
        first.append(Path(os.environ["E8KV_LIB"]).parent / "libe8kv.so")
    return L.find_library("libe8kv.so", "E8KV_CLIENT_LIB", first)


def lib():
    """libe8kv with the prototypes above declared (loaded once)."""
    global _handle
    if _handle is None:
        _handle = L.declare(ctypes.CDLL(library_path()), _PROTOTYPES, path=library_path())
    return _handle


def from_wire(data: bytes):
    """(L.Fingerprint, 32-byte id) of a serialized e8kv.v1.ModelFingerprint, with the wire's
    defaults resolved and every field checked by proto/e8kv_fp.c. ValueError with the C
    message (naming the field) when it is refused."""
    h = lib()
    msg = h.e8kv__v1__model_fingerprint__unpack(None, len(data), data)
    if not msg:
        raise ValueError("fingerprint: not a valid e8kv.v1.ModelFingerprint message")
    try:
        f = L.Fingerprint()
        fid = (ctypes.c_uint8 * L.ID_SIZE)()
        why = ctypes.create_string_buffer(256)
        if h.e8kv_fingerprint_from_pb(msg, ctypes.byref(f), fid, why, len(why)) != 0:
            raise ValueError(why.value.decode(errors="replace"))
        return f, bytes(fid)
    finally:
        h.e8kv__v1__model_fingerprint__free_unpacked(msg, None)


def to_wire(f) -> bytes:
    """The serialized e8kv.v1.ModelFingerprint of an L.Fingerprint, every value explicit
    (e8kv_fingerprint_to_pb), so from_wire gives the same fingerprint and id back."""
    h = lib()
    storage = ctypes.create_string_buffer(_PB_STORAGE)
    h.e8kv_fingerprint_to_pb(ctypes.byref(f), storage)     # the message is at offset 0
    n = h.e8kv__v1__model_fingerprint__get_packed_size(storage)
    out = ctypes.create_string_buffer(max(n, 1))
    if h.e8kv__v1__model_fingerprint__pack(storage, out) != n:
        raise RuntimeError("e8kv__v1__model_fingerprint__pack wrote an unexpected size")
    return out.raw[:n]
