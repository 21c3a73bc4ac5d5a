#!/usr/bin/env python3
"""End-to-end tests of e8kvctl (and libe8kv) against a real e8kvd.

Usage: python3 tests/clients/test_ctl_e2e.py BUILD_DIR

Starts e8kvd on a temporary data directory and a unix socket, with a tokens
file (an admin token for namespace "default", a plain token for "team"), then
checks every command's --json output (parsed and compared), the documented exit
codes of the error paths (no daemon, wrong/missing token, unknown session,
corrupted record, damaged export file, usage errors), export -> import ->
export byte-identity, online == offline (--data-dir) output, and runs the C
test of libe8kv against the same daemon. Standard library only; the daemon is
stopped (SIGTERM) at the end whatever happens.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import re
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_xfile_seeds as xfile  # the export format written from EXPORT.md (independent writer)

BUILD = None
CTL = None
TMP = None
SOCK = None
DATA = None
DAEMON = None
METRICS_PORT = None
ADMIN = "tok-admin-1234567890"
USER = "tok-team-0987654321"
SHAPE = ["--layers", "4", "--kv-heads", "2", "--head-dim", "64", "--chunk-tokens", "64"]

# Exit codes, as documented in `e8kvctl --help` and README.md.
OK, USAGE, UNREACHABLE, AUTH, NOT_FOUND, CORRUPT, REJECTED, IO, UNSUPPORTED = 0, 2, 3, 4, 5, 6, 7, 9, 10


def ctl(*args, token=ADMIN, addr=None, expect=OK, json_out=True, offline=False):
    """Runs e8kvctl; checks the exit code; returns parsed JSON (or stdout)."""
    cmd = [CTL]
    if offline:
        cmd += ["--data-dir", DATA]
    else:
        cmd += ["-a", addr or "unix:" + SOCK]
    if json_out:
        cmd.append("--json")
    cmd += list(args)
    env = dict(os.environ)
    env.pop("E8KV_TOKEN", None)
    if token is not None and not offline:
        env["E8KV_TOKEN"] = token
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != expect:
        raise AssertionError("%s: exit %d, expected %d\nstdout: %s\nstderr: %s"
                             % (" ".join(cmd), p.returncode, expect, p.stdout, p.stderr))
    if json_out and p.stdout.strip():
        return json.loads(p.stdout), p.stderr
    return p.stdout, p.stderr


def run_against_silent_socket(name, args, timeout):
    """Runs e8kvctl ARGS (without -a) against a unix socket that accepts and never answers
    (a hung e8kvd, as a SIGSTOPped one); returns (CompletedProcess, seconds it took, path)."""
    import socket
    path = os.path.join(TMP, name)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(64)
    try:
        t0 = time.monotonic()
        p = subprocess.run([CTL] + args[:-1] + ["-a", "unix:" + path, args[-1]],
                           capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - t0
    finally:
        s.close()
        os.unlink(path)
    return p, took, path


def start_daemon():
    global DAEMON, METRICS_PORT
    tokens = os.path.join(TMP, "tokens")
    with open(tokens, "w") as f:
        f.write("# token namespace [admin]\n%s default admin\n%s team\n" % (ADMIN, USER))
    log = open(os.path.join(TMP, "e8kvd.log"), "a")
    DAEMON = subprocess.Popen(
        [os.path.join(BUILD, "bin", "e8kvd"), "--data-dir=" + DATA, "--listen=unix:" + SOCK,
         "--metrics-listen=127.0.0.1:0", "--threads=2", "--tokens-file=" + tokens,
         "--log-level=info"],
        stdout=log, stderr=log)
    t0 = time.monotonic()  # 60 s only bounds a hang (100 tries were ~10 s on an idle machine)
    while time.monotonic() - t0 < 60:
        if DAEMON.poll() is not None:
            raise RuntimeError("e8kvd exited with %d (log: %s)" % (DAEMON.returncode, log.name))
        p = subprocess.run([CTL, "-a", "unix:" + SOCK, "health"], capture_output=True,
                           env=dict(os.environ, E8KV_TOKEN=ADMIN))
        if p.returncode == 0:
            m = re.search(r"event=ready .*metrics_port=(\d+)", open(log.name).read())
            METRICS_PORT = int(m.group(1)) if m else None
            return
        time.sleep(0.1)
    raise RuntimeError("e8kvd did not become healthy in 60 s")


def stop_daemon():
    global DAEMON
    if DAEMON and DAEMON.poll() is None:
        DAEMON.send_signal(signal.SIGTERM)
        try:
            DAEMON.wait(timeout=60)
        except subprocess.TimeoutExpired:
            DAEMON.kill()
            DAEMON.wait()
    DAEMON = None


class E2E(unittest.TestCase):
    """Ordered: each test name starts with a number."""

    def test_00_libe8kv_against_daemon(self):
        env = dict(os.environ, E8KV_TEST_ADDR="unix:" + SOCK, E8KV_TEST_TOKEN=ADMIN)
        p = subprocess.run([os.path.join(BUILD, "tests", "clients", "test_libe8kv_e2e")],
                           capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_01_health(self):
        j, _ = ctl("health")
        self.assertEqual(j["status"], "SERVING")
        self.assertTrue(j["serving"])
        self.assertEqual(j["address"], "unix:" + SOCK)

    def test_02_no_daemon(self):
        j, err = ctl("health", addr="unix:" + os.path.join(TMP, "nobody.sock"), expect=UNREACHABLE)
        self.assertEqual(j["error"]["code"], "UNAVAILABLE")
        self.assertEqual(j["error"]["exit"], UNREACHABLE)
        self.assertIn("cannot reach e8kvd", err)
        ctl("stat", addr="127.0.0.1:1", expect=UNREACHABLE)

    def test_03_auth(self):
        j, err = ctl("ls", token="wrong-token", expect=AUTH)
        self.assertEqual(j["error"]["code"], "UNAUTHENTICATED")
        j, err = ctl("stat", token=None, expect=AUTH)
        for what in ("--token-file", "$E8KV_TOKEN"):   # the error says how to give one
            self.assertIn(what, j["error"]["message"])
        j, _ = ctl("verify", token=USER, expect=AUTH)  # admin only
        self.assertEqual(j["error"]["code"], "PERMISSION_DENIED")

    def test_04_bench_creates_session(self):
        j, _ = ctl("bench", "--session", "s1", "--chunks", "3", *SHAPE)
        self.assertEqual(j["chunks"], 3)
        self.assertEqual(j["tokens"], 3 * 64)
        self.assertEqual(j["shape"], {"layers": 4, "kv_heads": 2, "head_dim": 64, "chunk_tokens": 64})
        for k in ("put_tokens_per_s", "get_tokens_per_s", "put_p99_ms", "get_p50_ms", "bpe"):
            self.assertGreater(j[k], 0, k)
        self.assertLess(j["bpe"], 16)  # compressed
        ctl("bench", "--session", "s1", "--chunks", "1", *SHAPE, expect=REJECTED)  # exists
        ctl("bench", "--session", "other", "--chunks", "2", *SHAPE)
        # Encoded here (libe8codec) or by the daemon: the same frames, so the same bpe.
        before = ctl("stat")[0]["namespace"]["chunks"]
        a, _ = ctl("bench", "--chunks", "2", *SHAPE)
        b, _ = ctl("bench", "--chunks", "2", "--client-encode", *SHAPE)
        # a throwaway session goes with its chunks: random KV never dedups, kept chunks only
        # filled the store (a new user's trial: 16 chunks, 79 MiB left per run)
        self.assertEqual(ctl("stat")[0]["namespace"]["chunks"], before)
        self.assertEqual(a["stored_bytes"], b["stored_bytes"])
        self.assertLess(b["put_wire_bytes"], a["put_wire_bytes"] / 3)  # frames, not fp16
        self.assertGreater(b["client_encode_tokens_per_s"], 0)
        ctl("bench", "--session", "mine", "--chunks", "1", *SHAPE, token=USER)  # namespace team

    def test_04a_bench_refuses_oversized_shapes_before_allocating(self):
        """Each flag was checked alone, so --layers 512 --kv-heads 256 --head-dim 512
        --chunk-tokens 65536 (a 16 TiB chunk) passed and bench tried to allocate it ("out of
        memory", exit 1); a 1 GiB chunk was allocated, filled and sent before e8kvd refused
        it. Now the chunk's bytes are checked against --max-chunk-bytes (e8kvd's limit,
        default 256 MiB) and the session's positions against the codec's, up front."""
        before = ctl("stat")[0]["namespace"]["sessions"]

        def refused(*args, names=()):
            t0 = time.monotonic()
            j, err = ctl("bench", *args, expect=USAGE)
            self.assertLess(time.monotonic() - t0, 60)  # refused, not run
            for want in names:
                self.assertIn(want, j["error"]["message"], args)
                self.assertIn(want, err, args)
            return j["error"]["message"]

        huge = ["--layers", "512", "--kv-heads", "256", "--head-dim", "512", "--chunk-tokens", "65536"]
        m = refused(*huge, names=("--chunk-tokens 65536", "--max-chunk-bytes", "268435456",
                                  "17592186044416 bytes"))
        self.assertNotIn("out of memory", m)
        # the default shape (32 x 8 x 128) at 8192 tokens: a 1 GiB chunk; 2048 tokens fit
        refused("--chunk-tokens", "8192", names=("--chunk-tokens 8192", "1073741824 bytes",
                                                 "at most 2048 tokens"))
        # the limit follows --max-chunk-bytes (set it to e8kvd's): SHAPE's chunk is 128 KiB
        refused("--max-chunk-bytes", "64K", *SHAPE, names=("--max-chunk-bytes 65536", "at most 32"))
        refused("--max-chunk-bytes", "1K", *SHAPE, names=("--max-chunk-bytes",))
        refused("--max-chunk-bytes", "17G", *SHAPE, names=("--max-chunk-bytes",))
        refused("--max-chunk-bytes", "lots", *SHAPE, names=("--max-chunk-bytes",))
        # no head has a position past the codec's 2^31 - 1: --chunks x --chunk-tokens
        refused("--chunks", "100000", "--chunk-tokens", "65536", "--layers", "1", "--kv-heads", "1",
                "--head-dim", "8", names=("--chunks 100000", "2147483647"))
        # a whole-chunk shape within the limits still runs, at the limit exactly
        j, _ = ctl("bench", "--chunks", "1", "--max-chunk-bytes", "128K", *SHAPE)
        self.assertEqual(j["chunks"], 1)
        self.assertEqual(ctl("stat")[0]["namespace"]["sessions"], before)

    def test_05_ls_filters_pages(self):
        j, _ = ctl("ls")
        names = [s["name"] for s in j["sessions"]]
        self.assertEqual(names, sorted(names))
        self.assertIn("s1", names)
        self.assertIn("other", names)
        self.assertNotIn("mine", names)  # another namespace
        s1 = [s for s in j["sessions"] if s["name"] == "s1"][0]
        self.assertEqual((s1["n_tokens"], s1["n_chunks"], s1["chunk_tokens"]), (192, 3, 64))
        self.assertEqual(s1["model_id"], "e8kvctl-bench")
        j, _ = ctl("ls", "--prefix", "s")
        self.assertEqual([s["name"] for s in j["sessions"]], ["s1"])
        j, _ = ctl("ls", "--model", "no-such-model")
        self.assertEqual(j["sessions"], [])
        p1, _ = ctl("ls", "--limit", "1")
        self.assertEqual(len(p1["sessions"]), 1)
        self.assertNotEqual(p1["next_page_token"], "")
        p2, _ = ctl("ls", "--limit", "1", "--page-token", p1["next_page_token"])
        self.assertNotEqual(p1["sessions"][0]["name"], p2["sessions"][0]["name"])
        allp, _ = ctl("ls", "--limit", "1", "--all")
        self.assertEqual([s["name"] for s in allp["sessions"]], names)
        self.assertEqual(allp["next_page_token"], "")
        j, _ = ctl("ls", token=USER)
        self.assertEqual([s["name"] for s in j["sessions"]], ["mine"])
        ctl("--namespace", "team", "ls", token=USER)
        j, err = ctl("--namespace", "default", "ls", token=USER, expect=AUTH)  # never ignored
        self.assertIn("team", err)

    def test_06_show(self):
        j, _ = ctl("show", "s1")
        fp = j["fingerprint"]
        self.assertEqual((fp["n_layers"], fp["n_kv_heads"], fp["head_dim"]), (4, 2, 64))
        self.assertEqual(fp["source_dtype"], "DTYPE_FP16")
        self.assertEqual(j["codec_preset"], "K3V2")
        elems = 2 * 4 * 2 * 64 * j["n_tokens"]
        self.assertAlmostEqual(j["bpe"], j["stored_bytes"] * 8 / elems, places=5)
        self.assertAlmostEqual(j["ratio_to_fp16"], elems * 2 / j["stored_bytes"], places=5)
        self.assertEqual(j["raw_fp16_bytes"], elems * 2)
        self.assertEqual(len(j["fingerprint_id"]), 64)
        self.assertGreater(j["created_unix_ms"], 1.6e12)
        self.assertGreaterEqual(j["updated_unix_ms"], j["created_unix_ms"])
        j, err = ctl("show", "nope", expect=NOT_FOUND)
        self.assertEqual(j["error"]["code"], "NOT_FOUND")
        self.assertIn("nope", err)
        out, _ = ctl("show", "s1", json_out=False)  # the human form has the same figures
        self.assertIn("bpe (frames):", out)
        self.assertIn("K3V2", out)

    def test_07_stat(self):
        j, _ = ctl("stat")
        ns = j["namespace"]
        self.assertEqual(ns["namespace_name"], "default")
        self.assertGreaterEqual(ns["sessions"], 2)
        self.assertGreaterEqual(ns["chunks"], 5)
        self.assertIsNotNone(j["store"])  # admin token sees the whole store
        self.assertGreaterEqual(j["store"]["chunks"], ns["chunks"])
        j, _ = ctl("stat", token=USER)
        self.assertEqual(j["namespace"]["namespace_name"], "team")
        self.assertIsNone(j["store"])

    def test_07_stat_agrees_with_metrics(self):
        """GetStats' lookups and hits are /metrics' counters (test_00 made a partial-match
        lookup: a hit that did not match to the end of its query), and the hit rate is
        their ratio; capacity 0 reads "unlimited"."""
        self.assertIsNotNone(METRICS_PORT, "no metrics_port in e8kvd's ready line")
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % METRICS_PORT,
                                      timeout=10).read().decode()
        m = {k: int(float(v)) for k, v in re.findall(
            r"^(e8kvd_lookup_(?:hits|misses)_total) (\S+)$", text, re.M)}
        j, _ = ctl("stat")
        d = j["daemon"]
        self.assertGreaterEqual(m["e8kvd_lookup_hits_total"], 2)
        self.assertEqual(d["lookup_hits"], m["e8kvd_lookup_hits_total"])
        self.assertEqual(d["lookups"], m["e8kvd_lookup_hits_total"] + m["e8kvd_lookup_misses_total"])
        self.assertAlmostEqual(j["hit_rate"], d["lookup_hits"] / d["lookups"])
        self.assertEqual(j["store"]["capacity_bytes"], 0)
        out, _ = ctl("stat", json_out=False)
        self.assertRegex(out, r"store capacity: +unlimited")
        self.assertRegex(out, r"lookup hit rate: +%.1f%%" % (100 * j["hit_rate"]))

    def test_08_export_import_round_trip(self):
        f1, f2, f3 = (os.path.join(TMP, n) for n in ("s1.e8x", "s1-again.e8x", "s1-offline.e8x"))
        j, _ = ctl("export", "s1", f1)
        self.assertEqual((j["chunks"], j["tokens"]), (3, 192))
        self.assertEqual(j["file_bytes"], os.path.getsize(f1))
        self.assertFalse(os.path.exists(f1 + ".tmp"))
        ctl("export", "s1", f3, offline=True)  # offline reads the same bytes
        self.assertEqual(open(f1, "rb").read(), open(f3, "rb").read())
        p = subprocess.run([CTL, "-a", "unix:" + SOCK, "export", "s1", "-"], capture_output=True,
                           env=dict(os.environ, E8KV_TOKEN=ADMIN))  # to stdout (a pipe)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, open(f1, "rb").read())
        self.assertEqual(open(f1, "rb").read(), open(f3, "rb").read())
        j, _ = ctl("rm", "s1")
        self.assertEqual(j["deleted"][0]["name"], "s1")
        ctl("show", "s1", expect=NOT_FOUND)
        j, _ = ctl("import", f1)
        self.assertEqual((j["session"], j["chunks"], j["tokens"]), ("s1", 3, 192))
        ctl("export", "s1", f2)
        self.assertEqual(open(f1, "rb").read(), open(f2, "rb").read(), "export->import->export differs")
        j, _ = ctl("import", f1, expect=REJECTED)  # s1 holds tokens: never overwritten
        self.assertEqual(j["error"]["code"], "ALREADY_EXISTS")
        self.assertIn("already exists", j["error"]["message"])
        self.assertIn("--name", j["error"]["message"])
        j, _ = ctl("import", "--name", "s1-copy", f1)
        self.assertEqual(j["session"], "s1-copy")
        j, _ = ctl("import", "--name", "s1-team", f1, token=USER)  # into another namespace
        # Another namespace: nothing is shared with "default"; chunks equal to what "team"
        # already holds ("mine" has the same first chunk) are deduplicated there.
        self.assertEqual(j["chunks_stored"] + j["chunks_deduplicated"], 3)
        self.assertGreaterEqual(j["chunks_stored"], 2)
        ctl("export", "nope", os.path.join(TMP, "x.e8x"), expect=NOT_FOUND)
        self.assertFalse(os.path.exists(os.path.join(TMP, "x.e8x")))

    def test_08b_export_never_replaces_what_is_not_its_file(self):
        """export wrote FILE.tmp and renamed it over FILE: a FIFO or a device at FILE was
        replaced by a regular file (as root, `export s /dev/full` turned /dev/full into a
        file; `export s /dev/stdout` replaces the link), a symlink was replaced by the file,
        and a user's own FILE.tmp was overwritten and renamed away."""
        import threading
        want = open(os.path.join(TMP, "s1.e8x"), "rb").read()
        fifo = os.path.join(TMP, "out.fifo")
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
        reader.start()
        ctl("export", "s1", fifo)
        reader.join(10)  # never returns when the FIFO was renamed over (its writer never came)
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced")
        self.assertEqual(got, [want])
        target, link = os.path.join(TMP, "target.e8x"), os.path.join(TMP, "link.e8x")
        open(target, "wb").write(b"old")
        os.symlink(target, link)
        ctl("export", "s1", link)
        self.assertTrue(os.path.islink(link), "the symlink was replaced")
        self.assertEqual(open(target, "rb").read(), want)
        mine = os.path.join(TMP, "keep.e8x")
        open(mine + ".tmp", "wb").write(b"the user's own file")
        ctl("export", "s1", mine)
        self.assertEqual(open(mine, "rb").read(), want)
        self.assertEqual(open(mine + ".tmp", "rb").read(), b"the user's own file")
        self.assertEqual([n for n in os.listdir(TMP) if ".tmp" in n], ["keep.e8x.tmp"])
        j, _ = ctl("export", "s1", TMP, expect=USAGE)
        self.assertIn("is a directory", j["error"]["message"])

    def test_09_damaged_export_file(self):
        good = open(os.path.join(TMP, "s1.e8x"), "rb").read()
        cases = {"flip": good[:5000] + bytes([good[5000] ^ 1]) + good[5001:],
                 "truncated": good[:len(good) // 2],
                 "junk": good + b"\0",
                 "not-export": b"hello world, not an export file\n" * 4}
        # A well-formed container whose chunk frame is damaged (CRCs and digest redone):
        # caught by the codec's own checks before anything is sent.
        recs = xfile.read_records(good)
        self.assertEqual([t for t, _ in recs], [1, 2, 2, 2])
        t, p = recs[1]
        mid = len(p) // 2
        recs[1] = (t, p[:mid] + bytes([p[mid] ^ 0x10]) + p[mid + 1:])
        cases["frame"] = xfile.export_file(recs)
        self.assertEqual(xfile.export_file(xfile.read_records(good)), good)  # the writers agree
        for name, data in cases.items():
            path = os.path.join(TMP, name + ".e8x")
            open(path, "wb").write(data)
            j, err = ctl("import", "--name", "damaged-" + name, path, expect=CORRUPT)
            self.assertIn(path, j["error"]["message"])
            ctl("show", "damaged-" + name, expect=NOT_FOUND)  # nothing stored
        ctl("import", os.path.join(TMP, "missing.e8x"), expect=IO)

    def test_10_offline_equals_online(self):
        for args in (["show", "s1"], ["ls"]):
            on, _ = ctl(*args)
            off, _ = ctl(*args, offline=True)
            self.assertEqual(on, off, args)
        j, _ = ctl("stat", offline=True)
        self.assertEqual(j["namespace"]["namespace_name"], "default")
        on, _ = ctl("stat")    # the namespace's figures agree (offline printed "tokens: -")
        for k in ("chunks", "sessions", "stored_bytes", "tokens", "raw_fp16_bytes", "bpe"):
            self.assertEqual(j["namespace"][k], on["namespace"][k], k)
        self.assertGreater(j["namespace"]["tokens"], 0)
        j, _ = ctl("ls", "--namespace", "team", offline=True)
        self.assertEqual(sorted(s["name"] for s in j["sessions"]), ["mine", "s1-team"])
        ctl("ls", "--namespace", "nobody", offline=True, expect=NOT_FOUND)
        ctl("show", "nope", offline=True, expect=NOT_FOUND)
        ctl("rm", "s1", offline=True, expect=UNSUPPORTED)
        p = subprocess.run([CTL, "--json", "--data-dir", os.path.join(TMP, "no-store"), "ls"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, UNREACHABLE, p.stderr)
        j, _ = ctl("verify", offline=True)
        self.assertEqual(j["corrupt_records"], 0)
        self.assertGreaterEqual(j["records_checked"], 5)

    def test_11_verify_compact(self):
        j, _ = ctl("verify")
        self.assertEqual(j["corrupt_records"], 0)
        self.assertTrue(j["complete"])
        self.assertGreater(j["records_checked"], 0)
        j, _ = ctl("compact")
        for k in ("segments_compacted", "records_moved", "bytes_moved", "bytes_reclaimed"):
            self.assertIn(k, j)

    def test_12_rm_and_usage(self):
        ctl("rm", "nope", expect=NOT_FOUND)
        j, _ = ctl("rm", "other")
        self.assertGreaterEqual(j["deleted"][0]["chunks_unpinned"], 0)
        self.assertNotIn("chunks_purged", j["deleted"][0])
        # rm --purge: the session's chunks go too (nothing else pins a bench session's chunks)
        ctl("bench", "--session", "purge-me", "--chunks", "2", *SHAPE)
        before = ctl("stat")[0]
        j, _ = ctl("rm", "--purge", "purge-me")
        self.assertEqual((j["deleted"][0]["chunks_purged"], j["deleted"][0]["chunks_kept"],
                          j["deleted"][0]["chunks_pending"]), (2, 0, 0))
        after = ctl("stat")[0]
        self.assertEqual(after["namespace"]["chunks"], before["namespace"]["chunks"] - 2)
        out, _ = ctl("rm", "--purge", "nope", expect=NOT_FOUND, json_out=False)
        for bad in (["frob"], ["show"], ["ls", "--limit", "0"], ["ls", "--bogus"],
                    ["export", "s1"], ["bench", "--head-dim", "65"]):
            j, _ = ctl(*bad, expect=USAGE)
            self.assertEqual(j["error"]["exit"], USAGE)
        out, _ = ctl("--help", json_out=False)
        for cmd in ("health", "stat", "ls", "show", "rm", "gc", "verify", "compact", "export",
                    "import", "bench"):
            self.assertIn("  " + cmd, out)
            h, _ = ctl(cmd, "--help", json_out=False)
            self.assertIn("usage: e8kvctl", h)
        self.assertIn("exit codes:", out)
        h, _ = ctl("help", json_out=False)
        self.assertEqual(h, out)  # `e8kvctl help` = --help
        h, _ = ctl("help", "show", json_out=False)
        self.assertIn("usage: e8kvctl [OPTIONS] show", h)
        ctl("help", "frob", expect=USAGE)

    def test_12a_import_leaves_no_lease_and_gc_purges_unlisted_chunks(self):
        """A purge right after an import deletes every chunk (an import holds no lookup lease);
        `gc` deletes what sessions removed without --purge left, and nothing a session lists."""
        f = os.path.join(TMP, "imp.e8x")
        ctl("bench", "--session", "imp", "--chunks", "2", *SHAPE)
        ctl("export", "imp", f)
        j, _ = ctl("rm", "--purge", "imp")
        self.assertEqual(j["deleted"][0]["chunks_purged"], 2)
        ctl("import", f)
        j, _ = ctl("rm", "--purge", "imp")
        d = j["deleted"][0]
        self.assertEqual((d["chunks_purged"], d["chunks_kept"], d["chunks_pending"]), (2, 0, 0))
        ctl("bench", "--session", "left", "--chunks", "3", *SHAPE)
        ctl("rm", "left")                        # no --purge: its chunks stay as cache entries
        before = ctl("stat")[0]["namespace"]["chunks"]
        s1 = ctl("show", "s1")[0]
        j, _ = ctl("gc")
        self.assertGreaterEqual(j["chunks_purged"], 3)
        self.assertGreater(j["bytes_purged"], 0)
        # pending: unlisted chunks that test_00's lookups (libe8kv) still hold under their 30 s
        # leases; the daemon deletes them when those expire (maybe already, meanwhile)
        pending = j["chunks_pending"]
        after = ctl("stat")[0]["namespace"]["chunks"]
        self.assertLessEqual(after, before - j["chunks_purged"])
        self.assertGreaterEqual(after, before - j["chunks_purged"] - pending)
        self.assertEqual(ctl("show", "s1")[0], s1)   # a listed session keeps all its chunks
        ctl("export", "s1", os.path.join(TMP, "s1-after-gc.e8x"))
        j, _ = ctl("gc")                           # only the pending ones can be left
        self.assertLessEqual(j["chunks_purged"] + j["chunks_pending"], pending)
        # rm --purge --wait: returns once no purge of the namespace waits for a lease (gc's
        # pending ones from test_00's 30 s leases, if they are still there)
        ctl("bench", "--session", "waited", "--chunks", "1", *SHAPE)
        j, _ = ctl("rm", "--purge", "--wait", "120", "waited")
        self.assertEqual((j["deleted"][0]["chunks_purged"], j["purge_pending"]), (1, 0))
        self.assertEqual(ctl("stat")[0]["namespace"]["chunks_purge_pending"], 0)
        ctl("rm", "--wait", "5", "s1", expect=USAGE)      # --wait needs --purge
        ctl("show", "s1")                                # and nothing was deleted
        out, _ = ctl("gc", json_out=False)
        self.assertIn("chunks purged", out)

    def test_12b_address_forms(self):
        """tcp://, a bare path and a missing port get a usage error naming the forms."""
        for bad in ("tcp://127.0.0.1:50051", "/run/e8kv.sock", "localhost", "host:port"):
            j, err = ctl("health", addr=bad, expect=USAGE)
            self.assertIn("host:port", err)
            self.assertIn("unix:/path", err)
        _, err = ctl("health", addr="/tmp/x.sock", expect=USAGE)
        self.assertIn("unix:PATH", err)
        env = dict(os.environ, E8KV_ADDR="tcp://127.0.0.1:1")
        p = subprocess.run([CTL, "health"], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, USAGE, p.stderr)
        self.assertIn("$E8KV_ADDR", p.stderr)
        env = dict(os.environ, E8KV_ADDR="")      # set but empty = unset: the default address
        p = subprocess.run([CTL, "--timeout", "2000", "health"], capture_output=True, text=True,
                           env=env, timeout=60)
        self.assertNotEqual(p.returncode, USAGE, p.stderr)
        self.assertNotIn("empty address", p.stderr)

    def test_12c_address_table(self):
        """--addr takes exactly the forms of tests/clients/addr_cases.txt (e8kvd's rule)."""
        table = os.path.join(os.path.dirname(os.path.abspath(__file__)), "addr_cases.txt")
        n = 0
        for line in open(table, encoding="utf-8"):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            kind, addr, *want = line.split("|")
            p = subprocess.run([CTL, "--timeout", "3000", "-a", addr, "health"],
                               capture_output=True, text=True, timeout=60)
            if kind == "ok":
                self.assertNotEqual(p.returncode, USAGE, (addr, p.stderr))
            else:
                self.assertEqual(p.returncode, USAGE, (addr, p.stderr))
                self.assertIn('--addr "%s": %s' % (addr, ""), p.stderr)
                self.assertIn(want[0], p.stderr)
                self.assertIn("unix:/path/to.sock", p.stderr)
            n += 1
        self.assertGreater(n, 20)

    def test_12d_silent_address_deadline(self):
        """Something listens but never answers: exit 3 at --timeout, naming address + deadline."""
        p, took, path = run_against_silent_socket("silent.sock", ["--timeout", "1500", "stat"], 60)
        self.assertEqual(p.returncode, UNREACHABLE, p.stderr)
        self.assertLess(took, 10)
        self.assertIn("unix:" + path, p.stderr)
        self.assertIn("1500 ms deadline", p.stderr)

    def test_12e_timeout_units(self):
        """--timeout takes ms (no unit, as libe8kv's deadline_ms) or a unit; '3' (3 ms, meant
        as 3 s by a new user, then blamed on the daemon) is refused with the unit named."""
        _, err = ctl("--timeout", "3", "health", expect=USAGE, json_out=False)
        self.assertIn("3 ms is too short", err)
        self.assertIn("--timeout 3s", err)
        for bad in ("5x", "2 s", "-1s", "s", "1.5s", "99999999999s"):
            _, err = ctl("--timeout", bad, "health", expect=USAGE, json_out=False)
            self.assertIn("not a duration", err)
        for good in ("3s", "2500ms", "2500", "100ms"):
            ctl("--timeout", good, "health", json_out=False)
        self.assertIn("--timeout DURATION", subprocess.run([CTL, "--help"], capture_output=True,
                                                            text=True).stdout)
        p, _, _ = run_against_silent_socket("silent2.sock", ["--timeout", "1s", "stat"], 60)
        self.assertEqual(p.returncode, UNREACHABLE, p.stderr)
        self.assertIn("1000 ms deadline", p.stderr)

    def test_12f_hung_daemon_fails_at_the_deadline_not_grpc_connect_timeout(self):
        """A SIGSTOPped daemon (or any peer that accepts and never answers) failed every call
        at gRPC's 20 s connect timeout ("timed out before receiving SETTINGS frame"), not at
        the deadline README documents; libe8kv gives the connection attempt the deadline."""
        p, took, _ = run_against_silent_socket("silent3.sock", ["--timeout", "21s", "health"], 90)
        self.assertEqual(p.returncode, UNREACHABLE, p.stderr)
        self.assertIn("21000 ms deadline", p.stderr)
        self.assertGreater(took, 20.5)

    def test_12g_health_wait(self):
        """README's first-try block starts e8kvd in the background and runs health at once:
        health --wait retries until the daemon serves (here: one started after health began)
        and fails with exit 3 when nothing serves by the end of DURATION."""
        d = tempfile.mkdtemp(prefix="wait-", dir=TMP)
        sock = os.path.join(d, "late.sock")
        env = dict(os.environ, E8KV_TOKEN=ADMIN)
        waiter = subprocess.Popen([CTL, "-a", "unix:" + sock, "--json", "health", "--wait", "120s"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        late = None
        try:
            time.sleep(1.0)
            self.assertIsNone(waiter.poll(), "health --wait returned before any daemon existed")
            log = open(os.path.join(d, "e8kvd.log"), "w")
            late = subprocess.Popen([os.path.join(BUILD, "bin", "e8kvd"),
                                     "--data-dir=" + os.path.join(d, "data"),
                                     "--listen=unix:" + sock, "--threads=1"], stdout=log, stderr=log)
            out, err = waiter.communicate(timeout=150)
            if waiter.returncode == OK:  # a namespace of one session: its two bpe figures
                self._two_bpe_figures("unix:" + sock)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait()
            if late:
                late.send_signal(signal.SIGTERM)
                late.wait(timeout=60)
        self.assertEqual(waiter.returncode, OK, err)
        self.assertTrue(json.loads(out)["serving"])
        # Nothing ever listens: exit 3 once the duration has passed (not before).
        t0 = time.monotonic()
        j, err = ctl("health", "--wait", "1500ms", addr="unix:" + os.path.join(d, "none.sock"),
                     expect=UNREACHABLE)
        self.assertGreaterEqual(time.monotonic() - t0, 1.4)
        self.assertEqual(j["error"]["code"], "UNAVAILABLE")
        ctl("health", "--wait", "5x", expect=USAGE, json_out=False)
        self.assertIn("--wait DURATION", subprocess.run([CTL, "health", "--help"],
                                                         capture_output=True, text=True).stdout)

    def _two_bpe_figures(self, addr):
        """show/ls bpe counts the session's frames; stat's counts the namespace's records on
        disk, each with its 192-byte header (README "e8kvctl"); the human output says which."""
        ctl("bench", "--session", "x", "--layers", "2", "--kv-heads", "1", "--head-dim", "64",
            "--chunk-tokens", "32", "--chunks", "3", addr=addr)
        sh, _ = ctl("show", "x", addr=addr)
        st, _ = ctl("stat", addr=addr)
        ns = st["namespace"]
        self.assertEqual(ns["chunks"], sh["n_chunks"])
        self.assertEqual(ns["stored_bytes"], sh["stored_bytes"] + 192 * sh["n_chunks"])
        self.assertGreater(ns["bpe"], sh["bpe"])
        out, _ = ctl("stat", addr=addr, json_out=False)
        self.assertIn("bpe (on disk, with record headers):", out)
        out, _ = ctl("ls", addr=addr, json_out=False)
        self.assertIn("BPE(FRAMES)", out)

    def test_12h_health_default_deadline(self):
        """A hung daemon (here: a socket that accepts and never answers, as a SIGSTOPped
        e8kvd) fails health at its 5 s default deadline, not the 30 s of other commands."""
        p, _, _ = run_against_silent_socket("silent4.sock", ["health"], 90)
        self.assertEqual(p.returncode, UNREACHABLE, p.stderr)
        self.assertIn("5000 ms deadline", p.stderr)

    def test_13_corrupted_record(self):
        """A payload byte flipped on disk: verify finds it (exit 6), reads say DATA_LOSS."""
        # A session of its own shape, written last: its chunk is the newest record of the
        # newest segment file (whose tail past it may be preallocated zeros).
        ctl("bench", "--session", "victim", "--chunks", "1", "--layers", "2", "--kv-heads", "1",
            "--head-dim", "128", "--chunk-tokens", "32")
        ctl("export", "victim", os.path.join(TMP, "victim-before.e8x"))
        seg_dir = os.path.join(DATA, "segments")
        segs = sorted(os.listdir(seg_dir))
        self.assertTrue(segs)
        path = os.path.join(seg_dir, segs[-1])
        with open(path, "r+b") as f:
            at = f.read().rfind(b"E8SR")  # the last record header (magic, 64 bytes)
            self.assertGreater(at, 0)
            at += 64 + 200  # inside its payload (chunk header and fingerprint: > 200 bytes)
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x40]))
        j, err = ctl("verify", offline=True, expect=CORRUPT)
        self.assertGreaterEqual(j["corrupt_records"], 1)
        self.assertIn("corrupt record", err)
        j, err = ctl("export", "victim", os.path.join(TMP, "victim.e8x"), expect=CORRUPT)
        self.assertEqual(j["error"]["code"], "DATA_LOSS")
        self.assertFalse(os.path.exists(os.path.join(TMP, "victim.e8x")))
        self.assertFalse(os.path.exists(os.path.join(TMP, "victim.e8x.tmp")))
        j, _ = ctl("verify", expect=CORRUPT)
        self.assertGreaterEqual(j["corrupt_records"], 1)
        self.assertTrue(all(r["segment"] and r["reason"] for r in j["corrupt"]), j)
        ctl("export", "victim", os.path.join(TMP, "victim2.e8x"), offline=True, expect=CORRUPT)
        # Other sessions are unaffected.
        ctl("export", "s1", os.path.join(TMP, "s1-after.e8x"))


class Tls(unittest.TestCase):
    """A second daemon on TCP with TLS (a self-signed certificate made here)."""

    def test_tls(self):
        d = os.path.join(TMP, "tls")
        os.makedirs(d)
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        logp = os.path.join(d, "e8kvd.log")
        with open(logp, "w") as log:
            kvd = subprocess.Popen([os.path.join(BUILD, "bin", "e8kvd"), "--data-dir=" + os.path.join(d, "data"),
                                    "--listen=127.0.0.1:0", "--metrics-listen=", "--threads=2",
                                    "--tls-cert=" + cert, "--tls-key=" + key, "--log-level=info"],
                                   stdout=log, stderr=log)
        try:
            port, t0 = None, time.monotonic()
            while time.monotonic() - t0 < 60:  # bounds a hang only (was 100 polls, ~10 s)
                m = [l for l in open(logp).read().splitlines() if "event=listen" in l]
                if m:
                    port = int(m[0].split("port=")[1].split()[0])
                    break
                time.sleep(0.1)
            self.assertTrue(port, open(logp).read())
            addr = "127.0.0.1:%d" % port
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60:  # bounds a hang only (was 100 tries)
                p = subprocess.run([CTL, "-a", addr, "--tls-ca", cert, "health"], capture_output=True)
                if p.returncode == 0:
                    break
                time.sleep(0.1)
            j, _ = ctl("--tls-ca", cert, "health", addr=addr, token=None)
            self.assertEqual(j["status"], "SERVING")
            j, _ = ctl("--tls-ca", cert, "ls", addr=addr, token=None)
            self.assertEqual(j["sessions"], [])
            j, _ = ctl("health", addr=addr, token=None, expect=UNREACHABLE)   # plaintext to TLS
            self.assertIn("connect with TLS", j["error"]["message"])          # ... says so
            j, err = ctl("--tls", "health", addr=addr, token=None, expect=UNREACHABLE)
            self.assertNotIn("connect with TLS", j["error"]["message"])
            self.assertNotIn("ssl_transport_security", err)  # gRPC's own log lines: not shown
            ctl("--tls", "health", addr=addr, token=None, expect=UNREACHABLE)  # untrusted cert
            ctl("--tls-ca", os.path.join(d, "missing.pem"), "health", addr=addr, expect=IO)
            ctl("--tls-key", key, "health", addr=addr, expect=USAGE)  # key without certificate
        finally:
            kvd.send_signal(signal.SIGTERM)
            kvd.wait(timeout=20)


class Cli(unittest.TestCase):
    """Flags and defaults the two programs must agree on (no daemon needed)."""

    def run_(self, *cmd):
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)

    def test_same_version(self):
        kvd = os.path.join(BUILD, "bin", "e8kvd")
        a, b = self.run_(kvd, "--version"), self.run_(CTL, "-V")
        self.assertEqual((a.returncode, b.returncode), (0, 0), a.stderr + b.stderr)
        va = re.match(r"e8kvd (\d+\.\d+\.\d+) ", a.stdout)
        vb = re.match(r"e8kvctl (\d+\.\d+\.\d+)$", b.stdout.strip())
        self.assertTrue(va and vb, a.stdout + b.stdout)
        self.assertEqual(va.group(1), vb.group(1))
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        py = open(os.path.join(root, "clients", "python", "e8kv", "__init__.py")).read()
        self.assertIn('__version__ = "%s"' % va.group(1), py)

    def test_same_default_address(self):
        kvd = os.path.join(BUILD, "bin", "e8kvd")
        md = self.run_(kvd, "--help-markdown").stdout
        listen = re.search(r"^\| `--listen` \| [^|]+\| `([^`]+)` \|", md, re.M).group(1)
        h = self.run_(CTL, "--help").stdout
        self.assertIn("(default: $E8KV_ADDR or %s)" % listen, h)
        readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                   "README.md")).read()
        # Every daemon address in README is the default or one unix socket path.
        addrs = set(re.findall(r"unix:/[\w./-]+\.sock", readme)) - {"unix:/path/to.sock"}
        self.assertLessEqual(len(addrs), 1, addrs)

    def test_e8kvd_flags(self):
        kvd = os.path.join(BUILD, "bin", "e8kvd")
        a, b = self.run_(kvd, "-h"), self.run_(kvd, "--help")
        self.assertEqual(a.returncode, 0, a.stderr)
        self.assertEqual(a.stdout, b.stdout)
        for bad, want in (("tcp://127.0.0.1:50051", "URL schemes"), ("/tmp/x.sock", "unix:PATH"),
                          ("localhost", "no port")):
            p = self.run_(kvd, "--data-dir=" + os.path.join(TMP, "never"), "--listen=" + bad)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(want, p.stderr)
            self.assertIn("unix:/path", p.stderr)
        p = self.run_(kvd, "--data-dir=" + os.path.join(TMP, "never"), "--metrics-listen=localhost")
        self.assertEqual(p.returncode, 2, p.stderr)               # a usage error, store untouched
        self.assertIn("localhost:port", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(TMP, "never")))


class Docs(unittest.TestCase):
    def test_readme_has_the_tables(self):
        """README's e8kvctl section carries `e8kvctl --help-markdown` verbatim."""
        readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                   "README.md")).read()
        out = subprocess.run([CTL, "--help-markdown"], capture_output=True, text=True).stdout
        self.assertIn("## e8kvctl", readme)
        for line in out.splitlines():
            self.assertIn(line, readme, "README.md lacks: " + line)


def main():
    global BUILD, CTL, TMP, SOCK, DATA
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    BUILD = os.path.abspath(sys.argv[1])
    CTL = os.path.join(BUILD, "bin", "e8kvctl")
    TMP = tempfile.mkdtemp(prefix="e8kvctl-e2e-")
    SOCK = os.path.join(TMP, "e8kvd.sock")
    DATA = os.path.join(TMP, "data")
    ok = False
    try:
        start_daemon()
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(E2E)
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(Tls))
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(Cli))
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(Docs))
        res = unittest.TextTestRunner(verbosity=2, failfast=False).run(suite)
        ok = res.wasSuccessful()
        print("%d passed, %d failed" % (res.testsRun - len(res.failures) - len(res.errors),
                                        len(res.failures) + len(res.errors)))
    finally:
        stop_daemon()
        if ok:
            shutil.rmtree(TMP, ignore_errors=True)
        else:
            print("kept for inspection:", TMP)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
