"""bench/e2e/kvio.py: a prefill's KV cache into e8kvd and back into a transformers cache on the
model's device, plus the load-or-recompute decision, as an engine would run them.

Codecs (same two methods, so the rest does not care which):
  * e8kv.cuda.CudaCodec: KV encoded from / decoded into the CUDA tensors by device pointer
    (the GPU path: only compressed bytes and the codec's compact qbatch cross PCIe);
  * CpuCodec below: e8kv.codec (libe8codec) on a thread pool, the KV copied through the host
    (the fallback where the CUDA library or a GPU is missing, and the CPU test).

Why not e8kv.hf.store_prefix / restore_prefix: those decode chunk by chunk on the CPU and
torch.cat the result before moving it to the device (a second full-size copy); the GPU path
needs them to take a codec and decode into preallocated cache tensors. The hook e8kv.hf
would need is described in bench/e2e/README.md.

Transfer (the engine's thread never waits on the network longer than it must):
  * store_prefix(background=True) returns a StoreJob as soon as the last chunk is encoded;
    PutChunks streams the compressed chunks from a queue in a thread meanwhile and after
    (Client.put_chunks: libe8kv's C upload, whose own C thread sends while the Python one
    only queues; grpcio where libe8kv.so is missing: the store's ``upload_path`` says which);
  * Fetcher runs N GetChunks calls at once, one gRPC channel (connection) each, over
    contiguous slices of the chunk list; restore() decodes whatever chunks have arrived, so
    decoding of early chunks overlaps the fetch of later ones.

Decision: e8kv.decide.Decider (the library's rule, also e8kv.hf's): restore when the predicted
time to first token of restoring (lookup + fetch/decode + the forward of the remaining tokens
over the restored cache, learned per cached length) is below the measured prefill of that
length; see e8kv/decide.py.
"""
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from e8kv import codec as e8codec
from e8kv import decide as e8decide
from e8kv.client import ChunkIn


# ------------------------------------------------------------------------------ codecs

class CpuCodec:
    """e8kv.codec on ``threads`` threads; the KV tensors may live on any device."""
    name = "cpu"

    def __init__(self, fingerprint, threads=None):
        self.fingerprint = e8codec._as_fingerprint(fingerprint)
        self.pool = ThreadPoolExecutor(threads or 4)

    def encode_chunks(self, layers, starts, n_tokens, pos_offset=0):
        def one(s, n):
            raw = torch.stack([torch.stack((k[:, s:s + n], v[:, s:s + n])) for k, v in layers])
            return e8codec.encode_chunk(self.fingerprint, raw.cpu().contiguous(),
                                        first_pos=s + pos_offset)
        return list(self.pool.map(one, starts, n_tokens))

    def encode_chunks_deferred(self, layers, starts, n_tokens, pos_offset=0):
        """The caller's thread only copies each chunk's KV (a snapshot: the caller may then
        overwrite its tensors); the returned job's chunks() encodes on the pool, in order."""
        snaps = [(s, torch.stack([torch.stack((k[:, s:s + n], v[:, s:s + n]))
                                  for k, v in layers]).to("cpu", copy=True).contiguous())
                 for s, n in zip(starts, n_tokens)]
        return _CpuEncodeJob(self, snaps, pos_offset)

    def decode_chunks_into(self, chunks, layers, pos_offset=0):
        dt = layers[0][0].dtype

        def one(data):
            return (e8codec.chunk_info(data)["first_pos"],
                    e8codec.decode_chunk(self.fingerprint, data, dtype=dt))
        total = 0
        for p0, raw in self.pool.map(one, chunks):
            t0, n = p0 - pos_offset, raw.shape[3]
            for li, (k, v) in enumerate(layers):
                k[:, t0:t0 + n].copy_(raw[li, 0])
                v[:, t0:t0 + n].copy_(raw[li, 1])
            total += n
        return total

    def synchronize(self):
        pass

    def close(self):
        self.pool.shutdown()


class _CpuEncodeJob:
    """CpuCodec.encode_chunks_deferred's job (EncodeJob's interface: chunks(), result(),
    release(), n_chunks)."""

    def __init__(self, codec, snaps, pos_offset):
        self.codec, self.snaps, self.pos_offset = codec, snaps, pos_offset

    @property
    def n_chunks(self):
        return len(self.snaps)

    def chunks(self):
        fp, off = self.codec.fingerprint, self.pos_offset
        try:
            yield from self.codec.pool.map(
                lambda x: e8codec.encode_chunk(fp, x[1], first_pos=x[0] + off), self.snaps)
        finally:
            self.release()

    def result(self):
        return list(self.chunks())

    def release(self):
        self.snaps = []


def make_codec(fingerprint, device, want="auto"):
    """(codec, why): the CUDA codec for a CUDA device when the library loads, else the CPU one."""
    if want in ("auto", "cuda") and device.type == "cuda":
        try:
            from e8kv import cuda as e8cuda
            # encode: 1 GiB of qbatch per library call (~16 chunks of the 8B shape), so a
            # 32K prefix is 8 calls; decode keeps the default double buffer (2 x 256 MiB)
            return e8cuda.CudaCodec(fingerprint, device=device,
                                    encode_workspace_bytes=1 << 30), "e8kv.cuda"
        except Exception as e:          # noqa: BLE001 -- reported, and the CPU path used
            if want == "cuda":
                raise
            return CpuCodec(fingerprint, threads=16), f"CPU codec (CUDA codec failed: {e})"
    return CpuCodec(fingerprint), "CPU codec"


# ------------------------------------------------------------------------------ decision

# The rule lives in the library (e8kv.decide), shared with e8kv.hf.restore_prefix.
Decider = e8decide.Decider


# ------------------------------------------------------------------------------ store

class StoreJob:
    """A store whose upload runs on in a background thread (store_prefix(background=True)).

    ``engine`` (dict, set when store_prefix returns): what the caller's thread was blocked
    for: lookup_s, encode_s (encode of every chunk: on the GPU path the quantize kernels, the
    D2H copy of the compact qbatch and the host entropy stage), engine_s (from the start to
    the return of store_prefix). ``result()`` waits for PutChunks' reply (every chunk on disk)
    and returns the full dict: the above plus upload_s (PutChunks from its first request to
    its reply, overlapping the encoding), upload_tail_s (from the return of store_prefix to
    the reply: the part of the upload that overlapped the caller's next work) and store_s
    (from the start of store_prefix to the reply)."""

    def __init__(self, res, t0):
        self.res, self.t0 = res, t0
        self.thread, self.box = None, {}
        self.t_engine = None

    def done(self):
        return self.thread is None or not self.thread.is_alive()

    def result(self, timeout=None):
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TimeoutError(f"PutChunks still running after {timeout} s")
        if "e" in self.box:
            raise self.box["e"]
        return self.res


def _put_thread(client, fp_pb, q, job, over, C, parent_key, parent_end, native):
    """PutChunks fed from q (items ChunkIn, then None); fills job.res when it replies."""
    def chunks():
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, tuple):     # (EncodeJob, [(start, n)]): assembled here
                enc, spans = item
                gen = enc.chunks()
                try:
                    for (s, m), d in zip(spans, gen):
                        job.res["encoded_bytes"] += len(d)
                        yield ChunkIn(job.tokens[s:s + m], d)
                finally:
                    gen.close()             # gives the codec's arena back at once
                continue
            job.res["encoded_bytes"] += len(item.data)
            yield item
    t0 = time.perf_counter()
    try:
        r = client.put_chunks(fp_pb, chunks(), encoding="e8", chunk_tokens=C,
                              parent_key=parent_key, parent_end_token=parent_end, native=native)
        t1 = time.perf_counter()
        job.res.update(chunks_written=r.chunks_stored, stored_bytes=r.stored_bytes,
                       upload_s=t1 - t0, store_s=t1 - job.t0,
                       upload_tail_s=max(0.0, t1 - (job.t_engine or t1)))
    except BaseException as e:          # noqa: BLE001 -- re-raised by StoreJob.result
        job.box["e"] = e
    finally:
        over.set()


def store_prefix(client, fp_pb, layers, tokens, kvc, *, chunk_tokens=256, group=8,
                 background=False, deferred=True, native=None):
    """Stores the KV of ``tokens`` (token t at layers[l][0/1][:, t]) as chunks in e8kvd;
    chunks already stored (Lookup) are not sent again. The caller's thread encodes (a group
    of chunks per codec call) and queues the frames; a background thread streams them with
    PutChunks as they come (the queue holds compressed bytes only, never waits on the
    upload, so encoding never stalls on the network); with ``deferred`` and a codec that has
    encode_chunks_deferred, the whole prefix is encoded in one call and the chunks assembled
    on the upload thread. background=False: waits for the reply
    and returns the dict of StoreJob.result(); True: returns the StoreJob right after the
    last chunk is encoded (its KV tensors are no longer read: the caller may free or
    overwrite them). native: Client.put_chunks' (None: libe8kv's C upload where it loads)."""
    C, n = chunk_tokens, len(tokens)
    t0 = time.perf_counter()
    lk = client.lookup(fp_pb, tokens, chunk_tokens=C)
    t_lookup = time.perf_counter() - t0
    counts, keys = list(lk.chunk_token_counts), list(lk.chunk_keys)
    full = 0
    while full < len(counts) and counts[full] == C:
        full += 1
    F = full * C
    res = dict(tokens=n, skipped_tokens=F, chunks_written=0, encoded_bytes=0, stored_bytes=0,
               lookup_s=t_lookup, encode_s=0.0, upload_s=0.0, upload_tail_s=0.0,
               upload_path=client.upload_path() if native is not False else "grpcio")
    job = StoreJob(res, t0)
    if lk.matched_tokens == n:
        now = time.perf_counter()
        res.update(skipped_tokens=n, engine_s=now - t0, store_s=now - t0)
        job.engine = dict(lookup_s=t_lookup, encode_s=0.0, engine_s=now - t0)
        job.t_engine = now
        return job if background else job.result()
    starts = list(range(F, n, C))
    sizes = [min(C, n - s) for s in starts]
    q = queue.Queue()                   # unbounded: compressed frames only
    over = threading.Event()
    job.thread = threading.Thread(target=_put_thread, daemon=True, args=(
        client, fp_pb, q, job, over, C, keys[full - 1] if full else b"", F, native))
    job.thread.start()
    job.tokens = tokens
    try:
        if deferred and hasattr(kvc, "encode_chunks_deferred"):
            # the whole prefix in one codec call (GPU work and frames to pinned memory on
            # this thread); the chunk assembly runs on the upload thread
            te = time.perf_counter()
            enc = kvc.encode_chunks_deferred(layers, starts, sizes)
            res["encode_s"] += time.perf_counter() - te
            res["encode_deferred"] = True
            q.put((enc, list(zip(starts, sizes))))
        for i in range(0, 0 if res.get("encode_deferred") else len(starts), group):
            if over.is_set():           # the call failed early: result() says why
                break
            te = time.perf_counter()
            datas = kvc.encode_chunks(layers, starts[i:i + group], sizes[i:i + group])
            res["encode_s"] += time.perf_counter() - te
            for s, m, d in zip(starts[i:i + group], sizes[i:i + group], datas):
                q.put(ChunkIn(tokens[s:s + m], d))
    except BaseException:
        q.put(None)                     # ends the request stream (the daemon keeps what it
        job.thread.join()               # got: a valid prefix of the chain), then re-raise
        raise
    q.put(None)
    job.t_engine = time.perf_counter()
    res["engine_s"] = job.t_engine - t0
    job.engine = dict(lookup_s=t_lookup, encode_s=res["encode_s"], engine_s=res["engine_s"])
    return job if background else job.result()


# ------------------------------------------------------------------------------ restore

def new_cache(model, layers):
    """A DynamicCache holding layers [(K, V)] ([1, H, T, D]) without copying them when this
    transformers version allows it (else through update(), one layer at a time)."""
    from transformers import DynamicCache
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        cache = DynamicCache()
    direct = hasattr(cache, "layers") and len(cache.layers) == len(layers) and \
        all(hasattr(ly, "lazy_initialization") for ly in cache.layers)
    if direct:
        try:
            for ly, (k, v) in zip(cache.layers, layers):
                try:
                    ly.lazy_initialization(k, v)
                except TypeError:
                    ly.lazy_initialization(k)
                ly.keys, ly.values = k, v
            if cache.get_seq_length() == layers[0][0].shape[2]:
                return cache
        except Exception:       # noqa: BLE001 -- internals differ: the public way below
            pass
        try:
            cache = DynamicCache(config=model.config)
        except TypeError:
            cache = DynamicCache()
    for i in range(len(layers)):
        k, v = layers[i]
        layers[i] = None
        cache.update(k, v, i)
        del k, v
    return cache


class Restore:
    """Result of restore(): decision, n_cached, cache (or None), timings (seconds)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class Fetcher:
    """Parallel GetChunks: ``streams`` calls at a time, each on its own gRPC channel (its own
    TCP or unix-socket connection: grpc.use_local_subchannel_pool keeps channels to the same
    address from sharing one), each reading a contiguous slice of the chunk list in a thread.
    Whole chunks (bytes) go to one bounded queue in the order they complete, so the consumer
    decodes slice k's chunks while the other slices are still arriving. One Fetcher per
    daemon address; the channels are made once and reused (one per stream)."""
    kind = "py"

    def __init__(self, address, streams=4, *, timeout=600, token=None, max_streams=None):
        import e8kv
        self.address, self.streams = address, max(1, int(streams))
        self.clients = [e8kv.Client(address, token, timeout=timeout,
                                    options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in range(max(self.streams, max_streams or 0))]

    def close(self):
        for c in self.clients:
            c.close()

    def prepare(self, nbytes):
        """Nothing to set up (NativeFetcher's has a buffer)."""

    @staticmethod
    def slices(n, k):
        """k contiguous [begin, end) ranges covering range(n), sizes differing by <= 1."""
        k = max(1, min(k, n))
        b = [n * i // k for i in range(k + 1)]
        return [(b[i], b[i + 1]) for i in range(k) if b[i + 1] > b[i]]

    def start(self, keys, *, max_piece_bytes=16 << 20, queue_chunks=32, streams=None):
        """Starts fetching ``keys`` over ``streams`` channels (default: the Fetcher's;
        at most its channel count); returns a FetchRun (iterate it for chunk bytes)."""
        return FetchRun(self.clients[:streams or self.streams], list(keys), max_piece_bytes,
                        queue_chunks)


class FetchRun:
    """The chunks of one parallel fetch: iterate for bytes (any order; an error of any stream
    is raised by the iteration), close() to stop early (cancels the streams)."""

    def __init__(self, clients, keys, max_piece_bytes, queue_chunks):
        self.q = queue.Queue(maxsize=max(queue_chunks, len(clients)))
        self.stop = threading.Event()
        self.errors = []
        self.bytes = 0
        self.threads = []
        for c, (b, e) in zip(clients, Fetcher.slices(len(keys), len(clients))):
            th = threading.Thread(target=self._one, args=(c, keys[b:e], max_piece_bytes),
                                  daemon=True)
            th.start()
            self.threads.append(th)
        self.live = len(self.threads)

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _one(self, client, keys, max_piece_bytes):
        it = client.get_chunks(keys, encoding="e8", max_piece_bytes=max_piece_bytes)
        try:
            for ch in it:
                if not self._put(ch.data):
                    break
        except BaseException as e:      # noqa: BLE001 -- raised by the consumer
            self.errors.append(e)
            self.stop.set()
        finally:
            it.close()                  # cancels the call if it was left early
            self.q.put(None)            # never blocks for long: the consumer drains

    def get(self, block=True):
        """Next chunk's bytes; None when every stream is over; queue.Empty if not block and
        none is ready. Raises the first stream error."""
        while self.live:
            x = self.q.get(block)
            if x is None:
                self.live -= 1
                continue
            if self.errors:
                break
            self.bytes += len(x)
            return x
        if self.errors:
            self.close()
            raise self.errors[0]
        return None

    def __iter__(self):
        while True:
            x = self.get()
            if x is None:
                return
            yield x

    def close(self):
        """Stops every stream and waits for their threads."""
        self.stop.set()
        while self.live:
            if self.q.get() is None:
                self.live -= 1
        for th in self.threads:
            th.join()


class NativeFetcher:
    """The same interface as Fetcher over libe8kv's C fetch (e8kv.fetch.NativeFetcher:
    ``streams`` C threads, one connection each, chunk frames written straight into one
    pinned host buffer kept across fetches; the Python thread only waits, GIL released).
    ``kind`` = "c" (Fetcher's is "py")."""
    kind = "c"

    def __init__(self, address, streams=4, *, timeout=600, token=None, max_streams=None):
        from e8kv.fetch import NativeFetcher as _NF
        self.address, self.streams = address, max(1, int(streams))
        # pageable memory: the decode copies frames into its own pinned staging anyway
        self.nf = _NF(address, max(self.streams, max_streams or 0), token=token, timeout=timeout,
                      pinned=False)

    def close(self):
        self.nf.close()

    def prepare(self, nbytes):
        """Makes the fetch buffer hold nbytes (untimed set-up, as an engine's start)."""
        self.nf.reserve(int(nbytes))

    def start(self, keys, *, max_piece_bytes=16 << 20, queue_chunks=None, streams=None):
        return NativeRun(self.nf.start(keys, streams=streams or self.streams,
                                       max_piece_bytes=max_piece_bytes))


class NativeRun:
    """FetchRun's interface over an e8kv.fetch.FetchRun: get() returns memoryviews into the
    fetch buffer (valid until close(); restore() closes after the decode is synchronized)."""

    def __init__(self, run):
        import collections
        self.run, self.pending = run, collections.deque()
        self.threads = [None] * run.streams
        self._bytes = 0

    def get(self, block=True):
        if not self.pending:
            if block:
                b = self.run.get()
            else:
                import e8kv
                try:
                    b = self.run.get(timeout_s=0)
                except e8kv.DeadlineExceeded:
                    raise queue.Empty from None
            if not b:
                return None
            self.pending.extend(b)
        return self.pending.popleft().view

    def __iter__(self):
        while True:
            x = self.get()
            if x is None:
                return
            yield x

    @property
    def bytes(self):
        return self._bytes if self.run._h is None else self.run.bytes

    @property
    def overflow_bytes(self):
        return self.run.overflow_bytes

    def close(self):
        if self.run._h is not None:
            self._bytes = self.run.bytes
        self.run.close()


def make_fetcher(address, streams, impl="auto", **kw):
    """(fetcher, why): the C fetch (NativeFetcher) when impl is "c", or "auto" and libe8kv
    has it; else the Python one (Fetcher)."""
    if impl in ("auto", "c"):
        try:
            return NativeFetcher(address, streams, **kw), "libe8kv e8kv_fetch (C)"
        except Exception as e:          # noqa: BLE001 -- reported, and the Python path used
            if impl == "c":
                raise
            return Fetcher(address, streams, **kw), f"Python gRPC (C fetch failed: {e})"
    return Fetcher(address, streams, **kw), "Python gRPC"


def restore(client, model, fp_pb, kvc, tokens, decider, *, policy="auto", chunk_tokens=256,
            max_piece_bytes=16 << 20, fetcher=None, batch_chunks=8):
    """Looks up ``tokens``; per the decision, fetches the stored prefix (at least one token is
    left to compute) and decodes it into new cache tensors on the model's device, allocated
    once at their final size. ``fetcher`` (a Fetcher for the same daemon; default: one
    GetChunks on ``client``) runs the fetch in threads; decoding starts with the first chunk
    to arrive and takes up to ``batch_chunks`` ready chunks per codec call, so fetching and
    decoding overlap. Returns a Restore."""
    C = chunk_tokens
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    t0 = time.perf_counter()
    lk = client.lookup(fp_pb, tokens, chunk_tokens=C)
    t_lookup = time.perf_counter() - t0
    n = max(0, min(lk.matched_tokens, len(tokens) - 1))
    tm = dict(lookup_s=t_lookup)
    if n == 0:
        return Restore(decision="miss", reason="nothing stored", n_cached=0, cache=None,
                       timings=tm)
    if decider.recompute_s(n, len(tokens) - n) is None:
        raise RuntimeError("no prefill measured yet: call decider.add_prefill first")
    per_tok = decider.restore_per_token_s()
    if policy == "recompute":
        return Restore(decision="recompute", reason="policy", n_cached=0, cache=None, timings=tm)
    rest = len(tokens) - n
    if policy == "auto" and per_tok is not None:
        d = decider.decide(t_lookup, n, rest, per_tok)
        if not d.restore:
            return Restore(decision="recompute", n_cached=0, cache=None, timings=tm,
                           reason=d.reason)
    counts = list(lk.chunk_token_counts)
    need, got = [], 0
    while got < n:
        need.append(lk.chunk_keys[len(need)])
        got += counts[len(need) - 1]
    H, D = fp_pb.n_kv_heads, fp_pb.head_dim
    kv = [(torch.empty((1, H, got, D), dtype=dtype, device=device),
           torch.empty((1, H, got, D), dtype=dtype, device=device))
          for _ in range(fp_pb.n_layers)]
    views = [(k[0], v[0]) for k, v in kv]
    t1 = time.perf_counter()
    run = fetcher.start(need, max_piece_bytes=max_piece_bytes) if fetcher is not None else \
        FetchRun([client], need, max_piece_bytes, 64)
    decided = policy == "restore" or per_tok is not None
    done_tok, t_first, wait_s, n_calls = 0, None, 0.0, 0
    try:
        while True:
            tw = time.perf_counter()
            first = run.get()
            wait_s += time.perf_counter() - tw
            if first is None:
                break
            if t_first is None:
                t_first = time.perf_counter() - t1
            batch = [first]
            if not decided:             # the first chunk timed alone: decide from it
                done_tok += kvc.decode_chunks_into(batch, views)
                kvc.synchronize()
                _sync(device)
                per_tok = (time.perf_counter() - t1) / done_tok
                decided = True
                d = decider.decide(t_lookup, n, rest, per_tok)
                if policy == "auto" and not d.restore:
                    run.close()
                    decider.add_restore(done_tok, time.perf_counter() - t1)
                    return Restore(decision="recompute", n_cached=0, cache=None, timings=tm,
                                   reason=d.reason + " (first chunk timed)")
                continue
            while len(batch) < batch_chunks:
                try:
                    x = run.get(block=False)
                except queue.Empty:
                    break
                if x is None:
                    break
                batch.append(x)
            done_tok += kvc.decode_chunks_into(batch, views)
            n_calls += 1
    except BaseException:
        try:
            kvc.synchronize()           # nothing may still read the fetch buffer
            _sync(device)
        finally:
            run.close()
        raise
    kvc.synchronize()
    _sync(device)
    run.close()                         # after the sync: decode may read its buffer till then
    t_restore = time.perf_counter() - t1
    if done_tok != got:
        raise RuntimeError(f"restored {done_tok} tokens, expected {got}")
    decider.add_restore(got, t_restore)
    del views
    if got > n:
        kv = [(k[:, :, :n], v[:, :, :n]) for k, v in kv]
    cache = new_cache(model, kv)
    tm.update(fetch_decode_s=t_restore, restore_s=t_lookup + t_restore, fetched_bytes=run.bytes,
              first_chunk_s=t_first, wait_for_data_s=wait_s, decode_calls=n_calls,
              fetch_streams=len(run.threads))
    reason = "policy" if policy == "restore" else decider.decide(t_lookup, n, rest, per_tok).reason
    return Restore(decision="restore", reason=reason, n_cached=n, cache=cache, timings=tm)
