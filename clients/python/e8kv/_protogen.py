"""Generates the gRPC stubs of e8kv from the .proto files with grpcio-tools.

The generated modules are never committed nor edited by hand. They are made in one
of two places:

* ``pip install clients/python`` runs :func:`generate` from ``setup.py`` into the
  wheel, so an installed ``e8kv`` carries ``e8kv/v1/kvstore_pb2.py`` and friends;
* used in-tree (``PYTHONPATH=clients/python``), ``e8kv`` calls :func:`ensure_in_tree`
  on first import: the stubs go to ``$E8KV_PY_GEN`` (default ``build/python/gen`` of the
  checkout), are regenerated whenever a .proto changes (a SHA-256 stamp of the inputs),
  and that directory is added to the package's ``__path__`` so ``e8kv.v1`` resolves.

The .proto package is ``e8kv.v1``, so the generated code imports ``e8kv.v1.*``: it
lives inside this package's namespace. This file imports nothing from ``e8kv`` so that
``setup.py`` can load it on its own.
"""
import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

STAMP = ".e8kv-proto.sha256"


def proto_files(proto_root):
    """Every .proto under ``proto_root``, sorted, as paths relative to it."""
    root = Path(proto_root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))


def inputs_digest(proto_root):
    """SHA-256 over the names and bytes of the .proto files and the grpcio-tools version."""
    import grpc_tools
    h = hashlib.sha256()
    h.update(getattr(grpc_tools, "__version__", "?").encode())
    for rel in proto_files(proto_root):
        h.update(rel.encode() + b"\0")
        h.update((Path(proto_root) / rel).read_bytes())
    return h.hexdigest()


def generate(proto_root, out_dir):
    """Runs protoc (grpcio-tools) on every .proto under ``proto_root`` into ``out_dir``.

    Writes ``<out_dir>/e8kv/v1/*_pb2.py``, ``*_pb2_grpc.py`` and ``*.pyi``. Raises
    ``RuntimeError`` with protoc's exit status when it fails (protoc prints why).
    """
    from grpc_tools import protoc
    import importlib.resources
    files = proto_files(proto_root)
    if not files:
        raise RuntimeError(f"e8kv: no .proto files under {proto_root}")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"e8kv: protoc failed with status {rc} on {files}")
    # Only e8kv/v1/... is ours; e8kv/ itself is the package, so no __init__.py there.
    for d in {Path(f).parent for f in files}:
        sub = out / d
        while sub != out and sub.parent != out:
            (sub / "__init__.py").touch()
            sub = sub.parent


def repo_proto_root(pkg_dir):
    """The checkout's proto/ directory when ``pkg_dir`` is clients/python/e8kv of a checkout."""
    env = os.environ.get("E8KV_PROTO_DIR")
    if env:
        return Path(env)
    root = Path(pkg_dir).resolve().parents[2] / "proto"
    return root if root.is_dir() else None


def ensure_in_tree(pkg_dir, pkg_path):
    """Makes ``e8kv.v1`` importable for an in-tree package; returns the stub directory.

    ``pkg_path`` is the package's ``__path__`` list, extended in place. Does nothing when
    the stubs are already inside the package (an installed wheel).
    """
    if (Path(pkg_dir) / "v1" / "kvstore_pb2.py").exists():
        return Path(pkg_dir)
    proto_root = repo_proto_root(pkg_dir)
    if proto_root is None:
        raise ImportError("e8kv: the gRPC stubs are missing and no proto/ directory was found; "
                          "install with pip, or set E8KV_PROTO_DIR to the checkout's proto/")
    gen = Path(os.environ.get("E8KV_PY_GEN") or
               Path(pkg_dir).resolve().parents[2] / "build" / "python" / "gen")
    gen.mkdir(parents=True, exist_ok=True)
    want = inputs_digest(proto_root)
    with open(gen / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # parallel test processes generate once
        stamp = gen / STAMP
        if not stamp.exists() or stamp.read_text().strip() != want:
            tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=gen))
            try:
                generate(proto_root, tmp)
                shutil.rmtree(gen / "e8kv", ignore_errors=True)
                (tmp / "e8kv").rename(gen / "e8kv")
                stamp.write_text(want + "\n")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    stubs = str(gen / "e8kv")
    if stubs not in pkg_path:
        pkg_path.append(stubs)
    return gen / "e8kv"


if __name__ == "__main__":          # python _protogen.py PROTO_ROOT OUT_DIR
    generate(sys.argv[1], sys.argv[2])
