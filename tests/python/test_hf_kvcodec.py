"""e8kv.hf's KV codec hook (kv_codec=), e8kv.kvcodec.CpuKVCodec, the DynamicCache that takes
restored tensors without copying, and Client.get_chunks_parallel, against a real e8kvd.

A tiny random Llama (2 layers, 1 KV head, head_dim 32) keeps these fast; the GPU codec
(e8kv.cuda.CudaCodec) has the same interface and is run by bench/e2e on the device.
"""
import copy
import logging

import grpc
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import e8kv
import e8kv.hf as hf
from e8kv import codec
from e8kv.kvcodec import CpuKVCodec

from conftest import Daemon

C = 16


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                      num_hidden_layers=2, intermediate_size=64, vocab_size=64,
                      max_position_embeddings=512, rope_theta=10000.0)
    return LlamaForCausalLM(cfg).eval()


def ids_of(n, seed):
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return float(((a - b).pow(2).mean() / b.pow(2).mean()).sqrt())


class Recording:
    """A KV codec (the e8kv.kvcodec interface) that records what e8kv.hf hands it and
    delegates to CpuKVCodec."""

    def __init__(self, fp):
        self.inner = CpuKVCodec(fp, threads=2)
        self.fingerprint = self.inner.fingerprint
        self.encodes, self.decodes, self.syncs = [], [], 0

    def encode_chunks(self, layers, starts, n_tokens, *, pos_offset=0):
        self.encodes.append(([(k.data_ptr(), v.data_ptr()) for k, v in layers], list(starts),
                             list(n_tokens), pos_offset))
        return self.inner.encode_chunks(layers, starts, n_tokens, pos_offset=pos_offset)

    def decode_chunks_into(self, chunks, layers, *, pos_offset=0):
        self.decodes.append(([(k.data_ptr(), v.data_ptr()) for k, v in layers], len(chunks),
                             pos_offset, layers[0][0].device, layers[0][0].dtype))
        return self.inner.decode_chunks_into(chunks, layers, pos_offset=pos_offset)

    def synchronize(self):
        self.syncs += 1


def test_hf_kvcodec_store_encodes_from_the_cache_tensors(tiny, client):
    fp = hf.model_fingerprint(tiny, model_id="kvcodec-store")
    p = ids_of(70, 1)                                    # 4 full chunks + 6 tokens
    _, cache = hf.prefill(tiny, p[None])
    rec = Recording(codec.fingerprint_from_proto(fp))
    r = hf.store_prefix(client, tiny, p, cache, fingerprint=fp, chunk_tokens=C,
                        kv_codec=rec)[0]
    assert r["chunks_written"] == 5
    layers = hf.cache_layers(cache)
    ptrs, starts, counts, off = rec.encodes[0]
    assert ptrs == [(k[0].data_ptr(), v[0].data_ptr()) for k, v in layers]   # no copy first
    assert starts == [0, 16, 32, 48, 64] and counts == [16, 16, 16, 16, 6] and off == 0
    # the bytes stored are e8kv.codec.encode_chunk's for the same KV
    got = [c.data for c in client.get_chunks(r["chunk_keys"], encoding="e8")]
    want = [codec.encode_chunk(codec.fingerprint_from_proto(fp), hf._chunk_raw(
        layers, 0, torch.arange(s, min(70, s + C)), torch.float32), first_pos=s)
        for s in range(0, 70, C)]
    assert got == want


def test_hf_kvcodec_restore_decodes_into_the_cache_tensors(tiny, client):
    fp = hf.model_fingerprint(tiny, model_id="kvcodec-restore")
    p = ids_of(64, 2)                                    # 4 full chunks
    _, cache = hf.prefill(tiny, p[None])
    hf.store_prefix(client, tiny, p, cache, fingerprint=fp, chunk_tokens=C)
    q = torch.cat([p, ids_of(5, 3)])
    rec = Recording(codec.fingerprint_from_proto(fp))
    r = hf.restore_prefix(client, tiny, q, fingerprint=fp, chunk_tokens=C, policy="restore",
                          kv_codec=rec, fetch_streams=3)
    assert r.n_cached == 64 and r.decision == "restore" and rec.decodes and rec.syncs >= 1
    assert sum(d[1] for d in rec.decodes) == 4           # every chunk through the hook
    restored = hf.cache_layers(r.cache)
    # decoded straight into the tensors the DynamicCache holds (no copy after the decode)
    assert rec.decodes[0][0] == [(k[0].data_ptr(), v[0].data_ptr()) for k, v in restored]
    assert rec.decodes[0][3] == torch.device("cpu") and rec.decodes[0][4] == torch.float32
    # the same values as the default path (CpuKVCodec made inside e8kv.hf), one stream
    d = hf.restore_prefix(client, tiny, q, fingerprint=fp, chunk_tokens=C, policy="restore",
                          fetch_streams=1)
    assert d.timings["codec"] == "cpu" and d.timings["fetch_streams"] == 1
    for (ka, va), (kb, vb) in zip(restored, hf.cache_layers(d.cache)):
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    # fetched by libe8kv's C fetch; grpcio's (where libe8kv is missing) gives the same cache
    assert r.timings["fetch"] == d.timings["fetch"] == "libe8kv e8kv_fetch (C)"
    client.native_fetcher = lambda *a, **k: None
    g = hf.restore_prefix(client, tiny, q, fingerprint=fp, chunk_tokens=C, policy="restore",
                          fetch_streams=2)
    del client.native_fetcher
    assert g.timings["fetch"] == "grpcio"
    for (ka, va), (kb, vb) in zip(restored, hf.cache_layers(g.cache)):
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    # and close to the exact cache (K3V2 through real bytes)
    for (ka, va), (ke, ve) in zip(restored, hf.cache_layers(cache)):
        assert 0 < rel_err(ka, ke) < 0.3 and 0 < rel_err(va, ve) < 0.5


def test_hf_kvcodec_left_padding_and_errors(tiny, client):
    fp = hf.model_fingerprint(tiny, model_id="kvcodec-pad")
    a, b = ids_of(40, 4), ids_of(20, 5)
    ids = torch.zeros((2, 40), dtype=torch.long)
    mask = torch.zeros((2, 40), dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, 20:], mask[1, 20:] = b, 1                     # left padding: row 1 starts at col 20
    _, cache = hf.prefill(tiny, ids, attention_mask=mask)
    rec = Recording(codec.fingerprint_from_proto(fp))
    hf.store_prefix(client, tiny, ids, cache, attention_mask=mask, fingerprint=fp,
                    chunk_tokens=C, kv_codec=rec)
    _, starts, counts, off = rec.encodes[1]
    assert starts == [20, 36] and counts == [16, 4] and off == -20   # positions 0.., no pad
    alone = hf.cache_layers(hf.prefill(tiny, b[None])[1])
    back = hf.restore_prefix(client, tiny, torch.cat([b, ids_of(3, 6)]), fingerprint=fp,
                             chunk_tokens=C, policy="restore", kv_codec=rec)
    assert back.n_cached == 16                           # whole chunks: [16, 20) is short
    for (k, _), (ke, _) in zip(hf.cache_layers(back.cache), alone):
        assert rel_err(k, ke[:, :, :16]) < 0.3
    # a codec made for another fingerprint is refused before anything is written
    other = CpuKVCodec(codec.fingerprint_from_proto(
        hf.model_fingerprint(tiny, model_id="kvcodec-pad", preset="K4V4")))
    q = ids_of(50, 7)
    with pytest.raises(ValueError, match="kv_codec codes for fingerprint"):
        hf.store_prefix(client, tiny, q, hf.prefill(tiny, q[None])[1], fingerprint=fp,
                        chunk_tokens=C, kv_codec=other)
    assert client.lookup(fp, q.tolist(), chunk_tokens=C).matched_tokens == 0
    with pytest.raises(ValueError, match="kv_codec codes for fingerprint"):
        hf.restore_prefix(client, tiny, torch.cat([a, b]), fingerprint=fp, chunk_tokens=C,
                          policy="restore", kv_codec=other)
    with pytest.raises(ValueError, match="encoding='raw'"):
        hf.store_prefix(client, tiny, q, hf.prefill(tiny, q[None])[1], fingerprint=fp,
                        chunk_tokens=C, kv_codec=other, encoding="raw")
    other.close()


def test_hf_bad_chunk_tokens_and_empty_rows_are_clear_errors(tiny, client):
    """chunk_tokens=0 crashed store_prefix with "range() arg 3 must not be zero" and made
    restore_prefix a silent miss; a restore batch with an all-padding row failed with the
    daemon's "token_ids is empty" (store_prefix said which row); a restore with another
    model's fingerprint failed with an IndexError."""
    fp = hf.model_fingerprint(tiny, model_id="kvcodec-args")
    p = ids_of(40, 11)
    cache = hf.prefill(tiny, p[None])[1]
    for ct in (0, -1, 65537, 16.0, None, True):
        with pytest.raises(ValueError, match="chunk_tokens must be an int in"):
            hf.store_prefix(client, tiny, p, cache, fingerprint=fp, chunk_tokens=ct)
        with pytest.raises(ValueError, match="chunk_tokens must be an int in"):
            hf.restore_prefix(client, tiny, p, fingerprint=fp, chunk_tokens=ct,
                              policy="restore")
    assert client.lookup(fp, p.tolist(), chunk_tokens=C).matched_tokens == 0
    # another model's fingerprint (3 layers; 2 KV heads): said so (was an IndexError)
    for field, v in (("n_layers", 3), ("n_kv_heads", 2), ("head_dim", 64)):
        other = copy.deepcopy(fp)
        setattr(other, field, v)
        with pytest.raises(ValueError, match=f"the fingerprint has {field} = {v}"):
            hf.restore_prefix(client, tiny, p, fingerprint=other, chunk_tokens=C,
                              policy="restore")
    ids = torch.stack([p, p])
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(ValueError, match="row 1 has no tokens"):
        hf.restore_prefix(client, tiny, ids, attention_mask=mask, fingerprint=fp,
                          chunk_tokens=C, policy="restore")


def test_hf_store_same_session_from_several_threads(tiny, client):
    """Writers of one session at once: e8kvd answers ABORTED ("retry") to a call whose view
    of the session went stale, and e8kv had no exception class for it (a bare E8kvError);
    store_prefix raised it (22 of 33 stores of a growing chat from 3 threads failed). It now
    looks up and stores the row again; e8kv.Aborted exists."""
    import threading
    assert issubclass(e8kv.Aborted, e8kv.E8kvError)
    fp = hf.model_fingerprint(tiny, model_id="kvcodec-threads")
    p = ids_of(7 * C, 21)
    cache = hf.prefill(tiny, p[None])[1]
    failures, start = [], threading.Barrier(4)

    def writer():
        start.wait()
        for n in (2 * C + 3, 4 * C, 7 * C):      # the chat grows; every thread stores each
            try:
                hf.store_prefix(client, tiny, p[:n], cache, session="grow", fingerprint=fp,
                                chunk_tokens=C)
            except ValueError:
                pass                             # the session is already longer: refused
            except Exception as e:               # noqa: BLE001
                failures.append(e)
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert client.get_session("grow").n_tokens == 7 * C
    attempts = []
    real = client.put_chunks

    def flaky(*a, **kw):                         # the first put of a row: ABORTED
        attempts.append(1)
        if len(attempts) == 1:
            raise e8kv.Aborted(grpc.StatusCode.ABORTED, "changed meanwhile", "PutChunks")
        return real(*a, **kw)
    q = ids_of(3 * C, 22)
    client.put_chunks = flaky
    try:
        r = hf.store_prefix(client, tiny, q, hf.prefill(tiny, q[None])[1], session="flaky",
                            fingerprint=fp, chunk_tokens=C)
    finally:
        del client.put_chunks
    assert len(attempts) == 2 and r[0]["chunks_written"] == 3


def test_cpu_kvcodec_checks_before_touching_tensors():
    fpc = codec.Fingerprint(model_id="kvc-check", n_layers=2, n_kv_heads=1, head_dim=32,
                            src_dtype="float16", rope=codec.Rope(theta=10000.0))
    kvc = CpuKVCodec(fpc, threads=1)
    g = torch.Generator().manual_seed(0)
    layers = [(torch.randn(1, 40, 32, generator=g), torch.randn(1, 40, 32, generator=g))
              for _ in range(2)]
    chunks = kvc.encode_chunks(layers, [0, 16], [16, 24], pos_offset=100)
    assert [codec.chunk_info(c)["first_pos"] for c in chunks] == [100, 116]
    raw = torch.stack([torch.stack((k[:, 16:], v[:, 16:])) for k, v in layers]).half()
    assert chunks[1] == codec.encode_chunk(fpc, raw, first_pos=116)
    out = [(torch.zeros(1, 40, 32), torch.zeros(1, 40, 32)) for _ in range(2)]
    assert kvc.decode_chunks_into(chunks[::-1], out, pos_offset=100) == 40
    assert 0 < rel_err(out[1][0], layers[1][0]) < 0.3       # K3V2 on Gaussian data
    with pytest.raises(ValueError, match="does not fit"):
        kvc.decode_chunks_into(chunks, out, pos_offset=0)
    with pytest.raises(ValueError, match="layers"):
        kvc.decode_chunks_into(chunks, out[:1], pos_offset=100)
    with pytest.raises(ValueError, match="shape"):
        kvc.encode_chunks([(k[:, :, :16], v) for k, v in layers], [0], [16])
    with pytest.raises(TypeError, match="tensor on"):
        kvc.encode_chunks([(layers[0][0], layers[0][1].half()), layers[1]], [0], [16])
    with pytest.raises(ValueError, match="outside"):
        kvc.encode_chunks(layers, [30], [16])
    foreign = CpuKVCodec(codec.Fingerprint(model_id="other", n_layers=2, n_kv_heads=1,
                                           head_dim=32, rope=codec.Rope(theta=10000.0)), 1)
    with pytest.raises(ValueError, match="another fingerprint"):
        foreign.decode_chunks_into(chunks, out, pos_offset=100)
    kvc.close()
    foreign.close()


def test_new_cache_takes_the_tensors_without_copying(tiny):
    p = ids_of(30, 8)
    _, exact = hf.prefill(tiny, p[None])
    layers = [(k.clone(), v.clone()) for k, v in hf.cache_layers(exact)]
    cache = hf.new_cache(tiny, layers)
    assert cache.get_seq_length() == 30
    for (k, v), (ck, cv) in zip(layers, hf.cache_layers(cache)):
        assert ck.data_ptr() == k.data_ptr() and cv.data_ptr() == v.data_ptr()
    # a view of a larger allocation works too, and generation matches the exact cache
    big = [(torch.cat([k, k], 2)[:, :, :30], torch.cat([v, v], 2)[:, :, :30])
           for k, v in hf.cache_layers(exact)]
    nxt = ids_of(4, 9)
    with torch.no_grad():
        want = tiny(input_ids=nxt[None], use_cache=True,
                    **{hf.cache_kwarg(tiny): copy.deepcopy(exact)}).logits
        got = tiny(input_ids=nxt[None], use_cache=True,
                   **{hf.cache_kwarg(tiny): hf.new_cache(tiny, big)}).logits
    assert torch.allclose(want, got, atol=1e-5)
    assert hf.new_cache(tiny, []).get_seq_length() == 0


def test_get_chunks_parallel_same_chunks_errors_and_early_close(client):
    fp = {"model_id": "parallel-fetch", "n_layers": 2, "n_kv_heads": 1, "head_dim": 32,
          "source_dtype": "DTYPE_FP32", "rope": {"theta": 10000.0,
                                                 "layout": "ROPE_LAYOUT_SPLIT_HALF"}}
    g = torch.Generator().manual_seed(1)
    data = torch.randn(2, 2, 1, 7 * C, 32, generator=g)
    tokens = list(range(300, 300 + 7 * C))
    r = client.put_chunks(fp, [e8kv.ChunkIn(tokens[s:s + C],
                                            data[:, :, :, s:s + C].contiguous().numpy())
                               for s in range(0, 7 * C, C)],
                          encoding="raw", raw_dtype="fp32", chunk_tokens=C)
    keys = list(r.chunk_keys)
    one = [(c.index, c.start_token, c.data) for c in client.get_chunks(keys, encoding="e8")]
    for streams in (1, 3, 16):
        run = client.get_chunks_parallel(keys, streams=streams, encoding="e8")
        got = sorted((c.index, c.start_token, c.data) for c in run)
        assert got == one and run.streams == min(streams, 7)
        assert run.bytes == sum(len(x[2]) for x in one)
    # an unknown key in one slice: the error reaches the caller, with its status
    bad = keys[:5] + [b"\x01" * 32] + keys[5:]
    with pytest.raises(e8kv.NotFound):
        list(client.get_chunks_parallel(bad, streams=3, encoding="e8"))
    # leaving early cancels the other calls and returns
    run = client.get_chunks_parallel(keys, streams=2, encoding="e8", queue_chunks=1)
    assert run.get() is not None
    run.close()
    assert all(not th.is_alive() for th in run._threads)
    assert list(client.get_chunks_parallel([], streams=4)) == []


def test_hf_auto_decision_is_the_library_rule_with_the_forward_over_the_cache(tiny, client):
    """policy="auto" through e8kv.decide.Decider: it measures (a calibration prefill, the
    restore, the forward run through hf.prefill(decider=)) and predicts the forward of the
    remaining tokens over the restored cache; fake timings then steer it both ways, including
    the case the old per-token-rate rule got wrong (restore + forward slower than recompute)."""
    from e8kv.decide import Decider
    fp = hf.model_fingerprint(tiny, model_id="kvcodec-decide")
    p = ids_of(64, 11)
    _, cache = hf.prefill(tiny, p[None])
    hf.store_prefix(client, tiny, p, cache, fingerprint=fp, chunk_tokens=C)
    q = torch.cat([p, ids_of(8, 12)])
    client.deciders.clear()
    r = hf.restore_prefix(client, tiny, q, fingerprint=fp, chunk_tokens=C)
    dec = hf.decider_for(client, tiny, fp)
    assert r.decider is dec and isinstance(dec, Decider)
    assert r.decision in ("restore", "recompute") and r.reason
    assert [n for n, _ in dec.prefills] == [C] and dec.restores           # both measured
    assert r.timings["predicted_recompute_s"] > 0
    if r.decision == "restore":                  # the first forward, timed and recorded
        hf.prefill(tiny, r.input_ids[:, r.n_cached:], r.attention_mask, r.cache, decider=dec)
        assert list(dec.forwards) == [64] and list(dec.forwards[64]) == [8]

    # fake timings: restoring costs 1 us per token, the lookup ~nothing
    def fake(prefill_s, forward_s):
        d = client.deciders[hf._decider_key(tiny, fp)] = Decider()
        d.add_prefill(72, prefill_s)
        d.add_restore(64, 64e-6)
        if forward_s is not None:
            d.add_forward(8, 64, forward_s)
        return d
    fake(10.0, None)                             # recomputing takes 10 s: restore
    r = hf.restore_prefix(client, tiny, q, fingerprint=fp, chunk_tokens=C)
    assert r.decision == "restore" and r.n_cached == 64 and "< recompute" in r.reason
    d = fake(0.5, 1.0)                           # the forward over the cache alone takes 1 s
    assert 64 * d.restore_per_token_s() < d.recompute_s(64, 8)    # per-token rates: restore
    r = hf.restore_prefix(client, tiny, q, fingerprint=fp, chunk_tokens=C)
    assert r.decision == "recompute" and r.n_cached == 0 and r.cache.get_seq_length() == 0
    assert "forward of 8 tokens 1.0000" in r.reason
    assert r.timings["predicted_restore_s"] > r.timings["predicted_recompute_s"] == 0.5
    # the recompute run through hf.prefill(decider=) is recorded as a prefill of its length
    hf.prefill(tiny, r.input_ids, r.attention_mask, decider=r.decider)
    assert [n for n, _ in d.prefills] == [72, 72]
    client.deciders.clear()


def test_hf_restore_miss_under_another_fingerprint_says_so(tiny, client):
    """A restore under another model_id (or chunk_tokens) than the store's matched nothing and
    said "chunks of N tokens match whole, so a stored short last chunk matches only the same
    tokens": about chunking, not the fingerprint that differs (user trial, finding 10)."""
    p = ids_of(40, 12)
    cache = hf.prefill(tiny, p[None])[1]
    fp_a = hf.model_fingerprint(tiny, model_id="miss-store-A")
    assert hf.store_prefix(client, tiny, p, cache, fingerprint=fp_a,
                           chunk_tokens=C)[0]["chunks_written"] == 3
    assert hf.restore_prefix(client, tiny, p, fingerprint=fp_a, chunk_tokens=C,
                             policy="restore").n_cached == 39     # one left to compute
    fp_b = hf.model_fingerprint(tiny, model_id="miss-restore-B")
    fpid_b = bytes(client.lookup(fp_b, p.tolist(), chunk_tokens=C).fingerprint_id).hex()
    r = hf.restore_prefix(client, tiny, p, fingerprint=fp_b, chunk_tokens=C, policy="restore")
    assert r.decision == "miss" and r.n_cached == 0
    for want in ("nothing stored for this fingerprint", fpid_b[:16], "'miss-restore-B'",
                 "different model_id, preset/codec or model config than at store time gives "
                 "a different fingerprint", "chunks of 16 tokens"):
        assert want in r.reason, (want, r.reason)
    assert "short last chunk" not in r.reason, r.reason
    r = hf.restore_prefix(client, tiny, p, fingerprint=fp_a, chunk_tokens=8, policy="restore")
    assert r.decision == "miss" and "a different chunk_tokens different chunks" in r.reason
    assert "chunks of 8 tokens" in r.reason, r.reason


def test_hf_store_prefix_without_a_cache_names_the_argument(tiny, client):
    """store_prefix(client, model, ids, None) failed with "'NoneType' object is not
    iterable" (user trial, finding 12); nothing is stored."""
    fp = hf.model_fingerprint(tiny, model_id="store-no-cache")
    p = ids_of(20, 13)
    for bad, why in ((None, "is None"), (42, "is a int, not a KV cache"),
                     (hf.new_cache(tiny, []), "is an empty DynamicCache")):
        with pytest.raises(TypeError, match=r"past_key_values \(4th argument\) " + why):
            hf.store_prefix(client, tiny, p, bad, fingerprint=fp, chunk_tokens=C)
    assert client.lookup(fp, p.tolist(), chunk_tokens=C).matched_tokens == 0


def flip_payload_byte(data_dir, key):
    """Flips one payload byte of the stored record of chunk ``key`` in its segment file (the
    record header, 192 bytes, holds the key at offset 16: store/store_int.h)."""
    for seg in sorted((data_dir / "segments").glob("*.seg")):
        with open(seg, "r+b") as f:
            b = f.read()
            at = b.find(bytes(key))
            if at < 0:
                continue
            hdr = at - 16
            assert b[hdr:hdr + 4] == b"E8SR", (seg, hdr)
            at = hdr + 192 + 200             # past the frame's header and fingerprint
            f.seek(at)
            f.write(bytes([b[at] ^ 0x40]))
            return
    raise AssertionError(f"chunk {bytes(key).hex()} is in no segment file")


def test_hf_restore_after_a_chunk_turns_out_corrupt_restores_the_prefix_before_it(
        tiny, tmp_path, caplog):
    """A chunk found corrupt during the fetch (e8kvd: DATA_LOSS, then quarantined) made
    restore_prefix raise e8kv.DataLoss, which the README's engine pattern (catching
    Unavailable) does not expect (adversarial tester, session 5). Now it looks up again once
    and restores the whole chunks before the lost one, saying so; a second loss: a miss."""
    d = Daemon(tmp_path, "--segment-bytes", "4M")
    try:
        with e8kv.Client(d.address, timeout=60) as c:
            fp = hf.model_fingerprint(tiny, model_id="restore-corrupt")
            p = ids_of(80, 21)                               # 5 chunks of 16
            cache = hf.prefill(tiny, p[None])[1]
            keys = hf.store_prefix(c, tiny, p, cache, fingerprint=fp,
                                   chunk_tokens=C)[0]["chunk_keys"]
            assert len(keys) == 5
            q = torch.cat([p, ids_of(5, 22)])
            clean = hf.restore_prefix(c, tiny, q, fingerprint=fp, chunk_tokens=C,
                                      policy="restore")
            assert clean.n_cached == 80
            clean = hf.cache_layers(clean.cache)

            def check(r, n):
                assert r.decision == "restore" and r.n_cached == n, (r.decision, r.reason)
                assert "corrupt (e8kv.DataLoss, quarantined by the daemon)" in r.reason
                assert "looked up again" in r.reason, r.reason
                assert r.input_ids.shape == (1, 85)
                for (k, v), (kc, vc) in zip(hf.cache_layers(r.cache), clean):
                    assert k.shape[2] == n                   # bit for bit the stored KV
                    assert torch.equal(k, kc[:, :, :n]) and torch.equal(v, vc[:, :, :n])

            # chunk 2 (tokens 32..47) corrupt: chunks 0 and 1 restored (libe8kv's C fetch)
            flip_payload_byte(d.dir / "data", keys[2])
            with caplog.at_level(logging.WARNING, logger=hf.log.name):
                r = hf.restore_prefix(c, tiny, q, fingerprint=fp, chunk_tokens=C,
                                      policy="restore")
            check(r, 32)
            assert r.timings["fetch"] == "libe8kv e8kv_fetch (C)"
            assert any("looking up again" in m for m in caplog.messages), caplog.messages
            # chunk 1 corrupt, fetched by grpcio: chunk 0 restored
            flip_payload_byte(d.dir / "data", keys[1])
            c.native_fetcher = lambda *a, **k: None
            r = hf.restore_prefix(c, tiny, q, fingerprint=fp, chunk_tokens=C,
                                  policy="restore")
            del c.native_fetcher
            check(r, 16)
            assert r.timings["fetch"] == "grpcio"
            # a chunk lost again on the second try: nothing restored, never a partial cache
            real = hf._FetchRows

            class Losing(real):
                def batch(self, most):
                    raise e8kv.NotFound(grpc.StatusCode.NOT_FOUND, "chunk 0: not found",
                                        "GetChunks")
            hf._FetchRows = Losing
            try:
                r = hf.restore_prefix(c, tiny, q, fingerprint=fp, chunk_tokens=C,
                                      policy="restore")
            finally:
                hf._FetchRows = real
            assert r.decision == "miss" and r.n_cached == 0 and r.cache.get_seq_length() == 0
            for want in ("gone since the Lookup (e8kv.NotFound", "chunk 0: not found",
                         "looked up again, and then", "nothing restored"):
                assert want in r.reason, (want, r.reason)
            assert torch.equal(r.input_ids, q[None])
            assert c.lookup(fp, q.tolist(), chunk_tokens=C).matched_tokens == 16
    finally:
        rc = d.stop()
    assert rc == 0, d.logs()
