"""e8kv: Python client of e8kvd, the compressed KV-cache store (see DESIGN.md).

    import e8kv
    with e8kv.Client("127.0.0.1:50051") as c:
        r = c.lookup(fingerprint, token_ids)

Modules: ``e8kv.Client`` (gRPC, client.py), ``e8kv.pb`` (the generated messages of
proto/e8kv/v1/kvstore.proto), errors (``e8kv.E8kvError`` and one subclass per gRPC status),
``e8kv.hf`` (HuggingFace transformers: store and restore a prefill's KV cache; imports
torch, so import it explicitly), ``e8kv.codec`` (libe8codec bindings).

The gRPC stubs are generated from proto/ with grpcio-tools, never committed: by
``pip install clients/python`` into the wheel, or on first import in a checkout into
``build/python/gen`` ($E8KV_PY_GEN), see _protogen.py.
"""
from pathlib import Path as _Path

from . import _protogen

_protogen.ensure_in_tree(_Path(__file__).parent, __path__)

from .v1 import kvstore_pb2 as pb  # noqa: E402
from .errors import (E8kvError, InvalidArgument, NotFound, AlreadyExists,  # noqa: E402,F401
                     FailedPrecondition, Unauthenticated, PermissionDenied, ResourceExhausted,
                     Unavailable, DeadlineExceeded, Unimplemented, DataLoss, Internal,
                     Aborted, Cancelled, OutOfRange, Unknown)
from .client import Client, Chunk, ChunkIn  # noqa: E402,F401

__version__ = "0.1.0"
