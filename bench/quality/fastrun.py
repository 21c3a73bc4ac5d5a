"""e8kv quality benchmark, full run on one GPU machine (issue 3): the model on the GPU, codecs
off the critical path, a deadline.

usage: python -m bench.quality.fastrun [--device cuda|cpu] [--windows 128] [--prefix 512 1024 2048]
           [--probes 16] [--deadline SECONDS] [--t0 EPOCH] --out DIR/quality.json --plot DIR/x.png

The same measurement as bench.quality.run (read harness.py first), organised for throughput:
  * the model (SmolLM2-135M from the GGUF, dequantized to float32, run in float32) is on --device;
  * work items are interleaved: window w of every P, then w+1, ...; retrieval probes spread over
    the windows; so that a run cut by the deadline has the same windows for every P;
  * per item: the prefix runs on the GPU; its KV [L, 2, H, P, D] goes to the host once, where
    worker threads (--workers, default cores - 1; the ctypes calls release the GIL) encode it
    with every e8kv preset through libe8codec's real chunk bytes and decode it from those bytes;
    the baselines run in torch on the GPU (bench/quality/torchcodecs.py: the numpy codecs' frames,
    byte for byte, checked on the first window); NexusQuant's zstd runs in the worker threads;
  * scoring: one batched continuation forward for the base and all 18 codec configurations
    (gpuscore.py), then KL / NLL / top-1 / per-layer statistics as in harness.py.
NexusQuant's bytes: zstd-22 (the method's own level, ~1-3 MB/s: too slow for every window in
the time budget) on --zstd22-windows windows of each P spread over W (default 4): the point's bpe
(every frame of those windows); and zstd at --nexus-zstd-level (default 3) on every window and on
the same sample windows, so that the JSON shows whether the sample is representative.
The decoded values do not depend on the zstd level (it is lossless: each frame is decompressed
and compared in the worker).
Deadline: no new item starts once the estimated time to finish the items in flight and the queued
codec work would pass --deadline seconds after --t0; quality.json is rewritten every --save-every
seconds while running ("complete": false, with what ran), and at the end.
Exit status: 0 when run.check finds nothing wrong, 1 otherwise (the JSON and plot are written).
"""
import argparse
import collections
import json
import os
import platform
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import gpuscore
from . import harness as H
from . import kvbytes
from . import model as M
from . import report
from . import run as R
from . import torchcodecs as T
from .baselines import Header
from .baselines import NexusQuant as NexusNumpy
from . import baselines as B


class Tag:
    """A codec configuration's name, for harness.Point."""

    def __init__(self, codec, config):
        self.codec, self.config = codec, config

    def label(self):
        return f"{self.codec}:{self.config}"


def log(msg):
    print(f"[fastrun {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def host_rss_gib():
    """This process's resident host memory in GiB (VmRSS), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- worker jobs

_tls = threading.local()


def _e8(preset, rope, shape):
    from .e8adapter import E8
    cache = getattr(_tls, "e8", None)
    if cache is None:
        cache = _tls.e8 = {}
    if preset not in cache:
        cache[preset] = E8(rope, shape[0], shape[2], shape[4], preset)
    return cache[preset]


def e8_job(preset, rope, kv_np):
    """Encode kv [L, 2, H, T, D] with one e8kv preset into chunks of 256 tokens, decode them.
    Returns (decoded float32 array, stored bytes, encode s, decode s)."""
    c = _e8(preset, rope, kv_np.shape)
    t0 = time.perf_counter()
    blobs = c.encode_raw(kv_np, 0)
    t1 = time.perf_counter()
    out = c.decode_raw(blobs, kv_np.shape)
    return out, sum(len(b) for b in blobs), t1 - t0, time.perf_counter() - t1


def zstd_job(delta_np, level):
    """zstd every frame's deltas [L, 2, H, T, D] int8 at `level`; decompress and compare.
    Returns (sum of compressed sizes, frames, seconds)."""
    t0 = time.perf_counter()
    total = 0
    for layer in range(delta_np.shape[0]):
        for kind in (0, 1):
            raw = delta_np[layer, kind].tobytes()
            z = kvbytes.zstd_compress(raw, level)
            if kvbytes.zstd_decompress(z, len(raw)) != raw:
                raise RuntimeError("zstd round trip changed the NexusQuant deltas")
            total += len(z)
    return total, 2 * delta_np.shape[0], time.perf_counter() - t0


# --------------------------------------------------------------------------- the run

class Item:
    def __init__(self, kind, P, index, prefix, cont, targets=None, pos=None, want=None):
        self.kind, self.P, self.index = kind, P, index
        self.prefix, self.cont, self.targets, self.pos, self.want = \
            prefix, cont, targets, pos, want


def plan_items(tok_ids, Ps, C, W, n_probes, seed, vocab):
    """Windows interleaved over P (window w of each P, then w + 1), probes spread among them."""
    items, notes = [], {}
    avail = {P: len(tok_ids) // (P + C + 1) for P in Ps}
    for P in Ps:
        notes[P] = [] if avail[P] >= W else [
            f"only {avail[P]} non-overlapping windows of {P}+{C}+1 tokens; asked for {W}"]
    probes = {}
    for P in Ps:
        rng = np.random.default_rng(seed)                   # as run.run_one: one rng per P
        probes[P] = [H.make_probe(tok_ids, rng, P, span=32, lead=16, vocab=vocab)
                     for _ in range(n_probes)]
    every = max(1, W // n_probes) if n_probes else 0
    for w in range(W):
        for P in Ps:
            if w < avail[P]:
                win = tok_ids[w * (P + C + 1):(w + 1) * (P + C + 1)]
                items.append(Item("window", P, w, win[:P], win[P:P + C], win[P + 1:P + C + 1]))
        if n_probes and w % every == 0 and w // every < n_probes:
            for P in Ps:
                prefix, cont = probes[P][w // every]
                items.append(Item("probe", P, w // every, prefix, cont,
                                  pos=np.arange(16, 16 + 31), want=cont[17:48]))
    return items, notes


class Run:
    def __init__(self, a, model, rope, info, dev):
        self.a, self.model, self.rope, self.info, self.dev = a, model, rope, info, dev
        from .e8adapter import _import_codec
        self.presets = _import_codec().presets()
        self.tables = T.Rope(rope, info["head_dim"], dev)
        self.scorer = gpuscore.Scorer(model, self.tables, info)
        self.gpu = T.baselines(rope)
        self.nexus = T.nexusquants(rope)
        if a.only:
            keep = set(a.only.split(",")) | {"identity:fp32"}
            self.gpu = [c for c in self.gpu if c.label() in keep]
            self.nexus = [c for c in self.nexus if c.label() in keep]
            self.presets = [p for p in self.presets if f"e8:{p}" in keep]
        self.tags = [Tag(c.codec, c.config) for c in self.gpu + self.nexus] + \
            [Tag("e8", p) for p in self.presets]
        L = info["n_layers"]
        self.e8_config = e8_configs(self.presets, L)
        self.points = {P: {t.label(): H.Point(t, L) for t in self.tags} for P in a.prefix}
        self.base_nll = {P: [] for P in a.prefix}
        self.probe_base = {P: [0, 0] for P in a.prefix}
        self.probes_done = {P: 0 for P in a.prefix}
        self.nexus_bytes = {P: {n.label(): {k: [0, 0, 0] for k in ("all", "sample", "z22")}
                                for n in self.nexus} for P in a.prefix}
        self.zfut = []                  # (P, label, which, elements, frame overhead, future)
        self.jobs_s = collections.defaultdict(list)
        self.identity = {"exact_windows": 0, "windows": 0, "max_logit_diff": 0.0}
        self.byte_check = None
        self.check_planned = not a.check_bytes
        self.errors = []

    # -- one item: start (prefix, submit codec work) and finish (score) --------------------

    def start(self, item, pool):
        ids = torch.from_numpy(np.ascontiguousarray(item.prefix)).to(self.dev)
        kv = gpuscore.prefix_kv(self.model, ids)
        kv_np = kv.cpu().numpy()
        item.kv = kv
        item.e8 = [pool.submit(e8_job, p, self.rope, kv_np) for p in self.presets]
        item.nexus, item.check_nexus, item.check_frames = [], [], []
        item.check = item.kind == "window" and not self.check_planned
        self.check_planned = self.check_planned or item.check
        for nq in self.nexus:
            sc, delta = nq.quantize(kv)
            item.nexus.append(nq.decode(sc, delta))
            if item.kind == "window":
                d_np = delta.cpu().numpy()
                over = 2 * kv.shape[0] * (Header.SIZE + 2 * kv.shape[2] * kv.shape[3])
                levels = [("all", self.a.nexus_zstd_level)]
                if self._z22_window(item.index):
                    levels += [("sample", self.a.nexus_zstd_level), ("z22", 22)]
                for which, lev in levels:
                    self.zfut.append((item.P, nq.label(), which, kv.numel(), over,
                                      pool.submit(zstd_job, d_np, lev)))
                if item.check:
                    item.check_nexus.append((nq, sc, delta))
        return item

    def finish(self, item):
        """Score a started item, then drop what it holds: the planned items list keeps every Item
        to the end of the run, and a P=2048 item's kv + decoded copies (~0.6 GB of host arrays
        and ~0.1 GB on the GPU) kept that way ran the H200's 128 GiB host out of memory."""
        try:
            self._finish(item)
        finally:
            item.kv = item.e8 = item.nexus = None
            item.check_nexus = item.check_frames = None

    def _finish(self, item):
        kv = item.kv
        decs = [kv]
        nbytes = []
        for c in self.gpu:
            t0 = time.perf_counter()
            fr = c.encode(kv)
            decs.append(c.decode(fr, kv.shape))
            nbytes.append((fr.numel(), time.perf_counter() - t0))
            if item.check:
                item.check_frames.append((c, fr))
        decs += item.nexus
        for f in item.e8:
            out, nb, te, td = f.result()
            decs.append(torch.from_numpy(out).to(self.dev))
            nbytes.append((nb, te, td))
        stacked = torch.stack(decs)
        del decs
        pts = self.points[item.P]
        labels = [t.label() for t in self.tags]
        if item.kind == "probe":
            hits = self.scorer.probe(stacked, torch.from_numpy(item.cont).to(self.dev),
                                     torch.from_numpy(item.pos).to(self.dev),
                                     torch.from_numpy(item.want).to(self.dev))
            self.probe_base[item.P][0] += int(hits[0])
            self.probe_base[item.P][1] += len(item.want)
            for i, lab in enumerate(labels):
                pts[lab].probe_correct += int(hits[1 + i])
                pts[lab].probe_total += len(item.want)
            self.probes_done[item.P] += 1
            return
        r = self.scorer.window(stacked, torch.from_numpy(item.cont).to(self.dev),
                               torch.from_numpy(item.targets).to(self.dev))
        self._add_window(item, r, labels, nbytes, kv.numel())
        if item.check:
            self.byte_check = self._check_bytes(item, kv)

    def _add_window(self, item, r, labels, nbytes, elements):
        if not r["finite"]:
            self.errors.append(f"P={item.P} window {item.index}: non-finite KL or NLL")
        self.identity["windows"] += 1
        self.identity["exact_windows"] += int(r["identity_exact"])
        self.identity["max_logit_diff"] = max(self.identity["max_logit_diff"],
                                              r["identity_max_diff"])
        C = len(item.targets)
        self.base_nll[item.P].append(float(r["nll_mean"][0]))
        n_gpu = len(self.gpu)
        for i, lab in enumerate(labels):
            pt, row = self.points[item.P][lab], i + 1
            pt.kl_sum += float(r["kl_sum"][row])
            pt.kl_windows.append(float(r["kl_mean"][row]))
            pt.tokens += C
            pt.agree += int(r["agree"][row])
            pt.nll.append(float(r["nll_mean"][row]))
            st = pt.layers
            st.sig += r["sig"].numpy()
            st.err += r["err"][row].numpy()
            st.hist += r["hist"][row].numpy()
            st.exact += r["exact"][row].numpy()
            if i < n_gpu:                                  # torch baselines
                pt.bytes += nbytes[i][0]
                pt.elements += elements
                pt.encode_s += nbytes[i][1]
            elif i >= n_gpu + len(self.nexus):             # e8
                nb, te, td = nbytes[i - len(self.nexus)]
                pt.bytes += nb
                pt.elements += elements
                pt.encode_s += te
                pt.decode_s += td

    def _check_bytes(self, item, kv):
        """Every frame of this window from the torch codecs against the numpy codecs."""
        raw = kv.cpu().numpy()
        ref = {c.label(): c for c in (B.Identity(), B.Int8(), B.Kivi(2), B.Kivi(4),
                                      B.Kivi(2, window=32), B.TurboQuant(2), B.TurboQuant(3),
                                      B.TurboQuant(4))}
        out = {"prefix_tokens": item.P, "window": item.index, "codecs": {}}
        for c, fr in item.check_frames:
            frames = fr.cpu().numpy()
            diff = tot = 0
            for layer in range(raw.shape[0]):
                for kind, kn in ((0, "k"), (1, "v")):
                    want = np.frombuffer(ref[c.label()].encode(raw[layer, kind], kn, 0), np.uint8)
                    got = frames[layer, kind]
                    tot += len(want)
                    diff += len(want) if len(want) != len(got) else int((want != got).sum())
            out["codecs"][c.label()] = {"bytes": tot, "bytes_differing": diff}
        for nq, sc, delta in item.check_nexus:
            ref_c = NexusNumpy(nq.kbits, nq.vbits, self.rope, level=3)
            diff = tot = 0
            d_np = delta.cpu().numpy()
            for layer in range(raw.shape[0]):
                for kind, kn in ((0, "k"), (1, "v")):
                    want = ref_c.encode(raw[layer, kind], kn, 0)
                    got = nq.frame(sc[layer, kind], kvbytes.zstd_compress(
                        d_np[layer, kind].tobytes(), 3), kind, raw[layer, kind].shape)
                    tot += len(want)
                    diff += len(want) if len(want) != len(got) else \
                        int((np.frombuffer(want, np.uint8) != np.frombuffer(got, np.uint8)).sum())
            out["codecs"][nq.label()] = {"bytes": tot, "bytes_differing": diff,
                                         "note": "frames compared at zstd level 3"}
        out["all_identical"] = all(v["bytes_differing"] == 0 for v in out["codecs"].values())
        log(f"byte check (P={item.P} window {item.index}): torch frames "
            f"{'identical to' if out['all_identical'] else 'DIFFER from'} the numpy codecs'")
        return out

    # -- codec bytes that arrive later (NexusQuant's zstd) ---------------------------------

    def collect_zstd(self, block=False, until=None):
        """Count the finished zstd jobs; with block, wait for the others (until `until`,
        epoch seconds, or for ever when None)."""
        keep = []
        for P, lab, which, el, over, f in self.zfut:
            if block and not f.done():
                try:
                    f.result(timeout=None if until is None else max(0.0, until - time.time()))
                except Exception:                     # noqa: BLE001 (timeout; errors below)
                    pass
            if f.done() and not f.cancelled():
                try:
                    z, _, sec = f.result()
                except Exception as e:               # noqa: BLE001 (reported, run fails)
                    self.errors.append(f"zstd job failed: {e}")
                    continue
                acc = self.nexus_bytes[P][lab][which]
                acc[0] += z + over
                acc[1] += el
                acc[2] += 1
                self.jobs_s["zstd-" + which].append(sec)
            elif not f.cancelled():
                keep.append((P, lab, which, el, over, f))
        self.zfut = keep

    def _z22_window(self, index):
        """zstd-22 sample: --zstd22-windows windows spread evenly over the W planned."""
        n = self.a.zstd22_windows
        return n > 0 and index % max(1, self.a.windows // n) == 0 and \
            index // max(1, self.a.windows // n) < n

    def cancel_zstd(self):
        for *_, f in self.zfut:
            f.cancel()

    # -- results ---------------------------------------------------------------------------

    def result(self, t0, complete, stop_reason):
        runs = []
        for P in self.a.prefix:
            W = len(self.base_nll[P])
            if W == 0:
                continue
            for nq in self.nexus:
                pt, nb = self.points[P][nq.label()], self.nexus_bytes[P][nq.label()]
                basis = "z22" if nb["z22"][1] else "all"
                pt.bytes, pt.elements = nb[basis][0], nb[basis][1]
            run = R.run_dict(self.points[P], self.base_nll[P], self.probe_base[P], W, P,
                             self.a.continuation, self.probes_done[P], self.notes[P],
                             self.a.seed)
            lev = self.a.nexus_zstd_level
            for p in run["points"]:
                if p["codec"] == "nexusquant":
                    nb = self.nexus_bytes[P][f"nexusquant:{p['config']}"]
                    bpe = {k: (v[0] * 8 / v[1] if v[1] else None) for k, v in nb.items()}
                    p["zstd"] = {
                        "bpe_basis": ("zstd-22 (the method's level), every frame of the sample "
                                      "windows" if nb["z22"][1] else
                                      f"zstd-{lev} over all windows (no zstd-22 window finished)"),
                        "sample_windows": nb["z22"][2], "bpe_zstd22_sample": bpe["z22"],
                        f"bpe_zstd{lev}_sample": bpe["sample"],
                        f"windows_zstd{lev}_all": nb["all"][2],
                        f"bpe_zstd{lev}_all": bpe["all"]}
            run["windows_planned"] = self.a.windows
            run["window_indices"] = f"0..{W - 1}"
            runs.append(run)
        if not runs:
            return None
        res = R.result_dict(runs, False, True, t0)
        res.update({
            "complete": complete, "stop_reason": stop_reason,
            "device": {"torch_device": str(self.dev), "gpu": (torch.cuda.get_device_name(0)
                       if self.dev.type == "cuda" else None),
                       "model_dtype": "float32 (the GGUF's Q4_1 weights dequantized by "
                       "transformers' GGUF loader)", "transformers": _version("transformers"),
                       "host": platform.node(), "workers": self.a.workers,
                       "cpu_count": os.cpu_count()},
            "identity": self.identity, "byte_check": self.byte_check,
            "e8_config": self.e8_config,
            "codec_job_seconds": {k: {"n": len(v), "mean": float(np.mean(v))}
                                  for k, v in self.jobs_s.items() if v},
            "errors": self.errors})
        return res


def e8_configs(presets, n_layers):
    """The e8kv configuration each preset ran with (every e8c_config field) and the library."""
    from .e8adapter import _import_codec
    C = _import_codec()
    out = {"library_version": C.version(), "module": C.__file__,
           "library": os.environ.get("E8KV_LIB")}
    for p in presets:
        try:
            cfg = C.Config(preset=p).to_c(n_layers)
            out[p] = {f: (list(v) if hasattr(v, "__len__") and not isinstance(v, bytes)
                          else v.decode(errors="replace") if isinstance(v, bytes) else v)
                      for f, v in ((f, getattr(cfg, f)) for f, *_ in cfg._fields_)}
        except Exception as e:                        # noqa: BLE001 (recorded, not fatal)
            out[p] = f"not readable: {e}"
    return out


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:                                 # noqa: BLE001
        return None


def write(result, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--prefix", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--continuation", type=int, default=256)
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    ap.add_argument("--ahead", type=int, default=0, help="items in flight (default: auto)")
    ap.add_argument("--nexus-zstd-level", type=int, default=3,
                    help="zstd level of NexusQuant's bytes over all windows")
    ap.add_argument("--zstd22-windows", type=int, default=4,
                    help="windows per P (spread over W) also compressed at zstd-22: the "
                    "NexusQuant points' bpe")
    ap.add_argument("--no-byte-check", dest="check_bytes", action="store_false")
    ap.add_argument("--strict-bytes", action="store_true",
                    help="fail when a torch frame differs from the numpy codec's (CPU tests)")
    ap.add_argument("--only", help="comma-separated codec:config labels to run (identity is "
                    "always run), e.g. e8:K3V2,e8:K4V2")
    ap.add_argument("--deadline", type=float, help="seconds after --t0 to be done by")
    ap.add_argument("--t0", type=float, help="start time (epoch s; default now)")
    ap.add_argument("--save-every", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-cache")
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot", required=True)
    a = ap.parse_args(argv)
    t0 = a.t0 or time.time()
    end = t0 + a.deadline if a.deadline else float("inf")
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, tok = M.load(2, a.model_cache)
    model = model.to(dev)
    rope = M.rope_description(model.config)
    info = M.shape_info(model.config)
    tok_ids = M.tokenize_text(tok)
    items, notes = plan_items(tok_ids, a.prefix, a.continuation, a.windows, a.probes, a.seed,
                              model.config.vocab_size)
    run = Run(a, model, rope, info, dev)
    run.notes = notes
    ahead = a.ahead or max(2, -(-2 * a.workers // len(run.presets)))
    log(f"model on {dev} ({time.time() - t0:.0f} s since t0), {len(items)} items, "
        f"{a.workers} worker threads, {ahead} items in flight, deadline "
        f"{a.deadline or 'none'} s")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=a.workers)
    pending = collections.deque()
    last_save, stop_reason, done = time.time(), None, 0
    item_s = collections.deque(maxlen=12)
    try:
        for item in items:
            if time.time() + _drain_estimate(run, pending, item_s, a.workers) > end:
                stop_reason = f"deadline: stopped before {item.kind} {item.index} of P={item.P}"
                log(stop_reason)
                break
            pending.append(run.start(item, pool))
            while len(pending) >= ahead:
                t1 = time.time()
                run.finish(pending.popleft())
                item_s.append(time.time() - t1)
                done += 1
            run.collect_zstd()
            if time.time() - last_save > a.save_every:
                res = run.result(t0, False, "in progress")
                if res:
                    write(res, a.out)
                last_save = time.time()
                log(f"{done}/{len(items)} items, {time.time() - t0:.0f} s, "
                    f"{len(run.zfut)} zstd jobs queued, host RSS {host_rss_gib():.1f} GiB")
        while pending:
            run.finish(pending.popleft())
            done += 1
        run.collect_zstd(block=True, until=end - 15 if a.deadline else None)
        if run.zfut:
            stop_reason = (stop_reason or "deadline") + f"; {len(run.zfut)} zstd jobs unfinished"
            run.cancel_zstd()
    except Exception as e:                            # noqa: BLE001 (results still written)
        traceback.print_exc()
        run.errors.append(f"run stopped by {type(e).__name__}: {e}")
        stop_reason = f"error: {type(e).__name__}: {e}"
        run.cancel_zstd()
    res = run.result(t0, stop_reason is None and not run.errors, stop_reason or "complete")
    if res is None:
        write({"model": M.MODEL_ID, "complete": False, "stop_reason": stop_reason or "no window",
               "errors": run.errors + ["no window finished"], "runs": []}, a.out)
        print(f"fastrun: FAILED: no window finished ({run.errors})", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    write(res, a.out)
    bad = []
    try:
        report.plot(res, a.plot)
        R.print_tables(res)
    except Exception as e:                            # noqa: BLE001 (the JSON is written)
        traceback.print_exc()
        bad.append(f"plot/table failed: {type(e).__name__}: {e}")
    bad += R.check(res, True) + res["errors"]
    if res["identity"]["exact_windows"] != res["identity"]["windows"]:
        bad.append(f"identity row not bit-identical to the base in "
                   f"{res['identity']['windows'] - res['identity']['exact_windows']} windows "
                   f"(max logit diff {res['identity']['max_logit_diff']:.3e})")
    if res["byte_check"] and not res["byte_check"]["all_identical"]:
        log("note: torch frames differ from the numpy codecs' (see byte_check)")
        if a.strict_bytes:
            bad.append("torch frames differ from the numpy codecs' (byte_check)")
    print(f"\nwrote {a.out} and {a.plot} in {time.time() - t0:.0f} s ({done} items; "
          f"{res['stop_reason']})")
    if not res["complete"]:
        print(f"fastrun: PARTIAL: {res['stop_reason']}; windows per P: "
              f"{ {r['prefix_tokens']: r['windows'] for r in res['runs']} }", file=sys.stderr)
    for b in bad:
        print(f"fastrun: FAILED: {b}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if bad else 0)       # do not wait for codec threads still running


def _drain_estimate(run, pending, item_s, workers):
    """Seconds to finish what is in flight plus one more item and the queued zstd work, and
    to write the results: measured per-item and per-job times, doubled, plus 20 s."""
    per_item = max(item_s) if item_s else 5.0
    zs = [s for k, v in run.jobs_s.items() for s in v[-20:]]
    z_left = len(run.zfut) * (float(np.mean(zs)) if zs else 2.0) / max(1, workers)
    return 2 * ((len(pending) + 1) * per_item + z_left) + 20


if __name__ == "__main__":
    main()
