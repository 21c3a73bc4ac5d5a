"""A second, independent client of e8kvd: Python grpcio with stubs generated from
proto/e8kv/v1/kvstore.proto (and Debian grpc-proto's health.proto) by grpcio-tools at test time,
into a temporary directory. It checks the same round trips as the C end-to-end tests, the
health service, TLS, and a few refusals. grpcio missing is a failure, never a skip.

Run: E8KVD=build/bin/e8kvd python -m pytest -q tests/daemon/test_kvd_grpcio.py
"""
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc  # noqa: F401  (a missing grpcio must fail the run)
import numpy as np
import pytest
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E8KVD = os.environ.get("E8KVD", os.path.join(ROOT, "build", "bin", "e8kvd"))
HEALTH_DIRS = ["/usr/share/grpc-proto", "/usr/share/grpc-proto1"]


@pytest.fixture(scope="module")
def pb():
    """Generates and imports kvstore_pb2(_grpc) and health_pb2(_grpc)."""
    out = tempfile.mkdtemp(prefix="kvdpy-gen-")
    inc = [d for d in HEALTH_DIRS if os.path.exists(os.path.join(d, "grpc/health/v1/health.proto"))]
    assert inc, "Debian grpc-proto's health.proto is missing"
    # health.proto is compiled under another path so its module does not collide with the
    # installed `grpc` package (the wire names stay grpc.health.v1.Health/...).
    os.makedirs(os.path.join(out, "kvdhealth"))
    shutil.copy(os.path.join(inc[0], "grpc/health/v1/health.proto"),
                os.path.join(out, "kvdhealth", "health.proto"))
    for proto, incdir in (("e8kv/v1/kvstore.proto", os.path.join(ROOT, "proto")),
                          ("kvdhealth/health.proto", out)):
        rc = protoc.main(["protoc", f"-I{incdir}", f"--python_out={out}",
                          f"--grpc_python_out={out}", os.path.join(incdir, proto)])
        assert rc == 0, f"grpc_tools.protoc failed on {proto}"
    sys.path.insert(0, out)
    mods = {n: importlib.import_module(n) for n in (
        "e8kv.v1.kvstore_pb2", "e8kv.v1.kvstore_pb2_grpc",
        "kvdhealth.health_pb2", "kvdhealth.health_pb2_grpc")}
    yield type("PB", (), {"kv": mods["e8kv.v1.kvstore_pb2"], "kvg": mods["e8kv.v1.kvstore_pb2_grpc"],
                          "h": mods["kvdhealth.health_pb2"],
                          "hg": mods["kvdhealth.health_pb2_grpc"]})
    sys.path.remove(out)
    shutil.rmtree(out, ignore_errors=True)


class Daemon:
    def __init__(self, extra=(), tcp=False):
        self.dir = tempfile.mkdtemp(prefix="kvdpy-")
        self.sock = os.path.join(self.dir, "kvd.sock")
        self.log = os.path.join(self.dir, "kvd.log")
        listen = "unix:" + self.sock + (",127.0.0.1:0" if tcp else "")
        args = [E8KVD, f"--data-dir={self.dir}/data", f"--listen={listen}",
                "--metrics-listen=", "--threads=4", "--shutdown-grace-ms=2000", *extra]
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=self.logf)
        self.port = 0
        t0 = time.monotonic()  # 60 s only bounds a hang (300 polls, ~15 s, raced a loaded machine)
        while time.monotonic() - t0 < 60:
            text = open(self.log).read()
            m = re.search(r"event=listen addr=127\.0\.0\.1:0 port=(\d+)", text)
            if m:
                self.port = int(m.group(1))
            if "event=ready" in text:
                return
            assert self.proc.poll() is None, f"e8kvd exited early:\n{text}"
            time.sleep(0.05)
        raise AssertionError("e8kvd did not become ready")

    def target(self):
        return "unix:" + self.sock

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=60)
        self.logf.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


@pytest.fixture(scope="module")
def daemon():
    d = Daemon()
    yield d
    assert d.stop() == 0


def fingerprint(pb, layers=2, heads=2, dim=64, preset=""):
    return pb.kv.ModelFingerprint(
        model_id="test/python", n_layers=layers, n_kv_heads=heads, head_dim=dim,
        source_dtype=pb.kv.DTYPE_FP16,
        rope=pb.kv.RopeConfig(theta=10000.0, layout=pb.kv.ROPE_LAYOUT_SPLIT_HALF),
        codec=pb.kv.CodecConfig(preset=preset))


def kv_chunk(rng, layers, heads, tokens, dim):
    """Raw fp16 KV in the API layout [layers][2][heads][tokens][head_dim]."""
    t = np.arange(tokens)[None, None, None, :, None]
    d = np.arange(dim)[None, None, None, None, :]
    base = np.sin(0.03 * t * (d % 5 + 1) + d) + 0.3 * rng.standard_normal((layers, 2, heads, tokens, dim))
    return base.astype(np.float16)


def put_stream(pb, header, chunks, piece=1 << 20):
    """chunks: list of (token_ids, bytes); each chunk split into pieces of `piece` bytes."""
    yield pb.kv.PutChunksRequest(header=header)
    for toks, data in chunks:
        for off in range(0, len(data), piece):
            part = data[off:off + piece]
            more = off + piece < len(data)
            yield pb.kv.PutChunksRequest(pieces=[pb.kv.ChunkPiece(
                token_ids=toks if off == 0 else [], data=part, more=more)])


def get_chunks(stub, pb, request, timeout=60):
    out = {}
    for r in stub.GetChunks(request, timeout=timeout):
        c = out.setdefault(r.chunk_index, {"data": bytearray(), "tokens": list(r.token_ids),
                                           "start": r.start_token, "key": r.chunk_key})
        assert r.offset == len(c["data"])
        c["data"] += r.data
    return [out[i] for i in sorted(out)]


def test_health(pb, daemon):
    ch = grpc.insecure_channel(daemon.target())
    h = pb.hg.HealthStub(ch)
    for svc in ("", "e8kv.v1.KVStore"):
        assert h.Check(pb.h.HealthCheckRequest(service=svc), timeout=60).status == \
            pb.h.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        h.Check(pb.h.HealthCheckRequest(service="nope.Service"), timeout=60)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    w = h.Watch(pb.h.HealthCheckRequest(service=""), timeout=60)
    assert next(w).status == pb.h.HealthCheckResponse.SERVING
    w.cancel()
    ch.close()


def test_raw_roundtrip_and_frames(pb, daemon):
    rng = np.random.default_rng(1)
    L, H, D, CT = 2, 2, 64, 64
    stub = pb.kvg.KVStoreStub(grpc.insecure_channel(daemon.target()))
    fp = fingerprint(pb, L, H, D, preset="K4V4")
    toks = [int(x) for x in rng.integers(0, 32000, 2 * CT)]
    raws = [kv_chunk(rng, L, H, CT, D) for _ in range(2)]
    hdr = pb.kv.PutHeader(fingerprint=fp, chunk_tokens=CT, encoding=pb.kv.ENCODING_RAW,
                          raw_dtype=pb.kv.DTYPE_FP16, session="py/raw", create_session=True)
    r = stub.PutChunks(put_stream(pb, hdr, [(toks[:CT], raws[0].tobytes()),
                                            (toks[CT:], raws[1].tobytes())], piece=10000), timeout=60)
    assert r.chunks_stored == 2 and r.tokens == 2 * CT and r.session.n_tokens == 2 * CT
    assert r.raw_fp16_bytes == 2 * raws[0].nbytes and 0 < r.stored_bytes < r.raw_fp16_bytes
    lk = stub.Lookup(pb.kv.LookupRequest(fingerprint=fp, chunk_tokens=CT, token_ids=toks + [1, 2, 3]),
                     timeout=60)
    assert lk.matched_tokens == 2 * CT and list(lk.chunk_keys) == list(r.chunk_keys)
    got = get_chunks(stub, pb, pb.kv.GetChunksRequest(
        range=pb.kv.SessionRange(session="py/raw"), encoding=pb.kv.ENCODING_RAW))
    assert [g["tokens"] for g in got] == [toks[:CT], toks[CT:]]
    assert [g["start"] for g in got] == [0, CT]
    for g, raw in zip(got, raws):
        dec = np.frombuffer(bytes(g["data"]), dtype=np.float16).reshape(raw.shape).astype(np.float32)
        ref = raw.astype(np.float32)
        for kv in (0, 1):  # keys, values: lossy, within the K4V4 preset's error
            rel = np.sqrt(((dec[:, kv] - ref[:, kv]) ** 2).sum() / (ref[:, kv] ** 2).sum())
            print(f"{'KV'[kv]} relative RMS error {rel:.4f}")
            assert 0 < rel < 0.15, rel
    # Encoded frames back, then uploaded by this client: byte-identical, so all deduplicated.
    frames = get_chunks(stub, pb, pb.kv.GetChunksRequest(keys=pb.kv.ChunkKeys(keys=r.chunk_keys),
                                                         max_piece_bytes=4096))
    hdr2 = pb.kv.PutHeader(fingerprint=fp, chunk_tokens=CT, encoding=pb.kv.ENCODING_E8_FRAME,
                           session="py/copy", create_session=True)
    r2 = stub.PutChunks(put_stream(pb, hdr2, [(f["tokens"], bytes(f["data"])) for f in frames]),
                        timeout=60)
    assert r2.chunks_deduplicated == 2 and list(r2.chunk_keys) == list(r.chunk_keys)
    again = get_chunks(stub, pb, pb.kv.GetChunksRequest(range=pb.kv.SessionRange(session="py/copy")))
    assert [bytes(a["data"]) for a in again] == [bytes(f["data"]) for f in frames]


def test_big_stream_default_limits(pb, daemon):
    """One raw chunk of 4 MiB in, decoded fp32 (8 MiB) out, with grpcio's default 4 MiB
    receive limit: the daemon's pieces keep every message under it."""
    rng = np.random.default_rng(2)
    L, H, D, CT = 8, 4, 128, 256
    stub = pb.kvg.KVStoreStub(grpc.insecure_channel(daemon.target()))
    fp = fingerprint(pb, L, H, D)
    raw = kv_chunk(rng, L, H, CT, D)
    assert raw.nbytes >= 4 << 20
    toks = list(range(CT))
    hdr = pb.kv.PutHeader(fingerprint=fp, chunk_tokens=CT, encoding=pb.kv.ENCODING_RAW,
                          raw_dtype=pb.kv.DTYPE_FP16, session="py/big", create_session=True)
    r = stub.PutChunks(put_stream(pb, hdr, [(toks, raw.tobytes())], piece=3 << 20), timeout=60)
    assert r.chunks_stored == 1
    got = get_chunks(stub, pb, pb.kv.GetChunksRequest(
        range=pb.kv.SessionRange(session="py/big"), encoding=pb.kv.ENCODING_RAW,
        dtype=pb.kv.DTYPE_FP32), timeout=60)
    assert len(got) == 1 and len(got[0]["data"]) == raw.size * 4


def test_sessions(pb, daemon):
    stub = pb.kvg.KVStoreStub(grpc.insecure_channel(daemon.target()))
    fp = fingerprint(pb)
    c = stub.CreateSession(pb.kv.CreateSessionRequest(name="py/s1", fingerprint=fp, chunk_tokens=64,
                                                      metadata={"k": "v"}), timeout=60)
    assert c.created and c.session.metadata["k"] == "v"
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateSession(pb.kv.CreateSessionRequest(name="py/s1", fingerprint=fp), timeout=60)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    names, token = [], ""
    while True:
        page = stub.ListSessions(pb.kv.ListSessionsRequest(page_size=1, page_token=token,
                                                           name_prefix="py/"), timeout=60)
        names += [s.name for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert "py/s1" in names and names == sorted(names)
    stub.DeleteSession(pb.kv.DeleteSessionRequest(name="py/s1"), timeout=60)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSession(pb.kv.GetSessionRequest(name="py/s1"), timeout=60)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_refusals(pb, daemon):
    ch = grpc.insecure_channel(daemon.target())
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/e8kv.v1.KVStore/NoSuchMethod")(b"", timeout=120)
    # at once, not at the deadline: 6x below it (< 2 s against 20 s raced a loaded machine)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and time.monotonic() - t0 < 20
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/e8kv.v1.KVStore/Lookup")(b"\x0a\xff\xff\xff\xff\x0f\x01", timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub = pb.kvg.KVStoreStub(ch)
    bad = fingerprint(pb, dim=12)
    with pytest.raises(grpc.RpcError) as e:
        stub.Lookup(pb.kv.LookupRequest(fingerprint=bad, token_ids=[1]), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "head_dim" in e.value.details()


def test_tls_and_tokens(pb):
    """TLS on TCP (self-signed certificate made here by openssl) plus a tokens file."""
    tmp = tempfile.mkdtemp(prefix="kvdpy-tls-")
    key, cert, tokens = (os.path.join(tmp, n) for n in ("key.pem", "cert.pem", "tokens"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    with open(tokens, "w") as f:
        f.write("python-token-0123456789 py-ns\n")
    d = Daemon(extra=[f"--tls-cert={cert}", f"--tls-key={key}", f"--tokens-file={tokens}"], tcp=True)
    try:
        assert d.port > 0
        creds = grpc.ssl_channel_credentials(root_certificates=open(cert, "rb").read())
        ch = grpc.secure_channel(f"localhost:{d.port}", creds)
        h = pb.hg.HealthStub(ch)
        assert h.Check(pb.h.HealthCheckRequest(), timeout=60).status == pb.h.HealthCheckResponse.SERVING
        stub = pb.kvg.KVStoreStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetStats(pb.kv.GetStatsRequest(), timeout=60)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        st = stub.GetStats(pb.kv.GetStatsRequest(), timeout=60,
                           metadata=[("authorization", "Bearer python-token-0123456789")])
        assert st.namespace_stats.namespace_name == "py-ns" and not st.HasField("store_stats")
        plain = grpc.insecure_channel(f"127.0.0.1:{d.port}")
        with pytest.raises(grpc.RpcError):
            pb.hg.HealthStub(plain).Check(pb.h.HealthCheckRequest(), timeout=3)
    finally:
        assert d.stop() == 0
        shutil.rmtree(tmp, ignore_errors=True)


def test_watch_sees_shutdown(pb):
    """Health/Watch reports SERVING, then NOT_SERVING once SIGTERM starts the shutdown, and the
    daemon still exits 0."""
    d = Daemon()
    ch = grpc.insecure_channel(d.target())
    w = pb.hg.HealthStub(ch).Watch(pb.h.HealthCheckRequest(service="e8kv.v1.KVStore"), timeout=60)
    assert next(w).status == pb.h.HealthCheckResponse.SERVING
    d.proc.send_signal(signal.SIGTERM)
    assert next(w).status == pb.h.HealthCheckResponse.NOT_SERVING
    assert d.proc.wait(timeout=60) == 0
    d.proc.send_signal = lambda s: None  # already stopped
    assert d.stop() == 0
    ch.close()
