"""DeleteSession's purge_chunks (e8kvctl rm --purge). A new user deleted a session for privacy
(2026-11-29) and a restore of the same prompt still found its KV: DeleteSession only unpins,
the chunks stay as prefix-cache entries. With purge_chunks the chunks that nothing else pins
are deleted too; chunks another session lists, or a lookup lease holds, are kept and counted."""
import pytest

from advlib import (C, code_of, daemon, fingerprint, kv, put_msgs,  # noqa: F401
                    raw_header, raw_kv)

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


def test_purge_keeps_chunks_a_lookup_lease_holds(daemon):
    s, fp = daemon.stub, fingerprint()
    toks = list(range(2 * CT))
    put_session(s, fp, "leased", chunks_of(toks, 7))
    lk = s.Lookup(kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks), timeout=10)
    assert lk.matched_tokens == 2 * CT
    r = s.DeleteSession(kv.DeleteSessionRequest(name="leased", purge_chunks=True), timeout=10)
    assert (r.chunks_purged, r.chunks_kept) == (0, 2)
    code, _ = code_of(s.GetSession, kv.GetSessionRequest(name="leased"), timeout=10)
    assert code == C.NOT_FOUND
