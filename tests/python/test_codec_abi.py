"""e8kv._lib mirrors codec/e8codec.h: every struct's size and every field's offset, measured by
a C program compiled against the header, equal the ctypes declarations; every declared function
exists in the library."""
import ctypes
import os
import shutil
import subprocess

import pytest

from e8kv import _lib as L

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _c_layout(tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("cc")
    assert cc, "a C compiler is needed to check the ABI (cc)"
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "codec/e8codec.h"',
             "int main(void) {"]
    for cname, st in L.STRUCTS.items():
        lines.append(f'  printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for f, _ in st._fields_:
            lines.append(f'  printf("{cname} {f} %zu\\n", offsetof({cname}, {f}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "abi"
    subprocess.run([cc, "-std=c11", "-I", REPO, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {tuple(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


def test_struct_layouts_match_the_header(tmp_path):
    c = _c_layout(tmp_path)
    for cname, st in L.STRUCTS.items():
        assert ctypes.sizeof(st) == c[(cname, "sizeof")], cname
        for f, _ in st._fields_:
            assert getattr(st, f).offset == c[(cname, f)], f"{cname}.{f}"


def test_every_prototype_is_in_the_library():
    lib = L.lib()
    for name in L.PROTOTYPES:
        assert hasattr(lib, name), name


def test_library_path_refuses_a_missing_file(monkeypatch):
    monkeypatch.setenv("E8KV_LIB", "/nonexistent/libe8codec.so")
    with pytest.raises(OSError, match="E8KV_LIB"):
        L.library_path()
