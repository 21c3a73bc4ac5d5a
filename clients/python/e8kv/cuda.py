"""e8kv.cuda: the CUDA codec (libe8codec_cuda, codec/cuda/e8codec_cuda.h) on torch CUDA tensors.

    from e8kv import cuda
    cc = cuda.CudaCodec(fingerprint)                      # e8kv.codec.Fingerprint or proto
    chunks = cc.encode_chunks(layers, starts=[0, 256], n_tokens=[256, 100])   # list of bytes
    cc.decode_chunks_into(chunks, layers)                 # writes the KV back in place

``layers`` is a list of ``(K, V)``, one per model layer, each a CUDA tensor
``[n_kv_heads, T, head_dim]`` (any view with stride 1 on head_dim and the other strides
multiples of 8 elements, 16-byte aligned rows: e.g. ``cache_k[0]`` of a transformers cache
``[batch, n_kv_heads, T, head_dim]``). Token t of a tensor holds position ``t + pos_offset``.
Keys carry RoPE, as the engine caches them. The tensors are read (encode) or written
(decode) by device pointer: no KV byte crosses to the host uncompressed. What does cross is
the codec's compact "qbatch" (E8 points and scales, ~2 bytes per element plus raw-kept
tokens): the entropy stage (zstd) runs on host threads inside the library, byte-identical
to the CPU path (see e8codec_cuda.h).

Chunks are the codec's chunk frames (codec/FORMAT.md section 7): the same bytes
``e8kv.codec.encode_chunk`` writes for the same KV, so e8kvd and every CPU reader take them.
The chunk container (header, serialized fingerprint, frame index, CRC32C) is assembled and
parsed here in Python from FORMAT.md section 7; the frames inside come from the library.

Memory. The caller owns the KV tensors. The codec holds a bounded workspace: one (encode)
or two (decode, double-buffered so that unpacking batch i+1 on the host overlaps the
device's work on batch i) device qbatch buffers and as many pinned host ones, each at most
``workspace_bytes`` (default 256 MiB, grown to one chunk's need if a chunk needs more;
encode's up to ``encode_workspace_bytes``, default the same), all allocated through torch
(so ``torch.cuda.max_memory_allocated`` counts them). Encoded frames land in a pinned host
arena (segments of ARENA_SEGMENT_BYTES, reused by later encodes once their EncodeJob is
done; ``reserve_encode_arena`` sizes it ahead).

Two-step encode. ``encode_chunks_deferred`` returns an EncodeJob after the device work and
the copy of the compact frames to the arena; ``job.chunks()`` assembles the chunk frames on
any thread (an upload thread), so an engine waits only for the GPU + D2H part.

Streams. Work is enqueued on ``stream`` (default: torch's current stream of the device), so
it is ordered after the kernels that produced the KV on that stream; ``encode_chunks``
returns when the frames are on the host, ``decode_chunks_into`` returns with the decode
enqueued (``torch.cuda.current_stream().synchronize()`` or any later kernel on the stream
sees the result).

Library. Found at $E8KV_CUDA_LIB (path of libe8codec_cuda.so), else $E8KV_BUILD/lib/, else
the checkout's build/lib/. The shared library is built by bench/e2e/e2e.mk where nvcc exists.
Thread safety: one CudaCodec per thread.
"""
import ctypes
import os
import struct
import threading
from pathlib import Path

import numpy as np

from . import _lib as L
from . import codec as _codec

__all__ = ["CudaCodecError", "CudaCodec", "library_path", "available", "parse_chunk",
           "assemble_chunk", "ITEM_DTYPE", "crc32c"]

ERR_CUDA = -100
CHUNK_MAGIC = b"E8KC"
CHUNK_FIXED = 64
CHUNK_VERSIONS = (1, 2)     # FORMAT.md v2: a chunk carries its frames' version
_TORCH_CODES = None     # torch dtype -> E8C dtype code (filled on first use)


class CudaCodecError(RuntimeError):
    """An error code of libe8codec_cuda: .code, .name (E8C_ERR_* or E8CU_ERR_CUDA)."""

    def __init__(self, code, what, detail=""):
        self.code = int(code)
        try:
            self.name = _cu().e8cu_error_name(code).decode()
        except Exception:       # the library itself failed to load
            self.name = str(code)
        msg = f"{what}: {self.name}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


# ------------------------------------------------------------------------------ C structs

class Item(ctypes.Structure):           # e8cu_item
    _fields_ = [("p", L.FrameParams), ("t", L.Tensor)]


class QMeta(ctypes.Structure):          # e8cu_qmeta
    _fields_ = [("method", ctypes.c_uint32), ("n_raw_head", ctypes.c_uint32),
                ("n_raw_tail", ctypes.c_uint32), ("first_pos", ctypes.c_uint32),
                ("rope_seq_len", ctypes.c_uint32)]


# The same layout as a numpy record, so that thousands of items are filled without a loop.
ITEM_DTYPE = np.dtype({
    "names": ["layer", "kind", "n_tokens", "first_pos", "seq_len", "rope_seq_len",
              "data", "dtype", "stride_head", "stride_token", "stride_dim"],
    "formats": ["<u4"] * 6 + ["<u8", "<u4", "<i8", "<i8", "<i8"],
    "offsets": [Item.p.offset + getattr(L.FrameParams, f).offset for f in
                ("layer", "kind", "n_tokens", "first_pos", "seq_len", "rope_seq_len")] +
               [Item.t.offset + getattr(L.Tensor, f).offset for f in
                ("data", "dtype", "stride_head", "stride_token", "stride_dim")],
    "itemsize": ctypes.sizeof(Item)})
assert ITEM_DTYPE.itemsize == 64 and ctypes.sizeof(QMeta) == 20, "e8cu_item layout changed"

_vp, _sz, _i64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
_P = ctypes.POINTER
_PROTOTYPES = {
    "e8cu_error_name": (ctypes.c_char_p, [_i64]),
    "e8cu_ctx_create": (_vp, [_P(L.Fingerprint), ctypes.c_uint, _P(_i64)]),
    "e8cu_ctx_free": (None, [_vp]),
    "e8cu_ctx_last_error": (ctypes.c_char_p, [_vp]),
    "e8cu_qbatch_size": (_i64, [_vp, _sz, _vp, _P(_sz)]),
    "e8cu_ctx_reserve_positions": (_i64, [_vp, ctypes.c_uint32, ctypes.c_uint32,
                                          ctypes.c_uint32]),
    "e8cu_quantize_async": (_i64, [_vp, _sz, _vp, _vp, _vp, _sz, _vp, _vp]),
    "e8cu_pack": (_i64, [_vp, _sz, _vp, _vp, _vp, _vp, _sz, _vp, _vp, _vp, _vp]),
    "e8cu_unpack": (_i64, [_vp, _sz, _vp, _vp, _vp, _vp, _vp, _sz]),
    "e8cu_dequantize_async": (_i64, [_vp, _sz, _vp, _vp, _vp, _vp, _sz, _vp, _vp]),
    "e8cu_decode_async": (_i64, [_vp, _sz, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _sz, _vp,
                                 _vp]),
    # the CPU half linked into the same library: sizes, fingerprint serialization
    "e8c_ctx_create": (_vp, [_P(L.Fingerprint), _P(_i64)]),
    "e8c_ctx_free": (None, [_vp]),
    "e8c_frame_max_size": (_i64, [_vp, ctypes.c_uint32]),
    "e8c_fingerprint_serialize": (_i64, [_P(L.Fingerprint), _vp, _sz]),
    "e8c_fingerprint_id": (_i64, [_P(L.Fingerprint), _P(ctypes.c_uint8)]),
}
# Entry points of newer libraries, used when the library has them (older ones keep working):
# e8cu_pack_frames: the entropy stage on the GPU, frames back to back in one host buffer.
_OPTIONAL = {
    "e8cu_pack_frames": (_i64, [_vp, _sz, _vp, _vp, _vp, _sz, _vp, _sz, _vp, _vp, _P(_sz),
                                _vp]),
}
# E8C_ERR_* codes (codec/e8codec.h) this module acts on
ERR_CONFIG, ERR_NONFINITE, ERR_RANGE, ERR_DST_SIZE, ERR_CORRUPT = -6, -7, -8, -9, -14
_handle = None
_crc = None


def library_path():
    """Where libe8codec_cuda.so is taken from (see the module doc); raises OSError if nowhere."""
    env = os.environ.get("E8KV_CUDA_LIB")
    if env:
        if not os.path.isfile(env):
            raise OSError(f"E8KV_CUDA_LIB={env} does not exist")
        return env
    cands = []
    if os.environ.get("E8KV_BUILD"):
        cands.append(Path(os.environ["E8KV_BUILD"]) / "lib" / "libe8codec_cuda.so")
    own = L.checkout_build_lib("libe8codec_cuda.so")
    if own is not None:
        cands.append(own)
    for c in cands:
        if c.is_file():
            return str(c)
    raise OSError("libe8codec_cuda.so not found (needs a build with nvcc: bench/e2e/e2e.mk); "
                  "set E8KV_CUDA_LIB to its path or E8KV_BUILD to the build directory"
                  + (" (looked at " + ", ".join(map(str, cands)) + ")" if cands else ""))


def _cu():
    global _handle
    if _handle is None:
        _handle = L.declare(ctypes.CDLL(library_path()), _PROTOTYPES, _OPTIONAL)
    return _handle


def available():
    """True when the library loads and torch sees a CUDA device."""
    try:
        import torch
        _cu()
        return torch.cuda.is_available()
    except (OSError, ImportError):
        return False


def crc32c(data, start=0, end=None):
    """CRC32C (Castagnoli) of data[start:end], through isa-l's crc32_iscsi (the codec's own)."""
    global _crc
    if _crc is None:
        fn = None
        for name in (None, "libisal.so.2", "libisal.so"):
            try:
                h = _cu() if name is None else ctypes.CDLL(name)
                fn = h.crc32_iscsi
                break
            except (OSError, AttributeError):
                continue
        if fn is None:
            raise OSError("crc32_iscsi (isa-l) not found: libisal is needed for chunk CRCs")
        fn.restype, fn.argtypes = ctypes.c_uint32, [_vp, ctypes.c_int, ctypes.c_uint32]
        _crc = fn
    mv = memoryview(data)[start:end]
    n = len(mv)
    buf = (ctypes.c_char * n).from_buffer_copy(mv) if n else None
    return (_crc(buf, n, 0xFFFFFFFF) ^ 0xFFFFFFFF) & 0xFFFFFFFF


# ------------------------------------------------------------------------------ chunk frames

def parse_chunk(data):
    """Header of a chunk frame (FORMAT.md section 7), header CRC checked:
    dict(src_dtype, n_layers, n_kv_heads, head_dim, n_tokens, first_pos, seq_len,
    rope_seq_len, fingerprint_id, hdr_size, frames=[(offset, size)] absolute in data, 2 per
    layer, K then V). Frame CRCs are checked when the frames are unpacked. ValueError when
    the bytes are not a well-formed chunk."""
    n = len(data)
    if n < CHUNK_FIXED + 4:
        raise ValueError(f"chunk of {n} bytes is shorter than its fixed header")
    if bytes(data[:4]) != CHUNK_MAGIC:
        raise ValueError("not an e8kv chunk (bad magic)")
    ver, src, nl, nh, hd, nt, p0, sl, rsl = struct.unpack_from("<BBHHHIIII", data, 4)
    if ver not in CHUNK_VERSIONS:
        raise ValueError(f"chunk format version {ver} unsupported {CHUNK_VERSIONS}")
    fid = bytes(data[28:60])
    (flen,) = struct.unpack_from("<I", data, 60)
    hdr = CHUNK_FIXED + flen + 16 * nl + 4
    if nl == 0 or hdr > n:
        raise ValueError(f"chunk truncated: header needs {hdr} bytes, have {n}")
    (crc,) = struct.unpack_from("<I", data, hdr - 4)
    if crc != crc32c(data, 0, hdr - 4):
        raise ValueError("chunk header CRC mismatch")
    idx = np.frombuffer(data, dtype="<u4", count=4 * nl, offset=CHUNK_FIXED + flen)
    offs, sizes = idx[0::2].astype(np.int64), idx[1::2].astype(np.int64)
    want = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    if not np.array_equal(offs, want) or hdr + int(sizes.sum()) > n:
        raise ValueError("chunk frame index is corrupt or the chunk is truncated")
    if nt == 0 or sl < p0 + nt:
        raise ValueError(f"chunk positions corrupt (n_tokens {nt}, first_pos {p0}, seq {sl})")
    return dict(version=ver, src_dtype=src, n_layers=nl, n_kv_heads=nh, head_dim=hd, n_tokens=nt,
                first_pos=p0, seq_len=sl, rope_seq_len=rsl, fingerprint_id=fid, hdr_size=hdr,
                frames=[(hdr + int(o), int(s)) for o, s in zip(offs, sizes)])


def assemble_chunk(frames, *, src_dtype, n_layers, n_kv_heads, head_dim, n_tokens, first_pos,
                   fingerprint_id, fingerprint_bytes, seq_len=0, rope_seq_len=0):
    """A chunk frame (FORMAT.md section 7) from its 2 * n_layers frames (K then V per layer).
    The chunk's version is its frames' (byte 4 of a frame: 2, or 1 for entropy v1)."""
    if len(frames) != 2 * n_layers:
        raise ValueError(f"{len(frames)} frames for {n_layers} layers (need {2 * n_layers})")
    vers = {f[4] if len(f) > 4 else None for f in frames}
    if len(vers) != 1 or not vers <= set(CHUNK_VERSIONS):
        raise ValueError(f"frames of format versions {sorted(map(str, vers))}: need one of "
                         f"{CHUNK_VERSIONS} for all")
    return assemble_chunk_payload(b"".join(frames), [len(f) for f in frames],
                                  src_dtype=src_dtype, n_layers=n_layers, n_kv_heads=n_kv_heads,
                                  head_dim=head_dim, n_tokens=n_tokens, first_pos=first_pos,
                                  fingerprint_id=fingerprint_id,
                                  fingerprint_bytes=fingerprint_bytes, seq_len=seq_len,
                                  rope_seq_len=rope_seq_len)


def assemble_chunk_payload(payload, sizes, *, src_dtype, n_layers, n_kv_heads, head_dim,
                           n_tokens, first_pos, fingerprint_id, fingerprint_bytes, seq_len=0,
                           rope_seq_len=0):
    """A chunk frame (bytes) from its payload: the 2 * n_layers frames back to back (any
    bytes-like object; copied once, into the result), sizes[i] bytes each. The version is the
    first frame's (byte 4 of the payload)."""
    if len(sizes) != 2 * n_layers:
        raise ValueError(f"{len(sizes)} frames for {n_layers} layers (need {2 * n_layers})")
    if sum(sizes) != len(payload) or min(sizes) <= 4:
        raise ValueError(f"payload of {len(payload)} bytes, frames of {sum(sizes)}")
    ver = payload[4]
    if ver not in CHUNK_VERSIONS:
        raise ValueError(f"frame format version {ver}: need one of {CHUNK_VERSIONS}")
    seq = seq_len or first_pos + n_tokens
    head = struct.pack("<4sBBHHHIIII", CHUNK_MAGIC, ver, src_dtype, n_layers, n_kv_heads,
                       head_dim, n_tokens, first_pos, seq, rope_seq_len or seq)
    idx = np.zeros((len(sizes), 2), dtype="<u4")
    idx[:, 1] = sizes
    idx[1:, 0] = np.cumsum(idx[:-1, 1], dtype=np.uint64)
    h = b"".join([head, fingerprint_id, struct.pack("<I", len(fingerprint_bytes)),
                  fingerprint_bytes, idx.tobytes()])
    return b"".join([h, struct.pack("<I", crc32c(h)), payload])


# ------------------------------------------------------------------------------ the codec

def _torch_codes():
    global _TORCH_CODES
    if _TORCH_CODES is None:
        import torch
        _TORCH_CODES = {torch.float16: L.DTYPE_F16, torch.bfloat16: L.DTYPE_BF16,
                        torch.float32: L.DTYPE_F32}
    return _TORCH_CODES


def _check_layers(layers, fp, what):
    """(per layer (K, V)) checked: CUDA, same device and dtype, [H, T, D] with usable strides."""
    import torch
    if len(layers) != fp.n_layers:
        raise ValueError(f"{what}: {len(layers)} layers, the fingerprint has {fp.n_layers}")
    dev, dt, T = layers[0][0].device, layers[0][0].dtype, layers[0][0].shape[1]
    if dt not in _torch_codes():
        raise TypeError(f"{what}: dtype {dt} not supported (float16, bfloat16, float32)")
    for li, kv in enumerate(layers):
        for kind, x in zip("KV", kv):
            if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
                raise TypeError(f"{what}: layer {li} {kind} is not a CUDA tensor")
            if x.device != dev or x.dtype != dt:
                raise TypeError(f"{what}: layer {li} {kind} is {x.dtype} on {x.device}; layer 0 "
                                f"K is {dt} on {dev}")
            if x.dim() != 3 or x.shape[0] != fp.n_kv_heads or x.shape[2] != fp.head_dim \
                    or x.shape[1] != T:
                raise ValueError(f"{what}: layer {li} {kind} shape {tuple(x.shape)}, need "
                                 f"[{fp.n_kv_heads}, {T}, {fp.head_dim}]")
            sh, st, sd = x.stride()
            if sd != 1 or sh % 8 or st % 8 or x.data_ptr() % 16:
                raise ValueError(f"{what}: layer {li} {kind} strides {x.stride()}: need stride 1 "
                                 "on head_dim, other strides multiples of 8, 16-byte aligned")
    return dev, dt, T


class CudaCodec:
    """One e8cu_ctx (one fingerprint, one device) plus its bounded workspace."""
    name = "cuda"

    def __init__(self, fingerprint, *, device=None, n_threads=0,
                 workspace_bytes=256 << 20, encode_workspace_bytes=None):
        import torch
        self.fingerprint = _codec._as_fingerprint(fingerprint)
        self._c_fp = self.fingerprint.to_c()
        self.device = torch.device(device if device is not None else "cuda")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.workspace_bytes = int(workspace_bytes)
        # encode's qbatch per library call (one buffer: encode is not double-buffered);
        # larger = fewer calls for a long prefix
        self.encode_workspace_bytes = int(encode_workspace_bytes or workspace_bytes)
        lib = _cu()
        err = _i64(0)
        with torch.cuda.device(self.device):
            self._ctx = lib.e8cu_ctx_create(ctypes.byref(self._c_fp), n_threads, ctypes.byref(err))
        if not self._ctx:
            raise CudaCodecError(err.value, "e8cu_ctx_create")
        self._cpu = lib.e8c_ctx_create(ctypes.byref(self._c_fp), ctypes.byref(err))
        if not self._cpu:
            self.close()
            raise CudaCodecError(err.value, "e8c_ctx_create")
        n = lib.e8c_fingerprint_serialize(ctypes.byref(self._c_fp), None, 0)
        buf = ctypes.create_string_buffer(max(n, 1))
        self._check(lib.e8c_fingerprint_serialize(ctypes.byref(self._c_fp), buf, n), "serialize")
        self.fingerprint_bytes = buf.raw[:n]
        fid = (ctypes.c_uint8 * 32)()
        self._check(lib.e8c_fingerprint_id(ctypes.byref(self._c_fp), fid), "fingerprint id")
        self.fingerprint_id = bytes(fid)
        self._ws = [None, None]           # [(d_q, h_q)] decode double buffer; [0] for encode
        self._events = [None, None]
        self._next_slot = 0               # decode buffer to use next (alternates across calls)
        self._reserved = 0
        self._arena_free = []             # pinned segments of encode's frame arenas, free
        self._arena_lock = threading.Lock()
        self._frames_ratio = 0.0          # largest frames / qbatch bytes seen (arena room)
        # entropy stage of encode: "gpu" (e8cu_pack_frames) where the library has it, else or
        # after a refusal "host" (e8cu_pack); E8KV_CUDA_PACK=host forces the host packer
        self.pack_fallback = None
        self.pack_path = "gpu" if hasattr(lib, "e8cu_pack_frames") and \
            os.environ.get("E8KV_CUDA_PACK", "auto") != "host" else "host"

    # -- plumbing
    def close(self):
        lib = _cu()
        if getattr(self, "_ctx", None):
            import torch
            torch.cuda.synchronize(self.device)
            lib.e8cu_ctx_free(self._ctx)
            self._ctx = None
        if getattr(self, "_cpu", None):
            lib.e8c_ctx_free(self._cpu)
            self._cpu = None
        self._ws = [None, None]
        self._arena_free = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check(self, rc, what):
        if rc < 0:
            detail = ""
            if getattr(self, "_ctx", None):
                detail = (_cu().e8cu_ctx_last_error(self._ctx) or b"").decode()
            raise CudaCodecError(rc, what, detail)
        return rc

    def _stream(self, stream):
        import torch
        s = stream if stream is not None else torch.cuda.current_stream(self.device)
        return s, ctypes.c_void_p(s.cuda_stream)

    def _workspace(self, slot, nbytes):
        """(d_q, h_q) of at least nbytes for slot 0/1 (grown only when too small)."""
        import torch
        cur = self._ws[slot]
        if cur is None or cur[0].numel() < nbytes:
            if self._events[slot] is not None:
                self._events[slot].synchronize()
            self._ws[slot] = None
            cur = (torch.empty(nbytes, dtype=torch.uint8, device=self.device),
                   torch.empty(nbytes, dtype=torch.uint8, pin_memory=True))
            self._ws[slot] = cur
        return cur

    @staticmethod
    def _pinned(nbytes):
        """A pinned (page-locked) host uint8 tensor of nbytes (cudaMallocHost through torch)."""
        import torch
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def reserve_positions(self, n_positions, first_pos=0):
        """Uploads RoPE tables for positions [first_pos, first_pos + n) ahead of use."""
        if first_pos + n_positions > self._reserved:
            self._check(_cu().e8cu_ctx_reserve_positions(self._ctx, first_pos, n_positions, 0),
                        "e8cu_ctx_reserve_positions")
            self._reserved = max(self._reserved, first_pos + n_positions)

    def _items(self, layers, dt, chunks):
        """Items for chunks [(token index in the tensors, first_pos, n_tokens)]: for each
        chunk, for each layer, K then V (the chunk's frame order)."""
        nl = len(layers)
        itemsize = layers[0][0].element_size()
        base = np.array([[k.data_ptr(), v.data_ptr()] for k, v in layers], dtype=np.uint64)
        strides = np.array([[k.stride()[:2], v.stride()[:2]] for k, v in layers],
                           dtype=np.int64)                          # [L][2][head, token]
        n = len(chunks) * nl * 2
        it = np.zeros(n, dtype=ITEM_DTYPE)
        idx = np.array([c[0] for c in chunks], dtype=np.uint64)
        pos = np.array([c[1] for c in chunks], dtype=np.uint32)
        cnt = np.array([c[2] for c in chunks], dtype=np.uint32)
        rep = nl * 2
        it["layer"] = np.tile(np.repeat(np.arange(nl, dtype=np.uint32), 2), len(chunks))
        it["kind"] = np.tile(np.array([0, 1], dtype=np.uint32), nl * len(chunks))
        it["n_tokens"] = np.repeat(cnt, rep)
        it["first_pos"] = np.repeat(pos, rep)
        st_tok = np.tile(strides[:, :, 1].reshape(-1), len(chunks))
        it["stride_head"] = np.tile(strides[:, :, 0].reshape(-1), len(chunks))
        it["stride_token"] = st_tok
        it["stride_dim"] = 1
        it["dtype"] = _torch_codes()[dt]
        it["data"] = np.tile(base.reshape(-1), len(chunks)) + \
            np.repeat(idx, rep) * st_tok.astype(np.uint64) * np.uint64(itemsize)
        return it

    def _qbytes(self, items):
        q = _sz(0)
        self._check(_cu().e8cu_qbatch_size(self._ctx, len(items), items.ctypes.data,
                                           ctypes.byref(q)), "e8cu_qbatch_size")
        return q.value

    def _batches(self, layers, dt, spans, limit=None):
        """Groups of spans whose qbatch fits the workspace (``limit`` bytes, default
        workspace_bytes; at least one span each)."""
        if not spans:
            return []
        one = self._qbytes(self._items(layers, dt, [max(spans, key=lambda s: s[2])]))
        per = max(1, (limit or self.workspace_bytes) // max(one, 1))
        return [spans[i:i + per] for i in range(0, len(spans), per)]

    # -- encode
    def encode_chunks(self, layers, starts, n_tokens, *, pos_offset=0, stream=None):
        """Chunk frames of tokens [starts[i], starts[i] + n_tokens[i]) of ``layers`` (list of
        (K, V) CUDA tensors [n_kv_heads, T, head_dim]); token t sits at position
        t + pos_offset. Returns a list of bytes, one chunk each."""
        return self.encode_chunks_deferred(layers, starts, n_tokens, pos_offset=pos_offset,
                                           stream=stream).result()

    def encode_chunks_deferred(self, layers, starts, n_tokens, *, pos_offset=0, stream=None):
        """encode_chunks in two halves, for an engine that must not wait for the chunk
        assembly: this call does the GPU work (quantize; with the GPU entropy stage the coding
        too) and brings the compact frames to pinned host memory (an arena of the codec,
        reused); it returns an EncodeJob once the KV tensors are no longer read. The job's
        ``chunks()`` then assembles the chunk frames (header, fingerprint, frame index,
        CRC32C: one copy of each chunk's frames) on any thread, e.g. an upload thread.
        With the host packer (pack_path "host") the whole encode happens here and the job
        only hands out the finished chunks."""
        fp = self.fingerprint
        dev, dt, T = _check_layers(layers, fp, "encode_chunks")
        if len(starts) != len(n_tokens):
            raise ValueError("starts and n_tokens differ in length")
        spans = []
        for s, n in zip(starts, n_tokens):
            if n < 1 or s < 0 or s + n > T:
                raise ValueError(f"chunk tokens [{s}, {s + n}) outside the tensors' {T} tokens")
            spans.append((int(s), int(s) + pos_offset, int(n)))
        if spans:
            self.reserve_positions(max(p + n for _, p, n in spans))
        s_obj, s_ptr = self._stream(stream)
        lib = _cu()
        job = EncodeJob(self, _FrameArena(self))
        try:
            for group in self._batches(layers, dt, spans, self.encode_workspace_bytes):
                items = self._items(layers, dt, group)
                qb = self._qbytes(items)
                d_q, h_q = self._workspace(0, qb)
                meta = (QMeta * len(items))()
                self._check(lib.e8cu_quantize_async(self._ctx, len(items), items.ctypes.data,
                                                    meta, d_q.data_ptr(), qb, None, s_ptr),
                            "e8cu_quantize_async")
                if self.pack_path == "gpu":
                    try:
                        part = self._pack_frames_into(items, meta, d_q, qb, s_ptr, job.arena)
                    except CudaCodecError as e:
                        if e.code in (ERR_NONFINITE, ERR_RANGE):
                            raise           # bad input: the caller's error, as e8cu_pack says
                        part, self.pack_path, self.pack_fallback = None, "host", str(e)
                    except Exception as e:  # noqa: BLE001 -- recorded; the host packer goes on
                        part, self.pack_path = None, "host"
                        self.pack_fallback = f"e8cu_pack_frames path: {type(e).__name__}: {e}"
                    if part is not None:
                        job.parts.append(("frames", part, group))
                        continue
                    self._check(lib.e8cu_quantize_async(self._ctx, len(items),
                                                        items.ctypes.data, meta,
                                                        d_q.data_ptr(), qb, None, s_ptr),
                                "e8cu_quantize_async")
                job.parts.append(("chunks", self._host_pack(items, meta, d_q, h_q, qb, group,
                                                            s_ptr), group))
        except BaseException:
            job.release()
            raise
        return job

    def reserve_encode_arena(self, nbytes):
        """Allocates pinned arena segments until at least nbytes are free for the frames of
        the next encode (an engine does this once at start for its longest prefix, so that
        no pinned allocation, which is slow, lands on its critical path); also grows the
        encode workspace to encode_workspace_bytes. Returns the arena's free bytes."""
        self._workspace(0, self.encode_workspace_bytes)
        with self._arena_lock:
            have = sum(x.numel() for x in self._arena_free)
        while have < nbytes:
            seg = self._pinned(ARENA_SEGMENT_BYTES)
            with self._arena_lock:
                self._arena_free.append(seg)
            have += seg.numel()
        return have

    def _host_pack(self, items, meta, d_q, h_q, qb, group, s_ptr):
        """The host entropy stage (e8cu_pack) of quantized items: the chunks of ``group``."""
        lib, fp = _cu(), self.fingerprint
        caps = np.array([self._check(lib.e8c_frame_max_size(self._cpu, int(n)),
                                     "frame max size") for n in items["n_tokens"]],
                        dtype=np.uint64)
        offs = np.concatenate(([0], np.cumsum(caps)[:-1])).astype(np.uint64)
        dst = np.empty(int(caps.sum()), dtype=np.uint8)
        ptrs = (offs + np.uint64(dst.ctypes.data)).astype(np.uint64)
        sizes = np.zeros(len(items), dtype=np.uint64)
        self._check(lib.e8cu_pack(self._ctx, len(items), items.ctypes.data, meta,
                                  d_q.data_ptr(), h_q.data_ptr(), qb, ptrs.ctypes.data,
                                  caps.ctypes.data, sizes.ctypes.data, s_ptr), "e8cu_pack")
        nf, out = 2 * fp.n_layers, []
        for c, (_, p0, n) in enumerate(group):
            frames = [dst[int(offs[i]):int(offs[i] + sizes[i])].tobytes()
                      for i in range(c * nf, (c + 1) * nf)]
            out.append(assemble_chunk(
                frames, src_dtype=self._c_fp.src_dtype, n_layers=fp.n_layers,
                n_kv_heads=fp.n_kv_heads, head_dim=fp.head_dim, n_tokens=n, first_pos=p0,
                fingerprint_id=self.fingerprint_id, fingerprint_bytes=self.fingerprint_bytes))
        return out

    def _pack_frames(self, items, meta, d_q, qb, group, s_ptr):
        """Entropy stage on the GPU (e8cu_pack_frames) for quantized items: the chunks of
        ``group`` (bytes), or None after switching this codec to the host packer for good
        (see _pack_frames_into)."""
        job = EncodeJob(self, _FrameArena(self))
        part = self._pack_frames_into(items, meta, d_q, qb, s_ptr, job.arena)
        if part is None:
            job.release()
            return None
        job.parts.append(("frames", part, group))
        return job.result()

    def _pack_frames_into(self, items, meta, d_q, qb, s_ptr, arena):
        """Entropy stage on the GPU (e8cu_pack_frames) for quantized items, frames back to
        back into ``arena`` (pinned): (segment, base, offsets, sizes, total), the frames of
        item i at segment[base + offsets[i]], sizes[i] bytes; or None after switching this
        codec to the host packer for good (the library refused the config, or failed:
        pack_fallback says why; the caller quantizes again and packs on the host). Bad input
        (NaN/inf, out of range) raises. The room asked for is the frames' expected size
        (the largest frames/qbatch ratio seen, x 1.5; before any: the qbatch's size, at most
        one arena segment); frames that do not fit are quantized and packed again into room
        of their exact need x 1.25."""
        lib, n = _cu(), len(items)
        offs = np.zeros(n, dtype=np.uint64)
        sizes = np.zeros(n, dtype=np.uint64)
        total = _sz(0)
        want = min(qb, int(qb * self._frames_ratio * 1.5) + (64 << 10)) \
            if self._frames_ratio else min(qb, ARENA_SEGMENT_BYTES)
        for attempt in (0, 1):
            seg, base = arena.room(want)
            cap = seg.numel() - base
            rc = lib.e8cu_pack_frames(self._ctx, n, items.ctypes.data, meta, d_q.data_ptr(), qb,
                                      seg.data_ptr() + base, cap, offs.ctypes.data,
                                      sizes.ctypes.data, ctypes.byref(total), s_ptr)
            if rc == ERR_DST_SIZE and total.value > cap and attempt == 0:
                want = int(total.value * 1.25)
                self._check(lib.e8cu_quantize_async(self._ctx, n, items.ctypes.data, meta,
                                                    d_q.data_ptr(), qb, None, s_ptr),
                            "e8cu_quantize_async")
                continue
            break
        if rc < 0:
            detail = (lib.e8cu_ctx_last_error(self._ctx) or b"").decode()
            if rc in (ERR_NONFINITE, ERR_RANGE):
                raise CudaCodecError(rc, "e8cu_pack_frames", detail)
            self.pack_path = "host"
            self.pack_fallback = f"e8cu_pack_frames: {CudaCodecError(rc, 'failed', detail)}"
            return None
        arena.commit(seg, base + total.value)
        self._frames_ratio = max(self._frames_ratio, total.value / max(qb, 1))
        return seg, base, offs, sizes, total.value

    def _assemble_part(self, part, group):
        """The chunk frames (bytes) of one _pack_frames_into result, in group order."""
        seg, base, offs, sizes, total = part
        buf = seg.numpy()
        fp, nf = self.fingerprint, 2 * self.fingerprint.n_layers
        for c, (_, p0, ntok) in enumerate(group):
            o, z = offs[c * nf:(c + 1) * nf], sizes[c * nf:(c + 1) * nf]
            if np.any(o[1:] != o[:-1] + z[:-1]) or int(o[-1] + z[-1]) > total:
                raise CudaCodecError(ERR_CORRUPT, "e8cu_pack_frames",
                                     f"frames of chunk {c} are not back to back")
            yield assemble_chunk_payload(     # one copy: pinned arena -> the chunk
                memoryview(buf[base + int(o[0]):base + int(o[-1] + z[-1])]), z.tolist(),
                src_dtype=self._c_fp.src_dtype, n_layers=fp.n_layers,
                n_kv_heads=fp.n_kv_heads, head_dim=fp.head_dim, n_tokens=ntok, first_pos=p0,
                fingerprint_id=self.fingerprint_id, fingerprint_bytes=self.fingerprint_bytes)

    # -- decode
    def decode_chunks_into(self, chunks, layers, *, pos_offset=0, stream=None):
        """Decodes chunk frames (bytes-like) into ``layers`` (list of (K, V) CUDA tensors
        [n_kv_heads, T, head_dim]): a chunk of first_pos p and n tokens fills tokens
        [p - pos_offset, p - pos_offset + n) of every tensor, at its stored positions, in the
        tensors' dtype. Enqueued on ``stream``; returns the number of tokens written."""
        fp = self.fingerprint
        dev, dt, T = _check_layers(layers, fp, "decode_chunks_into")
        parsed = []
        for ci, data in enumerate(chunks):
            h = parse_chunk(data)
            if h["fingerprint_id"] != self.fingerprint_id:
                raise ValueError(f"chunk {ci} belongs to another fingerprint")
            if (h["n_layers"], h["n_kv_heads"], h["head_dim"]) != \
                    (fp.n_layers, fp.n_kv_heads, fp.head_dim):
                raise ValueError(f"chunk {ci} geometry [{h['n_layers']}, {h['n_kv_heads']}, "
                                 f"{h['head_dim']}] differs from the fingerprint's")
            t0 = h["first_pos"] - pos_offset
            if t0 < 0 or t0 + h["n_tokens"] > T:
                raise ValueError(f"chunk {ci} (positions {h['first_pos']}+{h['n_tokens']}) does "
                                 f"not fit tensors of {T} tokens at pos_offset {pos_offset}")
            parsed.append((data, h, t0))
        if parsed:
            self.reserve_positions(max(h["first_pos"] + h["n_tokens"] for _, h, _ in parsed))
        import torch
        s_obj, s_ptr = self._stream(stream)
        lib = _cu()
        spans = [(t0, h["first_pos"], h["n_tokens"]) for _, h, t0 in parsed]
        total, pos = 0, 0
        keep = []
        for group in self._batches(layers, dt, spans):
            slot = self._next_slot
            self._next_slot ^= 1
            sub = parsed[pos:pos + len(group)]
            pos += len(group)
            items = self._items(layers, dt, group)
            qb = self._qbytes(items)
            if self._events[slot] is not None:
                self._events[slot].synchronize()      # the slot's last copy/kernels are done
            d_q, h_q = self._workspace(slot, qb)
            fptr = np.empty(len(items), dtype=np.uint64)
            fsz = np.empty(len(items), dtype=np.uint64)
            i = 0
            for data, h, _ in sub:
                arr = np.frombuffer(data, dtype=np.uint8)
                keep.append(arr)
                b = arr.ctypes.data
                for off, size in h["frames"]:
                    fptr[i], fsz[i] = b + off, size
                    i += 1
            meta = (QMeta * len(items))()
            self._check(lib.e8cu_decode_async(self._ctx, len(items), items.ctypes.data,
                                              fptr.ctypes.data, fsz.ctypes.data, None, meta,
                                              h_q.data_ptr(), d_q.data_ptr(), qb, None, s_ptr),
                        "e8cu_decode_async")
            ev = torch.cuda.Event()
            ev.record(s_obj)
            self._events[slot] = ev
            total += sum(g[2] for g in group)
        return total

    def synchronize(self):
        for ev in self._events:
            if ev is not None:
                ev.synchronize()


# ------------------------------------------------------------------------------ encode jobs

ARENA_SEGMENT_BYTES = 256 << 20


class _FrameArena:
    """Pinned host segments that one EncodeJob's frames are written into, back to back
    (64-byte aligned). Segments come from the codec's free list (or are allocated, at least
    ARENA_SEGMENT_BYTES) and go back to it on release()."""

    def __init__(self, codec):
        self.codec, self.segs, self.cur, self.off = codec, [], None, 0

    def room(self, want):
        """(segment, offset) with at least ``want`` bytes free from offset."""
        if self.cur is not None and self.cur.numel() - self.off >= want:
            return self.cur, self.off
        seg = None
        with self.codec._arena_lock:
            free = self.codec._arena_free
            for i, s in enumerate(free):
                if s.numel() >= want:
                    seg = free.pop(i)
                    break
        if seg is None:
            seg = self.codec._pinned(max(int(want), ARENA_SEGMENT_BYTES))
        self.segs.append(seg)
        self.cur, self.off = seg, 0
        return seg, 0

    def commit(self, seg, end):
        """Bytes up to ``end`` of seg (the current segment) are taken."""
        if seg is self.cur:
            self.off = (int(end) + 63) & ~63

    def release(self):
        with self.codec._arena_lock:
            self.codec._arena_free.extend(self.segs)
        self.segs, self.cur, self.off = [], None, 0


class EncodeJob:
    """The chunks of one CudaCodec.encode_chunks_deferred call, in the order asked.
    ``chunks()`` yields each chunk frame (bytes) as it is assembled, on any thread (one
    thread at a time), and gives the arena back to the codec at its end; ``result()`` is
    the list; ``release()`` gives the arena back without assembling (e.g. after an error).
    ``n_chunks`` is the number of chunks."""

    def __init__(self, codec, arena):
        self.codec, self.arena, self.parts = codec, arena, []

    @property
    def n_chunks(self):
        return sum(len(g) for _, _, g in self.parts)

    def chunks(self):
        try:
            for kind, part, group in self.parts:
                if kind == "chunks":
                    yield from part
                else:
                    yield from self.codec._assemble_part(part, group)
        finally:
            self.release()

    def result(self):
        return list(self.chunks())

    def release(self):
        if self.arena is not None:
            self.arena.release()
            self.arena = None
            self.parts = []
