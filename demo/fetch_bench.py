"""Fetch throughput of e8kv.Client from a local e8kvd: one GetChunks call against N at once.

Starts e8kvd on a temporary data directory (unix socket, or --tcp loopback), stores a large
prefix once (--chunks chunks of --chunk tokens of a Llama-3-8B-shaped KV: 32 layers, 8 KV
heads, head_dim 128, fp16; every layer protected, so the daemon stores the fp16 bytes
as they are and the chunks are as large as an uncompressed cache: the bytes moved are what
is measured here, not the codec), then reads all chunk keys back, --reps times per setting:
  get_chunks           one call, consumed in the calling thread (the plain client path)
  parallel N           Client.get_chunks_parallel(streams=N): N calls on N connections
GB/s = chunk bytes received (1e9 bytes per GB) / wall time from the call to the last byte
(best of --reps; the median is printed too). The page cache is warm after the first read
(the store's own read path is measured by `make bench-store`). Machine, load and daemon
threads are printed. The put line's rate includes the daemon's raw-upload path.

    PYTHONPATH=clients/python python demo/fetch_bench.py --build build/py --streams 1,2,4
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))
sys.path.insert(0, str(REPO / "demo"))

import numpy as np  # noqa: E402

import e8kv  # noqa: E402
from e8kv_demo import Daemon  # noqa: E402

L, H, D = 32, 8, 128


def fingerprint():
    return {"model_id": "fetch-bench/llama3-8b-shape", "n_layers": L, "n_kv_heads": H,
            "head_dim": D, "source_dtype": "DTYPE_FP16",
            "rope": {"theta": 500000.0, "layout": "ROPE_LAYOUT_SPLIT_HALF"},
            "codec": {"protect_first_layers": L}}


def fill(client, n_chunks, C):
    fp = fingerprint()
    rng = np.random.default_rng(0)
    base = rng.standard_normal((L, 2, H, C, D)).astype(np.float16)
    tokens = list(range(1, n_chunks * C + 1))

    def chunks():
        for i in range(n_chunks):
            base[0, 0, 0, 0, :8] = i               # distinct data per chunk
            yield e8kv.ChunkIn(tokens[i * C:(i + 1) * C], base)
    r = client.put_chunks(fp, chunks(), encoding="raw", raw_dtype="fp16", chunk_tokens=C)
    return list(r.chunk_keys), r.stored_bytes


def read_once(client, keys, streams, piece):
    t0 = time.perf_counter()
    n = 0
    if streams == 0:
        for ch in client.get_chunks(keys, encoding="e8", max_piece_bytes=piece):
            n += len(ch.data)
    else:
        for ch in client.get_chunks_parallel(keys, streams=streams, encoding="e8",
                                             max_piece_bytes=piece):
            n += len(ch.data)
    return n, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("E8KV_BUILD", "build"))
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=256, help="tokens per chunk")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--piece", type=int, default=4 << 20, help="max_piece_bytes of a reply")
    ap.add_argument("--daemon-threads", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    binary = Path(os.environ.get("E8KVD") or Path(a.build) / "bin" / "e8kvd")
    settings = [0] + [int(s) for s in a.streams.split(",")]
    res = {}
    with tempfile.TemporaryDirectory(prefix="e8kv-fetch-") as tmp:
        d = Daemon(binary, tmp, "--threads", str(a.daemon_threads))
        try:
            with e8kv.Client(d.address, timeout=600) as c:
                t = time.perf_counter()
                keys, stored = fill(c, a.chunks, a.chunk)
                put_s = time.perf_counter() - t
                nbytes, _ = read_once(c, keys, 0, a.piece)         # warm the page cache
                for s in settings:
                    runs = [read_once(c, keys, s, a.piece) for _ in range(a.reps)]
                    assert all(n == nbytes for n, _ in runs), (runs, nbytes)
                    rates = [n / dt / 1e9 for n, dt in runs]
                    res["get_chunks" if s == 0 else f"parallel {s}"] = dict(
                        best_gbs=max(rates), median_gbs=statistics.median(rates))
        finally:
            rc = d.stop()
    print(f"{a.chunks} chunks x {a.chunk} tokens, {nbytes / 1e6:.0f} MB of chunks (put "
          f"{stored / put_s / 1e9:.2f} GB/s raw upload, the daemon encoding), unix socket, e8kvd --threads "
          f"{a.daemon_threads}; machine: {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; e8kvd exit {rc}")
    for k, v in res.items():
        print(f"  {k:12s} best {v['best_gbs']:.2f} GB/s   median {v['median_gbs']:.2f} GB/s")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(args=vars(a), chunk_bytes=nbytes,
                                               results=res), indent=1) + "\n")


if __name__ == "__main__":
    main()
