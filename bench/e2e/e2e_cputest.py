"""bench/e2e/e2e_cputest.py: make test's checks of the e2e bench (run.sh BUILD OUT --cpu-test).

After the tiny model's CPU run (e2e_bench.py, 3 layers, CPU codec, a real e8kvd on TCP and a
unix socket) this checks its results, then the fetch and store paths on their own against
the same daemon:
  * every variant ran, the numbers are positive, the issue's fields plus store_engine_s and
    store_upload_s are there, the round trip through the CPU codec is exact and the restored
    KV close to the original, the decision taken;
  * the store's time split: engine_s (encode, the caller blocked) <= store_s, upload_s > 0,
    decode steps timed after the upload's reply; the store took the deferred encode path
    (encode_chunks_deferred: the caller's thread snapshots, the upload thread encodes) and
    counted the encoded bytes;
  * parallel GetChunks, both the C fetch (kvio.NativeFetcher: libe8kv's e8kv_fetch, the
    restore's default, which must be the one in use) and the Python one (kvio.Fetcher), 3
    streams over 8 chunks (uneven slices), returns the very bytes of one GetChunks; a
    restore through it fills the cache tensors exactly as a restore through one stream; a
    missing key fails every stream's run with NOT_FOUND (no hang, no partial result);
    closing a run early stops its streams; the C fetch alone: a buffer smaller than the
    fetch (the rest in its own memory, same bytes), every chunk's index and start_token, a
    wrong expected fingerprint id (FAILED_PRECONDITION), get() after close refused;
  * the store's upload ran through libe8kv's C upload (upload_path "libe8kv");
  * a background store whose PutChunks the daemon refuses (chunks of another fingerprint)
    raises INVALID_ARGUMENT from StoreJob.result().
"""
import time

import torch

import e8kv
import kvio

CHUNK = 256


def _fields_and_numbers(bench, fails):
    runs = bench.runs
    want = {(L, t) for L in (256, 1024, 2048) for t in ("tcp", "unix")}
    have = {(r["prefix_tokens"], r["transport"]) for r in runs}
    if want - have:
        fails.append(f"missing runs {sorted(want - have)}")
    for r in runs:
        if set(r) != {"model", "prefix_tokens", "transport", "cache", "recompute_ttft_s",
                      "restore_ttft_s", "decided_ttft_s", "store_s", "store_engine_s",
                      "store_upload_s", "decision"}:
            fails.append(f"run fields {sorted(r)}")
        for k in ("recompute_ttft_s", "restore_ttft_s", "decided_ttft_s", "store_s",
                  "store_engine_s", "store_upload_s"):
            if not (isinstance(r.get(k), float) and r[k] > 0):
                fails.append(f"{k} = {r.get(k)!r}")
        if r.get("store_engine_s", 0) > r.get("store_s", 0):
            fails.append(f"store_engine_s {r['store_engine_s']} > store_s {r['store_s']}")
        if r["decision"] not in ("restore", "recompute"):
            fails.append(f"decision {r['decision']!r}")
        elif r.get("decided_ttft_s") != (r["restore_ttft_s"] if r["decision"] == "restore"
                                         else r["recompute_ttft_s"]):
            fails.append(f"decided_ttft_s {r.get('decided_ttft_s')!r} is not the TTFT of the "
                         f"{r['decision']} path")


def _details(bench, fails):
    for d in bench.detail:
        L = d["prefix_tokens"]
        if d["restore"]["n_cached"] != L:
            fails.append(f"restored {d['restore']['n_cached']} of {L} tokens")
        tm = d["restore"]["timings"]
        want_streams = min(bench.a.fetch_streams, -(-L // CHUNK))
        if tm.get("fetch_streams") != want_streams:
            fails.append(f"L={L}: restore used {tm.get('fetch_streams')} streams, "
                         f"expected {want_streams}")
        if not tm.get("fetched_bytes"):
            fails.append(f"L={L}: fetched_bytes {tm.get('fetched_bytes')!r}")
        chk = d["roundtrip_check"]
        if chk is not None:
            if not (chk["encoded_bytes_equal_cpu"] and chk["decoded_equal_cpu"]):
                fails.append(f"round trip differs from the CPU codec: {chk}")
            if not (chk["k_rel_rmse"] < 0.3 and chk["v_rel_rmse"] < 0.5):
                fails.append(f"restored KV too far from the original: {chk}")
        sto = d["store"]
        if sto["skipped_tokens"] != 0 and L > CHUNK:
            fails.append(f"store skipped {sto['skipped_tokens']} tokens of a new prefix")
        if sto.get("upload_path") != "libe8kv":
            fails.append(f"L={L}: the upload did not take libe8kv's C path: "
                         f"{sto.get('upload_path')!r}")
        if not sto.get("encode_deferred") or sto.get("encoded_bytes", 0) <= 0:
            fails.append(f"L={L}: the store did not take the deferred encode path: {sto}")
        if not (0 < sto["encode_s"] <= sto["engine_s"] <= sto["store_s"]
                and sto["upload_s"] > 0 and sto["chunks_written"] == -(-L // CHUNK)):
            fails.append(f"L={L}: store times/counts inconsistent: {sto}")
        ov = d.get("decode_overlap")
        if ov is None or ov["steps_after_upload"] != 4 or not ov["step_ms_after_upload"]:
            fails.append(f"L={L}: decode_overlap {ov!r}")
        bd = d.get("breakdown")
        if bd is not None:
            for t in bench.a.transports:
                for k in (1, bench.a.fetch_streams):
                    if not bd.get(f"fetch_{t}_{k}streams_GBps", 0) > 0:
                        fails.append(f"L={L}: breakdown lacks fetch_{t}_{k}streams_GBps: {bd}")


def _check_fetcher(fails, what, client, model, fp, kvc, tokens, keys, one, fetcher):
    """A parallel fetcher (kvio.Fetcher or kvio.NativeFetcher) against one GetChunks."""
    n = len(tokens)
    run = fetcher.start(keys)
    par = [bytes(x) for x in run]
    run.close()
    if sorted(par) != sorted(one) or len(par) != 8:
        fails.append(f"{what}: parallel fetch ({len(par)} chunks) differs from one GetChunks")
    kv = {}
    for name, f in (("one", None), ("par", fetcher)):
        dec = kvio.Decider()
        dec.add_prefill(CHUNK, 1.0)
        r = kvio.restore(client, model, fp, kvc, tokens, dec, policy="restore",
                         chunk_tokens=CHUNK, fetcher=f)
        kv[name] = [(k.clone(), v.clone()) for k, v in e2e_bench_ehf().cache_layers(r.cache)]
        if r.n_cached != n - 1:          # one token is always left to compute
            fails.append(f"{what} {name}: restored {r.n_cached} of {n - 1} tokens")
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(kv["one"], kv["par"]))
    if not same:
        fails.append(f"{what}: restore through {fetcher.streams} streams differs from one stream")
    err = None
    t0 = time.monotonic()
    try:
        list(fetcher.start(keys[:5] + [b"\x01" * 32] + keys[5:]))
    except e8kv.E8kvError as e:
        err = e
    if err is None or "NOT_FOUND" not in str(err.code):
        fails.append(f"{what}: fetch of a missing key gave {err!r}")
    if time.monotonic() - t0 > 60:
        fails.append(f"{what}: the failed fetch took {time.monotonic() - t0:.0f} s")
    run = fetcher.start(keys, queue_chunks=1)
    first = run.get()
    run.close()
    if first is None or any(th is not None and th.is_alive() for th in run.threads):
        fails.append(f"{what}: early close left streams running")


def _check_native(fails, t, address, keys, one, fpid):
    """e8kv.fetch.NativeFetcher's own cases: a buffer smaller than the fetch (chunks past it
    in the fetch's own memory, same bytes), index/start_token of every chunk, a wrong
    expect_fingerprint_id (FAILED_PRECONDITION), a closed run refusing get()."""
    from e8kv.fetch import NativeFetcher
    with NativeFetcher(address, 3, pinned=False) as nf:
        nf.reserve(len(one[0]) + len(one[1]) // 2)  # room for one chunk and a half
        run = nf.start(keys)
        got = {}
        for b in run.batches(max_chunks=2):
            if len(b) > 2:
                fails.append(f"{t} native: batch of {len(b)} > max_chunks 2")
            for ch in b:
                got[ch.index] = (ch.start_token, ch.n_tokens, ch.tobytes())
        total, over, done = run.stats()
        run.close()
        if [got.get(i, (0, 0, b""))[2] for i in range(len(one))] != one:
            fails.append(f"{t} native: chunks by index differ from one GetChunks")
        starts = [got[i][0] for i in sorted(got)]
        if starts != [CHUNK * i for i in range(len(one))] or \
                sum(v[1] for v in got.values()) != 8 * CHUNK - 40:
            fails.append(f"{t} native: start_token/n_tokens wrong: {starts}")
        if not (done == len(one) and total == sum(map(len, one)) and
                over >= total - nf.buffer_bytes and over > 0):
            fails.append(f"{t} native: stats bytes {total} overflow {over} chunks {done} "
                         f"(buffer {nf.buffer_bytes})")
        if nf.largest != total:
            fails.append(f"{t} native: largest {nf.largest} != {total}")
        bad = bytes(32 - len(fpid)) + bytes(b ^ 0xFF for b in fpid)
        err = None
        try:
            with nf.start(keys, expect_fingerprint_id=bad) as r:
                for _ in r.batches():
                    pass
        except e8kv.E8kvError as e:
            err = e
        if err is None or "FAILED_PRECONDITION" not in str(err.code):
            fails.append(f"{t} native: wrong expect_fingerprint_id gave {err!r}")
        run = nf.start(keys)
        run.close()
        try:
            run.get()
            fails.append(f"{t} native: get() after close did not raise")
        except RuntimeError:
            pass


def e2e_bench_ehf():
    import e2e_bench
    return e2e_bench.ehf


def _fetch_and_store(bench, fails):
    """The fetch and store paths alone, on random KV of the tiny model's shape."""
    import e2e_bench
    dev = torch.device("cpu")
    model = e2e_bench.build_model("tiny", dev, torch.float32)
    fp = e2e_bench.ehf.model_fingerprint(model, model_id="e2e-cputest/fetch", preset="K3V2")
    kvc = kvio.CpuCodec(fp, threads=2)
    H, D, NL = fp.n_kv_heads, fp.head_dim, fp.n_layers
    n = 8 * CHUNK - 40                       # 7 full chunks + a short one
    g = torch.Generator().manual_seed(7)
    layers = [(torch.randn(H, n, D, generator=g), torch.randn(H, n, D, generator=g))
              for _ in range(NL)]
    tokens = torch.randint(0, 1000, (n,), generator=g).tolist()
    try:
        for t in bench.a.transports:
            client, fetcher = bench.clients[t], bench.fetchers[t]
            tokens[0] = 1000 + len(t)             # a new chain per transport
            job = kvio.store_prefix(client, fp, layers, tokens[:n], kvc, chunk_tokens=CHUNK,
                                    background=True)
            if job.engine["engine_s"] <= 0 or job.engine["encode_s"] <= 0:
                fails.append(f"{t}: StoreJob.engine {job.engine}")
            res = job.result(timeout=120)
            if res["chunks_written"] != 8 or res["stored_bytes"] <= 0:
                fails.append(f"{t}: background store wrote {res}")
            lk = client.lookup(fp, tokens[:n], chunk_tokens=CHUNK)
            keys = list(lk.chunk_keys)
            if lk.matched_tokens != n or len(keys) != 8:
                fails.append(f"{t}: lookup after store: {lk.matched_tokens} tokens, "
                             f"{len(keys)} keys")
                continue
            one = [c.data for c in client.get_chunks(keys, encoding="e8")]
            fetchers = [fetcher]
            if fetcher.kind != "py":
                fetchers.append(bench.py_fetchers[t])
            for f in fetchers:
                _check_fetcher(fails, f"{t} {f.kind}", client, model, fp, kvc, tokens[:n],
                               keys, one, f)
            if fetcher.kind == "c":
                _check_native(fails, t, bench.d.address(t), keys, one, lk.fingerprint_id)
            else:
                fails.append(f"{t}: the C fetch was not used: {bench.fetch_impl[t]}")
        # the same KV stored without the deferred encode (new chains): the same chunk bytes
        client = bench.clients[bench.a.transports[0]]
        got = {}
        for dfr in (True, False):
            tokens[0] = 3000 + dfr
            r = kvio.store_prefix(client, fp, layers, tokens[:n], kvc, chunk_tokens=CHUNK,
                                  deferred=dfr)
            if bool(r.get("encode_deferred")) != dfr or r["chunks_written"] != 8:
                fails.append(f"store deferred={dfr}: {r}")
            keys = list(client.lookup(fp, tokens[:n], chunk_tokens=CHUNK).chunk_keys)
            got[dfr] = [c.data for c in client.get_chunks(keys, encoding="e8")]
        if got[True] != got[False] or len(got[True]) != 8:
            fails.append("deferred and direct stores wrote different chunks")
        # chunks encoded for another fingerprint: the daemon refuses them during the upload
        other = kvio.CpuCodec(e2e_bench.ehf.model_fingerprint(
            model, model_id="e2e-cputest/other", preset="K3V2"), threads=2)
        tokens[0] = 999
        try:
            job = kvio.store_prefix(bench.clients[bench.a.transports[0]], fp, layers,
                                    tokens[:n], other, chunk_tokens=CHUNK, background=True)
            job.result(timeout=120)
            fails.append("chunks of another fingerprint were stored")
        except e8kv.E8kvError as e:
            if "INVALID_ARGUMENT" not in str(e.code):
                fails.append(f"foreign chunks refused with {e!r}")
        finally:
            other.close()
    finally:
        kvc.close()


def run(bench):
    """All checks; prints them, returns the exit status (0: every check passed)."""
    fails = []
    _fields_and_numbers(bench, fails)
    _details(bench, fails)
    try:
        _fetch_and_store(bench, fails)
    except Exception as e:              # noqa: BLE001 -- a failure of the test itself
        import traceback
        traceback.print_exc()
        fails.append(f"fetch/store checks raised {type(e).__name__}: {e}")
    for f in fails:
        print("FAIL:", f)
    print(f"e2e cpu test: {'FAILED' if fails else 'ok'} ({len(bench.runs)} runs)")
    return 1 if fails else 0
