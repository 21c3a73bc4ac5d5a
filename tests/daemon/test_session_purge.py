"""DeleteSession's purge_chunks (e8kvctl rm --purge). A new user deleted a session for privacy
(2026-11-29) and a restore of the same prompt still found its KV: DeleteSession only unpins,
the chunks stay as prefix-cache entries. With purge_chunks the chunks that nothing else pins
are deleted too; chunks another session lists are kept and counted. Chunks only a read or a
lookup lease holds are deleted as soon as that ends (session 6: a restore's 30 s lease made
`rm --purge` purge nothing, and nothing could purge those chunks later); PurgeUnlisted
(`e8kvctl gc`) deletes whatever no session lists."""
import os
import time

import pytest

from advlib import (C, Daemon, code_of, daemon, fingerprint, kv, put_msgs,  # noqa: F401
                    raw_header, raw_kv, tmpdir)

CT = 16


def chunks_of(toks, seed):
    return [(toks[i:i + CT], raw_kv(seed + i, 2, 2, CT, 64).tobytes())
            for i in range(0, len(toks), CT)]


def put_session(s, fp, name, chunks):
    s.PutChunks(put_msgs(raw_header(fp, CT, session=name, create_session=True), chunks),
                timeout=10)


def matched(s, fp, toks):
    return s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks,
                                     no_lease=True), timeout=10).matched_tokens


def n_chunks(s):
    return s.GetStats(kv.GetStatsRequest(), timeout=10).namespace_stats.chunks


def pending(s):
    return s.GetStats(kv.GetStatsRequest(), timeout=10).namespace_stats.chunks_purge_pending


def test_delete_keeps_chunks_and_purge_deletes_what_nothing_else_pins(daemon):
    s, fp = daemon.stub, fingerprint()
    toks = list(range(3 * CT))
    put_session(s, fp, "a", chunks_of(toks, 0))
    put_session(s, fp, "b", chunks_of(toks[:2 * CT], 0))  # shares a's first two chunks
    other = list(range(1000, 1000 + 2 * CT))
    put_session(s, fp, "c", chunks_of(other, 50))
    assert n_chunks(s) == 5

    r = s.DeleteSession(kv.DeleteSessionRequest(name="c"), timeout=10)  # no purge: kept
    assert (r.chunks_unpinned, r.chunks_purged, r.chunks_kept) == (2, 0, 0)
    assert matched(s, fp, other) == 2 * CT and n_chunks(s) == 5

    r = s.DeleteSession(kv.DeleteSessionRequest(name="a", purge_chunks=True), timeout=10)
    assert (r.chunks_purged, r.chunks_kept) == (1, 2)   # b still lists the first two
    assert matched(s, fp, toks) == 2 * CT and n_chunks(s) == 4
    keys = s.GetSession(kv.GetSessionRequest(name="b", include_chunk_keys=True),
                        timeout=10).session.chunk_keys
    r = s.DeleteSession(kv.DeleteSessionRequest(name="b", purge_chunks=True), timeout=10)
    assert (r.chunks_purged, r.chunks_kept) == (2, 0)
    assert matched(s, fp, toks) == 0 and n_chunks(s) == 2
    code, msg = code_of(s.GetChunks, kv.GetChunksRequest(keys=kv.ChunkKeys(keys=list(keys))),
                        timeout=10)
    assert code == C.NOT_FOUND, (code, msg)


def lookup_leased(s, fp, toks):
    lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks), timeout=10)
    assert lk.matched_tokens == len(toks) and len(lk.lease) == 16
    return lk


def leased_then_purged(s, fp, name, n, seed):
    """Stores n chunks (seed) in session `name`, leases them by a Lookup (a restore under way)
    and deletes the session with purge_chunks: (its tokens, the Lookup, DeleteSession's
    response)."""
    toks = list(range(n * CT))
    put_session(s, fp, name, chunks_of(toks, seed))
    lk = lookup_leased(s, fp, toks)
    r = s.DeleteSession(kv.DeleteSessionRequest(name=name, purge_chunks=True), timeout=10)
    return toks, lk, r


def release(s, lk):
    """GetChunks of the leased keys with release_lease: the read and the lease end with it."""
    return list(s.GetChunks(kv.GetChunksRequest(keys=kv.ChunkKeys(keys=list(lk.chunk_keys)),
                                                release_lease=lk.lease), timeout=30))


def wait_chunks(s, want, limit_s=90):
    """Polls the chunk count until it is `want` (the bound only stops a hang)."""
    t0 = time.monotonic()
    while n_chunks(s) != want and time.monotonic() - t0 < limit_s:
        time.sleep(0.2)
    return n_chunks(s)


def test_purge_of_leased_chunks_happens_when_the_lease_is_released(daemon):
    s, fp = daemon.stub, fingerprint()
    toks, lk, r = leased_then_purged(s, fp, "leased", 2, 7)
    assert (r.chunks_purged, r.chunks_kept, r.chunks_pending) == (0, 2, 2)
    code, _ = code_of(s.GetSession, kv.GetSessionRequest(name="leased"), timeout=10)
    assert code == C.NOT_FOUND
    assert n_chunks(s) == 2                       # the lease (30 s by default) still holds them
    assert pending(s) == 2
    assert len(release(s, lk)) >= 2               # the restore that held the lease finishes
    # GetChunks runs the pending purges of its namespace before it ends: no waiting needed
    assert n_chunks(s) == 0 and matched(s, fp, toks) == 0 and pending(s) == 0


@pytest.mark.parametrize("bad", [dict(max_piece_bytes=100), dict(encoding=99),
                                 dict(dtype=1), dict(expect_fingerprint_id=b"x")])
def test_get_chunks_refused_for_a_bad_field_still_ends_its_release_lease(daemon, bad):
    """e8kv.Client.release_lease relies on "e8kvd ends the lease whatever the read's outcome":
    a GetChunks refused before reading (a bad field) ended nothing, so the lease (30 s) kept
    the purged chunks."""
    s, fp = daemon.stub, fingerprint()
    toks, lk, r = leased_then_purged(s, fp, "refused", 2, 11)
    assert r.chunks_pending == 2 and n_chunks(s) == 2
    rq = kv.GetChunksRequest(keys=kv.ChunkKeys(keys=list(lk.chunk_keys)),
                             release_lease=lk.lease, **bad)
    code, msg = code_of(s.GetChunks, rq, timeout=30)
    assert code == C.INVALID_ARGUMENT, (code, msg)
    assert n_chunks(s) == 0 and pending(s) == 0 and matched(s, fp, toks) == 0


def test_purge_of_leased_chunks_happens_when_the_lease_expires():
    d = Daemon(extra=["--lookup-lease-ms=1000"])
    try:
        s, fp = d.stub, fingerprint()
        toks, _, r = leased_then_purged(s, fp, "x", 3, 3)  # never released: a client that died
        # the lease may already have expired on a slow machine: then purged at once
        assert r.chunks_purged + r.chunks_pending == 3 and r.chunks_kept == r.chunks_pending
        assert wait_chunks(s, 0) == 0             # the maintenance thread, after expiry
        assert pending(s) == 0
        assert matched(s, fp, toks) == 0
        assert d.alive()
    finally:
        assert d.stop() == 0


def test_pending_purge_spares_a_chunk_a_session_lists_again(daemon):
    s, fp = daemon.stub, fingerprint()
    toks, lk, r = leased_then_purged(s, fp, "first", 2, 9)
    assert r.chunks_pending == 2
    put_session(s, fp, "again", chunks_of(toks, 9))   # the same KV stored into a new session
    release(s, lk)
    assert n_chunks(s) == 2 and matched(s, fp, toks) == 2 * CT
    r = s.DeleteSession(kv.DeleteSessionRequest(name="again", purge_chunks=True), timeout=10)
    assert (r.chunks_purged, r.chunks_pending) == (2, 0) and n_chunks(s) == 0


class Tenant:
    """A stub whose every call carries one bearer token (one namespace)."""

    def __init__(self, stub, token):
        self.stub, self.md = stub, [("authorization", "Bearer " + token)]

    def __getattr__(self, name):
        fn = getattr(self.stub, name)
        return lambda *a, **kw: fn(*a, metadata=self.md, **kw)


def test_one_namespace_full_of_pending_purges_leaves_the_others_theirs():
    """Pending purges were one list of 2^20 for all namespaces: one tenant that filled it made
    every other tenant's purges of leased chunks fail for a lease time (~30 s). Now each
    namespace has --max-purge-pending of its own, and the error names that limit."""
    tf = os.path.join(tmpdir(), "tokens")
    with open(tf, "w") as f:
        f.write("tokenAAAAAAAAAAAAAAAA nsA\ntokenBBBBBBBBBBBBBBBB nsB\n")
    d = Daemon(extra=[f"--tokens-file={tf}", "--max-purge-pending=2",
                      "--lookup-lease-ms=600000"])   # the leases outlast the test
    try:
        fp = fingerprint()
        a = Tenant(d.stub, "tokenAAAAAAAAAAAAAAAA")
        b = Tenant(d.stub, "tokenBBBBBBBBBBBBBBBB")
        toks = list(range(3 * CT))
        put_session(a, fp, "big", chunks_of(toks, 5))
        lk = lookup_leased(a, fp, toks)
        code, msg = code_of(a.DeleteSession,
                            kv.DeleteSessionRequest(name="big", purge_chunks=True), timeout=10)
        assert code == C.RESOURCE_EXHAUSTED, (code, msg)
        assert "--max-purge-pending" in msg and "2 chunks" in msg, msg
        assert code_of(a.GetSession, kv.GetSessionRequest(name="big"), timeout=10)[0] == \
            C.NOT_FOUND                               # deleted, as the message says
        assert pending(a) == 2 and n_chunks(a) == 3
        # the third chunk: PurgeUnlisted finds it held by the lease, and A's share is full
        code, msg = code_of(a.PurgeUnlisted, kv.PurgeUnlistedRequest(), timeout=30)
        assert code == C.RESOURCE_EXHAUSTED and "--max-purge-pending" in msg, (code, msg)

        _, _, r = leased_then_purged(b, fp, "other", 2, 8)   # B is not held up by A
        assert (r.chunks_purged, r.chunks_pending) == (0, 2)
        assert pending(b) == 2 and pending(a) == 2

        release(a, lk)                                # A's restore ends: its share empties
        assert pending(a) == 0 and n_chunks(a) == 1
        r = a.PurgeUnlisted(kv.PurgeUnlistedRequest(), timeout=30)
        assert (r.chunks_purged, r.chunks_pending) == (1, 0) and n_chunks(a) == 0
        assert pending(b) == 2 and n_chunks(b) == 2
    finally:
        assert d.stop() == 0


def test_purge_unlisted_deletes_what_no_session_lists(daemon):
    s, fp = daemon.stub, fingerprint()
    kept = list(range(2 * CT))
    put_session(s, fp, "kept", chunks_of(kept, 0))
    dropped = list(range(500, 500 + 3 * CT))
    put_session(s, fp, "dropped", chunks_of(dropped, 20))
    s.DeleteSession(kv.DeleteSessionRequest(name="dropped"), timeout=10)   # no purge: cached
    loose = list(range(900, 900 + 2 * CT))
    s.PutChunks(put_msgs(raw_header(fp, CT), chunks_of(loose, 40)), timeout=10)  # no session
    leased = list(range(1300, 1300 + CT))
    s.PutChunks(put_msgs(raw_header(fp, CT), chunks_of(leased, 60)), timeout=10)
    lk = lookup_leased(s, fp, leased)
    assert n_chunks(s) == 8
    r = s.PurgeUnlisted(kv.PurgeUnlistedRequest(), timeout=30)
    assert (r.chunks_purged, r.chunks_pending) == (5, 1) and r.bytes_purged > 0
    assert n_chunks(s) == 3
    assert matched(s, fp, dropped) == 0 and matched(s, fp, loose) == 0
    assert matched(s, fp, kept) == 2 * CT
    got = s.GetSession(kv.GetSessionRequest(name="kept"), timeout=10).session
    assert got.n_chunks == 2
    release(s, lk)
    assert n_chunks(s) == 2 and matched(s, fp, leased) == 0
    r = s.PurgeUnlisted(kv.PurgeUnlistedRequest(), timeout=30)    # nothing left to purge
    assert (r.chunks_purged, r.chunks_pending, r.bytes_purged) == (0, 0, 0)
    assert n_chunks(s) == 2


def paused_put(s, fp, name, first, rest, gate, results):
    """A session put whose stream stops after `first` (stored in batches meanwhile) until gate
    is set; results gets ('ok', response) or ('err', code, details)."""
    def msgs():
        yield from put_msgs(raw_header(fp, CT, session=name, create_session=True), first)
        gate.wait(120)
        for m in put_msgs(raw_header(fp, CT), rest):
            if m.HasField("header"):
                continue
            yield m
    try:
        results.append(("ok", s.PutChunks(msgs(), timeout=180)))
    except Exception as e:  # grpc.RpcError
        results.append(("err", e.code(), e.details()))


def wait_until(cond, limit_s=60):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < limit_s:
        time.sleep(0.1)
    return cond()


def test_purge_unlisted_spares_the_chunks_of_a_session_put_in_flight():
    """Adversarial (session 6): a session put stores its chunks batch by batch and lists them
    only when the stream ends; a PurgeUnlisted (or a pending purge) in between deleted the
    stored batches, and the put then failed NOT_FOUND 'session_append: chunk 0 not stored'."""
    import threading
    d = Daemon(extra=["--put-batch-bytes=64K"])
    try:
        s, fp = d.stub, fingerprint()
        toks = list(range(48 * CT))
        chunks = chunks_of(toks, 11)
        gate, res = threading.Event(), []
        t = threading.Thread(target=paused_put, args=(s, fp, "big", chunks[:40], chunks[40:],
                                                      gate, res))
        t.start()
        try:
            assert wait_until(lambda: n_chunks(s) > 0)   # a batch is stored, not yet listed
            r = s.PurgeUnlisted(kv.PurgeUnlistedRequest(), timeout=30)
            assert r.chunks_purged == 0, r
        finally:
            gate.set()
            t.join(200)
        assert res and res[0][0] == "ok", res
        assert res[0][1].session.n_chunks == 48
        keys = s.GetSession(kv.GetSessionRequest(name="big", include_chunk_keys=True),
                            timeout=10).session.chunk_keys
        assert len(keys) == 48
        assert len(list(s.GetChunks(kv.GetChunksRequest(keys=kv.ChunkKeys(keys=list(keys))),
                                    timeout=60))) >= 48
        assert matched(s, fp, toks) == 48 * CT
        r = s.PurgeUnlisted(kv.PurgeUnlistedRequest(), timeout=30)  # pins ended with the put
        assert (r.chunks_purged, r.chunks_pending) == (0, 0) and n_chunks(s) == 48
    finally:
        assert d.stop() == 0


def test_pending_purge_happens_at_a_clean_stop():
    """Adversarial (session 6): pending purges lived only in the daemon's memory, so a plain
    restart (SIGTERM, e.g. an upgrade) while a lease held purged chunks kept them for good
    (`rm --purge --wait` had said nothing was pending any more once the new process answered).
    At a clean stop no call runs and the leases die with the process: the purges happen then."""
    d = Daemon(extra=["--lookup-lease-ms=600000"])
    d2 = None
    try:
        s, fp = d.stub, fingerprint()
        toks = list(range(3 * CT))
        put_session(s, fp, "held", chunks_of(toks, 21))
        put_session(s, fp, "other", chunks_of(list(range(700, 700 + CT)), 22))
        lookup_leased(s, fp, toks)                # a client that never released it
        r = s.DeleteSession(kv.DeleteSessionRequest(name="held", purge_chunks=True), timeout=10)
        assert r.chunks_pending == 3
        assert d.stop(rm=False) == 0
        d2 = Daemon(data=d.data)
        assert "purges_lost" not in d2.text(), d2.text()   # done at the stop: nothing lost
        s = d2.stub
        assert n_chunks(s) == 1 and matched(s, fp, toks) == 0
        assert s.GetSession(kv.GetSessionRequest(name="other"), timeout=10).session.n_chunks == 1
    finally:
        if d2:
            assert d2.stop() == 0
        d.stop()


def test_pending_purges_lost_in_a_crash_are_reported_at_the_next_start():
    """A new user's trial (session 6): after kill -9 the purges that waited on a lease were
    lost silently (README says to run gc, nothing told the operator it was due). While purges
    are pending, e8kvd keeps a marker file in the data dir; the next start finds it and warns
    (event=purges_lost, naming `e8kvctl gc`). A clean stop, or the list emptying, removes it:
    no warning then."""
    marker = "e8kvd-purge-pending"
    d = Daemon(extra=["--lookup-lease-ms=600000"])
    d2 = d3 = None
    try:
        s, fp = d.stub, fingerprint()
        toks = list(range(3 * CT))
        put_session(s, fp, "held", chunks_of(toks, 31))
        assert not os.path.exists(os.path.join(d.data, marker))
        lookup_leased(s, fp, toks)                # a client that never released it
        r = s.DeleteSession(kv.DeleteSessionRequest(name="held", purge_chunks=True), timeout=10)
        assert r.chunks_pending == 3
        assert os.path.exists(os.path.join(d.data, marker))
        d.kill9()
        d2 = Daemon(data=d.data)
        assert "event=purges_lost" in d2.text() and "e8kvctl gc" in d2.text(), d2.text()
        s = d2.stub
        assert n_chunks(s) == 3 and pending(s) == 0           # the lost purges: still stored
        assert not os.path.exists(os.path.join(d.data, marker))
        r = s.PurgeUnlisted(kv.PurgeUnlistedRequest(), timeout=10)   # the remedy it names
        assert r.chunks_purged == 3 and n_chunks(s) == 0
        assert d2.stop(rm=False) == 0
        d3 = Daemon(data=d.data)                  # nothing pending at that stop: no warning
        assert "purges_lost" not in d3.text(), d3.text()
    finally:
        for x in (d3, d2):
            if x:
                x.stop()
        d.stop()
