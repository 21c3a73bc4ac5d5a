"""Two e8kvd on one address (found by a new user, 2026-11-29): a second daemon with another data
dir bound the first one's TCP port (gRPC's SO_REUSEPORT, the kernel then split connections between
two stores) and took over its unix socket (gRPC unlinks the path before binding; on exit it
unlinked it again, leaving the first daemon unreachable). e8kvd must refuse to start instead, and
the first daemon must keep serving its own store."""
import os
import socket
import subprocess
import tempfile

import grpc

from advlib import E8KVD, Daemon, kv, kvg, tmpdir


def _second(listen):
    d = tmpdir(prefix="kvdadv-2nd-")
    return subprocess.run([E8KVD, f"--data-dir={d}/data", f"--listen={listen}",
                           "--metrics-listen=", "--threads=2"],
                          capture_output=True, text=True, timeout=60)


def _sessions(stub):
    return stub.GetStats(kv.GetStatsRequest(), timeout=10)


def test_second_daemon_on_a_live_unix_socket_is_refused():
    first = Daemon()
    try:
        r = _second("unix:" + first.sock)
        assert r.returncode != 0, "a second e8kvd started on a unix socket that is being served"
        assert "another process" in r.stdout + r.stderr
        assert os.path.exists(first.sock), "the refused daemon removed the first one's socket"
        _sessions(first.stub)                                    # the first still answers
    finally:
        first.stop()


def test_stale_unix_socket_file_is_replaced():
    first = Daemon()
    sock, data = first.sock, first.data
    first.kill9()                                                # leaves the socket file
    assert os.path.exists(sock)
    again = Daemon(data=data)
    try:
        _sessions(again.stub)
    finally:
        again.stop()


def test_second_daemon_on_a_used_tcp_port_is_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    first = Daemon(extra=[f"--listen=127.0.0.1:{port}"])
    try:
        r = _second(f"127.0.0.1:{port}")
        assert r.returncode != 0, "a second e8kvd bound a TCP port another e8kvd serves"
        assert "cannot listen" in r.stdout + r.stderr
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # every call reaches the first
            stub = kvg.KVStoreStub(ch)
            for _ in range(6):
                _sessions(stub)
    finally:
        first.stop()
