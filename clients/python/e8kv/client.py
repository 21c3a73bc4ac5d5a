"""e8kv.Client: the gRPC client of e8kvd (service e8kv.v1.KVStore, proto/e8kv/v1/kvstore.proto).

Every method is one RPC of the .proto; read the .proto for what each field means (units,
limits, defaults). Requests are built from keyword arguments; replies are the generated
protobuf messages (``e8kv.pb.LookupResponse`` ...), except where a method says otherwise.
Streams are Python iterators: ``get_chunks`` yields whole chunks as :class:`Chunk`
(pieces reassembled), ``get_chunk_pieces`` yields the raw response messages, and
``put_chunks`` consumes any iterable of :class:`ChunkIn` lazily, cut into pieces.

Errors: every failed call raises an ``e8kv.E8kvError`` subclass carrying the gRPC status
code (``.code``) and the daemon's message (``.message``); see e8kv/errors.py. Errors of a
stream surface while iterating it.

Deadlines: every call has one, so no call waits forever on a daemon that is stopped or
hung: 30 s for unary calls (``timeout=``), 1 h for streams (PutChunks, GetChunks) and for
Verify and Compact, which scan the store (``stream_timeout=``), as in libe8kv. A call to an
address where nothing listens fails at once with e8kv.Unavailable; one where something
listens that never answers as gRPC fails after at most gRPC's 20 s connect timeout (or the
deadline, when shorter). Both errors name the address (and the deadline that passed).
After a lost connection (a daemon restart) the client reconnects at most 1 s apart, so calls
work again within about a second of the daemon serving again.

Uploads: ``put_chunks`` runs in C (libe8kv's e8kv_upload, through e8kv.upload: a C thread
sends while this one only queues, the GIL released) wherever libe8kv.so loads and the client
is plaintext; elsewhere (no libe8kv.so, or ``credentials=``) it goes through grpcio, which
holds the GIL and spends 4-5x the client CPU per byte (fetch_bench --put-only): a warning
says so once per process.

Parallel fetch: ``get_chunks_parallel`` reads a list of chunk keys with several GetChunks
calls at once, each on its own channel (its own connection), and yields whole chunks as
they complete, so the caller decodes while the rest arrives (see its doc for measurements).

Thread safety: a Client (one gRPC channel) may be shared by threads; iterators may not.
"""
import logging
import queue
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import grpc
from google.protobuf import json_format

from . import _deadline as deadlines
from . import errors
from ._addr import check_address
from .v1 import kvstore_pb2 as pb
from .v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger("e8kv")

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20   # e8kvd's default --max-message-bytes
DEFAULT_PIECE_BYTES = 2 << 20          # data bytes per ChunkPiece sent by put_chunks
DEFAULT_TIMEOUT_S = 30.0               # deadline of a unary call (libe8kv's deadline_ms)
DEFAULT_STREAM_TIMEOUT_S = 3600.0      # of a stream, Verify, Compact (stream_deadline_ms)
# Reconnect attempts at most 1 s apart after a lost connection, as libe8kv: gRPC's default
# backoff grows to 120 s, so after a daemon outage of a minute calls kept failing with
# Unavailable for tens of seconds after e8kvd was back.
TLS_HINT = (" (the server closed the connection at once: if e8kvd serves TLS there, connect "
            "with TLS)")
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000))

DTYPES = {"fp16": pb.DTYPE_FP16, "bf16": pb.DTYPE_BF16, "fp32": pb.DTYPE_FP32}
ENCODINGS = {"e8": pb.ENCODING_E8_FRAME, "raw": pb.ENCODING_RAW}


@dataclass
class ChunkIn:
    """One chunk to store: its token ids and its data (E8 chunk frame or raw KV bytes).

    ``data`` is bytes-like (bytes, memoryview, numpy array buffer). ``alias_key``: optional
    engine hash (1..64 bytes), never trusted without the token ids.
    """
    token_ids: list
    data: object
    alias_key: bytes = b""


@dataclass
class Chunk:
    """One chunk read back by get_chunks: the fields of GetChunksResponse, data joined."""
    index: int
    key: bytes
    start_token: int
    n_tokens: int
    layer_begin: int
    layer_end: int
    encoding: int
    dtype: int
    fingerprint_id: bytes
    token_ids: list = field(default_factory=list)
    data: bytes = b""


# element types an array's own dtype may have for each raw_dtype (bf16: numpy has none; its
# bits come as int16/uint16, or ml_dtypes' / torch's bfloat16); uint8/int8: plain bytes
_RAW_ARRAY_DTYPES = {pb.DTYPE_FP16: ("float16",), pb.DTYPE_FP32: ("float32",),
                     pb.DTYPE_BF16: ("bfloat16", "int16", "uint16")}


def _checked_chunks(chunks, header):
    """The chunks, each checked before it is sent: one contiguous buffer, and for raw KV, an
    array's own dtype and shape agreeing with the call's raw_dtype and fingerprint. The daemon
    sees only bytes: fp16 data declared bf16, or a [L][2][T][H][D] array, has the right byte
    count and used to be stored as garbage KV."""
    fp, raw = header.fingerprint, header.encoding == pb.ENCODING_RAW
    for i, c in enumerate(chunks):
        data = c.data
        contiguous = getattr(getattr(data, "flags", None), "c_contiguous", None)
        if contiguous is None and isinstance(data, memoryview):
            contiguous = data.c_contiguous
        if contiguous is False:
            raise ValueError(f"chunk {i}: chunk data must be one contiguous buffer "
                             "(numpy.ascontiguousarray)")
        dt = getattr(data, "dtype", None)
        name = str(dt).replace("torch.", "") if dt is not None else "uint8"
        if raw and name not in ("uint8", "int8"):
            allowed = _RAW_ARRAY_DTYPES.get(header.raw_dtype, ())
            if name not in allowed:
                raise ValueError(f"chunk {i}: raw data is a {name} array, the call says raw_dtype "
                                 f"{pb.DType.Name(header.raw_dtype)} (arrays of it: "
                                 f"{', '.join(allowed)}; or pass bytes)")
            shape = tuple(getattr(data, "shape", ()))
            want = (fp.n_layers, 2, fp.n_kv_heads, len(c.token_ids), fp.head_dim)
            if len(shape) > 1 and shape != want:
                raise ValueError(f"chunk {i}: raw data has shape {shape}, the layout is "
                                 f"[n_layers, 2, n_kv_heads, n_tokens, head_dim] = {want}")
        yield c


def _enum(value, table, what):
    """Accepts the protobuf enum number or its short name ("fp16", "raw"...)."""
    if isinstance(value, str):
        try:
            return table[value.lower()]
        except KeyError:
            raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(table)}") from None
    return int(value)


def as_fingerprint(fp):
    """A ModelFingerprint from a ModelFingerprint message or a dict of its fields."""
    if isinstance(fp, pb.ModelFingerprint):
        return fp
    if isinstance(fp, dict):
        return json_format.ParseDict(fp, pb.ModelFingerprint())
    raise TypeError(f"fingerprint must be e8kv.pb.ModelFingerprint or dict, not {type(fp).__name__}")


class Client:
    """Connection to one e8kvd.

    address: "host:port", "[v6]:port", "unix:/path/to.sock" or "unix:///abs/path": the forms
    e8kvd --listen takes; anything else (tcp://..., a bare socket path, no port) raises
    ValueError here, naming the reason (e8kv/_addr.py). token: the bearer token
    of your namespace (sent as ``authorization: Bearer <token>``); None without a tokens
    file on the daemon. timeout: deadline of each unary call in seconds (default 30 s);
    stream_timeout: of put_chunks, get_chunks*, verify and compact (default 1 h); a call's
    own ``timeout=`` overrides either; None = no deadline (a stopped daemon then blocks the
    call for ever).
    credentials: ``grpc.ssl_channel_credentials(...)`` for TLS; None = plaintext.
    """

    def __init__(self, address, token=None, *, timeout=DEFAULT_TIMEOUT_S,
                 stream_timeout=DEFAULT_STREAM_TIMEOUT_S, credentials=None,
                 max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES, options=()):
        self.address = check_address(address)
        timeout = deadlines.seconds(timeout, "timeout")
        stream_timeout = deadlines.seconds(stream_timeout, "stream_timeout")
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self._conn = dict(token=token, timeout=timeout, stream_timeout=stream_timeout,
                          credentials=credentials,
                          max_message_bytes=max_message_bytes, options=tuple(options))
        self._siblings = []                   # extra channels of get_chunks_parallel
        self._siblings_lock = threading.Lock()
        opts = [("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                *RECONNECT_OPTIONS, *options]
        if credentials is not None:
            self._channel = grpc.secure_channel(address, credentials, options=opts)
        else:
            self._channel = grpc.insecure_channel(address, options=opts)
        self._stub = pb_grpc.KVStoreStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._native = {}                     # e8kv.upload.NativeUploader per deadline
        self._native_lock = threading.Lock()
        # e8kv.decide.Decider per model of e8kv.hf's load-or-recompute decision (hf.decider_for).
        self.deciders = {}

    # ------------------------------------------------------------------ plumbing
    def close(self):
        with self._native_lock:
            for nu in self._native.values():
                nu.close()
            self._native = {}
        with self._siblings_lock:
            for c in self._siblings:
                c.close()
            self._siblings = []
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _deadline(self, timeout, stream=False):
        """A call's deadline in seconds: its own, else the client's (unary or stream); None:
        no deadline (e8kv/_deadline.py: infinity is none; NaN, negative numbers refused)."""
        if timeout is None or (timeout == 0 and not isinstance(timeout, bool)):
            return self.stream_timeout if stream else self.timeout
        return deadlines.seconds(timeout)

    def _error(self, e, method, deadline):
        """The E8kvError for a failed call; UNAVAILABLE and DEADLINE_EXCEEDED name the address
        (and the deadline), since gRPC's own text says neither clearly."""
        err = errors.from_rpc_error(e, method)
        if err.code == grpc.StatusCode.UNAVAILABLE:
            msg = f"cannot reach e8kvd at {self.address}: {err.message}"
            if self._conn["credentials"] is None and "Socket closed" in err.message:
                msg += TLS_HINT                 # all a plaintext client at a TLS port sees
        elif err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            within = f"the {deadline:g} s deadline" if deadline is not None else "no deadline"
            msg = (f"no answer from e8kvd at {self.address} within {within} "
                   f"(daemon stopped, overloaded, or not e8kvd): {err.message}")
        else:
            return err
        return type(err)(err.code, msg, method)

    def _call(self, name, request, timeout=None, stream=False):
        deadline = self._deadline(timeout, stream)
        try:
            return getattr(self._stub, name)(request, timeout=deadline,
                                             metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e, name, deadline) from None

    def wait_ready(self, timeout=10.0):
        """Blocks until the channel connects; raises e8kv.Unavailable after ``timeout`` s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise errors.Unavailable(grpc.StatusCode.UNAVAILABLE,
                                     f"no e8kvd at {self.address} after {timeout} s") from None

    def health(self, service="", timeout=None):
        """grpc.health.v1 Check: returns "SERVING", "NOT_SERVING", ... for ``service``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        stub = health_pb2_grpc.HealthStub(self._channel)
        deadline = self._deadline(timeout)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service),
                           timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e, "Health.Check", deadline) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    # ------------------------------------------------------------------ chunks
    def put_chunks(self, fingerprint, chunks: Iterable[ChunkIn], *, encoding="e8",
                   raw_dtype=None, chunk_tokens=0, session="", create_session=False,
                   parent_key=b"", parent_end_token=0, session_start_token=None,
                   expect_session_tokens=None, session_metadata=None,
                   piece_bytes=DEFAULT_PIECE_BYTES, timeout=None, native=None):
        """PutChunks: stores ``chunks`` (in sequence order) and returns PutChunksResponse.

        encoding "e8": each data is a codec chunk frame; "raw": raw KV
        [n_layers][2][n_kv_heads][n_tokens][head_dim] in ``raw_dtype`` ("fp16", "bf16",
        "fp32") for the daemon to encode. Chunks are consumed lazily and sent in pieces of
        at most ``piece_bytes`` data bytes, so a long sequence never sits in one message.
        ``native``: None = libe8kv's C upload when it is available (see the module doc),
        True = it or an error, False = grpcio. With the C upload each chunk's data is kept
        (not copied) until it is sent: do not modify it before this call returns.
        """
        header = pb.PutHeader(
            fingerprint=as_fingerprint(fingerprint), chunk_tokens=chunk_tokens,
            encoding=_enum(encoding, ENCODINGS, "encoding"),
            raw_dtype=_enum(raw_dtype, DTYPES, "dtype") if raw_dtype is not None else 0,
            session=session, create_session=create_session, parent_key=parent_key,
            parent_end_token=parent_end_token, session_metadata=session_metadata or {})
        if session_start_token is not None:
            header.session_start_token = session_start_token
        if expect_session_tokens is not None:
            header.expect_session_tokens = expect_session_tokens
        if piece_bytes <= 0:
            raise ValueError("piece_bytes must be > 0")
        deadline = self._deadline(timeout, stream=True)
        chunks = _checked_chunks(chunks, header)
        nu = self._native_uploader(deadline, native)
        if nu is not None:
            try:
                return _put_native(nu, header, chunks, piece_bytes)
            except errors.DeadlineExceeded as e:    # worded as every call of this client
                raise type(e)(e.code, f"no answer from e8kvd at {self.address} within the "
                              f"{deadline:g} s deadline (daemon stopped, overloaded, or not "
                              f"e8kvd): {e.message}", "PutChunks") from None

        failed = []   # grpcio turns an exception in the request iterator into UNKNOWN

        def requests():
            try:
                yield from pieces()
            except Exception as e:   # noqa: BLE001 -- re-raised below, grpcio cancels the call
                failed.append(e)
                raise

        def pieces():
            yield pb.PutChunksRequest(header=header)
            for c in chunks:
                data = memoryview(c.data).cast("B") if not isinstance(c.data, bytes) else c.data
                n = len(data)
                off = 0
                first = True
                while first or off < n:
                    end = min(n, off + piece_bytes)
                    piece = pb.ChunkPiece(data=bytes(data[off:end]), more=end < n)
                    if first:
                        piece.token_ids.extend(int(t) for t in c.token_ids)
                        if c.alias_key:
                            piece.alias_key = c.alias_key
                        first = False
                    yield pb.PutChunksRequest(pieces=[piece])
                    off = end
        try:
            return self._call("PutChunks", requests(), timeout, stream=True)
        except errors.E8kvError:
            if failed:       # the chunks' own error (the call was cancelled: nothing stored)
                raise failed[0] from None
            raise

    def upload_path(self):
        """Which path put_chunks (and e8kv.hf's restore fetch) takes by default: "libe8kv"
        (the C upload / fetch) or "grpcio: <why>" (TLS credentials, or why libe8kv.so is
        unavailable)."""
        if self._conn["credentials"] is not None:
            return "grpcio: TLS credentials (libe8kv cannot take grpcio's)"
        from . import upload
        ok = upload.available()
        return "libe8kv" if ok is True else f"grpcio: {ok}"

    def _libe8kv_ok(self, what, native):
        """True when libe8kv may carry ``what`` ("PutChunks", "GetChunks") for this client;
        False for the grpcio path: native False, TLS credentials (libe8kv cannot take
        grpcio's), no libe8kv.so (warned once per process and call kind). native True:
        the grpcio path is an error instead."""
        if native is False:
            return False
        if self._conn["credentials"] is not None:
            if native:
                raise ValueError(f"native=True: libe8kv's {what} cannot use grpcio credentials")
            return False
        from . import upload
        ok = upload.available()
        if ok is True:
            return True
        if native:
            raise OSError(f"native=True: libe8kv's {what} is unavailable: {ok}")
        if what not in _NATIVE_WARNED:
            _NATIVE_WARNED.add(what)
            msg = (f"e8kv: libe8kv.so is unavailable ({ok}); {what} goes through Python "
                   "gRPC (grpcio), holding the GIL, 4-5x the CPU per byte. Build it (make) or "
                   "set E8KV_CLIENT_LIB / E8KV_BUILD")
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        return False

    def _native_uploader(self, timeout, native):
        """The e8kv.upload.NativeUploader for this deadline, or None for the grpcio path."""
        if not self._libe8kv_ok("PutChunks", native):
            return None
        from . import upload
        with self._native_lock:
            nu = self._native.get(("put", timeout))
            if nu is None:
                c = self._conn
                nu = self._native[("put", timeout)] = upload.NativeUploader(
                    self.address, token=c["token"], timeout=timeout,
                    max_message_bytes=c["max_message_bytes"])
            return nu

    def native_fetcher(self, streams, *, native=None):
        """An e8kv.fetch.NativeFetcher (libe8kv's parallel GetChunks in C: ``streams``
        connections, frames into one host buffer) to this client's daemon, made once per
        stream count and kept until close(); None where libe8kv cannot serve (see
        upload_path; warned once). One user at a time: its buffer is reused by every start."""
        if not self._libe8kv_ok("GetChunks", native):
            return None
        from . import fetch
        with self._native_lock:
            nf = self._native.get(("get", streams))
            if nf is None:
                c = self._conn
                nf = self._native[("get", streams)] = fetch.NativeFetcher(
                    self.address, streams, token=c["token"],
                    timeout=self._deadline(None, stream=True), pinned=False,
                    max_message_bytes=c["max_message_bytes"])
            return nf

    def lookup(self, fingerprint, token_ids, *, chunk_tokens=0, no_lease=False, timeout=None):
        """Lookup: the longest stored prefix of ``token_ids``; returns LookupResponse.

        Unless ``no_lease``, the matched chunks are pinned under ``.lease`` for ``.lease_ms``
        (e8kvd's --lookup-lease-ms, 30 s): eviction cannot take them, and neither can a
        DeleteSession with purge_chunks. End it as soon as the chunks are read: pass it as
        ``release_lease=`` to the (last) get_chunks, or call :meth:`release_lease`. A lookup
        that only asks what is stored passes ``no_lease=True``."""
        req = pb.LookupRequest(fingerprint=as_fingerprint(fingerprint), chunk_tokens=chunk_tokens,
                               token_ids=[int(t) for t in token_ids], no_lease=no_lease)
        return self._call("Lookup", req, timeout)

    def release_lease(self, lookup, *, timeout=None):
        """Ends the lease of ``lookup`` (a LookupResponse) now; returns whether it had one.
        The .proto has no call of its own for this: it is a GetChunks of the first matched
        chunk's first layer (frames as stored, a few KB) carrying release_lease, which e8kvd
        ends whatever the read's outcome (a chunk gone or corrupt meanwhile: NotFound or
        DataLoss, ignored here: the lease ended all the same)."""
        if not lookup.lease or not lookup.chunk_keys:
            return False
        try:
            for _ in self.get_chunk_pieces([lookup.chunk_keys[0]], layer_begin=0, layer_end=1,
                                           release_lease=lookup.lease, timeout=timeout):
                pass
        except (errors.NotFound, errors.DataLoss):
            pass
        return True

    def _get_request(self, keys, session, start_token, end_token, layer_begin, layer_end,
                     encoding, dtype, max_piece_bytes, expect_fingerprint_id, release_lease):
        if (keys is None) == (not session):
            raise ValueError("give exactly one of keys= or session=")
        req = pb.GetChunksRequest(
            layer_begin=layer_begin, layer_end=layer_end,
            encoding=_enum(encoding, ENCODINGS, "encoding"),
            dtype=_enum(dtype, DTYPES, "dtype") if dtype is not None else 0,
            max_piece_bytes=max_piece_bytes, expect_fingerprint_id=expect_fingerprint_id,
            release_lease=release_lease)
        if keys is not None:
            req.keys.keys.extend(keys)
        else:
            req.range.session = session
            req.range.start_token = start_token
            req.range.end_token = end_token
        return req

    def get_chunk_pieces(self, keys=None, *, session="", start_token=0, end_token=0,
                         layer_begin=0, layer_end=0, encoding="e8", dtype=None,
                         max_piece_bytes=0, expect_fingerprint_id=b"", release_lease=b"",
                         timeout=None) -> Iterator:
        """GetChunks as the daemon streams it: an iterator of GetChunksResponse pieces.
        ``release_lease``: a LookupResponse.lease that e8kvd ends when this call ends."""
        req = self._get_request(keys, session, start_token, end_token, layer_begin,
                                layer_end, encoding, dtype, max_piece_bytes,
                                expect_fingerprint_id, release_lease)
        stream = None
        deadline = self._deadline(timeout, stream=True)
        try:
            stream = self._stub.GetChunks(req, timeout=deadline, metadata=self._metadata)
            for msg in stream:
                yield msg
        except grpc.RpcError as e:
            raise self._error(e, "GetChunks", deadline) from None
        finally:
            if stream is not None:
                stream.cancel()         # left early: free the daemon's worker (no-op if done)

    def get_chunks(self, keys=None, **kw) -> Iterator[Chunk]:
        """GetChunks by ``keys`` (list of 32-byte keys) or ``session=`` (+ start_token,
        end_token): an iterator of whole :class:`Chunk` in order. Other keywords as
        get_chunk_pieces: layer_begin/layer_end, encoding "e8"|"raw", dtype for raw."""
        cur, parts = None, []
        for m in self.get_chunk_pieces(keys, **kw):
            if cur is None or m.chunk_index != cur.index:
                if cur is not None:
                    raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                          f"chunk {cur.index} ended without its last piece",
                                          "GetChunks")
                cur = Chunk(m.chunk_index, m.chunk_key, m.start_token, m.n_tokens,
                            m.layer_begin, m.layer_end, m.encoding, m.dtype,
                            m.fingerprint_id, list(m.token_ids))
                parts = []
            if m.offset != sum(len(p) for p in parts):
                raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                      f"chunk {m.chunk_index}: piece at offset {m.offset} "
                                      "out of order", "GetChunks")
            parts.append(m.data)
            if m.last_piece:
                cur.data = b"".join(parts)
                if len(cur.data) != m.chunk_bytes:
                    raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                          f"chunk {m.chunk_index}: {len(cur.data)} bytes "
                                          f"received, {m.chunk_bytes} announced", "GetChunks")
                yield cur
                cur = None
        if cur is not None:
            raise errors.DataLoss(grpc.StatusCode.DATA_LOSS,
                                  f"stream ended inside chunk {cur.index}", "GetChunks")

    def _sibling_clients(self, n):
        """This client plus n-1 more to the same address, each on its own channel and
        connection (a local subchannel pool keeps gRPC from sharing one), made once and
        kept until close()."""
        with self._siblings_lock:
            while len(self._siblings) < n - 1:
                c = self._conn
                self._siblings.append(Client(
                    self.address, c["token"], timeout=c["timeout"],
                    stream_timeout=c["stream_timeout"],
                    credentials=c["credentials"], max_message_bytes=c["max_message_bytes"],
                    options=(*c["options"], ("grpc.use_local_subchannel_pool", 1))))
            return [self] + self._siblings[:n - 1]

    def get_chunks_parallel(self, keys, *, streams=4, queue_chunks=16, **kw):
        """GetChunks of ``keys`` over ``streams`` concurrent calls: the key list is cut into
        ``streams`` contiguous slices, each read by one call on its own channel in a thread.
        Returns a :class:`ParallelFetch`: iterate it for whole :class:`Chunk` in the order
        they complete (``Chunk.index`` is the position in ``keys``; ``start_token`` says
        where it goes), at most ``queue_chunks`` waiting. The first error of any call is
        raised by the iteration, after the other calls are cancelled. Other keywords as
        get_chunks (encoding, dtype, layer range, max_piece_bytes...).

        Why: one call is one HTTP/2 stream, and its messages are parsed by one thread of
        this process; several calls on several connections let the daemon's workers read
        and send in parallel and let the caller decode chunk k while later ones arrive.
        Measured by demo/fetch_bench.py (README "Python" gives the figures)."""
        keys = list(keys)
        streams = max(1, min(int(streams), len(keys) or 1))
        return ParallelFetch(self._sibling_clients(streams), keys, queue_chunks, kw)

    # ------------------------------------------------------------------ sessions
    def create_session(self, name, fingerprint, *, chunk_tokens=0, metadata=None,
                       if_not_exists=False, timeout=None):
        """CreateSession; returns CreateSessionResponse (.session, .created)."""
        req = pb.CreateSessionRequest(name=name, fingerprint=as_fingerprint(fingerprint),
                                      chunk_tokens=chunk_tokens, metadata=metadata or {},
                                      if_not_exists=if_not_exists)
        return self._call("CreateSession", req, timeout)

    def append_session(self, name, token_ids, *, expect_session_tokens=None, timeout=None):
        """AppendSession: appends already-stored chunks, named by their token ids."""
        req = pb.AppendSessionRequest(name=name, token_ids=[int(t) for t in token_ids])
        if expect_session_tokens is not None:
            req.expect_session_tokens = expect_session_tokens
        return self._call("AppendSession", req, timeout)

    def get_session(self, name, *, include_chunk_keys=False, timeout=None):
        """GetSession; returns SessionInfo."""
        req = pb.GetSessionRequest(name=name, include_chunk_keys=include_chunk_keys)
        return self._call("GetSession", req, timeout).session

    def list_sessions(self, *, page_size=0, model_id="", fingerprint_id=b"", name_prefix="",
                      timeout=None) -> Iterator:
        """ListSessions over every page: an iterator of SessionInfo, ordered by name."""
        token = ""
        while True:
            r = self._call("ListSessions", pb.ListSessionsRequest(
                page_size=page_size, page_token=token, model_id=model_id,
                fingerprint_id=fingerprint_id, name_prefix=name_prefix), timeout)
            yield from r.sessions
            token = r.next_page_token
            if not token:
                return

    def delete_session(self, name, *, expect_session_tokens=None, purge_chunks=False,
                       timeout=None):
        """DeleteSession; returns DeleteSessionResponse (.chunks_unpinned; with
        ``purge_chunks``: .chunks_purged, .chunks_kept that something still pins: another
        session, a read, a lookup's unexpired lease, and .chunks_pending, those of the kept
        that only a read or a lease holds: e8kvd deletes them when that ends, at the latest
        ``e8kvd --lookup-lease-ms`` (30 s) later; :meth:`purge_pending` counts what is left).
        Errors: NotFound (no such session), FailedPrecondition (``expect_session_tokens``
        differs), ResourceExhausted (the namespace already has ``e8kvd --max-purge-pending``
        chunks waiting: the session is deleted, the message says how many chunks were purged;
        retry the purge with :meth:`purge_unlisted` once leases end)."""
        req = pb.DeleteSessionRequest(name=name, purge_chunks=purge_chunks)
        if expect_session_tokens is not None:
            req.expect_session_tokens = expect_session_tokens
        return self._call("DeleteSession", req, timeout)

    def purge_unlisted(self, timeout=None):
        """PurgeUnlisted (``e8kvctl gc``): deletes every chunk of the caller's namespace that
        no session lists (left by ``delete_session`` without ``purge_chunks``, or put without a
        session); sessions and their chunks are untouched. Returns PurgeUnlistedResponse:
        .chunks_purged (chunks), .bytes_purged (their record bytes; dead space in segments
        until Compact), .chunks_pending (chunks a read or a lookup lease holds: deleted when
        that ends, as in ``delete_session``). Errors: ResourceExhausted (the namespace
        already has ``e8kvd --max-purge-pending`` chunks waiting; what was purged stays
        purged), another E8kvError for a store error (the message counts what was purged)."""
        return self._call("PurgeUnlisted", pb.PurgeUnlistedRequest(), timeout)

    def purge_pending(self, timeout=None):
        """Chunks of the caller's namespace that a purge (``delete_session(purge_chunks=True)``,
        :meth:`purge_unlisted`) left waiting for a read or a lookup lease to end: an int, 0
        when none (GetStats' namespace_stats.chunks_purge_pending; ``purge pending`` in
        ``e8kvctl stat``). They go at the latest ``e8kvd --lookup-lease-ms`` after their
        Lookup, or at a clean daemon stop."""
        return int(self.get_stats(timeout).namespace_stats.chunks_purge_pending)

    # ------------------------------------------------------------------ admin
    def get_stats(self, timeout=None):
        """GetStats; returns GetStatsResponse (.namespace_stats: the caller's namespace,
        chunks_purge_pending included; .store_stats for admins)."""
        return self._call("GetStats", pb.GetStatsRequest(), timeout)

    def verify(self, *, quarantine=False, max_bytes=0, timeout=None):
        """Verify (admin); returns VerifyResponse."""
        return self._call("Verify", pb.VerifyRequest(quarantine=quarantine, max_bytes=max_bytes),
                          timeout, stream=True)

    def compact(self, *, min_dead_fraction=0.0, max_bytes=0, timeout=None):
        """Compact (admin); returns CompactResponse."""
        return self._call("Compact", pb.CompactRequest(min_dead_fraction=min_dead_fraction,
                                                       max_bytes=max_bytes), timeout,
                          stream=True)


_NATIVE_WARNED = set()      # call kinds already warned about (grpcio instead of libe8kv)


def _put_native(nu, header, chunks, piece_bytes):
    """PutChunks of ``chunks`` through libe8kv's upload (e8kv.upload); the reply."""
    from .errors import E8kvError
    up = nu.start(header, min(max(int(piece_bytes), 4096), 64 << 20))
    try:
        for c in chunks:
            up.add(c.token_ids, c.data, c.alias_key)
    except BaseException as e:
        if not isinstance(e, E8kvError):
            up.abort()                  # (an E8kvError from add: already aborted)
        raise
    return up.finish()


class ParallelFetch:
    """The chunks of one Client.get_chunks_parallel call: iterate for :class:`Chunk` in
    completion order; close() (or leaving a ``with`` block) stops early, cancelling the
    calls. ``.bytes``: data bytes received so far; ``.streams``: calls used."""

    def __init__(self, clients, keys, queue_chunks, kw):
        n = len(keys)
        k = len(clients)
        bounds = [n * i // k for i in range(k + 1)]
        self._q = queue.Queue(maxsize=max(int(queue_chunks), k))
        self._stop = threading.Event()
        self._errors = []
        self._threads = []
        self.bytes = 0
        for i, c in enumerate(clients):
            b, e = bounds[i], bounds[i + 1]
            if e > b:
                th = threading.Thread(target=self._run, args=(c, keys[b:e], b, kw),
                                      daemon=True, name=f"e8kv-fetch-{i}")
                self._threads.append(th)
        self.streams = len(self._threads)
        self._live = self.streams
        for th in self._threads:
            th.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, client, keys, base, kw):
        it = client.get_chunks(keys, **kw)
        try:
            for ch in it:
                ch.index += base
                if not self._put(ch):
                    break
        except BaseException as e:      # noqa: BLE001 -- re-raised by the consumer
            self._errors.append(e)
            self._stop.set()
        finally:
            it.close()                  # cancels the call when it was left early
            self._q.put(None)           # the consumer drains, so this never blocks long

    def get(self, block=True):
        """The next whole Chunk; None when every call is over; queue.Empty when not block
        and none is ready. Raises the first error of any call (the others cancelled)."""
        while self._live:
            ch = self._q.get(block)
            if ch is None:
                self._live -= 1
                continue
            if self._errors:
                break
            self.bytes += len(ch.data)
            return ch
        if self._errors:
            self.close()
            raise self._errors[0]
        return None

    def __iter__(self):
        try:
            while True:
                ch = self.get()
                if ch is None:
                    return
                yield ch
        finally:
            self.close()

    def close(self):
        """Stops every call and waits for its thread (safe to call twice)."""
        self._stop.set()
        while self._live:
            if self._q.get() is None:
                self._live -= 1
        for th in self._threads:
            th.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
