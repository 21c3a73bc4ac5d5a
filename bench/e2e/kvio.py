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

Decision (Decider): restore when the predicted restore time of the n cached tokens
(this request's measured lookup + n x the per-token restore time measured on this client's
earlier restores, or, before any, on the first chunk of this one) is below the predicted
recompute time of those n tokens (the engine's own measured prefill times: the largest
measured prefill of at most n tokens, scaled linearly to n, which under-estimates long
prefills (attention grows quadratically), so doubtful cases lean to recompute).
"""
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from e8kv import codec as e8codec
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


def make_codec(fingerprint, device, want="auto"):
    """(codec, why): the CUDA codec for a CUDA device when the library loads, else the CPU one."""
    if want in ("auto", "cuda") and device.type == "cuda":
        try:
            from e8kv import cuda as e8cuda
            return e8cuda.CudaCodec(fingerprint, device=device), "e8kv.cuda"
        except Exception as e:          # noqa: BLE001 -- reported, and the CPU path used
            if want == "cuda":
                raise
            return CpuCodec(fingerprint, threads=16), f"CPU codec (CUDA codec failed: {e})"
    return CpuCodec(fingerprint), "CPU codec"


# ------------------------------------------------------------------------------ decision

class Decider:
    """Measured times of one model on one client (see the module doc)."""

    def __init__(self):
        self.prefills = []          # (tokens, seconds) of the engine's own prefills
        self.restores = []          # (tokens, seconds of fetch + decode, lookup excluded)

    def add_prefill(self, n, s):
        self.prefills.append((int(n), float(s)))

    def add_restore(self, n, s):
        self.restores.append((int(n), float(s)))

    def prefill_s(self, n):
        """Predicted prefill time of n tokens: least squares of t = c + a n + b n^2 (c, a, b
        >= 0: launch overhead, weights, attention) over the measured prefills of at least 3
        distinct lengths, else the nearest measured length scaled linearly."""
        import numpy as np
        if not self.prefills:
            return None
        best = {}
        for m, t in self.prefills:             # fastest run of each length
            best[m] = min(t, best.get(m, t))
        if len(best) >= 3:
            ms = np.array(sorted(best), dtype=np.float64)
            ts = np.array([best[m] for m in sorted(best)])
            # relative error is what matters: weight each sample by 1/t
            A = np.stack([np.ones_like(ms), ms, ms * ms], 1) / ts[:, None]
            coef = np.linalg.lstsq(A, np.ones_like(ts), rcond=None)[0]
            coef = np.maximum(coef, 0.0)
            return float(coef[0] + coef[1] * n + coef[2] * n * n)
        m = min(best, key=lambda x: abs(np.log(x / max(n, 1))))
        return best[m] * n / m

    def recompute_s(self, n, rest=1):
        """Predicted extra time of recomputing n cached tokens before the rest tokens."""
        full, part = self.prefill_s(n + rest), self.prefill_s(rest)
        return None if full is None else full - part

    def restore_per_token_s(self):
        if not self.restores:
            return None
        m, s = max(self.restores)
        return s / m


# ------------------------------------------------------------------------------ store

def store_prefix(client, fp_pb, layers, tokens, kvc, *, chunk_tokens=256, group=8):
    """Stores the KV of ``tokens`` (token t at layers[l][0/1][:, t]) as chunks in e8kvd;
    chunks already stored (Lookup) are not sent again. Encoding (main thread) overlaps the
    upload (a gRPC stream fed from a queue). Returns a dict of counts and seconds."""
    C, n = chunk_tokens, len(tokens)
    t0 = time.perf_counter()
    lk = client.lookup(fp_pb, tokens, chunk_tokens=C)
    counts, keys = list(lk.chunk_token_counts), list(lk.chunk_keys)
    full = 0
    while full < len(counts) and counts[full] == C:
        full += 1
    F = full * C
    res = dict(tokens=n, skipped_tokens=F, chunks_written=0, encoded_bytes=0, stored_bytes=0,
               encode_s=0.0)
    if lk.matched_tokens == n:
        res.update(skipped_tokens=n, store_s=time.perf_counter() - t0)
        return res
    starts = list(range(F, n, C))
    sizes = [min(C, n - s) for s in starts]
    q = queue.Queue(maxsize=4)
    box, over = {}, threading.Event()

    def chunks():
        while True:
            item = q.get()
            if item is None:
                return
            yield item

    def put():
        try:
            box["r"] = client.put_chunks(fp_pb, chunks(), encoding="e8", chunk_tokens=C,
                                         parent_key=keys[full - 1] if full else b"",
                                         parent_end_token=F)
        except BaseException as e:      # noqa: BLE001 -- re-raised in the caller's thread
            box["e"] = e
        finally:
            over.set()

    def offer(item):
        """Queues item unless the call is over; False when it is."""
        while not over.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
    th = threading.Thread(target=put, daemon=True)
    th.start()
    try:
        for i in range(0, len(starts), group):
            if over.is_set():
                break
            te = time.perf_counter()
            datas = kvc.encode_chunks(layers, starts[i:i + group], sizes[i:i + group])
            res["encode_s"] += time.perf_counter() - te
            for s, m, d in zip(starts[i:i + group], sizes[i:i + group], datas):
                res["encoded_bytes"] += len(d)
                if not offer(ChunkIn(tokens[s:s + m], d)):
                    break
    finally:
        offer(None)
        th.join()
        try:
            q.put_nowait(None)          # releases a request reader still waiting
        except queue.Full:
            pass
    if "e" in box:
        raise box["e"]
    r = box["r"]
    res.update(chunks_written=r.chunks_stored, stored_bytes=r.stored_bytes,
               store_s=time.perf_counter() - t0)
    return res


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


def restore(client, model, fp_pb, kvc, tokens, decider, *, policy="auto", chunk_tokens=256,
            max_piece_bytes=16 << 20):
    """Looks up ``tokens``; per the decision, fetches the stored prefix (at least one token is
    left to compute) and decodes it into new cache tensors on the model's device. Fetching
    (a thread reading the gRPC stream) overlaps decoding. Returns a Restore."""
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
    est_c = decider.recompute_s(n, len(tokens) - n)
    if est_c is None:
        raise RuntimeError("no prefill measured yet: call decider.add_prefill first")
    per_tok = decider.restore_per_token_s()
    if policy == "recompute":
        return Restore(decision="recompute", reason="policy", n_cached=0, cache=None, timings=tm)
    if policy == "auto" and per_tok is not None and t_lookup + n * per_tok >= est_c:
        return Restore(decision="recompute", n_cached=0, cache=None, timings=tm,
                       reason=f"predicted restore {t_lookup + n * per_tok:.4f} s >= recompute "
                              f"{est_c:.4f} s")
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
    qch = queue.Queue(maxsize=64)
    box = {}

    def fetch():
        it = client.get_chunks(need, encoding="e8", max_piece_bytes=max_piece_bytes)
        try:
            for ch in it:
                if box.get("stop"):
                    break
                qch.put(ch.data)
        except BaseException as e:      # noqa: BLE001 -- re-raised in the caller's thread
            box["e"] = e
        finally:
            it.close()                  # cancels the stream if it was left early
            qch.put(None)
    t1 = time.perf_counter()
    th = threading.Thread(target=fetch, daemon=True)
    th.start()
    decided = policy == "restore" or per_tok is not None
    done_tok = 0
    while True:
        first = qch.get()
        if first is None:
            break
        batch = [first]
        if not decided:                 # the first chunk timed alone: decide from it
            done_tok += kvc.decode_chunks_into(batch, views)
            kvc.synchronize()
            _sync(device)
            per_tok = (time.perf_counter() - t1) / done_tok
            decided = True
            if policy == "auto" and t_lookup + n * per_tok >= est_c:
                box["stop"] = True
                while qch.get() is not None:
                    pass
                th.join()
                decider.add_restore(done_tok, time.perf_counter() - t1)
                return Restore(decision="recompute", n_cached=0, cache=None, timings=tm,
                               reason=f"predicted restore {t_lookup + n * per_tok:.4f} s >= "
                                      f"recompute {est_c:.4f} s (first chunk timed)")
            continue
        end = False
        while len(batch) < 8:
            try:
                x = qch.get_nowait()
            except queue.Empty:
                break
            if x is None:
                end = True
                break
            batch.append(x)
        done_tok += kvc.decode_chunks_into(batch, views)
        if end:
            break
    th.join()
    if "e" in box:
        raise box["e"]
    kvc.synchronize()
    _sync(device)
    t_restore = time.perf_counter() - t1
    if done_tok != got:
        raise RuntimeError(f"restored {done_tok} tokens, expected {got}")
    decider.add_restore(got, t_restore)
    del views
    if got > n:
        kv = [(k[:, :, :n], v[:, :, :n]) for k, v in kv]
    cache = new_cache(model, kv)
    tm.update(fetch_decode_s=t_restore, restore_s=t_lookup + t_restore)
    reason = "policy" if policy == "restore" else \
        f"predicted restore {t_lookup + n * per_tok:.4f} s < recompute {est_c:.4f} s"
    return Restore(decision="restore", reason=reason, n_cached=n, cache=cache, timings=tm)
