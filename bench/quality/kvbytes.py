"""Byte-level helpers shared by the baseline codecs: bit packing, zstd, frame headers.

Every baseline in this harness produces a real byte string per (layer, K or V) frame so that
its bpe is counted from stored bytes, exactly like the e8kv codec's frames:
  * `pack_bits` / `unpack_bits`: b-bit unsigned codes packed little-endian-bitwise into bytes
    (numpy's packbits, bit order "little"), no padding except to the last whole byte.
  * `zstd_compress` / `zstd_decompress`: the system libzstd through ctypes (the same library the
    C codec links), so "delta + zstd" baselines pay zstd's real frame overhead.
  * `Header`: a small fixed header (magic, codec tag, shape, first position, parameters) at the
    front of every baseline frame; its bytes count too.
"""
import ctypes
import ctypes.util
import struct

import numpy as np

_zstd = None


def _zstd_lib():
    global _zstd
    if _zstd is None:
        name = ctypes.util.find_library("zstd") or "libzstd.so.1"
        lib = ctypes.CDLL(name)
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_compress.restype = ctypes.c_size_t
        lib.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                      ctypes.c_size_t, ctypes.c_int]
        lib.ZSTD_decompress.restype = ctypes.c_size_t
        lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                        ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        _zstd = lib
    return _zstd


def zstd_compress(data: bytes, level: int) -> bytes:
    lib = _zstd_lib()
    cap = lib.ZSTD_compressBound(len(data))
    dst = ctypes.create_string_buffer(cap)
    n = lib.ZSTD_compress(dst, cap, data, len(data), level)
    if lib.ZSTD_isError(n):
        raise RuntimeError("zstd compress: " + lib.ZSTD_getErrorName(n).decode())
    return dst.raw[:n]


def zstd_decompress(data: bytes, size: int) -> bytes:
    """Decompress a zstd frame whose decompressed size the caller knows (from its header)."""
    lib = _zstd_lib()
    dst = ctypes.create_string_buffer(max(size, 1))
    n = lib.ZSTD_decompress(dst, size, data, len(data))
    if lib.ZSTD_isError(n):
        raise RuntimeError("zstd decompress: " + lib.ZSTD_getErrorName(n).decode())
    if n != size:
        raise RuntimeError(f"zstd decompress: got {n} bytes, header says {size}")
    return dst.raw[:n]


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integer codes (each < 2**bits) into ceil(n*bits/8) bytes."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits < 1 or bits > 8:
        raise ValueError("bits must be 1..8")
    if codes.size and int(codes.max()) >= (1 << bits):
        raise ValueError(f"code out of range for {bits} bits")
    planes = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_bits: n codes of `bits` bits each, as uint8."""
    need = (n * bits + 7) // 8
    if len(data) < need:
        raise ValueError(f"packed data too short: {len(data)} < {need} bytes")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=need), bitorder="little")
    planes = flat[: n * bits].reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, :bits] = planes
    return np.packbits(full, axis=1, bitorder="little").reshape(n)


class Header:
    """Fixed 24-byte baseline frame header: magic 'BQ', codec tag, kind (0 K, 1 V), bits,
    flags, n_heads, n_tokens, head_dim, first position, 32-bit parameter (seed, window)."""
    FMT = "<2sBBBBHIHIIH"
    SIZE = struct.calcsize(FMT)

    def __init__(self, tag, kind, bits, flags, h, t, d, pos0, param, extra=0):
        self.tag, self.kind, self.bits, self.flags = tag, kind, bits, flags
        self.h, self.t, self.d, self.pos0, self.param, self.extra = h, t, d, pos0, param, extra

    def pack(self) -> bytes:
        return struct.pack(self.FMT, b"BQ", self.tag, self.kind, self.bits, self.flags,
                           self.h, self.t, self.d, self.pos0, self.param, self.extra)

    @classmethod
    def unpack(cls, data: bytes):
        if len(data) < cls.SIZE:
            raise ValueError("frame shorter than its header")
        magic, tag, kind, bits, flags, h, t, d, pos0, param, extra = struct.unpack_from(
            cls.FMT, data)
        if magic != b"BQ":
            raise ValueError("bad baseline frame magic")
        return cls(tag, kind, bits, flags, h, t, d, pos0, param, extra)
