"""e8kv.hf leaves no lookup lease behind (a tiny random Llama, no download, a real e8kvd).

A Lookup pins the chunks it matched under a lease for e8kvd's --lookup-lease-ms (30 s here,
the default), and a DeleteSession with purge_chunks keeps every chunk a lease holds. A user
who restored a prefix and then deleted the session with `e8kvctl rm --purge` found every
chunk kept, and afterwards (the session gone) nothing could purge them. restore_prefix now
ends its lookups' leases before it returns, whatever it decided (restore, a partial
restore, recompute, a miss) and when it fails, and store_prefix's lookups pin nothing. Each
test purges right after the call and needs every chunk purged at once: well inside the
lease, so a leftover lease fails it (checked against the previous hf.py: kept 3 of 3).
"""
import pytest
import torch

import e8kv.hf as hf
from e8kv import codec, kvcodec

C = 4           # chunk_tokens
N = 12          # stored tokens: 3 chunks


def ids_of(n, seed):
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def stored(client, model, name, seed):
    """Stores N tokens in session `name` (3 chunks); returns (fingerprint, the tokens)."""
    fp = hf.model_fingerprint(model, model_id=f"lease-{name}")
    ids = ids_of(N, seed)
    hf.store_prefix(client, model, ids, hf.prefill(model, ids[None])[1], session=name,
                    chunk_tokens=C, fingerprint=fp)
    return fp, ids


def purge_takes_all(client, name):
    r = client.delete_session(name, purge_chunks=True)
    assert (r.chunks_purged, r.chunks_kept) == (3, 0), \
        f"purge right after the call: {r.chunks_purged} purged, {r.chunks_kept} kept (leased)"


@pytest.mark.parametrize("policy", ["restore", "auto", "recompute"])
def test_hf_lease_restore_then_purge_purges_every_chunk(tiny_llama, client, policy):
    fp, ids = stored(client, tiny_llama, f"whole-{policy}", 1)
    r = hf.restore_prefix(client, tiny_llama, torch.cat([ids, ids_of(3, 2)]), chunk_tokens=C,
                          fingerprint=fp, policy=policy)
    assert r.decision in ("restore", "recompute") and (r.n_cached == N) == \
        (r.decision == "restore"), (r.decision, r.reason)
    if policy != "auto":
        assert r.decision == policy
    purge_takes_all(client, f"whole-{policy}")


def test_hf_lease_partial_restore_then_purge_purges_every_chunk(tiny_llama, client):
    fp, ids = stored(client, tiny_llama, "partial", 3)
    prompt = torch.cat([ids[:8], (ids[8:] + 1) % 64])       # shares 2 of the 3 chunks
    r = hf.restore_prefix(client, tiny_llama, prompt, chunk_tokens=C, fingerprint=fp,
                          policy="restore")
    assert (r.decision, r.n_cached) == ("restore", 8), r.reason
    purge_takes_all(client, "partial")


def test_hf_lease_batch_miss_then_purge_purges_every_chunk(tiny_llama, client):
    """Row 0 matches all 3 chunks, row 1 nothing: a miss for the batch (every row gets the
    same cached length), while row 0's lookup had leased its 3 chunks."""
    fp, ids = stored(client, tiny_llama, "miss", 4)
    batch = torch.stack([torch.cat([ids, ids_of(2, 5)]), ids_of(N + 2, 6)])
    r = hf.restore_prefix(client, tiny_llama, batch, chunk_tokens=C, fingerprint=fp,
                          policy="restore")
    assert (r.decision, r.n_cached) == ("miss", 0), r.reason
    purge_takes_all(client, "miss")


def test_hf_lease_failed_restore_then_purge_purges_every_chunk(tiny_llama, client):
    """The decode raises (a kv_codec that fails): the lease ends all the same."""
    fp, ids = stored(client, tiny_llama, "failed", 7)

    class Broken(kvcodec.CpuKVCodec):
        def decode_chunks_into(self, *a, **kw):
            raise RuntimeError("decode failed")
    with Broken(codec.fingerprint_from_proto(fp)) as kvc, \
            pytest.raises(RuntimeError, match="decode failed"):
        hf.restore_prefix(client, tiny_llama, torch.cat([ids, ids_of(3, 8)]), chunk_tokens=C,
                          fingerprint=fp, policy="restore", kv_codec=kvc)
    purge_takes_all(client, "failed")


def test_hf_lease_store_extending_a_session_then_purge_purges_every_chunk(tiny_llama, client):
    """store_prefix looks up what is stored before it sends: that lookup pins nothing."""
    fp, ids = stored(client, tiny_llama, "extend", 9)
    longer = torch.cat([ids, ids_of(2, 10)])                 # 14 tokens: a 4th, short chunk
    hf.store_prefix(client, tiny_llama, longer, hf.prefill(tiny_llama, longer[None])[1],
                    session="extend", chunk_tokens=C, fingerprint=fp)
    r = client.delete_session("extend", purge_chunks=True)
    assert (r.chunks_purged, r.chunks_kept) == (4, 0), (r.chunks_purged, r.chunks_kept)


def test_hf_store_into_a_session_when_its_looked_up_chunks_go_meanwhile(tiny_llama, client):
    """Adversarial (session 6): store_prefix(session=) appends the chunks its lookup found
    stored (AppendSession) instead of sending them again; that lookup pins nothing now, so an
    `e8kvctl gc` (PurgeUnlisted), a pending purge or eviction may delete those unlisted chunks
    before the append. store_prefix then raised NotFound ('tokens [0, 12) of the session are
    not stored'); now it looks up again and sends what is missing, as after a session changed
    meanwhile."""
    from e8kv.v1 import kvstore_pb2 as pb
    fp = hf.model_fingerprint(tiny_llama, model_id="lease-gone")
    ids = ids_of(N, 11)
    cache = hf.prefill(tiny_llama, ids[None])[1]
    hf.store_prefix(client, tiny_llama, ids, cache, chunk_tokens=C, fingerprint=fp)  # no session
    real, calls = client.lookup, []

    def lookup_then_gc(*a, **kw):
        r = real(*a, **kw)
        if not calls:   # the first look-up of store_prefix: the chunks go right after it
            calls.append(r.matched_tokens)
            client._call("PurgeUnlisted", pb.PurgeUnlistedRequest())
        return r
    client.lookup = lookup_then_gc
    try:
        r = hf.store_prefix(client, tiny_llama, ids, cache, session="gone", chunk_tokens=C,
                            fingerprint=fp)
    finally:
        del client.lookup
    assert calls == [N]
    assert r[0]["chunks_written"] == 3
    assert client.get_session("gone").n_tokens == N
    purge_takes_all(client, "gone")
