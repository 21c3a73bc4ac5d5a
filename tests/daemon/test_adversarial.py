"""Adversarial tests of e8kvd: what a hostile or careless client sends, through grpcio with
stubs generated from proto/ (tests/daemon/advlib.py). Each test starts its own daemon on a temp
dir and checks a promise of the API: a clear error for bad input, nothing lost or mixed up,
concurrent writers, namespaces, restarts after SIGKILL, a full disk.

Run: E8KVD=build/bin/e8kvd python -m pytest -q tests/daemon/test_adversarial.py
"""
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from advlib import (C, Daemon, code_of, daemon, fingerprint, get_all, kv, kvg, put_msgs,  # noqa: F401
                    raw_header, raw_kv, tmpdir)

CT = 16


def ld(field, b):
    """A protobuf length-delimited field, by hand (to send what generated code refuses)."""
    n, v = len(b), b""
    while True:
        x, n = n & 0x7F, n >> 7
        v += bytes([x | (0x80 if n else 0)])
        if not n:
            return bytes([(field << 3) | 2]) + v + b


def stats(stub, md=None):
    return stub.GetStats(kv.GetStatsRequest(), timeout=60, metadata=md)


# ------------------------------------------------------------------ strings and metadata

def test_malformed_utf8_is_refused_and_cannot_poison_listings(daemon):
    """A malformed UTF-8 metadata value or model_id used to be stored, after which every
    GetSession/ListSessions reply of the namespace failed to decode in proto3 clients."""
    s, fp = daemon.stub, fingerprint()
    create = daemon.channel.unary_unary("/e8kv.v1.KVStore/CreateSession")
    meta = ld(1, b"k") + ld(2, b"\xff\xfe")
    code, msg = code_of(create, ld(1, b"badmeta") + ld(2, fp.SerializeToString()) + ld(4, meta),
                        timeout=60)
    assert code == C.INVALID_ARGUMENT and "UTF-8" in msg, (code, msg)
    for bad in (b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xe2\x82"):
        meta = ld(1, bad) + ld(2, b"v")  # overlong, surrogate, > U+10FFFF, truncated
        code, msg = code_of(create, ld(1, b"badkey") + ld(2, fp.SerializeToString()) +
                            ld(4, meta), timeout=60)
        assert code == C.INVALID_ARGUMENT and "UTF-8" in msg, (bad, code, msg)
    fpb = bytearray(fp.SerializeToString())
    fpb[fpb.find(b"adv/model")] = 0xFF
    code, msg = code_of(create, ld(1, b"badmodel") + ld(2, bytes(fpb)), timeout=60)
    assert code == C.INVALID_ARGUMENT and "model_id" in msg, (code, msg)
    # PutChunks refuses bad session_metadata from the header, before any chunk is stored
    hdr = raw_header(fp, CT, session="p", create_session=True).SerializeToString()
    hdr += ld(11, ld(1, b"k") + ld(2, b"\x80"))
    stream = daemon.channel.stream_unary("/e8kv.v1.KVStore/PutChunks")
    piece = kv.PutChunksRequest(pieces=[kv.ChunkPiece(
        token_ids=list(range(CT)), data=raw_kv(1, 2, 2, CT, 64).tobytes())]).SerializeToString()
    code, msg = code_of(stream, iter([ld(1, hdr), piece]), timeout=60)
    assert code == C.INVALID_ARGUMENT and "UTF-8" in msg, (code, msg)
    assert stats(s).namespace_stats.chunks == 0
    # valid multi-byte UTF-8 is fine and listings decode
    s.CreateSession(kv.CreateSessionRequest(name="ok", fingerprint=fingerprint(model="adv/é✓𝄞"),
                                            metadata={"ключ": "値 ✓ 𝄞"}), timeout=60)
    names = [x.name for x in s.ListSessions(kv.ListSessionsRequest(), timeout=60).sessions]
    assert names == ["ok"]
    got = s.GetSession(kv.GetSessionRequest(name="ok"), timeout=60).session
    assert got.metadata["ключ"] == "値 ✓ 𝄞" and got.fingerprint.model_id == "adv/é✓𝄞"


def test_nul_in_strings_is_refused(daemon):
    """protobuf-c keeps strings NUL-terminated: model_id 'adv/model\0v2' was read as
    'adv/model' (same fingerprint id: another model's cache served), session 'ab\0cd' as 'ab'."""
    s, fp = daemon.stub, fingerprint()
    toks = list(range(CT))
    s.PutChunks(put_msgs(raw_header(fp, CT, session="ab", create_session=True),
                         [(toks, raw_kv(1, 2, 2, CT, 64).tobytes())]), timeout=60)
    other = fingerprint(model="adv/model\0v2")
    code, msg = code_of(s.Lookup, kv.LookupRequest(fingerprint=other, chunk_tokens=CT,
                                                   token_ids=toks), timeout=60)
    assert code == C.INVALID_ARGUMENT and "'model_id' holds a NUL" in msg, (code, msg)
    code, msg = code_of(s.GetSession, kv.GetSessionRequest(name="ab\0cd"), timeout=60)
    assert code == C.INVALID_ARGUMENT and "'name' holds a NUL" in msg, (code, msg)
    code, msg = code_of(s.DeleteSession, kv.DeleteSessionRequest(name="ab\0"), timeout=60)
    assert code == C.INVALID_ARGUMENT, (code, msg)
    code, msg = code_of(s.CreateSession, kv.CreateSessionRequest(
        name="m", fingerprint=fp, metadata={"k\0": "v"}), timeout=60)
    assert code == C.INVALID_ARGUMENT and "NUL" in msg, (code, msg)
    code, msg = code_of(s.PutChunks, put_msgs(raw_header(fp, CT, session="ab\0x"),
                                              [(list(range(CT, 2 * CT)),
                                                raw_kv(2, 2, 2, CT, 64).tobytes())]), timeout=60)
    assert code == C.INVALID_ARGUMENT and "'session' holds a NUL" in msg, (code, msg)
    info = s.GetSession(kv.GetSessionRequest(name="ab"), timeout=60).session
    assert info.n_tokens == CT
    assert [x.name for x in s.ListSessions(kv.ListSessionsRequest(), timeout=60).sessions] == ["ab"]


def test_metadata_over_the_store_bound_is_a_clear_error(daemon):
    """64 entries x 4 KiB passed the daemon's per-entry checks and failed in the store with
    'session_create: bad argument (meta 262840 bytes, max 65536)'."""
    s, fp = daemon.stub, fingerprint()
    meta = {f"k{i}": "v" * 4096 for i in range(64)}
    code, msg = code_of(s.CreateSession, kv.CreateSessionRequest(name="m", fingerprint=fp,
                                                                 metadata=meta), timeout=60)
    assert code == C.INVALID_ARGUMENT and "at most 65536 in all" in msg, (code, msg)
    # PutChunks merging more metadata into a session: refused, session unchanged
    s.CreateSession(kv.CreateSessionRequest(name="m", fingerprint=fp, chunk_tokens=CT,
                                            metadata={f"a{i}": "v" * 4096 for i in range(15)}),
                    timeout=60)
    more = {f"b{i}": "v" * 4096 for i in range(15)}
    raw = raw_kv(2, 2, 2, CT, 64).tobytes()
    code, msg = code_of(s.PutChunks, put_msgs(raw_header(fp, CT, session="m", session_metadata=more),
                                              [(list(range(CT)), raw)]), timeout=60)
    assert code == C.INVALID_ARGUMENT and "at most 65536 in all" in msg, (code, msg)
    info = s.GetSession(kv.GetSessionRequest(name="m"), timeout=60).session
    assert info.n_tokens == 0 and len(info.metadata) == 15


def test_list_sessions_pages_fit_default_client_limit():
    """A default page of sessions with ~60 KiB metadata each was a 6 MB reply, over the 4 MiB
    receive limit of every default gRPC client: the namespace could not be listed. After such
    replies SIGTERM to exit also took 10 s (grpc_shutdown waiting on gRPC's executor)."""
    daemon = Daemon()
    s, fp = daemon.stub, fingerprint()
    meta = {f"k{i}": "v" * 4000 for i in range(15)}
    want = sorted(f"big{i:03d}" for i in range(80))
    for n in want:
        s.CreateSession(kv.CreateSessionRequest(name=n, fingerprint=fp, metadata=meta), timeout=60)
    names, token, pages = [], "", 0
    while True:
        page = s.ListSessions(kv.ListSessionsRequest(page_token=token), timeout=60)
        assert page.ByteSize() <= 3 << 20
        names += [x.name for x in page.sessions]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert names == want and pages >= 2
    t0 = time.monotonic()
    assert daemon.stop() == 0
    took = time.monotonic() - t0
    # the bug added ~10 s; a plain stop takes ~0.3 s here, several times that on a loaded
    # machine: the bound follows an idle daemon's stop measured now, on the same machine
    idle = Daemon()
    t0 = time.monotonic()
    assert idle.stop() == 0
    base = time.monotonic() - t0
    assert took < 5 + 3 * base, (took, base)


# ------------------------------------------------------------------ hostile requests

def test_hostile_requests_get_clear_errors(daemon):
    s, fp = daemon.stub, fingerprint()
    toks = list(range(100, 100 + 2 * CT))
    raws = [raw_kv(i, 2, 2, CT, 64).tobytes() for i in range(2)]
    r = s.PutChunks(put_msgs(raw_header(fp, CT, session="a", create_session=True),
                             [(toks[:CT], raws[0]), (toks[CT:], raws[1])]), timeout=60)
    keys = list(r.chunk_keys)
    K = kv.ChunkKeys(keys=keys)
    G = lambda **kw: code_of(get_all, s, kv.GetChunksRequest(**kw))  # noqa: E731
    Lk = lambda **kw: code_of(s.Lookup, kv.LookupRequest(**kw), timeout=60)  # noqa: E731
    cases = [
        (Lk(fingerprint=fp, chunk_tokens=CT), C.INVALID_ARGUMENT, "empty"),
        (Lk(fingerprint=fp, chunk_tokens=CT, token_ids=list(range((1 << 20) + 1))),
         C.INVALID_ARGUMENT, "max-lookup-tokens"),
        (Lk(fingerprint=fp, chunk_tokens=65537, token_ids=[1]), C.INVALID_ARGUMENT, "65537"),
        (Lk(chunk_tokens=CT, token_ids=[1]), C.INVALID_ARGUMENT, "fingerprint is required"),
        (G(keys=K, expect_fingerprint_id=b"\0" * 32), C.FAILED_PRECONDITION, "fingerprint"),
        (G(keys=K, release_lease=b"\1" * 16), C.INVALID_ARGUMENT, "lease"),
        (G(keys=K, encoding=kv.ENCODING_RAW, dtype=-1), C.INVALID_ARGUMENT, "dtype"),
        (G(keys=K, encoding=-5), C.INVALID_ARGUMENT, "encoding"),
        (G(keys=K, layer_begin=5, layer_end=9), C.INVALID_ARGUMENT, "layer range"),
        (G(keys=K, layer_begin=2), C.INVALID_ARGUMENT, "layer range"),
        (G(keys=K, max_piece_bytes=1), C.INVALID_ARGUMENT, "max_piece_bytes"),
        (G(keys=K, max_piece_bytes=0xFFFFFFFF), C.INVALID_ARGUMENT, "max_piece_bytes"),
        (G(keys=kv.ChunkKeys(keys=[b"\0" * 32])), C.NOT_FOUND, "not found"),
        (G(keys=kv.ChunkKeys(keys=[b"\0" * 31])), C.INVALID_ARGUMENT, "31 bytes"),
        (G(keys=kv.ChunkKeys()), C.INVALID_ARGUMENT, "keys is empty"),
        (G(), C.INVALID_ARGUMENT, "give keys or range"),
        (G(range=kv.SessionRange(session="nope")), C.NOT_FOUND, "nope"),
        (G(range=kv.SessionRange(session="a b")), C.INVALID_ARGUMENT, "session name"),
        (G(range=kv.SessionRange(session="a", start_token=5, end_token=10 ** 18)),
         C.INVALID_ARGUMENT, "beyond"),
        (G(range=kv.SessionRange(session="a", start_token=2 ** 64 - 1)), C.INVALID_ARGUMENT,
         "beyond"),
        (code_of(s.GetSession, kv.GetSessionRequest(name="a" * 256), timeout=60),
         C.INVALID_ARGUMENT, "1..255"),
        (code_of(s.ListSessions, kv.ListSessionsRequest(page_size=1001), timeout=60),
         C.INVALID_ARGUMENT, "1000"),
        (code_of(s.AppendSession, kv.AppendSessionRequest(name="zz", token_ids=[1]), timeout=60),
         C.NOT_FOUND, "zz"),
        (code_of(s.AppendSession, kv.AppendSessionRequest(name="a", token_ids=[7] * CT),
                 timeout=60), C.NOT_FOUND, "not stored"),
        (code_of(s.DeleteSession, kv.DeleteSessionRequest(name="zz"), timeout=60),
         C.NOT_FOUND, "zz"),
    ]
    for theta, dim, layers in ((float("nan"), 64, 2), (-1.0, 64, 2), (10000.0, 12, 2),
                               (10000.0, 64, 0), (10000.0, 64, 513)):
        bad = fingerprint(theta=theta, dim=dim, layers=layers)
        cases.append((code_of(s.CreateSession, kv.CreateSessionRequest(name="m", fingerprint=bad),
                              timeout=60), C.INVALID_ARGUMENT, "fingerprint"))
    for i, ((code, msg), want, word) in enumerate(cases):
        assert code == want and word in msg, (i, code, msg, want, word)
    for meth in ("Lookup", "GetSession", "CreateSession", "ListSessions", "DeleteSession",
                 "AppendSession", "GetStats", "Verify", "Compact"):
        for junk in (b"\xff", b"\x0a\x05abc", bytes(random.Random(meth).randbytes(64))):
            code, msg = code_of(daemon.channel.unary_unary(f"/e8kv.v1.KVStore/{meth}"), junk,
                                timeout=60)
            assert code == C.INVALID_ARGUMENT and "malformed" in msg, (meth, junk, code, msg)
    # nothing of that changed the stored state
    lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks), timeout=60)
    assert lk.matched_tokens == 2 * CT and list(lk.chunk_keys) == keys
    assert stats(s).namespace_stats.chunks == 2


def test_lying_frames_and_raw_sizes_store_nothing(daemon):
    s, fp = daemon.stub, fingerprint()
    toks = list(range(CT))
    raw = raw_kv(1, 2, 2, CT, 64).tobytes()
    r = s.PutChunks(put_msgs(raw_header(fp, CT, session="fr", create_session=True),
                             [(toks, raw)]), timeout=60)
    frame = bytes(get_all(s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=r.chunk_keys)))[0]["data"])
    before = stats(s).namespace_stats
    other = list(range(500, 500 + CT))
    F = lambda data, t=other, **kw: code_of(s.PutChunks, put_msgs(kv.PutHeader(  # noqa: E731
        fingerprint=fp, chunk_tokens=CT, encoding=kv.ENCODING_E8_FRAME, **kw), [(t, data)],
        piece=1000), timeout=60)
    bad = [F(frame[:-1]), F(frame + b"\0"), F(b""), F(frame, t=other[:-1]),
           F(frame, parent_key=r.chunk_keys[0]), F(b"\0" * len(frame)),
           code_of(s.PutChunks, put_msgs(kv.PutHeader(fingerprint=fingerprint(model="adv/x"),
                   chunk_tokens=CT, encoding=kv.ENCODING_E8_FRAME), [(other, frame)]), timeout=60)]
    rng = random.Random(7)
    for off in [0, 4, 10, 20, 30, 62, 100] + [rng.randrange(len(frame)) for _ in range(8)]:
        b = bytearray(frame)
        b[off] ^= 1 << rng.randrange(8)
        bad.append(F(bytes(b)))
    for dt, data in ((kv.DTYPE_FP16, raw[:-2]), (kv.DTYPE_FP16, raw + b"\0\0"),
                     (kv.DTYPE_FP32, raw), (kv.DTYPE_BF16, raw[:-1])):
        bad.append(code_of(s.PutChunks, put_msgs(kv.PutHeader(
            fingerprint=fp, chunk_tokens=CT, encoding=kv.ENCODING_RAW, raw_dtype=dt),
            [(other, data)]), timeout=60))
    nan = np.full((2, 2, 2, CT, 64), np.nan, dtype=np.float16).tobytes()
    bad.append(code_of(s.PutChunks, put_msgs(raw_header(fp, CT), [(other, nan)]), timeout=60))
    for i, (code, msg) in enumerate(bad):
        assert code == C.INVALID_ARGUMENT, (i, code, msg)
    after = stats(s).namespace_stats
    assert (after.chunks, after.stored_bytes) == (before.chunks, before.stored_bytes)
    lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=other), timeout=60)
    assert lk.matched_tokens == 0


def test_fingerprints_never_mix(daemon):
    s, fp = daemon.stub, fingerprint()
    toks = list(range(7, 7 + 2 * CT))
    s.PutChunks(put_msgs(raw_header(fp, CT), [(toks[:CT], raw_kv(3, 2, 2, CT, 64).tobytes()),
                                              (toks[CT:], raw_kv(4, 2, 2, CT, 64).tobytes())]),
                timeout=60)
    others = [fingerprint(dim=128), fingerprint(theta=10000.5), fingerprint(model="adv/y"),
              fingerprint(layout=kv.ROPE_LAYOUT_INTERLEAVED), fingerprint(preset="K4V4"),
              fingerprint(heads=1), fingerprint(layers=3)]
    for f2 in others:
        lk = s.Lookup(kv.LookupRequest(fingerprint=f2, chunk_tokens=CT, token_ids=toks), timeout=60)
        assert lk.matched_tokens == 0 and not lk.chunk_keys
    for ct in (CT - 1, CT * 2, 256):
        lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=ct, token_ids=toks), timeout=60)
        assert lk.matched_tokens == 0
    lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks), timeout=60)
    assert lk.matched_tokens == 2 * CT
    # one token changed in the second chunk: only the first chunk matches
    t2 = toks[:]
    t2[CT + 3] += 1
    lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=t2), timeout=60)
    assert lk.matched_tokens == CT


def test_lookup_matches_at_most_what_one_getchunks_may_fetch():
    """Lookup matched any number of chunks: 140000 stored 1-token chunks made a 4.9 MB reply
    that no gRPC client with the default 4 MiB receive limit could read, and a reply of more
    than --max-chunks-per-call keys could not be fetched by one GetChunks anyway. Lookup now
    matches at most --max-chunks-per-call chunks (a prefix of the stored one)."""
    d = Daemon(extra=["--max-chunks-per-call=300"])
    try:
        s, fp = d.stub, fingerprint(layers=1, heads=1, dim=8)
        toks = list(range(50, 50 + 500))
        raw = raw_kv(3, 1, 1, 1, 8).tobytes()
        for part in (toks[:250], toks[250:]):  # 250 one-token chunks per call, one session
            s.PutChunks(put_msgs(raw_header(fp, 1, session="long", create_session=True),
                                 [([t], raw) for t in part]), timeout=60)
        lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=1, token_ids=toks),
                      timeout=30)
        assert lk.matched_tokens == 300 and len(lk.chunk_keys) == 300, lk.matched_tokens
        got = get_all(s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=lk.chunk_keys),
                                             release_lease=lk.lease))
        assert [c["tokens"] for c in got] == [[t] for t in toks[:300]]
        # the same keys as the session's first 300 chunks
        first = get_all(s, kv.GetChunksRequest(range=kv.SessionRange(session="long",
                                                                     end_token=300)))
        assert [c["key"] for c in first] == list(lk.chunk_keys)
    finally:
        assert d.stop() == 0


def test_decoded_size_is_bounded():
    """An E8_FRAME chunk is bounded by --max-chunk-bytes as uploaded, but may decode to far
    more (zeros compress ~40x): GetChunks RAW allocated whatever the frame's geometry asked."""
    base = tmpdir(prefix="kvdadv-bomb-")
    data, fp, n = os.path.join(base, "data"), fingerprint(), 1024
    toks = list(range(n))
    zeros = np.zeros((2, 2, 2, n, 64), np.float16).tobytes()  # 1 MiB raw fp16
    d = Daemon(data=data)
    r = d.stub.PutChunks(put_msgs(raw_header(fp, n), [(toks, zeros)]), timeout=60)
    frame = bytes(get_all(d.stub, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=r.chunk_keys)))[0]
                  ["data"])
    assert d.stop(rm=False) == 0
    assert len(frame) < 64 << 10
    d = Daemon(data=data, extra=["--max-chunk-bytes=256K"])
    try:
        s = d.stub
        # the frame itself is small enough to be uploaded again under the low limit
        again = s.PutChunks(put_msgs(kv.PutHeader(fingerprint=fp, chunk_tokens=n,
                                                  encoding=kv.ENCODING_E8_FRAME),
                                     [(toks, frame)]), timeout=60)
        assert again.chunks_deduplicated == 1
        K = kv.ChunkKeys(keys=r.chunk_keys)
        code, msg = code_of(get_all, s, kv.GetChunksRequest(keys=K, encoding=kv.ENCODING_RAW,
                                                            dtype=kv.DTYPE_FP32))
        assert code == C.RESOURCE_EXHAUSTED and "decodes to 2097152 bytes" in msg, (code, msg)
        code, msg = code_of(get_all, s, kv.GetChunksRequest(keys=K, encoding=kv.ENCODING_RAW))
        assert code == C.RESOURCE_EXHAUSTED, (code, msg)
        one = get_all(s, kv.GetChunksRequest(keys=K, encoding=kv.ENCODING_RAW, layer_end=1))
        assert len(one[0]["data"]) == 512 << 10
        assert not np.frombuffer(bytes(one[0]["data"]), np.float16).any()  # zeros (maybe -0)
        assert bytes(get_all(s, kv.GetChunksRequest(keys=K))[0]["data"]) == frame
    finally:
        assert d.stop() == 0
        shutil.rmtree(base, ignore_errors=True)


def test_eviction_never_takes_pinned_or_leased_chunks():
    # the lookup's lease must outlive the 59 puts after it: 10 min, not the 30 s default
    # (59 fdatasync'ed puts take ~1 s here, but a slow loaded disk is another matter)
    d = Daemon(extra=["--capacity-bytes=200K", "--segment-bytes=1M",
                      "--lookup-lease-ms=600000"])
    try:
        s, fp = d.stub, fingerprint()
        ptoks = list(range(10 ** 6, 10 ** 6 + 4 * CT))
        s.PutChunks(put_msgs(raw_header(fp, CT, session="pinned", create_session=True),
                             [(ptoks[i * CT:(i + 1) * CT], raw_kv(i, 2, 2, CT, 64).tobytes())
                              for i in range(4)]), timeout=60)
        first = list(range(CT))
        s.PutChunks(put_msgs(raw_header(fp, CT), [(first, raw_kv(99, 2, 2, CT, 64).tobytes())]),
                    timeout=60)
        lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=first),
                      timeout=60)
        assert lk.matched_tokens == CT and lk.lease
        for i in range(1, 60):  # unpinned cache entries, 4x the budget
            toks = list(range(i * CT * 10, i * CT * 10 + CT))
            s.PutChunks(put_msgs(raw_header(fp, CT), [(toks, raw_kv(i, 2, 2, CT, 64).tobytes())]),
                        timeout=60)
        st = stats(s).store_stats
        assert st.evictions > 20 and st.live_bytes <= 200 << 10
        assert get_all(s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=lk.chunk_keys),
                                              release_lease=lk.lease))[0]["tokens"] == first
        got = get_all(s, kv.GetChunksRequest(range=kv.SessionRange(session="pinned")))
        assert [g["tokens"] for g in got] == [ptoks[i * CT:(i + 1) * CT] for i in range(4)]
        codes = []
        for i in range(40):  # pinned sessions until the budget is all pinned
            toks = list(range(5 * 10 ** 6 + i * CT, 5 * 10 ** 6 + (i + 1) * CT))
            codes.append(code_of(s.PutChunks, put_msgs(
                raw_header(fp, CT, session=f"p{i}", create_session=True),
                [(toks, raw_kv(i, 2, 2, CT, 64).tobytes())]), timeout=60))
        refused = [m for c, m in codes if c != C.OK]
        assert refused and all("pinned" in m for m in refused), codes
        assert all(c == C.RESOURCE_EXHAUSTED for c, _ in codes if c != C.OK)
        ok = [i for i, (c, _) in enumerate(codes) if c == C.OK]
        for i in ok:
            assert get_all(s, kv.GetChunksRequest(range=kv.SessionRange(session=f"p{i}")))
        for i in sorted(set(range(40)) - set(ok)):  # refused: the session was not created
            assert code_of(s.GetSession, kv.GetSessionRequest(name=f"p{i}"),
                           timeout=60)[0] == C.NOT_FOUND
        assert s.Verify(kv.VerifyRequest(), timeout=60).corrupt_records == 0
    finally:
        assert d.stop() == 0


# ------------------------------------------------------------------ namespaces

def test_namespaces_isolated_with_stolen_keys_and_leases():
    tmp = tmpdir(prefix="kvdadv-tok-")
    tf = os.path.join(tmp, "tokens")
    with open(tf, "w") as f:
        f.write("tokenAAAAAAAAAAAAAAAA nsA\ntokenBBBBBBBBBBBBBBBB nsB\n"
                "tokenADMINADMINADMIN nsA admin\n")
    d = Daemon(extra=[f"--tokens-file={tf}"])
    try:
        s, fp = d.stub, fingerprint()
        A = [("authorization", "Bearer tokenAAAAAAAAAAAAAAAA")]
        B = [("authorization", "Bearer tokenBBBBBBBBBBBBBBBB")]
        toks = list(range(CT))
        raw = raw_kv(1, 2, 2, CT, 64).tobytes()
        r = s.PutChunks(put_msgs(raw_header(fp, CT, session="sa", create_session=True),
                                 [(toks, raw)]), timeout=60, metadata=A)
        key = r.chunk_keys[0]
        lka = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks),
                       timeout=60, metadata=A)
        assert lka.matched_tokens == CT
        lkb = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks),
                       timeout=60, metadata=B)
        assert lkb.matched_tokens == 0
        cases = [
            (code_of(get_all, s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=[key])), metadata=B),
             C.NOT_FOUND),
            (code_of(get_all, s, kv.GetChunksRequest(range=kv.SessionRange(session="sa")),
                     metadata=B), C.NOT_FOUND),
            (code_of(get_all, s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=[key]),
                                                     release_lease=lka.lease), metadata=B),
             C.INVALID_ARGUMENT),
            (code_of(s.PutChunks, put_msgs(raw_header(fp, CT, parent_key=key), [(toks, raw)]),
                     timeout=60, metadata=B), C.NOT_FOUND),
            (code_of(s.AppendSession, kv.AppendSessionRequest(name="sa", token_ids=toks),
                     timeout=60, metadata=B), C.NOT_FOUND),
            (code_of(s.Verify, kv.VerifyRequest(), timeout=60, metadata=A), C.PERMISSION_DENIED),
            (code_of(s.Compact, kv.CompactRequest(), timeout=60, metadata=B), C.PERMISSION_DENIED),
            (code_of(s.GetStats, kv.GetStatsRequest(), timeout=60), C.UNAUTHENTICATED),
            (code_of(s.GetStats, kv.GetStatsRequest(), timeout=60,
                     metadata=[("authorization", "Bearer ")]), C.UNAUTHENTICATED),
            (code_of(s.GetStats, kv.GetStatsRequest(), timeout=60,
                     metadata=[("authorization", "Bearer tokenAAAAAAAAAAAAAAAA ")]),
             C.UNAUTHENTICATED),
            (code_of(s.GetStats, kv.GetStatsRequest(), timeout=60,
                     metadata=[("authorization", "tokenAAAAAAAAAAAAAAAA")]), C.UNAUTHENTICATED),
        ]
        for i, ((code, msg), want) in enumerate(cases):
            assert code == want, (i, code, msg)
        # B storing the same tokens gets its own key and its own chunk
        rb = s.PutChunks(put_msgs(raw_header(fp, CT), [(toks, raw_kv(9, 2, 2, CT, 64).tobytes())]),
                         timeout=60, metadata=B)
        assert rb.chunks_stored == 1 and rb.chunk_keys[0] != key
        st = stats(s, B).namespace_stats
        assert st.namespace_name == "nsB" and st.chunks == 1 and st.sessions == 0
        assert not s.ListSessions(kv.ListSessionsRequest(), timeout=60, metadata=B).sessions
        ga = get_all(s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=[key])), metadata=A)
        assert ga[0]["tokens"] == toks
    finally:
        assert d.stop() == 0
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ concurrency

def test_stream_cut_midway_leaves_session_as_it_was(daemon):
    s, fp = daemon.stub, fingerprint()
    toks = list(range(4 * CT))
    chunks = [(toks[i * CT:(i + 1) * CT], raw_kv(i, 2, 2, CT, 64).tobytes()) for i in range(4)]
    s.PutChunks(put_msgs(raw_header(fp, CT, session="cut", create_session=True), chunks[:1]),
                timeout=60)
    for cut_after in (1, 3, 6, 9):  # messages sent before the client goes away
        def gen():
            for i, m in enumerate(put_msgs(raw_header(fp, CT, session="cut",
                                                      session_metadata={"x": "y"}),
                                           chunks[1:], piece=3000)):
                if i == cut_after:
                    raise RuntimeError("client gone")  # grpcio cancels the call
                yield m
        code, _ = code_of(s.PutChunks, gen(), timeout=60)
        # ABORTED: the call before is still releasing the session's write lock
        assert code in (C.CANCELLED, C.UNKNOWN, C.ABORTED), code
        info = s.GetSession(kv.GetSessionRequest(name="cut", include_chunk_keys=True),
                            timeout=60).session
        assert info.n_tokens == CT and len(info.chunk_keys) == 1 and "x" not in info.metadata
    # a call cut by its deadline, the same
    def slow():
        for i, m in enumerate(put_msgs(raw_header(fp, CT, session="cut"), chunks[1:])):
            if i == 2:
                time.sleep(1.5)
            yield m
    t0 = time.monotonic()
    while True:  # the cancelled call before may hold the session's lock a few ms
        code = code_of(s.PutChunks, slow(), timeout=1)[0]
        if code != C.ABORTED or time.monotonic() - t0 > 60:
            break
        time.sleep(0.05)
    assert code == C.DEADLINE_EXCEEDED, code
    assert s.GetSession(kv.GetSessionRequest(name="cut"), timeout=60).session.n_tokens == CT
    t0 = time.monotonic()
    while True:  # the call cut by its deadline may hold the lock until the daemon sees it
        try:
            r = s.PutChunks(put_msgs(raw_header(fp, CT, session="cut"), chunks[1:]), timeout=60)
            break
        except grpc.RpcError as e:
            assert e.code() == C.ABORTED and time.monotonic() - t0 < 60, e
            time.sleep(0.1)
    assert r.session.n_tokens == 4 * CT


def test_same_key_written_concurrently_with_different_bytes(daemon):
    """8 clients store the same tokens at once, each with other KV: one chunk is stored, all
    get its key, the bytes are one writer's whole (never a mix), stats count it once."""
    s, fp, n = daemon.stub, fingerprint(preset="K4V4"), 8
    toks = list(range(3000, 3000 + CT))
    raws = [raw_kv(50 + i, 2, 2, CT, 64) for i in range(n)]
    barrier = threading.Barrier(n)

    def one(i):
        stub = kvg.KVStoreStub(grpc.insecure_channel("unix:" + daemon.sock))

        def gen():
            barrier.wait()
            yield from put_msgs(raw_header(fp, CT), [(toks, raws[i].tobytes())], piece=3000)
        return stub.PutChunks(gen(), timeout=60)

    with ThreadPoolExecutor(n) as ex:
        rs = list(ex.map(one, range(n)))
    assert len({r.chunk_keys[0] for r in rs}) == 1
    assert sum(r.chunks_stored for r in rs) == 1 and sum(r.chunks_deduplicated for r in rs) == n - 1
    st = stats(daemon.stub).store_stats
    assert st.chunks == 1
    got = get_all(s, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=[rs[0].chunk_keys[0]]),
                                         encoding=kv.ENCODING_RAW))
    dec = np.frombuffer(bytes(got[0]["data"]), np.float16).astype(np.float32)
    errs = sorted(float(np.sqrt(((dec - r.astype(np.float32).ravel()) ** 2).mean())) for r in raws)
    assert errs[0] < 0.1 < errs[1], errs  # close to exactly one writer's KV
    v = s.Verify(kv.VerifyRequest(), timeout=60)
    assert v.records_checked == 1 and v.corrupt_records == 0


def test_idle_streams_do_not_block_other_calls():
    """--threads PutChunks streams that send a header and wait used to hold every worker:
    Lookup, GetStats and even Health/Check hung until --max-call-ms. Decided by events, not by
    time: the unary calls are made once both stream workers provably hold an idle stream
    (GetStats counts them in flight) and must all be answered before the streams are released
    (release is set only after them; with the bug they would wait for it and hit their own
    deadline). The old checks (0.5 s for the streams to start, 15 calls in < 5 s, 3 s
    deadlines) raced the clock on a loaded machine."""
    d = Daemon(extra=["--threads=2", "--unary-threads=2"])
    release = threading.Event()
    try:
        fp = fingerprint()

        def idle(i):
            stub = kvg.KVStoreStub(grpc.insecure_channel("unix:" + d.sock))

            def gen():
                yield kv.PutChunksRequest(header=raw_header(fp, CT, session=f"idle{i}",
                                                            create_session=True))
                release.wait(120)
            return code_of(stub.PutChunks, gen(), timeout=180)

        with ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(idle, i) for i in range(3)]  # one more than --threads
            t0 = time.monotonic()  # both stream workers busy: 2 streams + this GetStats
            while d.stub.GetStats(kv.GetStatsRequest(), timeout=60).daemon_stats \
                    .calls_in_flight < 3:
                assert time.monotonic() - t0 < 60, "the idle streams never reached a worker"
                time.sleep(0.02)
            for _ in range(5):
                d.stub.GetStats(kv.GetStatsRequest(), timeout=60)
                d.stub.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=[1]),
                              timeout=60)
                d.stub.ListSessions(kv.ListSessionsRequest(), timeout=60)
            health = d.channel.unary_unary("/grpc.health.v1.Health/Check")
            assert health(b"", timeout=60) == b"\x08\x01"  # SERVING
            assert not any(f.done() for f in futs)  # the streams were idle all along
            release.set()
            codes = [f.result()[0] for f in futs]
        assert codes == [C.OK] * 3, codes  # each stream made its (empty) session
        assert len(d.stub.ListSessions(kv.ListSessionsRequest(), timeout=60).sessions) == 3
    finally:
        release.set()
        assert d.stop() == 0


def test_stalled_stream_frees_its_worker_after_stall_ms():
    """An uploader that stops sending held its stream worker for all of --max-call-ms (10 min
    by default); --stall-ms bounds one wait on the peer. The stalled uploader waits on an event
    set only after its call ended (not on an 8 s sleep), the steady one keeps 10x inside the
    limit, and the reader that stops reading is checked once the daemon ended its call (a
    drain after sleep(3) read everything, and the call ended OK, when the cut came late)."""
    d = Daemon(extra=["--threads=1", "--stall-ms=2000"])
    gate = threading.Event()
    try:
        fp = fingerprint()
        toks = list(range(2 * CT))
        chunks = [(toks[:CT], raw_kv(1, 2, 2, CT, 64).tobytes()),
                  (toks[CT:], raw_kv(2, 2, 2, CT, 64).tobytes())]

        def stalled():
            yield kv.PutChunksRequest(header=raw_header(fp, CT, session="st",
                                                        create_session=True))
            gate.wait(120)  # set after the call ended: only the daemon can end it
            yield from list(put_msgs(raw_header(fp, CT), chunks))[1:]
        t0 = time.monotonic()
        code, msg = code_of(d.stub.PutChunks, stalled(), timeout=60)
        took = time.monotonic() - t0
        gate.set()
        assert code == C.DEADLINE_EXCEEDED and "--stall-ms" in msg, (code, msg)
        assert took < 20, took  # at ~2 s: 10x the limit, far from the client's 60 s
        assert code_of(d.stub.GetSession, kv.GetSessionRequest(name="st"), timeout=60)[0] == \
            C.NOT_FOUND

        def steady():  # slow (19 messages, ~3.8 s) but never 2 s without one: served
            for m in put_msgs(raw_header(fp, CT, session="st", create_session=True), chunks,
                              piece=1000):
                time.sleep(0.2)
                yield m
        t0 = time.monotonic()
        while True:  # the stalled call may still hold the session's lock a moment
            code, msg = code_of(d.stub.PutChunks, steady(), timeout=60)
            if code != C.ABORTED or time.monotonic() - t0 > 60:
                break
            time.sleep(0.1)
        assert code == C.OK, (code, msg)
        assert d.stub.GetSession(kv.GetSessionRequest(name="st"), timeout=60).session.n_tokens \
            == 2 * CT
        # a reader that stops reading (8 MiB decoded in 64 KiB pieces): on a channel whose
        # receive window stays at 64 KiB (BDP probing grows it to MiBs on a fast machine)
        big, n = fingerprint(layers=8, heads=4, dim=128), 256
        r = d.stub.PutChunks(put_msgs(raw_header(big, n), [(list(range(n)),
                                                            raw_kv(3, 8, 4, n, 128).tobytes())]),
                             timeout=60)
        with grpc.insecure_channel("unix:" + d.sock,
                                   options=[("grpc.http2.bdp_probe", 0)]) as small:
            it = kvg.KVStoreStub(small).GetChunks(kv.GetChunksRequest(
                keys=kv.ChunkKeys(keys=r.chunk_keys), encoding=kv.ENCODING_RAW,
                dtype=kv.DTYPE_FP32, max_piece_bytes=65536), timeout=60)
            next(it)
            t0 = time.monotonic()  # until the daemon ended it (only this GetStats in flight)
            while d.stub.GetStats(kv.GetStatsRequest(), timeout=60).daemon_stats \
                    .calls_in_flight > 1:
                assert time.monotonic() - t0 < 60, "the stopped reader's call never ended"
                time.sleep(0.02)
            code, msg = code_of(list, it)  # what was buffered, then the daemon's status
        assert code == C.DEADLINE_EXCEEDED and "--stall-ms" in msg, (code, msg)
        assert get_all(d.stub, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=r.chunk_keys)))
    finally:
        gate.set()
        assert d.stop() == 0


# ------------------------------------------------------------------ crashes and a full disk

def test_sigkill_during_concurrent_writes_keeps_every_acked_chunk():
    data = tmpdir(prefix="kvdadv-kill-") + "/data"
    fp, acked, lock = fingerprint(), {}, threading.Lock()
    rng = random.Random(11)
    for rnd in range(3):
        d = Daemon(data=data, extra=["--segment-bytes=1M"])
        stop = threading.Event()

        def writer(w, d=d, rnd=rnd, stop=stop):
            stub = kvg.KVStoreStub(grpc.insecure_channel("unix:" + d.sock))
            for j in range(10 ** 6):
                if stop.is_set():
                    return
                name = f"r{rnd}w{w}j{j}"
                toks = [(rnd << 24) + (w << 20) + (j << 6) + t for t in range(2 * CT)]
                chunks = [(toks[:CT], raw_kv(j, 2, 2, CT, 64).tobytes()),
                          (toks[CT:], raw_kv(j + 1, 2, 2, CT, 64).tobytes())]
                try:
                    r = stub.PutChunks(put_msgs(raw_header(fp, CT, session=name,
                                                           create_session=True), chunks,
                                                piece=4000), timeout=60)
                except grpc.RpcError:
                    return
                with lock:
                    acked[name] = (toks, list(r.chunk_keys))

        before = len(acked)
        ts = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in ts:
            t.start()
        # kill once this round has acks (a fixed 0.4-1.4 s got too few puts done on a loaded
        # machine for the final count), then at a random point of the writes
        t0 = time.monotonic()
        while len(acked) < before + 4:
            assert time.monotonic() - t0 < 60, f"round {rnd}: {len(acked) - before} acks in 60 s"
            time.sleep(0.01)
        time.sleep(rng.random() * 0.5)
        d.kill9()
        stop.set()
        for t in ts:
            t.join()
        d = Daemon(data=data)
        try:
            for name, (toks, keys) in acked.items():
                got = get_all(d.stub, kv.GetChunksRequest(range=kv.SessionRange(session=name)))
                assert [g["tokens"] for g in got] == [toks[:CT], toks[CT:]], name
                lk = d.stub.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT,
                                                    token_ids=toks, no_lease=True), timeout=60)
                assert list(lk.chunk_keys) == keys, name
            v = d.stub.Verify(kv.VerifyRequest(), timeout=60)
            assert v.corrupt_records == 0
            # acked sessions, plus at most one per writer committed just before the kill
            assert len(acked) <= stats(d.stub).store_stats.sessions <= len(acked) + 3
        finally:
            assert d.stop() == 0
    assert len(acked) > 10
    shutil.rmtree(os.path.dirname(data), ignore_errors=True)


class TmpfsHolder:
    """A private mount namespace (unshare -m, as root or in a user namespace) holding a small
    tmpfs on `path`; daemons started in it through nsenter see the full-size-limited disk."""

    def __init__(self, path, size="4m"):
        import advlib
        import subprocess
        flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
        self.proc = subprocess.Popen(
            ["unshare", *flags, "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs -o size={size} tmpfs "{path}" && echo mounted && exec sleep 600'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        advlib._started.append(self.proc)
        assert line.strip() == "mounted", "cannot mount a tmpfs for the full-disk test: " + \
            line + self.proc.stdout.read()
        self.wrap = ["nsenter", "-t", str(self.proc.pid), "-m"] + \
            (["-U", "--preserve-credentials"] if os.geteuid() != 0 else [])

    def close(self):
        self.proc.kill()
        self.proc.wait()


def fill_disk(d, fp):
    """Puts sessions of one chunk until the disk is full; the acked ones. A failing put must be
    RESOURCE_EXHAUSTED 'disk full' (never INTERNAL: LMDB's short write on a full disk, EIO, is
    reported as disk full by the store)."""
    acked = []
    for i in range(400):
        toks = list(range(i * 1000, i * 1000 + 64))
        code, msg = code_of(d.stub.PutChunks, put_msgs(
            raw_header(fp, 64, session=f"s{i}", create_session=True),
            [(toks, raw_kv(i, 2, 2, 64, 64).tobytes())]), timeout=60)
        if code == C.OK:
            acked.append(i)
            continue
        assert code == C.RESOURCE_EXHAUSTED and "disk full" in msg, (code, msg)
        if i > len(acked) + 3:
            return acked
    raise AssertionError("a 4 MiB disk never filled")


def test_full_disk_is_an_error_and_loses_nothing():
    base = tmpdir(prefix="kvdadv-full-")
    data = os.path.join(base, "data")
    os.makedirs(data)
    h = TmpfsHolder(data)
    try:
        fp = fingerprint(preset="K4V4")
        d = Daemon(data=data, wrap=h.wrap, extra=["--segment-bytes=1M"])
        acked = fill_disk(d, fp)
        assert len(acked) > 20 and d.alive()
        for i in acked:
            got = get_all(d.stub, kv.GetChunksRequest(range=kv.SessionRange(session=f"s{i}")))
            assert got[0]["tokens"] == list(range(i * 1000, i * 1000 + 64))
        v = d.stub.Verify(kv.VerifyRequest(), timeout=60)
        assert v.corrupt_records == 0 and v.records_checked >= len(acked)
        d.kill9()
        d = Daemon(data=data, wrap=h.wrap)  # restart on the same full disk
        st = stats(d.stub).store_stats
        assert st.sessions == len(acked)
        lk = d.stub.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=64,
                                            token_ids=list(range(acked[-1] * 1000,
                                                                 acked[-1] * 1000 + 64))),
                           timeout=60)
        assert lk.matched_tokens == 64
        # the disk grows (an operator freed space): writes work again, no restart needed
        import subprocess
        subprocess.run(h.wrap + ["mount", "-o", "remount,size=16m", data], check=True)
        for i in range(3):
            toks = list(range(7 * 10 ** 6 + i * 64, 7 * 10 ** 6 + (i + 1) * 64))
            d.stub.PutChunks(put_msgs(raw_header(fp, 64, session=f"g{i}", create_session=True),
                                      [(toks, raw_kv(i, 2, 2, 64, 64).tobytes())]), timeout=60)
        d.stub.DeleteSession(kv.DeleteSessionRequest(name=f"s{acked[0]}"), timeout=60)
        assert d.stub.Verify(kv.VerifyRequest(), timeout=60).corrupt_records == 0
        assert d.stop(rm=False) == 0
    finally:
        h.close()
        shutil.rmtree(base, ignore_errors=True)


def test_full_disk_space_can_be_freed_by_deleting():
    base = tmpdir(prefix="kvdadv-full2-")
    data = os.path.join(base, "data")
    os.makedirs(data)
    h = TmpfsHolder(data)
    try:
        fp = fingerprint(preset="K4V4")
        d = Daemon(data=data, wrap=h.wrap, extra=["--segment-bytes=1M"])
        acked = fill_disk(d, fp)
        for i in acked[: len(acked) // 2]:
            code, msg = code_of(d.stub.DeleteSession, kv.DeleteSessionRequest(name=f"s{i}"),
                                timeout=60)
            assert code == C.OK, (i, code, msg)
        d.stub.Compact(kv.CompactRequest(min_dead_fraction=0.1), timeout=60)
        toks = list(range(999000, 999064))
        d.stub.PutChunks(put_msgs(raw_header(fp, 64), [(toks, raw_kv(5, 2, 2, 64, 64).tobytes())]),
                         timeout=60)
        assert d.stop(rm=False) == 0
    finally:
        h.close()
        shutil.rmtree(base, ignore_errors=True)


def test_full_disk_new_data_dir_is_an_error():
    """A new data dir on a full disk: e8kvd exits 1 saying 'disk full' (it died of SIGBUS in
    LMDB, which writes its sparse lock file through mmap)."""
    import subprocess
    from advlib import E8KVD
    base = tmpdir(prefix="kvdadv-full3-")
    mnt = os.path.join(base, "mnt")
    os.makedirs(mnt)
    h = TmpfsHolder(mnt, size="1m")
    try:
        subprocess.run(h.wrap + ["sh", "-c", f'dd if=/dev/zero of="{mnt}/junk" bs=64k 2>/dev/null;'
                                 " true"], check=True)
        r = subprocess.run(h.wrap + [E8KVD, f"--data-dir={mnt}/data",
                                     f"--listen=unix:{base}/sock", "--metrics-listen="],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 1, (r.returncode, out)
        assert "disk full" in out and f"{mnt}/data" in out, out
    finally:
        h.close()
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ metrics endpoint

def test_metrics_endpoint_survives_junk():
    d = Daemon(metrics=True)
    try:
        assert d.metrics_port > 0

        def http(raw):
            with socket.create_connection(("127.0.0.1", d.metrics_port), timeout=60) as so:
                so.sendall(raw)
                try:
                    return so.recv(64)
                except socket.timeout:
                    return b""
        assert http(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello") \
            .startswith(b"HTTP/1.1 404")
        assert http(b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
        assert http(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n") \
            .startswith(b"HTTP/1.1 431")
        with socket.create_connection(("127.0.0.1", d.metrics_port), timeout=60) as so:
            so.sendall(b"\x00\xff\x16\x03\x01garbage")  # left hanging: must not block others
            assert http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
        assert d.stub.GetStats(kv.GetStatsRequest(), timeout=60).namespace_stats.namespace_name
    finally:
        assert d.stop() == 0
