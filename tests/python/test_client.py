"""e8kv.Client against a real e8kvd: round trips, prefix lookup, sessions, errors, auth."""
import grpc
import numpy as np
import pytest

import e8kv
from conftest import Daemon

L, H, D = 2, 3, 64          # a small model: 2 layers, 3 KV heads, head_dim 64
C = 16                      # chunk_tokens of these tests


def fingerprint(model_id="test-model", **codec):
    return {"model_id": model_id, "n_layers": L, "n_kv_heads": H, "head_dim": D,
            "source_dtype": "DTYPE_FP32",
            "rope": {"theta": 10000.0, "layout": "ROPE_LAYOUT_SPLIT_HALF"},
            "codec": codec}


def kv(n_tokens, seed=0):
    """Raw KV [L][2][H][n][D] fp32, Gaussian."""
    return np.random.default_rng(seed).standard_normal((L, 2, H, n_tokens, D)).astype(np.float32)


def put_raw(client, fp, tokens, data, **kw):
    chunks = [e8kv.ChunkIn(tokens[s:s + C], np.ascontiguousarray(data[:, :, :, s:s + C]))
              for s in range(0, len(tokens), C)]
    return client.put_chunks(fp, chunks, encoding="raw", raw_dtype="fp32", chunk_tokens=C, **kw)


def get_raw(client, keys, dtype="fp32"):
    out = []
    for ch in client.get_chunks(keys, encoding="raw", dtype=dtype):
        a = np.frombuffer(ch.data, dtype=np.float32 if dtype == "fp32" else np.float16)
        out.append(a.reshape(L, 2, H, ch.n_tokens, D))
    return np.concatenate(out, axis=3)


def rel_err(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def test_health_and_stats(client):
    assert client.health() == "SERVING"
    assert client.health("e8kv.v1.KVStore") == "SERVING"
    s = client.get_stats()
    assert s.namespace_stats.namespace_name == "default"


def test_raw_round_trip_within_codec_error(client):
    fp = fingerprint(preset="K4V4")
    tokens = list(range(1000, 1000 + 3 * C + 5))          # 3 full chunks and a short one
    data = kv(len(tokens))
    r = put_raw(client, fp, tokens, data)
    assert r.tokens == len(tokens) and len(r.chunk_keys) == 4
    assert r.chunks_stored + r.chunks_deduplicated == 4
    assert r.raw_fp16_bytes == 2 * L * H * D * 2 * len(tokens)
    back = get_raw(client, list(r.chunk_keys))
    assert back.shape == data.shape
    err = rel_err(back, data)
    assert 0 < err < 0.12, f"K4V4 relative RMS error {err}"
    # the same chunks again: all deduplicated, same keys
    r2 = put_raw(client, fp, tokens, data)
    assert r2.chunks_deduplicated == 4 and r2.chunks_stored == 0
    assert list(r2.chunk_keys) == list(r.chunk_keys)


def test_get_pieces_stream_reassembles(client):
    fp = fingerprint(preset="K3V2")
    tokens = list(range(5000, 5000 + 2 * C))
    r = put_raw(client, fp, tokens, kv(len(tokens), seed=3))
    pieces = list(client.get_chunk_pieces(list(r.chunk_keys), encoding="raw", dtype="fp32",
                                          max_piece_bytes=4096))
    raw_bytes = L * 2 * H * C * D * 4
    assert len(pieces) >= 2 * (raw_bytes // 4096)
    assert all(len(p.data) <= 4096 for p in pieces)
    assert [p.chunk_index for p in pieces] == sorted(p.chunk_index for p in pieces)
    whole = list(client.get_chunks(list(r.chunk_keys), encoding="raw", dtype="fp32",
                                   max_piece_bytes=4096))
    assert [len(c.data) for c in whole] == [raw_bytes, raw_bytes]
    assert whole[0].token_ids == tokens[:C] and whole[1].start_token == C


def test_encoded_frames_come_back_byte_identical(client):
    fp = fingerprint(preset="K3V2")
    tokens = list(range(7000, 7000 + C))
    r = put_raw(client, fp, tokens, kv(C, seed=5))
    frame = next(client.get_chunks(list(r.chunk_keys), encoding="e8")).data
    assert len(frame) < L * 2 * H * C * D * 2 // 2          # far smaller than fp16
    # store the frame again as an encoded chunk under a new prefix position: same bytes back
    r2 = client.put_chunks(fp, [e8kv.ChunkIn(tokens, frame)], encoding="e8", chunk_tokens=C)
    assert list(r2.chunk_keys) == list(r.chunk_keys) and r2.chunks_deduplicated == 1
    assert next(client.get_chunks(list(r2.chunk_keys), encoding="e8")).data == frame


def test_lookup_longest_shared_prefix(client):
    fp = fingerprint(preset="K3V2")
    a = list(range(20000, 20000 + 3 * C))
    put_raw(client, fp, a, kv(len(a), seed=7))
    b = a[:2 * C] + [1, 2, 3] + a[2 * C + 3:]            # diverges inside chunk 3
    lk = client.lookup(fp, b, chunk_tokens=C)
    assert lk.matched_tokens == 2 * C and len(lk.chunk_keys) == 2
    assert list(lk.chunk_token_counts) == [C, C]
    assert client.lookup(fp, a + [9, 9], chunk_tokens=C).matched_tokens == 3 * C
    assert client.lookup(fp, [5] + a, chunk_tokens=C).matched_tokens == 0
    # another fingerprint (other preset) never sees these chunks
    assert client.lookup(fingerprint(preset="K4V4"), a, chunk_tokens=C).matched_tokens == 0
    # a parent_key continues the chain: the continuation of b is found after b's prefix
    r = put_raw(client, fp, b[2 * C:3 * C], kv(C, seed=8), parent_key=lk.chunk_keys[-1],
                parent_end_token=2 * C)
    assert client.lookup(fp, b, chunk_tokens=C).matched_tokens == 3 * C
    assert len(r.chunk_keys) == 1


def test_sessions_create_append_get_list_delete(client):
    fp = fingerprint(preset="K3V2")
    toks = list(range(30000, 30000 + 2 * C))
    c = client.create_session("py/s1", fp, chunk_tokens=C, metadata={"user": "ada"})
    assert c.created and c.session.n_tokens == 0
    assert not client.create_session("py/s1", fp, chunk_tokens=C, if_not_exists=True).created
    with pytest.raises(e8kv.AlreadyExists):
        client.create_session("py/s1", fp, chunk_tokens=C)
    r = put_raw(client, fp, toks[:C], kv(C, seed=9), session="py/s1")
    assert r.session.n_tokens == C
    # the second chunk stored without the session, then appended by token ids only
    put_raw(client, fp, toks[C:], kv(C, seed=10), parent_key=r.chunk_keys[0],
            parent_end_token=C)
    a = client.append_session("py/s1", toks[C:], expect_session_tokens=C)
    assert a.session.n_tokens == 2 * C and len(a.chunk_keys) == 1
    s = client.get_session("py/s1", include_chunk_keys=True)
    assert s.n_chunks == 2 and s.metadata["user"] == "ada" and len(s.chunk_keys) == 2
    got = list(client.get_chunks(session="py/s1", encoding="raw", dtype="fp32"))
    assert [g.start_token for g in got] == [0, C] and got[1].token_ids == toks[C:]
    # a session range inside the second chunk returns that whole chunk
    got = list(client.get_chunks(session="py/s1", start_token=C + 1, end_token=C + 2))
    assert len(got) == 1 and got[0].start_token == C
    for i in range(5):
        client.create_session(f"py/list/{i}", fp, chunk_tokens=C)
    names = [x.name for x in client.list_sessions(page_size=2, name_prefix="py/list/")]
    assert names == [f"py/list/{i}" for i in range(5)]
    with pytest.raises(e8kv.FailedPrecondition):
        client.delete_session("py/s1", expect_session_tokens=1)
    client.delete_session("py/s1")
    with pytest.raises(e8kv.NotFound) as ei:
        client.get_session("py/s1")
    assert ei.value.code == grpc.StatusCode.NOT_FOUND and ei.value.message


def test_errors_carry_status_and_message(client):
    fp = fingerprint()
    with pytest.raises(e8kv.NotFound):
        client.get_session("no-such-session")
    with pytest.raises(e8kv.InvalidArgument):
        client.lookup(fp, [])                                      # empty token list
    bad = fingerprint()
    bad["head_dim"] = 60                                           # not a multiple of 8
    with pytest.raises(e8kv.InvalidArgument) as ei:
        client.lookup(bad, [1, 2, 3])
    assert "head_dim" in ei.value.message or "60" in ei.value.message
    with pytest.raises(e8kv.InvalidArgument):                     # raw data of the wrong length
        client.put_chunks(fp, [e8kv.ChunkIn(list(range(C)), b"\0" * 100)], encoding="raw",
                          raw_dtype="fp32", chunk_tokens=C)
    with pytest.raises(e8kv.InvalidArgument):                     # garbage as an encoded frame
        client.put_chunks(fp, [e8kv.ChunkIn(list(range(C)), b"\x01" * 4096)], encoding="e8",
                          chunk_tokens=C)
    with pytest.raises(e8kv.NotFound):
        list(client.get_chunks([b"\x07" * 32]))
    client.create_session("py/err", fp, chunk_tokens=C, if_not_exists=True)
    with pytest.raises(e8kv.NotFound):                            # append of chunks never stored
        client.append_session("py/err", [424242] * C)
    with pytest.raises(ValueError):                               # neither keys nor session
        next(client.get_chunks(None))
    with pytest.raises(e8kv.Unavailable):
        e8kv.Client("unix:/nonexistent/e8kvd.sock", timeout=30).lookup(fp, [1])


def test_namespaces_and_tokens(tmp_path):
    (tmp_path / "tokens").write_text("token-aaaaaaaaaaaaaaaa team-a\ntoken-bbbbbbbbbbbbbbbb team-b\n")
    d = Daemon(tmp_path, "--tokens-file", str(tmp_path / "tokens"))
    try:
        fp = fingerprint()
        toks = list(range(40000, 40000 + C))
        with e8kv.Client(d.address, token="token-aaaaaaaaaaaaaaaa", timeout=30) as a, \
                e8kv.Client(d.address, token="token-bbbbbbbbbbbbbbbb", timeout=30) as b, \
                e8kv.Client(d.address, timeout=30) as anon, \
                e8kv.Client(d.address, token="wrong-wrong-wrong-wrong", timeout=30) as wrong:
            put_raw(a, fp, toks, kv(C))
            assert a.lookup(fp, toks, chunk_tokens=C).matched_tokens == C
            assert b.lookup(fp, toks, chunk_tokens=C).matched_tokens == 0
            assert a.get_stats().namespace_stats.namespace_name == "team-a"
            for c in (anon, wrong):
                with pytest.raises(e8kv.Unauthenticated):
                    c.lookup(fp, toks, chunk_tokens=C)
            with pytest.raises(e8kv.PermissionDenied):
                a.verify()
    finally:
        assert d.stop() == 0


def test_purge_wrappers_delete_session_pending_and_purge_unlisted(tmp_path):
    """purge_unlisted, purge_pending and delete_session's chunks_pending (session 6: the RPCs
    and fields existed but e8kv.Client had no way to reach PurgeUnlisted or the pending count),
    and the ResourceExhausted of a full --max-purge-pending."""
    d = Daemon(tmp_path, "--max-purge-pending", "1", "--lookup-lease-ms", "600000")
    try:
        with e8kv.Client(d.address, timeout=30) as c:
            fp = fingerprint("purge")
            leased = list(range(100, 100 + 2 * C))
            put_raw(c, fp, leased, kv(2 * C, 1), session="py/leased", create_session=True)
            lk = c.lookup(fp, leased, chunk_tokens=C)        # a restore under way: 2 leased
            with pytest.raises(e8kv.ResourceExhausted) as ei:  # room for 1 pending only
                c.delete_session("py/leased", purge_chunks=True)
            assert "--max-purge-pending" in ei.value.message
            assert c.purge_pending() == 1
            c.release_lease(lk)                               # the restore ends
            assert c.purge_pending() == 0
            assert c.get_stats().namespace_stats.chunks == 1  # the one that found no room
            r = c.purge_unlisted()
            assert (r.chunks_purged, r.chunks_pending) == (1, 0) and r.bytes_purged > 0

            put_raw(c, fp, leased, kv(2 * C, 1), session="py/again", create_session=True)
            loose = list(range(900, 900 + C))
            put_raw(c, fp, loose, kv(C, 2))                  # no session
            lk = c.lookup(fp, leased[:C], chunk_tokens=C)    # leases py/again's first chunk
            r = c.delete_session("py/again", purge_chunks=True)
            assert (r.chunks_purged, r.chunks_kept, r.chunks_pending) == (1, 1, 1)
            assert c.purge_pending() == 1
            r = c.purge_unlisted()                           # the loose one; the leased is
            assert (r.chunks_purged, r.chunks_pending) == (1, 1)  # pending already
            c.release_lease(lk)
            assert c.purge_pending() == 0 and c.get_stats().namespace_stats.chunks == 0
            assert c.lookup(fp, leased, chunk_tokens=C, no_lease=True).matched_tokens == 0
    finally:
        assert d.stop() == 0


def test_deadlines_checked_infinity_is_none(daemon):
    """A deadline is seconds > 0 or None. Infinity (and past libe8kv's uint32 milliseconds)
    is no deadline: grpcio made every call fail at once as DEADLINE_EXCEEDED, and the C upload
    raised OverflowError (inf) or wrapped the milliseconds (4294967.297 s became 1 ms). NaN, 0
    and negative numbers are refused when the client is made, not reported by every call
    later as "no answer from e8kvd"."""
    import math
    from e8kv import _deadline
    tokens = list(range(500, 500 + C))
    for t in (math.inf, 1e30, 2 ** 63, 4294967.297):
        with e8kv.Client(daemon.address, timeout=t, stream_timeout=t) as c:
            assert c.health() == "SERVING" and c.health(timeout=t) == "SERVING"
            for native in (True, False):
                r = put_raw(c, fingerprint(f"deadline-{native}"), tokens, kv(C, 7), native=native)
                assert r.tokens == C and len(r.chunk_keys) == 1
        with e8kv.Client(daemon.address) as c:
            assert put_raw(c, fingerprint("deadline-call"), tokens, kv(C, 8),
                           timeout=t).tokens == C
    assert _deadline.millis(4294967.297) == 0 and _deadline.millis(4294967.295) == 4294967295
    assert _deadline.millis(1e-9) == 1 and _deadline.millis(None) == 0
    for bad in (0, -1, math.nan, -math.inf):
        for kw in ("timeout", "stream_timeout"):
            with pytest.raises(ValueError, match="seconds > 0"):
                e8kv.Client(daemon.address, **{kw: bad})
    for bad in ("5", True, b"1"):
        with pytest.raises(TypeError, match="number of seconds"):
            e8kv.Client(daemon.address, timeout=bad)
    with e8kv.Client(daemon.address) as c:
        for bad in (-1, math.nan):
            with pytest.raises(ValueError, match="seconds > 0"):
                c.health(timeout=bad)


@pytest.mark.parametrize("native", [False, True])
def test_put_refuses_raw_arrays_that_disagree_with_the_call(client, native):
    """The daemon sees only bytes: fp16 KV declared raw_dtype="bf16", or an array in the
    [L][2][T][H][D] order, has the right byte count and was stored as garbage KV (relative
    error ~1 after a round trip). An array's own dtype and shape are now checked; a
    non-contiguous array and a failing chunk producer on the grpcio path said only UNKNOWN
    "Exception iterating requests!". None of the refused chunks is stored."""
    fp = fingerprint(f"raw-checks-{native}")
    tokens = list(range(7000, 7000 + C))
    x = kv(C, seed=5)
    bad = [(x.astype(np.float16), "bf16", "raw_dtype"),
           (np.ascontiguousarray(x.transpose(0, 1, 3, 2, 4)), "fp32", "shape"),
           (x[:, :, :, :, ::2], "fp32", "contiguous"),
           (x.astype(np.float64), "fp32", "raw_dtype")]
    for data, dt, word in bad:
        with pytest.raises(ValueError, match=word):
            client.put_chunks(fp, [e8kv.ChunkIn(tokens, data)], encoding="raw", raw_dtype=dt,
                              chunk_tokens=C, native=native)  # (no session: a cancelled call
            # may hold a session's write lock a moment, and the next call would get ABORTED)
    assert client.lookup(fp, tokens, chunk_tokens=C).matched_tokens == 0

    def producer():
        yield e8kv.ChunkIn(tokens, x)
        raise KeyError("producer failed")
    with pytest.raises(KeyError, match="producer failed"):
        client.put_chunks(fp, producer(), encoding="raw", raw_dtype="fp32", chunk_tokens=C,
                          session=f"checks-{native}", create_session=True, native=native)
    try:  # (its first, sound chunk may stay as a cache entry; the session does not change)
        assert client.get_session(f"checks-{native}").n_tokens == 0
    except e8kv.NotFound:
        pass
    # what agrees is stored: the array itself, its bytes, bf16 bits as an int16 array
    r = client.put_chunks(fp, [e8kv.ChunkIn(tokens, x)], encoding="raw", raw_dtype="fp32",
                          chunk_tokens=C, native=native)
    assert rel_err(get_raw(client, list(r.chunk_keys)), x) < 0.5
    import torch
    bits = torch.from_numpy(x).bfloat16().view(torch.int16).numpy()
    r = client.put_chunks(fp, [e8kv.ChunkIn(tokens[:C - 1], bits[:, :, :, :C - 1].copy())],
                          encoding="raw", raw_dtype="bf16", chunk_tokens=C, native=native)
    assert rel_err(get_raw(client, list(r.chunk_keys)), x[:, :, :, :C - 1]) < 0.5
