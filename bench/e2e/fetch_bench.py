"""bench/e2e/fetch_bench.py: GetChunks throughput from Python, one call against N concurrent calls
(contiguous slices of the chunk list, one connection each), TCP and unix socket, through two
implementations in the same run: "py" = kvio.Fetcher (grpcio, one gRPC channel per stream,
a thread each, chunk bytes through a queue) and "c" = kvio.NativeFetcher (libe8kv's
e8kv_fetch: C threads writing chunk frames straight into one pinned/numpy buffer).

    bench/e2e/run.sh BUILD OUT --fetch-bench [--chunks 128] [--streams 1,2,4,8] [--impls py,c]
    (run.sh passes the other options on: this script is started instead of e2e_bench.py)

What it stores: chunk frames of the 8B-class shape (32 layers x 8 KV heads x head_dim 128, bf16,
256 tokens, K3V2: ~5.2 MB each, so 128 chunks = 32K tokens = ~660 MB): one chunk encoded by
the CPU codec from random KV (random values compress like the random-weight models' KV),
moved to every position by rewriting the positions in its chunk and frame headers (CRCs
recomputed; e8kvd checks those on PutChunks). This measures moving bytes, not decoding.
The daemon's page cache is warm (the chunks were just written). Each configuration is
fetched --repeat times; the best and the median are reported (OUT/fetch.json).

Upload (PutChunks of the same chunks, each run a new chain of token ids so that every chunk
is written, fdatasync'ed and indexed, not deduplicated): "py" = grpcio (Client.put_chunks
native=False: messages built and serialized on the calling thread, GIL held) against "c" =
libe8kv's e8kv_upload (native=True: a C thread packs each message from the caller's buffer),
--put-repeat runs each, alternating, per transport ("put_runs" in fetch.json; --put-only
skips the fetches).
"""
import argparse
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import e8kv  # noqa: E402
import e8kv.codec  # noqa: E402
from e8kv import cuda as e8cuda  # noqa: E402 -- host-side chunk parsing and CRC only
import e2e_bench  # noqa: E402
import kvio  # noqa: E402

CHUNK = 256


def restamp(chunk, first_pos):
    """The same chunk frame moved to first_pos: the positions (first_pos, seq_len and
    rope_seq_len = first_pos + n_tokens) rewritten in the chunk header and in every frame
    header (codec/FORMAT.md sections 5 and 7), their CRCs recomputed. The frames' values stay
    those of position 0: fine for moving bytes, not for decoding."""
    h = e8cuda.parse_chunk(chunk)
    b = bytearray(chunk)
    end = first_pos + h["n_tokens"]
    for off, _ in h["frames"]:
        (n_streams,) = struct.unpack_from("<H", b, off + 14)
        hdr = 52 + 13 * n_streams
        struct.pack_into("<II", b, off + 20, first_pos, end)
        struct.pack_into("<I", b, off + hdr, e8cuda.crc32c(b, off, off + hdr))
    struct.pack_into("<III", b, 16, first_pos, end, end)
    struct.pack_into("<I", b, h["hdr_size"] - 4, e8cuda.crc32c(b, 0, h["hdr_size"] - 4))
    return bytes(b)


def make_chunks(kind, n_chunks, preset):
    """(fingerprint, token ids, [chunk bytes]) of n_chunks chunks of model `kind`'s shape:
    one encoded by the CPU codec from random bf16 KV, moved to each position (restamp)."""
    from transformers import LlamaForCausalLM
    cfg = e2e_bench.llama_config(kind)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    fp = e2e_bench.ehf.model_fingerprint(model, model_id=f"e8kv-fetch/{kind}", preset=preset)
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(fp.n_layers, 2, fp.n_kv_heads, CHUNK, fp.head_dim,
                      generator=g).to(torch.bfloat16).contiguous()
    one = e8kv.codec.encode_chunk(fp, raw, first_pos=0)
    chunks = [restamp(one, i * CHUNK) for i in range(n_chunks)]
    if len(chunks) > 1:                 # the library takes a moved chunk (frame CRCs too)
        info = e8kv.codec.chunk_info(chunks[1])
        if info["first_pos"] != CHUNK:
            raise RuntimeError(f"restamp: chunk_info says first_pos {info['first_pos']}")
    tokens = torch.randint(0, 100000, (n_chunks * CHUNK,), generator=g).tolist()
    return fp, tokens, chunks


def fetch_rows(res, a, d, t, impl, keys, total, streams):
    """Times fetching every key over transport t with implementation impl ("py"/"c"), for
    each stream count; one row each in res["runs"]. The bytes are checked by size (and,
    for the C fetch, that every chunk arrived once)."""
    f, why = kvio.make_fetcher(d.address(t), max(streams), impl, timeout=600)
    f.prepare(total + (1 << 20))         # the C fetch's buffer, allocated untimed
    try:
        for k in streams:
            secs, cpu = [], []
            for _ in range(a.repeat):
                t0, p0 = time.perf_counter(), time.process_time()
                run = f.start(keys, streams=k)
                got = sum(len(x) for x in run)
                secs.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - p0)     # all threads of this process
                run.close()
                if got != total:
                    raise RuntimeError(f"{impl}: fetched {got} bytes of {total}")
            row = dict(transport=t, impl=impl, streams=k, best_s=min(secs),
                       median_s=statistics.median(secs),
                       best_GBps=total / min(secs) / 1e9,
                       median_GBps=total / statistics.median(secs) / 1e9,
                       client_cpu_s=statistics.median(cpu), fetcher=why)
            res["runs"].append(row)
            print(f"{t:4} {impl:2} {k} stream(s): best {row['best_s']:.3f} s "
                  f"({row['best_GBps']:.2f} GB/s), median {row['median_s']:.3f} s; client CPU "
                  f"{row['client_cpu_s']:.3f} s (median)", flush=True)
    finally:
        f.close()


def put_rows(res, a, d, fp, tokens, chunks, total):
    """Times PutChunks of every chunk (a new chain each run) through grpcio ("py") and
    libe8kv's C upload ("c"), alternating, per transport; rows in res["put_runs"]."""
    impls = [i for i in a.impls.split(",") if i in ("py", "c")]
    salt = 1 << 20
    for t in a.transports.split(","):
        with e8kv.Client(d.address(t), timeout=600) as c:
            secs = {i: [] for i in impls}
            cpu = {i: [] for i in impls}
            for _ in range(a.put_repeat):
                for impl in impls:
                    salt += 1
                    toks = [salt] + tokens[1:]     # a new chain: every chunk written
                    t0, p0 = time.perf_counter(), time.process_time()
                    r = c.put_chunks(fp, (e8kv.ChunkIn(toks[i * CHUNK:(i + 1) * CHUNK], x)
                                          for i, x in enumerate(chunks)), chunk_tokens=CHUNK,
                                     native=impl == "c")
                    secs[impl].append(time.perf_counter() - t0)
                    cpu[impl].append(time.process_time() - p0)   # all threads of this process
                    if r.chunks_stored != len(chunks):
                        raise RuntimeError(f"put {impl}: {r.chunks_stored} of {len(chunks)} "
                                           "chunks stored")
            for impl in impls:
                row = dict(transport=t, impl=impl, best_s=min(secs[impl]),
                           median_s=statistics.median(secs[impl]),
                           best_GBps=total / min(secs[impl]) / 1e9,
                           median_GBps=total / statistics.median(secs[impl]) / 1e9,
                           client_cpu_s=statistics.median(cpu[impl]),
                           path=c.upload_path() if impl == "c" else "grpcio")
                res["put_runs"].append(row)
                print(f"{t:4} put {impl:2}: best {row['best_s']:.3f} s ({row['best_GBps']:.2f} "
                      f"GB/s), median {row['median_s']:.3f} s ({row['median_GBps']:.2f} GB/s); "
                      f"client CPU {row['client_cpu_s']:.3f} s (median)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--e8kvd", required=True)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--fetch-bench", action="store_true", help="(run.sh's switch)")
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--preset", default="K3V2")
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--transports", default="tcp,unix")
    ap.add_argument("--impls", default="py,c", help="fetch implementations: py, c")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--daemon-threads", type=int, default=8)
    ap.add_argument("--put-repeat", type=int, default=3,
                    help="uploads per implementation and transport (0: none)")
    ap.add_argument("--put-only", action="store_true", help="measure the upload only")
    ap.add_argument("--work-dir", default=None,
                    help="where e8kvd's data directory goes (default: OUT's parent)")
    a = ap.parse_args()
    streams = [int(x) for x in a.streams.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wd = Path(a.work_dir) if a.work_dir else out.resolve().parent
    wd.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fetch-kvd-", dir=wd.resolve()))
    t0 = time.monotonic()
    fp, tokens, chunks = make_chunks(a.model, a.chunks, a.preset)
    total = sum(len(c) for c in chunks)
    print(f"{a.chunks} chunks, {total / 1e6:.1f} MB, made in {time.monotonic() - t0:.1f} s",
          flush=True)
    d = e2e_bench.Daemon(a.e8kvd, root, threads=a.daemon_threads)
    res = dict(model=a.model, chunks=a.chunks, bytes=total, repeat=a.repeat,
               daemon_threads=a.daemon_threads, runs=[], put_runs=[])
    try:
        with e8kv.Client(d.address("unix"), timeout=600) as c:
            t0 = time.perf_counter()
            r = c.put_chunks(fp, (e8kv.ChunkIn(tokens[i * CHUNK:(i + 1) * CHUNK], x)
                                  for i, x in enumerate(chunks)), chunk_tokens=CHUNK)
            res["put_s"] = time.perf_counter() - t0
            print(f"PutChunks: {r.chunks_stored} chunks in {res['put_s']:.2f} s", flush=True)
            keys = list(c.lookup(fp, tokens, chunk_tokens=CHUNK).chunk_keys)
        if a.put_repeat:
            put_rows(res, a, d, fp, tokens, chunks, total)
        del chunks
        for t in ([] if a.put_only else a.transports.split(",")):
            for impl in a.impls.split(","):
                fetch_rows(res, a, d, t, impl, keys, total, streams)
    finally:
        d.stop()
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    (out / "fetch.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
