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
import pytest

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


def _daemon_on_a_free_port():
    """A daemon on a TCP port that was free a moment ago; another process may take the port
    between the probe and e8kvd's bind (a busy CI machine): then another port, not a failure."""
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        try:
            return Daemon(extra=[f"--listen=127.0.0.1:{port}"]), port
        except AssertionError as e:
            if "cannot listen" not in str(e):
                raise
    raise AssertionError("5 free ports were all taken before e8kvd bound them")


def test_second_daemon_on_a_used_tcp_port_is_refused():
    first, port = _daemon_on_a_free_port()
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


# A unix socket whose directory is missing (the README's /run/e8kv example on a fresh machine,
# found by a new user, 2026-11-29), a file that is not a socket, a "directory" that is a file:
# e8kvd refused all with "address in use, bad address, or no permission" after a raw gRPC error
# dump that held the real cause. Now one line of ours says what is wrong, and no gRPC dump.
@pytest.fixture
def sockdir():
    return tmpdir(prefix="kvdadv-sock-")   # short: a unix socket path holds 107 bytes


def _refused(listen, *want):
    r = _second(listen)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"e8kvd started on {listen}"
    for w in want:
        assert w in out, f"{w!r} not in e8kvd's output:\n{out}"
    assert "chttp2_server" not in out and "created_time" not in out, \
        f"gRPC's raw error dump is still printed:\n{out}"
    return out


def test_unix_socket_in_a_missing_directory_says_so(sockdir):
    d = sockdir
    _refused(f"unix:{d}/run/e8kv/e8kvd.sock", f"directory {d}/run/e8kv does not exist",
             f"mkdir -p {d}/run/e8kv")
    assert not os.path.exists(f"{d}/run"), "e8kvd created the socket's directory"


def test_a_start_refused_for_its_socket_or_tls_files_creates_no_data_dir(sockdir):
    """A new user's trial: a wrong socket directory was refused, but ./e8kv-data was created."""
    d = sockdir
    for bad in ([f"--listen=unix:{d}/run/e8kv/e8kvd.sock"],
                ["--listen=127.0.0.1:0", f"--tls-cert={d}/none.pem", f"--tls-key={d}/none.key"]):
        data = os.path.join(d, "data")
        r = subprocess.run([E8KVD, f"--data-dir={data}", "--metrics-listen=", "--threads=2", *bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, f"e8kvd started with {bad}"
        assert not os.path.exists(data), f"a refused start ({bad}) created --data-dir:\n{r.stderr}"


def test_unix_socket_path_that_is_a_regular_file_is_refused_and_kept(sockdir):
    d = sockdir
    with open(f"{d}/e8kvd.sock", "w") as f:
        f.write("not a socket")
    _refused(f"unix:{d}/e8kvd.sock", "exists and is not a socket")
    with open(f"{d}/e8kvd.sock") as f:
        assert f.read() == "not a socket"


def test_unix_socket_under_a_file_says_not_a_directory(sockdir):
    d = sockdir
    open(f"{d}/plain", "w").close()
    _refused(f"unix:{d}/plain/e8kvd.sock", f"{d}/plain is not a directory")


def test_used_tcp_port_names_the_os_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        _refused(f"127.0.0.1:{s.getsockname()[1]}", "cannot listen", "bind: Address already in use")
    finally:
        s.close()
