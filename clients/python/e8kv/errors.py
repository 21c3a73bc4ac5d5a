"""Exceptions of the e8kv client: one class per gRPC status code, all under E8kvError.

Every failed call raises an :class:`E8kvError` subclass that carries the gRPC status
(``.code``, a ``grpc.StatusCode``) and the daemon's message (``.message``), e.g.::

    try:
        client.get_session("chat-42")
    except e8kv.NotFound as e:
        print(e.code, e.message)      # StatusCode.NOT_FOUND  session 'chat-42' not found

``DeadlineExceeded`` is a subclass of ``Unavailable``: e8kvd did not answer within the call's
deadline (stopped, hung, overloaded), which for the caller is the same as not reachable.
An engine's one ``except e8kv.Unavailable:`` (fall back to computing the prefill) covers a
daemon that is down and one that hangs; give the client a short ``timeout=`` so that the
fallback comes quickly. ``except e8kv.DeadlineExceeded`` still tells the two apart.
"""
import grpc


class E8kvError(Exception):
    """A call to e8kvd failed. ``code``: grpc.StatusCode; ``message``: the daemon's text."""

    def __init__(self, code, message, method=None):
        self.code = code
        self.message = message
        self.method = method
        where = f" ({method})" if method else ""
        super().__init__(f"{code.name}{where}: {message}")


class InvalidArgument(E8kvError): pass          # noqa: E701  bad shape, dtype, token list...
class NotFound(E8kvError): pass                 # noqa: E701  unknown session or chunk key
class AlreadyExists(E8kvError): pass            # noqa: E701
class FailedPrecondition(E8kvError): pass       # noqa: E701  e.g. wrong fingerprint
class Unauthenticated(E8kvError): pass          # noqa: E701  missing or wrong bearer token
class PermissionDenied(E8kvError): pass         # noqa: E701
class ResourceExhausted(E8kvError): pass        # noqa: E701  message or store too large, disk full
class Unavailable(E8kvError): pass              # noqa: E701  daemon not reachable
class DeadlineExceeded(Unavailable): pass       # noqa: E701  no answer in time (module doc)
class Unimplemented(E8kvError): pass            # noqa: E701
class DataLoss(E8kvError): pass                 # noqa: E701  CRC mismatch on a stored record
class Internal(E8kvError): pass                 # noqa: E701
class Aborted(E8kvError): pass                  # noqa: E701  a session changed meanwhile: retry
class Cancelled(E8kvError): pass                # noqa: E701
class OutOfRange(E8kvError): pass               # noqa: E701
class Unknown(E8kvError): pass                  # noqa: E701

_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNKNOWN: Unknown,
}


def from_rpc_error(err, method=None):
    """The E8kvError for a grpc.RpcError (the one place status codes become exceptions)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _BY_CODE.get(code, E8kvError)(code, details or "", method)
