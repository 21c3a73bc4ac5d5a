"""CPU tests of e8kv.cuda's host-side parts (no GPU needed): the chunk container assembled from
frames is byte-identical to libe8codec's e8c_chunk_encode, parse_chunk refuses damaged chunks,
and the e8cu_item records point at the right bytes with the right strides.
The CUDA calls themselves run on the GPU machine (make bench-e2e: roundtrip_check)."""
import ctypes
import threading

import numpy as np
import pytest
import torch

from e8kv import _lib as L
from e8kv import codec, cuda

FP = codec.Fingerprint(
    model_id="e2e-test", n_layers=3, n_kv_heads=2, head_dim=32, src_dtype="bfloat16",
    rope=codec.Rope(theta=500000.0, type="llama3", factor=8.0, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_pos=1024),
    config=codec.Config("K3V2"))


def _fp_bytes():
    cf = FP.to_c()
    lib = L.lib()
    n = lib.e8c_fingerprint_serialize(ctypes.byref(cf), None, 0)
    b = ctypes.create_string_buffer(n)
    assert lib.e8c_fingerprint_serialize(ctypes.byref(cf), b, n) == n
    return cf.src_dtype, b.raw[:n], FP.id()


@pytest.mark.parametrize("n_tokens,first_pos", [(256, 0), (100, 256), (1, 7)])
def test_assemble_equals_library_chunk(n_tokens, first_pos):
    c = codec.Codec(FP)
    raw = torch.randn(3, 2, 2, n_tokens, 32, generator=torch.Generator().manual_seed(n_tokens))
    raw = raw.to(torch.bfloat16)
    ref = c.encode_chunk(raw, first_pos=first_pos)
    frames = [c.encode_frame(raw[li, k], layer=li, kind="kv"[k], first_pos=first_pos)
              for li in range(3) for k in range(2)]
    src, fpb, fid = _fp_bytes()
    got = cuda.assemble_chunk(frames, src_dtype=src, n_layers=3, n_kv_heads=2, head_dim=32,
                              n_tokens=n_tokens, first_pos=first_pos, fingerprint_id=fid,
                              fingerprint_bytes=fpb)
    assert got == ref
    # the same from the frames back to back (what e8cu_pack_frames returns)
    pinned_like = np.frombuffer(b"".join(frames), dtype=np.uint8)    # as from a host buffer
    assert cuda.assemble_chunk_payload(
        memoryview(pinned_like), [len(f) for f in frames], src_dtype=src, n_layers=3, n_kv_heads=2,
        head_dim=32, n_tokens=n_tokens, first_pos=first_pos, fingerprint_id=fid,
        fingerprint_bytes=fpb) == ref
    with pytest.raises(ValueError, match="payload of"):
        cuda.assemble_chunk_payload(
            b"".join(frames)[:-1], [len(f) for f in frames], src_dtype=src, n_layers=3,
            n_kv_heads=2, head_dim=32, n_tokens=n_tokens, first_pos=first_pos,
            fingerprint_id=fid, fingerprint_bytes=fpb)
    h = cuda.parse_chunk(ref)
    assert (h["n_tokens"], h["first_pos"], h["n_layers"], h["fingerprint_id"]) == \
        (n_tokens, first_pos, 3, fid)
    assert [ref[o:o + s] for o, s in h["frames"]] == frames


def test_parse_refuses_damage():
    c = codec.Codec(FP)
    ref = c.encode_chunk(torch.randn(3, 2, 2, 16, 32).to(torch.bfloat16))
    h = cuda.parse_chunk(ref)
    for bad, what in [(b"XXXX" + ref[4:], "magic"), (ref[:40], "shorter"),
                      (ref[:h["hdr_size"] + 10], "truncated"),
                      (ref[:20] + bytes([ref[20] ^ 1]) + ref[21:], "CRC")]:
        with pytest.raises(ValueError, match=what):
            cuda.parse_chunk(bad)
    with pytest.raises(ValueError, match="frames for"):
        cuda.assemble_chunk([b"x"], src_dtype=2, n_layers=3, n_kv_heads=2, head_dim=32,
                            n_tokens=1, first_pos=0, fingerprint_id=b"\0" * 32,
                            fingerprint_bytes=b"")


def test_crc32c_check_value():
    assert cuda.crc32c(b"123456789") == 0xE3069283


def test_items_point_at_each_frames_tokens():
    K = [torch.zeros(1, 2, 1000, 32, dtype=torch.bfloat16) for _ in range(3)]
    V = [torch.zeros(1, 2, 1000, 32, dtype=torch.bfloat16) for _ in range(3)]
    layers = [(k[0], v[0]) for k, v in zip(K, V)]
    spans = [(0, 0, 256), (256, 256, 256), (512, 600, 100)]
    it = cuda.CudaCodec._items(None, layers, torch.bfloat16, spans)
    assert len(it) == 3 * 3 * 2 and it.dtype.itemsize == ctypes.sizeof(cuda.Item)
    i = 0
    for t0, p0, n in spans:
        for li, kv in enumerate(layers):
            for kind, x in enumerate(kv):
                r = it[i]
                assert (r["layer"], r["kind"], r["n_tokens"], r["first_pos"]) == (li, kind, n, p0)
                assert r["data"] == x[:, t0:].data_ptr()
                assert (r["stride_head"], r["stride_token"], r["stride_dim"]) == x.stride()
                assert r["dtype"] == L.DTYPE_BF16
                i += 1
    # a [tokens, heads, dim] cache seen as [heads, tokens, dim]
    T = torch.zeros(1000, 2, 32, dtype=torch.float16).transpose(0, 1)
    it = cuda.CudaCodec._items(None, [(T, T)] * 3, torch.float16, [(10, 10, 5)])
    assert it[0]["data"] == T[:, 10:].data_ptr()
    assert (it[0]["stride_head"], it[0]["stride_token"]) == (32, 64)


def test_chunk_versions():
    """A chunk takes its frames' format version (1 or 2); mixed or unknown ones are refused."""
    c = codec.Codec(FP)
    raw = torch.randn(3, 2, 2, 16, 32).to(torch.bfloat16)
    ref = c.encode_chunk(raw)
    h = cuda.parse_chunk(ref)
    assert h["version"] == ref[4] and h["version"] in cuda.CHUNK_VERSIONS
    frames = [ref[o:o + s] for o, s in h["frames"]]
    assert all(f[4] == ref[4] for f in frames)
    src, fpb, fid = _fp_bytes()
    kw = dict(src_dtype=src, n_layers=3, n_kv_heads=2, head_dim=32, n_tokens=16, first_pos=0,
              fingerprint_id=fid, fingerprint_bytes=fpb)
    other = 3 - ref[4]                      # the other known version
    mixed = [frames[0][:4] + bytes([other]) + frames[0][5:]] + frames[1:]
    with pytest.raises(ValueError, match="versions"):
        cuda.assemble_chunk(mixed, **kw)
    bad = bytearray(ref)
    bad[4] = 3
    hdr = h["hdr_size"]
    bad[hdr - 4:hdr] = cuda.crc32c(bad, 0, hdr - 4).to_bytes(4, "little")
    with pytest.raises(ValueError, match="version 3 unsupported"):
        cuda.parse_chunk(bytes(bad))


class _FakePackLib:
    """Stands in for libe8codec_cuda's e8cu_pack_frames / e8cu_quantize_async on the CPU: writes
    the CPU codec's frames of the given chunks back to back into h_out, as the GPU does."""

    def __init__(self, frames, first_rc=0):
        self.frames, self.first_rc, self.calls, self.quantized = frames, first_rc, 0, 0

    def e8cu_quantize_async(self, *args):
        self.quantized += 1
        return 0

    def e8cu_ctx_last_error(self, ctx):
        return b"fake library message"

    def e8cu_pack_frames(self, ctx, n, items, meta, d_q, qb, h_out, cap, offs, sizes, total,
                         stream):
        self.calls += 1
        need = sum(len(f) for f in self.frames)
        ctypes.cast(total, ctypes.POINTER(ctypes.c_size_t))[0] = need
        if self.calls == 1 and self.first_rc:
            return self.first_rc
        if need > cap:
            return cuda.ERR_DST_SIZE
        o = ctypes.cast(offs, ctypes.POINTER(ctypes.c_uint64))
        z = ctypes.cast(sizes, ctypes.POINTER(ctypes.c_size_t))
        at = 0
        for i, f in enumerate(self.frames):
            ctypes.memmove(h_out + at, f, len(f))
            o[i], z[i] = at, len(f)
            at += len(f)
        return 0


def _fake_codec(monkeypatch, lib, buf_bytes):
    """A CudaCodec shell (no GPU) whose _pack_frames runs against lib."""
    src, fpb, fid = _fp_bytes()
    cc = cuda.CudaCodec.__new__(cuda.CudaCodec)
    cc.fingerprint, cc._c_fp, cc._ctx = codec._as_fingerprint(FP), FP.to_c(), None
    cc.fingerprint_id, cc.fingerprint_bytes = fid, fpb
    cc._arena_free, cc._arena_lock, cc._frames_ratio = [], threading.Lock(), 0.0
    cc.pack_path, cc.pack_fallback = "gpu", None
    cc.allocs = []

    def pinned(n):                      # host memory standing in for pinned memory, counted
        cc.allocs.append(n)
        return torch.zeros(n, dtype=torch.uint8)
    monkeypatch.setattr(cuda, "_cu", lambda: lib)
    monkeypatch.setattr(cuda, "ARENA_SEGMENT_BYTES", buf_bytes)
    monkeypatch.setattr(cuda.CudaCodec, "_pinned", staticmethod(pinned))
    return cc


@pytest.mark.parametrize("qb", [1 << 20, 1000])
def test_pack_frames_path_builds_the_library_chunks(monkeypatch, qb):
    """Two chunks packed "on the GPU" come out as libe8codec's chunks; a too small buffer is
    grown and the batch quantized and packed again."""
    c = codec.Codec(FP)
    raws = [torch.randn(3, 2, 2, n, 32, generator=torch.Generator().manual_seed(n)).to(
        torch.bfloat16) for n in (256, 40)]
    refs = [c.encode_chunk(raws[0], first_pos=0), c.encode_chunk(raws[1], first_pos=256)]
    frames = [r[o:o + s] for r in refs for o, s in cuda.parse_chunk(r)["frames"]]
    lib = _FakePackLib(frames)
    # arena segments of 1 MiB; with 16 bytes the first room is the qbatch size (1000: too small)
    cc = _fake_codec(monkeypatch, lib, 1 << 20 if qb > 1000 else 16)
    items = np.zeros(len(frames), dtype=cuda.ITEM_DTYPE)
    # the output buffer starts at the qbatch's size: 1000 bytes is too small for these frames
    got = cc._pack_frames(items, None, torch.zeros(8), qb, [(0, 0, 256), (256, 256, 40)], None)
    assert got == refs and cc.pack_path == "gpu"
    assert (lib.calls, lib.quantized) == ((1, 0) if qb > 1000 else (2, 1))
    # the arena's segments went back to the codec; the last one holds the frames
    assert cc._arena_free and cc._arena_free[-1].numel() >= sum(len(f) for f in frames)


def test_deferred_jobs_share_and_reuse_the_arena(monkeypatch):
    """Two groups packed into one job's arena come out as the library's chunks, in order, on
    another thread; the arena goes back to the codec and the next job reuses it (no new
    pinned allocation); frames that are not back to back are refused."""
    c = codec.Codec(FP)
    raws = [torch.randn(3, 2, 2, n, 32, generator=torch.Generator().manual_seed(n)).to(
        torch.bfloat16) for n in (256, 256, 40)]
    refs = [c.encode_chunk(r, first_pos=256 * i) for i, r in enumerate(raws)]
    fr = [[r[o:o + s] for o, s in cuda.parse_chunk(r)["frames"]] for r in refs]
    need = sum(map(len, refs))
    lib = _FakePackLib(fr[0] + fr[1])
    cc = _fake_codec(monkeypatch, lib, 4 * need)
    items2, items1 = (np.zeros(n * 6, dtype=cuda.ITEM_DTYPE) for n in (2, 1))
    for round_ in range(2):
        job = cuda.EncodeJob(cc, cuda._FrameArena(cc))
        lib.frames = fr[0] + fr[1]
        p1 = cc._pack_frames_into(items2, None, torch.zeros(8), 2 * need, None, job.arena)
        job.parts.append(("frames", p1, [(0, 0, 256), (256, 256, 256)]))
        lib.frames = fr[2]
        p2 = cc._pack_frames_into(items1, None, torch.zeros(8), 2 * need, None, job.arena)
        job.parts.append(("frames", p2, [(512, 512, 40)]))
        assert p2[0] is p1[0] and p2[1] >= p1[1] + p1[4] and p2[1] % 64 == 0
        assert job.n_chunks == 3
        box = {}
        th = threading.Thread(target=lambda: box.update(got=job.result()))
        th.start()
        th.join()
        assert box["got"] == refs
        assert len(cc._arena_free) == 1 and job.arena is None
        assert len(cc.allocs) == 1, f"round {round_}: arena allocated again: {cc.allocs}"
    job = cuda.EncodeJob(cc, cuda._FrameArena(cc))
    lib.frames = fr[0] + fr[1]
    seg, base, offs, sizes, total = cc._pack_frames_into(items2, None, torch.zeros(8), 2 * need,
                                                         None, job.arena)
    offs = offs.copy()
    offs[3] += 1                            # a gap inside chunk 0
    job.parts.append(("frames", (seg, base, offs, sizes, total), [(0, 0, 256), (256, 256, 256)]))
    with pytest.raises(cuda.CudaCodecError, match="back to back"):
        job.result()
    assert job.arena is None and len(cc._arena_free) == 1


def test_pack_frames_refusal_falls_back_to_the_host_packer(monkeypatch):
    lib = _FakePackLib([b"x"], first_rc=cuda.ERR_CONFIG)
    cc = _fake_codec(monkeypatch, lib, 1 << 16)
    items = np.zeros(6, dtype=cuda.ITEM_DTYPE)
    assert cc._pack_frames(items, None, torch.zeros(8), 1 << 16, [(0, 0, 16)], None) is None
    assert cc.pack_path == "host" and "fake library message" in cc.pack_fallback
    lib = _FakePackLib([b"x"], first_rc=cuda.ERR_NONFINITE)
    cc = _fake_codec(monkeypatch, lib, 1 << 16)
    with pytest.raises(cuda.CudaCodecError):
        cc._pack_frames(items, None, torch.zeros(8), 1 << 16, [(0, 0, 16)], None)
