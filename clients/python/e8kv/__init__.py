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
import os as _os
import sys as _sys
from pathlib import Path as _Path

from . import _protogen

_NEEDS = ("grpc", "grpc_tools", "grpc_health", "google")    # grpcio, grpcio-tools, protobuf


def _missing(e):
    """The ModuleNotFoundError of a missing dependency, naming the virtual environment that
    has them (a system python gave only "No module named 'grpc_tools'")."""
    venv = _os.environ.get("E8KV_VENV") or "~/.cache/e8kv-venv"
    return ModuleNotFoundError(
        f"e8kv needs the Python package of module {e.name!r}, which {_sys.executable} does "
        f"not have. Run e8kv with the project's virtual environment: $E8KV_VENV/bin/python "
        f"(here {venv}/bin/python), made by `make deps` (tools/deps.sh, "
        f"tools/requirements.txt); or pip install clients/python into your own", name=e.name)


try:
    import grpc as _grpc  # noqa: F401
    _protogen.ensure_in_tree(_Path(__file__).parent, __path__)
except ModuleNotFoundError as _e:
    if (_e.name or "").split(".")[0] in _NEEDS:
        raise _missing(_e) from _e
    raise

from .v1 import kvstore_pb2 as pb  # noqa: E402
from .errors import (E8kvError, InvalidArgument, NotFound, AlreadyExists,  # noqa: E402,F401
                     FailedPrecondition, Unauthenticated, PermissionDenied, ResourceExhausted,
                     Unavailable, DeadlineExceeded, Unimplemented, DataLoss, Internal,
                     Aborted, Cancelled, OutOfRange, Unknown)
from .client import Client, Chunk, ChunkIn  # noqa: E402,F401

__version__ = "0.1.0"
