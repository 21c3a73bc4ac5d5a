"""e8kv.upload: PutChunks in C (libe8kv's e8kv_upload_*, clients/c/e8kv.h) from Python buffers.

    from e8kv.upload import NativeUploader
    nu = NativeUploader("127.0.0.1:50051")
    up = nu.start(header)                     # an e8kv.pb.PutHeader
    for tokens, frame in chunks:              # frame: bytes, numpy array, memoryview...
        up.add(tokens, frame)                 # queued; a C thread sends it meanwhile
    reply = up.finish()                       # e8kv.pb.PutChunksResponse (all durable)
    nu.close()

Why: the grpcio path (Client.put_chunks without libe8kv) builds and serializes every message
on the calling thread while holding the GIL (~0.5 GB/s on the H200 host in session 3); here
one C thread per upload packs each message straight from the caller's buffer into gRPC's
(one copy), consecutive small chunks share a message, and the Python thread only queues
pointers (microseconds per chunk) and waits in C without the GIL.

Ownership: ``add`` keeps a reference to each chunk's data until the C thread has sent it
(then drops it, so memory does not grow with the sequence); do not modify the data before.
Errors are the e8kv.E8kvError subclasses of the gRPC client (NotFound, InvalidArgument,
Unavailable, ...), raised by ``add`` as soon as the upload has failed and by ``finish``.
Library: libe8kv.so as e8kv._fplib finds it. Thread safety: one Upload per thread; a
NativeUploader (one connection) may serve uploads of several threads at once.
"""
import collections
import ctypes

import grpc
import numpy as np

from . import _fplib
from . import _lib as L
from . import errors
from .fetch import CLIENT_PROTOTYPES, _Error, _open_client, _raise
from .v1 import kvstore_pb2 as pb

__all__ = ["NativeUploader", "Upload", "available"]

_vp, _sz, _u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64
_E_USAGE = 100                      # E8KV_E_USAGE (clients/c/e8kv.h)
_P = ctypes.POINTER
_PROTOTYPES = {
    **CLIENT_PROTOTYPES,
    "e8kv_upload_start_packed": (ctypes.c_int, [_vp, ctypes.c_char_p, _sz, _sz, _P(_vp),
                                                _P(_Error)]),
    "e8kv_upload_add": (ctypes.c_int, [_vp, _vp, _sz, _vp, _sz, ctypes.c_char_p, _sz,
                                       _P(_Error)]),
    "e8kv_upload_stats": (None, [_vp, _P(_u64), _P(_sz), _P(_sz)]),
    "e8kv_upload_finish": (ctypes.c_int, [_vp, _P(_vp), _P(_Error)]),
    "e8kv_upload_abort": (None, [_vp]),
    "e8kv_msg_pack": (_sz, [_vp, _vp, _sz]),
    "e8kv_msg_free": (None, [_vp]),
}
_lib = None


def _l():
    global _lib
    if _lib is None:
        _lib = L.declare(_fplib.lib(), _PROTOTYPES, path=_fplib.library_path())
    return _lib


def available():
    """True when libe8kv.so loads and has the upload functions; else the OSError's text."""
    try:
        _l()
        return True
    except OSError as e:
        return str(e) or False


class NativeUploader:
    """One libe8kv client (connection) to ``address``; ``timeout``: seconds for a whole
    upload (None: no deadline)."""

    def __init__(self, address, *, token=None, timeout=None, max_message_bytes=64 << 20):
        self.address = address
        self._c = _open_client(_l(), address, token, timeout, max_message_bytes)

    def start(self, header, piece_bytes=0):
        """Starts a PutChunks call with ``header`` (e8kv.pb.PutHeader); returns an Upload.
        piece_bytes: data bytes per message (4096..64 MiB; 0 = libe8kv's default)."""
        if self._c is None:
            raise RuntimeError("the NativeUploader is closed")
        return Upload(self, header.SerializeToString(), int(piece_bytes))

    def close(self):
        if self._c is not None:
            _l().e8kv_client_close(self._c)
            self._c = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:       # noqa: BLE001 -- interpreter shutdown
            pass


class Upload:
    """One PutChunks call run by a C thread (NativeUploader.start)."""

    def __init__(self, nu, header_bytes, piece_bytes):
        lib = _l()
        self.nu = nu
        h, e = _vp(), _Error()
        rc = lib.e8kv_upload_start_packed(nu._c, header_bytes, len(header_bytes), piece_bytes,
                                          ctypes.byref(h), ctypes.byref(e))
        if rc:
            _raise(rc, e, "PutChunks")
        self._h = h
        self._keep = collections.deque()    # (index, data array) not yet sent
        self.added = 0
        self.bytes = 0

    def add(self, token_ids, data, alias_key=b""):
        """Queues one chunk (its token ids, its E8 frame or raw KV bytes, optionally the
        engine's own hash of it); returns at once."""
        if self._h is None:
            raise RuntimeError("the upload is finished")
        ids = np.ascontiguousarray(np.asarray(token_ids, dtype=np.uint32))
        buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        if not buf.flags.c_contiguous:
            raise ValueError("chunk data must be one contiguous buffer")
        e = _Error()
        alias = bytes(alias_key or b"")
        rc = _l().e8kv_upload_add(self._h, ids.ctypes.data, ids.size, buf.ctypes.data,
                                  buf.nbytes, alias or None, len(alias), ctypes.byref(e))
        if rc:
            self.abort()
            if rc == _E_USAGE:      # the chunk itself (no token ids or data, too many ids):
                # InvalidArgument, as the daemon answers it on the grpcio path
                raise errors.InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT,
                                             f"chunk {self.added}: "
                                             f"{e.message.decode(errors='replace')}",
                                             "PutChunks")
            _raise(rc, e, "PutChunks")
        self._keep.append((self.added, buf))
        self.added += 1
        self.bytes += buf.nbytes
        self._release()

    def _release(self):
        """Drops the references of chunks the C thread has sent."""
        sent = self.stats()[1]
        while self._keep and self._keep[0][0] < sent:
            self._keep.popleft()

    def stats(self):
        """(data bytes sent, chunks sent, chunks queued)."""
        b, s, q = _u64(0), _sz(0), _sz(0)
        if self._h is not None:
            _l().e8kv_upload_stats(self._h, ctypes.byref(b), ctypes.byref(s), ctypes.byref(q))
        return b.value, s.value, q.value

    def finish(self):
        """Waits until every chunk is sent and durable; returns the PutChunksResponse."""
        if self._h is None:
            raise RuntimeError("the upload is finished")
        lib, out, e = _l(), _vp(), _Error()
        h, self._h = self._h, None
        rc = lib.e8kv_upload_finish(h, ctypes.byref(out), ctypes.byref(e))
        self._keep.clear()
        if rc:
            _raise(rc, e, "PutChunks")
        try:
            n = lib.e8kv_msg_pack(out, None, 0)
            b = ctypes.create_string_buffer(max(n, 1))
            lib.e8kv_msg_pack(out, b, n)
            return pb.PutChunksResponse.FromString(b.raw[:n])
        finally:
            lib.e8kv_msg_free(out)

    def abort(self):
        """Cancels the call (nothing of it joins a session) and frees it."""
        if self._h is not None:
            h, self._h = self._h, None
            _l().e8kv_upload_abort(h)
        self._keep.clear()

    def __del__(self):
        try:
            self.abort()
        except Exception:       # noqa: BLE001 -- interpreter shutdown
            pass
