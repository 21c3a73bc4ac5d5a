"""e8kv.fetch: parallel GetChunks in C (libe8kv's e8kv_fetch_*, clients/c/e8kv.h), chunk
frames written straight into one caller buffer.

    from e8kv.fetch import NativeFetcher
    nf = NativeFetcher("127.0.0.1:50051", streams=4)
    with nf.start(lookup.chunk_keys) as run:          # a FetchRun
        for batch in run.batches():                   # [Fetched] as chunks complete
            for ch in batch:
                decode(ch.view)                       # memoryview of the frame, no copy
    nf.close()

Why: the Python gRPC stack parses every message on the GIL-holding thread (~1 GB/s with
four streams on a 16-core host); here N C threads (one per connection: one e8kv_client
each) receive and copy pieces into place while the Python thread only waits inside a
ctypes call (which releases the GIL) or decodes.

Buffer. ``NativeFetcher`` keeps one host buffer (pinned through torch when ``pinned`` and
torch with CUDA is there, else a numpy array), grown to ``1.25 x`` the bytes of the
largest fetch so far; chunks beyond it go to memory the C fetch allocates (still valid, just
not pinned; ``FetchRun.overflow_bytes`` says how much). Chunk data stays valid until the
FetchRun is closed; the buffer is reused by the next ``start`` of the same NativeFetcher,
so close (or finish) one run before starting another.

Library: libe8kv.so as e8kv._fplib finds it ($E8KV_CLIENT_LIB, beside $E8KV_LIB, ...).
Thread safety: one NativeFetcher per thread.
"""
import ctypes

import grpc
import numpy as np

from . import _deadline
from . import _fplib
from . import _lib as L
from . import errors

__all__ = ["NativeFetcher", "FetchRun", "Fetched", "available"]

_vp, _sz, _u32, _u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_uint64
_P = ctypes.POINTER
ERR_MESSAGE_MAX = 512


class _Options(ctypes.Structure):       # e8kv_options
    _fields_ = [("address", ctypes.c_char_p), ("token", ctypes.c_char_p), ("tls", ctypes.c_int),
                ("tls_ca_file", ctypes.c_char_p), ("tls_cert_file", ctypes.c_char_p),
                ("tls_key_file", ctypes.c_char_p), ("tls_server_name", ctypes.c_char_p),
                ("deadline_ms", _u32), ("stream_deadline_ms", _u32),
                ("max_message_bytes", _u32)]


class _Error(ctypes.Structure):         # e8kv_error
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * ERR_MESSAGE_MAX)]


class _Fetched(ctypes.Structure):       # e8kv_fetched
    _fields_ = [("index", _u32), ("n_tokens", _u32), ("start_token", _u64),
                ("data", _vp), ("bytes", _u64)]


# libe8kv's client functions, shared with e8kv.upload (see _open_client)
CLIENT_PROTOTYPES = {
    "e8kv_options_init": (None, [_P(_Options)]),
    "e8kv_client_open": (ctypes.c_int, [_P(_Options), _P(_vp), _P(_Error)]),
    "e8kv_client_close": (None, [_vp]),
}
_PROTOTYPES = {
    **CLIENT_PROTOTYPES,
    "e8kv_fetch_start": (ctypes.c_int, [_P(_vp), _sz, _vp, _sz, _vp, _sz, _u32, _vp, _P(_vp),
                                        _P(_Error)]),
    "e8kv_fetch_wait": (ctypes.c_int, [_vp, _P(_Fetched), _sz, ctypes.c_int, _P(_sz),
                                       _P(_Error)]),
    "e8kv_fetch_stats": (None, [_vp, _P(_u64), _P(_u64), _P(_sz)]),
    "e8kv_fetch_close": (None, [_vp]),
}
_lib = None
DEADLINE_EXCEEDED = 4


def _l():
    global _lib
    if _lib is None:
        _lib = L.declare(_fplib.lib(), _PROTOTYPES, path=_fplib.library_path())
    return _lib


def available():
    """True when libe8kv.so loads and has the fetch functions."""
    try:
        _l()
        return True
    except OSError:
        return False


def _open_client(lib, address, token, timeout, max_message_bytes):
    """One libe8kv client (connection) to ``address``: its handle, or the e8kv exception of
    e8kv_client_open. ``timeout``: seconds for a whole stream (None: no deadline); ``lib``:
    a library declared with CLIENT_PROTOTYPES."""
    o = _Options()
    lib.e8kv_options_init(ctypes.byref(o))
    o.address = address.encode()
    o.token = token.encode() if token else None
    o.stream_deadline_ms = _deadline.millis(timeout)
    o.max_message_bytes = int(max_message_bytes)
    c, e = _vp(), _Error()
    rc = lib.e8kv_client_open(ctypes.byref(o), ctypes.byref(c), ctypes.byref(e))
    if rc:
        _raise(rc, e, "e8kv_client_open")
    return c


def _raise(code, err, what):
    """The e8kv exception of a libe8kv status (gRPC codes as the gRPC client raises them)."""
    msg = err.message.decode(errors="replace")
    if 0 < code <= 16:
        sc = next(s for s in grpc.StatusCode if s.value[0] == code)
        raise errors._BY_CODE.get(sc, errors.E8kvError)(sc, msg, what)
    raise errors.E8kvError(grpc.StatusCode.INTERNAL, f"libe8kv code {code}: {msg}", what)


class Fetched:
    """One fetched chunk: index (position in the key list), start_token, n_tokens, view
    (memoryview of its frame bytes; valid until its FetchRun is closed), nbytes."""
    __slots__ = ("index", "start_token", "n_tokens", "view", "nbytes")

    def __init__(self, f):
        self.index, self.start_token, self.n_tokens = f.index, f.start_token, f.n_tokens
        self.nbytes = f.bytes
        self.view = memoryview((ctypes.c_uint8 * f.bytes).from_address(f.data)).cast("B") \
            if f.bytes else memoryview(b"")

    def tobytes(self):
        return bytes(self.view)


class NativeFetcher:
    """``streams`` libe8kv clients (connections) to ``address``, made once, plus the host
    buffer chunks are fetched into (see the module doc)."""

    def __init__(self, address, streams=4, *, token=None, timeout=600, pinned=True,
                 max_message_bytes=64 << 20):
        lib = _l()
        self.address, self.streams, self.pinned = address, max(1, int(streams)), pinned
        self._clients = []
        for _ in range(self.streams):
            try:
                c = _open_client(lib, address, token, timeout, max_message_bytes)
            except Exception:
                self.close()
                raise
            self._clients.append(c)
        self._buf = None                # numpy uint8 view of the buffer
        self._keep = None               # the object owning its memory (torch tensor)
        self.largest = 0
        self._run = None

    def close(self):
        if self._run is not None:
            self._run.close()
        lib = _l()
        for c in self._clients:
            lib.e8kv_client_close(c)
        self._clients = []
        self._buf = self._keep = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reserve(self, nbytes):
        """Makes the buffer at least nbytes (pinned when asked and possible). A FetchRun
        still open is closed first, as start() does: its C threads write into the buffer
        this replaces (dropping it under them freed memory they were writing to)."""
        if self._buf is not None and self._buf.nbytes >= nbytes:
            return
        if self._run is not None:
            self._run.close()
        self._buf = self._keep = None
        if self.pinned:
            try:
                import torch
                if torch.cuda.is_available():
                    t = torch.empty(int(nbytes), dtype=torch.uint8, pin_memory=True)
                    self._keep, self._buf = t, t.numpy()
            except ImportError:
                pass
        if self._buf is None:
            self._buf = np.empty(int(nbytes), dtype=np.uint8)
        self._buf[::4096] = 0           # touch the pages now, not on the first fetch

    @property
    def buffer_bytes(self):
        return 0 if self._buf is None else self._buf.nbytes

    def start(self, keys, *, streams=None, max_piece_bytes=16 << 20, expect_fingerprint_id=None,
              expect_bytes=0):
        """Starts fetching ``keys`` (32-byte chunk keys) over ``streams`` (default all)
        connections; returns a FetchRun. ``expect_bytes``: a size hint for the buffer
        (else the largest fetch so far x 1.25)."""
        if self._run is not None:
            self._run.close()           # its chunks live in the buffer we are about to reuse
        keys = [bytes(k) for k in keys]
        if not keys:
            raise ValueError("no keys to fetch")
        if any(len(k) != 32 for k in keys):
            raise ValueError("chunk keys are 32 bytes")
        if expect_fingerprint_id is not None and len(expect_fingerprint_id) != 32:
            raise ValueError("expect_fingerprint_id is 32 bytes")
        want = max(int(expect_bytes), int(self.largest * 1.25))
        if want:
            self.reserve(want)
        n = min(streams or self.streams, self.streams)
        run = FetchRun(self, keys, n, max_piece_bytes, expect_fingerprint_id)
        self._run = run
        return run


class FetchRun:
    """One parallel fetch (NativeFetcher.start). ``batches()`` yields lists of Fetched as
    they complete; ``get(max)`` one list (empty at the end); any stream's error raises (as
    e8kv.E8kvError subclasses, like the gRPC client). ``close()`` cancels and frees."""

    def __init__(self, nf, keys, n_streams, max_piece_bytes, fpid):
        lib = _l()
        self.nf, self.n_keys = nf, len(keys)
        self._keys = b"".join(keys)
        clients = (_vp * n_streams)(*[c.value for c in nf._clients[:n_streams]])
        buf = self._buf = nf._buf      # alive while the C threads may write into it
        self._fpid = bytes(fpid) if fpid is not None else None
        h, e = _vp(), _Error()
        rc = lib.e8kv_fetch_start(clients, n_streams, self._keys, len(keys),
                                  buf.ctypes.data if buf is not None else None,
                                  buf.nbytes if buf is not None else 0, int(max_piece_bytes),
                                  self._fpid, ctypes.byref(h), ctypes.byref(e))
        if rc:
            _raise(rc, e, "e8kv_fetch_start")
        self._h = h
        self.streams = min(n_streams, len(keys))   # the C side runs no idle streams
        self._out = (_Fetched * 64)()
        self.got = 0

    def get(self, max_chunks=64, timeout_s=None):
        """Next ready chunks (1..max_chunks), waiting for at least one; [] when all are
        handed out."""
        if self._h is None:
            raise RuntimeError("the fetch is closed")
        lib, n, e = _l(), _sz(0), _Error()
        m = min(max_chunks, len(self._out))
        ms = -1 if timeout_s is None else int(timeout_s * 1000)
        rc = lib.e8kv_fetch_wait(self._h, self._out, m, ms, ctypes.byref(n), ctypes.byref(e))
        if rc:
            _raise(rc, e, "GetChunks")
        self.got += n.value
        return [Fetched(self._out[i]) for i in range(n.value)]

    def batches(self, max_chunks=64):
        while True:
            b = self.get(max_chunks)
            if not b:
                return
            yield b

    def stats(self):
        """(bytes of the chunks completed, of them outside the buffer, chunks completed)."""
        b, o, c = _u64(0), _u64(0), _sz(0)
        if self._h is not None:
            _l().e8kv_fetch_stats(self._h, ctypes.byref(b), ctypes.byref(o), ctypes.byref(c))
        return b.value, o.value, c.value

    @property
    def bytes(self):
        return self.stats()[0]

    @property
    def overflow_bytes(self):
        return self.stats()[1]

    def close(self):
        if self._h is not None:
            total = self.stats()[0]
            self.nf.largest = max(self.nf.largest, total)
            _l().e8kv_fetch_close(self._h)
            self._h = None
            self._buf = None
            if self.nf._run is self:
                self.nf._run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:       # noqa: BLE001 -- interpreter shutdown
            pass
