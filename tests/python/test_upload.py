"""PutChunks through libe8kv's C upload (e8kv.upload, Client.put_chunks' default) against a real
e8kvd: the same stored bytes and reply as the grpcio path, the daemon's errors as the same
exceptions, the daemon killed mid-upload, references dropped once sent, and the loud grpcio
fallback where libe8kv.so is missing (in a subprocess, as the library is loaded once)."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import e8kv
from e8kv import codec, upload
from conftest import REPO, Daemon

L, H, D, C = 2, 2, 64, 16


def fingerprint(model_id):
    return {"model_id": model_id, "n_layers": L, "n_kv_heads": H, "head_dim": D,
            "source_dtype": "DTYPE_FP16",
            "rope": {"theta": 10000.0, "layout": "ROPE_LAYOUT_SPLIT_HALF"}}


def frames(fp, n_tokens, seed):
    """(token ids, [ChunkIn]) of n_tokens tokens as E8 chunk frames of fingerprint fp."""
    cfp = codec.fingerprint_from_proto(e8kv.client.as_fingerprint(fp))
    g = np.random.default_rng(seed)
    kv = g.standard_normal((L, 2, H, n_tokens, D)).astype(np.float16)
    tokens = g.integers(0, 30000, n_tokens).tolist()
    out = []
    for s in range(0, n_tokens, C):
        raw = np.ascontiguousarray(kv[:, :, :, s:s + C])
        out.append(e8kv.ChunkIn(tokens[s:s + C], codec.encode_chunk(cfp, raw, first_pos=s)))
    return tokens, out


def test_native_and_grpcio_store_the_same(client):
    assert upload.available() is True
    fp = fingerprint("upload-same")
    tokens, chunks = frames(fp, 5 * C + 3, 1)
    r = client.put_chunks(fp, chunks, chunk_tokens=C, piece_bytes=4096)
    assert client._native, "the C upload was not used"
    assert r.chunks_stored == 6 and r.tokens == len(tokens) and len(r.chunk_keys) == 6
    got = [c.data for c in client.get_chunks(list(r.chunk_keys), encoding="e8")]
    assert got == [c.data for c in chunks]
    # grpcio: the same keys, all deduplicated; a new chain through each path: same keys
    r2 = client.put_chunks(fp, chunks, chunk_tokens=C, native=False)
    assert list(r2.chunk_keys) == list(r.chunk_keys) and r2.chunks_deduplicated == 6
    # raw KV (the daemon encodes) and a session through the C upload
    raw = np.random.default_rng(2).standard_normal((L, 2, H, 2 * C, D)).astype(np.float16)
    other = [t + 1 for t in tokens]             # another chain (same tokens: deduplicated)
    rs = client.put_chunks(fp, [e8kv.ChunkIn(other[s:s + C],
                                             np.ascontiguousarray(raw[:, :, :, s:s + C]))
                                for s in (0, C)], encoding="raw", raw_dtype="fp16",
                           chunk_tokens=C, session="up-raw", create_session=True,
                           native=True)
    assert rs.session.n_tokens == 2 * C and rs.chunks_stored == 2


def test_native_errors_are_the_clients(client):
    fp = fingerprint("upload-errors")
    tokens, chunks = frames(fp, 3 * C, 3)
    with pytest.raises(e8kv.NotFound, match="nobody"):
        client.put_chunks(fp, chunks, chunk_tokens=C, session="nobody", native=True)
    with pytest.raises((e8kv.InvalidArgument, e8kv.FailedPrecondition), match="fingerprint"):
        client.put_chunks(fingerprint("upload-other"), chunks, chunk_tokens=C, native=True)
    # a failure of the producer aborts the call: nothing joins the session
    def bad():
        yield chunks[0]
        raise KeyError("producer failed")
    with pytest.raises(KeyError):
        client.put_chunks(fp, bad(), chunk_tokens=C, session="half", create_session=True,
                          native=True)
    try:
        assert client.get_session("half").n_tokens == 0
    except e8kv.NotFound:
        pass
    with pytest.raises(ValueError, match="contiguous"):
        up = upload.NativeUploader(client.address).start(e8kv.pb.PutHeader(chunk_tokens=C))
        up.add([1], np.zeros((4, 4), np.uint8)[:, ::2])


def test_native_upload_drops_sent_chunks_and_reports_a_dead_daemon(tmp_path):
    d = Daemon(tmp_path)
    try:
        fp = fingerprint("upload-kill")
        tokens, chunks = frames(fp, 8 * C, 4)
        hdr = e8kv.pb.PutHeader(fingerprint=e8kv.client.as_fingerprint(fp), chunk_tokens=C,
                                encoding=e8kv.pb.ENCODING_E8_FRAME)
        with upload.NativeUploader(d.address, timeout=60) as nu:
            up = nu.start(hdr, piece_bytes=4096)
            up.add(chunks[0].token_ids, chunks[0].data)
            t0 = time.monotonic()
            while up.stats()[1] < 1 and time.monotonic() - t0 < 60:  # bounds a hang only
                time.sleep(0.01)
            assert up.stats()[1] == 1
            up.add(chunks[1].token_ids, chunks[1].data)
            assert len(up._keep) <= 1              # chunk 0 sent: its reference dropped
            d.proc.kill()
            d.proc.wait()
            t0 = time.monotonic()
            with pytest.raises(e8kv.E8kvError) as ei:
                for c in chunks[2:]:
                    up.add(c.token_ids, c.data)
                up.finish()
            assert time.monotonic() - t0 < 30
            assert ei.value.code.name in ("UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL")
            assert not up._keep
    finally:
        d.stop()


def test_without_libe8kv_put_chunks_warns_and_uses_grpcio(daemon):
    code = textwrap.dedent(f"""
        import warnings, numpy as np, e8kv
        fp = {fingerprint("upload-fallback")!r}
        raw = np.zeros(({L}, 2, {H}, {C}, {D}), np.float16)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with e8kv.Client({daemon.address!r}, timeout=60) as c:
                r = c.put_chunks(fp, [e8kv.ChunkIn(list(range({C})), raw)], encoding="raw",
                                 raw_dtype="fp16", chunk_tokens={C})
                assert r.chunks_stored + r.chunks_deduplicated == 1 and not c._native
                try:
                    c.put_chunks(fp, [], native=True)
                    raise SystemExit("native=True without libe8kv did not raise")
                except OSError as e:
                    assert "unavailable" in str(e), e
        msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
        assert len(msgs) == 1 and "Python gRPC" in msgs[0] and "libe8kv.so" in msgs[0], msgs
        print("fallback ok")
    """)
    env = dict(os.environ, E8KV_CLIENT_LIB=str(Path(daemon.dir) / "missing" / "libe8kv.so"),
               PYTHONPATH=str(REPO / "clients" / "python"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "fallback ok" in p.stdout, p.stdout + p.stderr


def test_native_and_grpcio_refuse_a_chunk_without_tokens_or_data_alike(client):
    """A chunk with no token ids or no data is InvalidArgument through both paths (the C
    upload's usage error came out as E8kvError INTERNAL 'libe8kv code 100'), and the failed
    native upload is aborted, not left running."""
    fp = fingerprint("upload-empty")
    tokens, chunks = frames(fp, 2 * C, 9)
    for bad in ([chunks[0], e8kv.ChunkIn([], chunks[1].data)],
                [chunks[0], e8kv.ChunkIn(tokens[C:], b"")]):
        for native in (True, False):
            with pytest.raises(e8kv.InvalidArgument):
                client.put_chunks(fp, bad, chunk_tokens=C, session=f"empty-{native}",
                                  create_session=True, native=native)
            with pytest.raises(e8kv.NotFound):      # nothing of the failed call joined it
                client.get_session(f"empty-{native}")
    assert client.put_chunks(fp, chunks, chunk_tokens=C, native=True).tokens == 2 * C
