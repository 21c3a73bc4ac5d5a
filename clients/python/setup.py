"""Builds the e8kv wheel: the gRPC stubs are generated from the checkout's proto/ here.

``pip install clients/python`` (from a checkout; pip builds in place) runs protoc
through grpcio-tools into the build directory, so the wheel holds e8kv/v1/*_pb2*.py.
Set E8KV_PROTO_DIR to build from elsewhere. The stubs are never committed.
"""
import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _protogen():
    spec = importlib.util.spec_from_file_location("_e8kv_protogen", HERE / "e8kv" / "_protogen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        proto_root = Path(os.environ.get("E8KV_PROTO_DIR") or HERE.parents[1] / "proto")
        if not proto_root.is_dir():
            raise RuntimeError(f"e8kv: {proto_root} not found; set E8KV_PROTO_DIR")
        _protogen().generate(str(proto_root), self.build_lib)


setup(cmdclass={"build_py": BuildPyWithStubs})
