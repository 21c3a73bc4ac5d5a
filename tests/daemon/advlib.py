"""Helpers of the adversarial e8kvd tests (tests/daemon/test_adversarial*.py): protobuf stubs
generated at import time from proto/ by grpcio-tools, a daemon started on a temp dir (or a
given data dir, for restarts) with a unix socket, and wire-level builders.
Not a test file itself (no test_ prefix)."""
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
import numpy as np
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E8KVD = os.path.abspath(os.environ.get("E8KVD", os.path.join(ROOT, "build", "bin", "e8kvd")))


def _gen():
    out = tempfile.mkdtemp(prefix="kvdadv-gen-")
    inc = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{inc}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(inc, "e8kv/v1/kvstore.proto")])
    assert rc == 0, "grpc_tools.protoc failed"
    sys.path.insert(0, out)
    from e8kv.v1 import kvstore_pb2, kvstore_pb2_grpc  # noqa: E402
    sys.path.remove(out)
    shutil.rmtree(out, ignore_errors=True)
    return kvstore_pb2, kvstore_pb2_grpc


kv, kvg = _gen()
C = grpc.StatusCode
_started = []  # every daemon started: a failed test must not leave one running
_dirs = []     # every temp dir made here: removed at exit (a daemon's store preallocates its
               # first segment, 1 GiB by default: a killed or refused daemon's dir left 1.3 GB
               # in /tmp per run, several per `make test`)


def tmpdir(prefix="kvdadv-"):
    """A temp dir removed when the test process exits, whatever the test did with it."""
    d = tempfile.mkdtemp(prefix=prefix)
    _dirs.append(d)
    return d


@atexit.register
def _kill_leftovers():
    for p in _started:
        if p.poll() is None:
            p.kill()
            p.wait()
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)


class Daemon:
    """e8kvd on `data` (default: a fresh temp dir), unix socket in its own temp dir."""

    def __init__(self, extra=(), data=None, wrap=(), metrics=False, wait=True):
        self.dir = tmpdir()
        self.data = data or os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "kvd.sock")
        self.log = os.path.join(self.dir, "kvd.log")
        args = [*wrap, E8KVD, f"--data-dir={self.data}", f"--listen=unix:{self.sock}",
                "--metrics-listen=" + ("127.0.0.1:0" if metrics else ""), "--threads=4",
                "--shutdown-grace-ms=2000", *extra]
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=self.logf)
        _started.append(self.proc)
        self.metrics_port = 0
        self.channel = None
        if wait:
            self.wait_ready()

    def wait_ready(self):
        t0 = time.monotonic()  # 60 s only bounds a hang (400 polls were ~20 s, not much when
        while time.monotonic() - t0 < 60:  # a loaded 2-core machine runs several daemons)
            text = self.text()
            m = re.search(r"metrics_port=(\d+)", text)
            if m:
                self.metrics_port = int(m.group(1))
            if "event=ready" in text:
                self.channel = grpc.insecure_channel("unix:" + self.sock)
                self.stub = kvg.KVStoreStub(self.channel)
                return
            assert self.proc.poll() is None, f"e8kvd exited early:\n{text}"
            time.sleep(0.05)
        raise AssertionError("e8kvd did not become ready:\n" + self.text())

    def text(self):
        with open(self.log) as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        if self.channel:
            self.channel.close()
        self.proc.kill()
        self.proc.wait(timeout=20)
        self.logf.close()

    def stop(self, rm=True):
        if self.channel:
            self.channel.close()
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(timeout=60)
        self.logf.close()
        if rm:
            shutil.rmtree(self.dir, ignore_errors=True)
        return rc


@pytest.fixture
def daemon():
    """A fresh e8kvd per test; the test fails if it died meanwhile or did not stop cleanly."""
    d = Daemon()
    yield d
    assert d.alive(), "e8kvd died during the test:\n" + d.text()
    assert d.stop() == 0


def fingerprint(layers=2, heads=2, dim=64, theta=10000.0, model="adv/model", preset="K3V2",
                layout=None):
    return kv.ModelFingerprint(
        model_id=model, n_layers=layers, n_kv_heads=heads, head_dim=dim,
        source_dtype=kv.DTYPE_FP16,
        rope=kv.RopeConfig(theta=theta, layout=layout or kv.ROPE_LAYOUT_SPLIT_HALF),
        codec=kv.CodecConfig(preset=preset, sink_tokens=1))


def raw_kv(seed, layers, heads, tokens, dim):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((layers, 2, heads, tokens, dim)) * 0.5).astype(np.float16)


def put_msgs(header, chunks, piece=1 << 20):
    """chunks: list of (token_ids, bytes)."""
    yield kv.PutChunksRequest(header=header)
    for toks, data in chunks:
        if not data:
            yield kv.PutChunksRequest(pieces=[kv.ChunkPiece(token_ids=toks, more=False)])
        for off in range(0, len(data), piece):
            yield kv.PutChunksRequest(pieces=[kv.ChunkPiece(
                token_ids=toks if off == 0 else [], data=data[off:off + piece],
                more=off + piece < len(data))])


def raw_header(fp, ct, **kw):
    return kv.PutHeader(fingerprint=fp, chunk_tokens=ct, encoding=kv.ENCODING_RAW,
                        raw_dtype=kv.DTYPE_FP16, **kw)


def get_all(stub, request, timeout=30, metadata=None):
    out = {}
    for r in stub.GetChunks(request, timeout=timeout, metadata=metadata):
        c = out.setdefault(r.chunk_index, {"data": bytearray(), "tokens": list(r.token_ids),
                                           "start": r.start_token, "key": r.chunk_key,
                                           "fp": r.fingerprint_id})
        assert r.offset == len(c["data"])
        c["data"] += r.data
    return [out[i] for i in sorted(out)]


def code_of(fn, *a, **kw):
    """Runs fn; returns (grpc status code, details), StatusCode.OK on success."""
    try:
        r = fn(*a, **kw)
        if hasattr(r, "__iter__") and not hasattr(r, "ListFields"):
            list(r)
        return C.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()
