"""e8kv.kvcodec: the KV codec interface e8kv.hf encodes and decodes through, and its CPU one.

A KV codec turns the KV tensors of one sequence into chunk frames (codec/FORMAT.md) and
back, reading and writing the tensors in place. e8kv.hf's ``store_prefix`` and
``restore_prefix`` take one as ``kv_codec=``; without it they use :class:`CpuKVCodec`.
``e8kv.cuda.CudaCodec`` (the CUDA codec, tensors by device pointer) has the same interface.

Interface (duck-typed):

``fingerprint``
    the ``e8kv.codec.Fingerprint`` (or ``e8kv.v1.ModelFingerprint``) it codes for; e8kv.hf
    checks that its id is the daemon's id for the request's fingerprint.
``encode_chunks(layers, starts, n_tokens, *, pos_offset=0[, seq_len=0]) -> list of bytes``
    one chunk frame per i of tokens ``[starts[i], starts[i] + n_tokens[i])`` of ``layers``.
    ``seq_len`` (optional keyword; e8kv.hf passes it only when it changes the bytes: a
    fingerprint with a recent window, or dynamic-NTK RoPE): the sequence's length in
    positions when it was computed, as e8c_chunk_params.seq_len (0 = each chunk's end):
    the recent window is the sequence's last tokens, and dynamic RoPE frequencies are those
    of that length.
``decode_chunks_into(chunks, layers, *, pos_offset=0) -> int``
    decodes chunk frames (bytes-like, any order) into ``layers``: a chunk of first_pos p and
    n tokens fills tokens ``[p - pos_offset, p - pos_offset + n)`` of every tensor, in the
    tensors' dtype. Returns the tokens written. May return before the writes are visible
    (a GPU codec enqueues them): call ``synchronize()`` before reading the tensors.
``synchronize()``
    waits until every decode issued so far is written.

``layers`` is a list of ``(K, V)``, one per model layer, each ``[n_kv_heads, T, head_dim]``:
one row of a transformers cache (``cache_k[b]``), any strides. Token t of the tensors holds
sequence position ``t + pos_offset``. Keys carry RoPE, as the engine caches them. Both
calls check shapes and ranges before touching any tensor.
"""
from concurrent.futures import ThreadPoolExecutor
import os

import torch

from . import codec as _codec

__all__ = ["CpuKVCodec", "fingerprint_id", "check_layers"]

_DT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def fingerprint_id(kv_codec) -> bytes:
    """The 32-byte fingerprint id a KV codec writes into its chunks."""
    fid = getattr(kv_codec, "fingerprint_id", None)
    if isinstance(fid, (bytes, bytearray)) and len(fid) == 32:
        return bytes(fid)
    fp = getattr(kv_codec, "fingerprint", None)
    if fp is None:
        raise TypeError(f"kv_codec {type(kv_codec).__name__} has no .fingerprint")
    return _codec._as_fingerprint(fp).id()


def check_layers(layers, fp, what):
    """(device, dtype, T) of layers checked against fingerprint fp (a codec.Fingerprint):
    n_layers pairs of tensors [n_kv_heads, T, head_dim], one device and dtype."""
    if len(layers) != fp.n_layers:
        raise ValueError(f"{what}: {len(layers)} layers, the fingerprint has {fp.n_layers}")
    k0 = layers[0][0]
    if not isinstance(k0, torch.Tensor):
        raise TypeError(f"{what}: layer 0 K is {type(k0).__name__}, not a torch tensor")
    dev, dt, T = k0.device, k0.dtype, k0.shape[1] if k0.dim() == 3 else -1
    if dt not in _DT.values():
        raise TypeError(f"{what}: dtype {dt} not supported (float16, bfloat16, float32)")
    for li, kv in enumerate(layers):
        for kind, x in zip("KV", kv):
            if not isinstance(x, torch.Tensor) or x.device != dev or x.dtype != dt:
                raise TypeError(f"{what}: layer {li} {kind} is not a {dt} tensor on {dev}")
            if tuple(x.shape) != (fp.n_kv_heads, T, fp.head_dim):
                raise ValueError(f"{what}: layer {li} {kind} shape {tuple(x.shape)}, need "
                                 f"[n_kv_heads={fp.n_kv_heads}, T, head_dim={fp.head_dim}]")
    return dev, dt, T


class CpuKVCodec:
    """The KV codec on the CPU: e8kv.codec (libe8codec) on ``threads`` threads.

    The tensors may live on any device: encode gathers each chunk [L][2][H][t][D] into host
    memory in the fingerprint's source dtype; decode writes each decoded chunk into its
    slice of the tensors (a host-to-device copy for GPU tensors), one chunk-sized buffer per
    thread, so no full-size intermediate exists. Chunks are byte-identical to
    ``e8kv.codec.encode_chunk`` of the same KV (and to the CUDA codec's).
    Thread safety: one CpuKVCodec per thread (it owns a thread pool; close() ends it).
    """
    name = "cpu"

    def __init__(self, fingerprint, threads=None):
        self.fingerprint = _codec._as_fingerprint(fingerprint)
        self.fingerprint_id = self.fingerprint.id()
        self._src_dtype = _DT[self.fingerprint.src_dtype]
        n = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="e8kv-codec") if n > 1 else None

    def _map(self, fn, *its):
        return list(self._pool.map(fn, *its)) if self._pool else list(map(fn, *its))

    def encode_chunks(self, layers, starts, n_tokens, *, pos_offset=0, seq_len=0):
        fp = self.fingerprint
        _, _, T = check_layers(layers, fp, "encode_chunks")
        starts, n_tokens = [int(s) for s in starts], [int(n) for n in n_tokens]
        if len(starts) != len(n_tokens):
            raise ValueError("starts and n_tokens differ in length")
        for s, n in zip(starts, n_tokens):
            if n < 1 or s < 0 or s + n > T:
                raise ValueError(f"chunk tokens [{s}, {s + n}) outside the tensors' {T} tokens")
            if s + pos_offset < 0:
                raise ValueError(f"chunk at token {s} has position {s + pos_offset} < 0")
            if seq_len and seq_len < s + pos_offset + n:
                raise ValueError(f"seq_len {seq_len} < the chunk's end {s + pos_offset + n}")

        def one(s, n):
            raw = torch.stack([torch.stack((k[:, s:s + n], v[:, s:s + n])) for k, v in layers])
            raw = raw.to("cpu", self._src_dtype).contiguous()
            return _codec.encode_chunk(fp, raw, first_pos=s + pos_offset, seq_len=seq_len)
        return self._map(one, starts, n_tokens)

    def decode_chunks_into(self, chunks, layers, *, pos_offset=0):
        fp = self.fingerprint
        _, dt, T = check_layers(layers, fp, "decode_chunks_into")
        spans = []
        for i, data in enumerate(chunks):
            info = _codec.chunk_info(data)
            if info["fingerprint_id"] != self.fingerprint_id:
                raise ValueError(f"chunk {i} belongs to another fingerprint")
            t0 = info["first_pos"] - pos_offset
            if t0 < 0 or t0 + info["n_tokens"] > T:
                raise ValueError(f"chunk {i} (positions {info['first_pos']}+{info['n_tokens']}) "
                                 f"does not fit tensors of {T} tokens at pos_offset {pos_offset}")
            spans.append((data, t0, info["n_tokens"]))

        def one(span):
            data, t0, n = span
            raw = _codec.decode_chunk(fp, data, dtype=dt)           # [L][2][H][n][D], host
            for li, (k, v) in enumerate(layers):
                k[:, t0:t0 + n].copy_(raw[li, 0])
                v[:, t0:t0 + n].copy_(raw[li, 1])
            return n
        return sum(self._map(one, spans))

    def synchronize(self):
        """Nothing to wait for: decode_chunks_into returns with the tensors written."""

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
