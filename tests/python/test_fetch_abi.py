"""e8kv.fetch mirrors clients/c/e8kv.h: the sizes and field offsets of e8kv_options,
e8kv_error and e8kv_fetched, measured by a C program compiled against the header, equal the
ctypes declarations (a mismatch would corrupt memory silently); the fetch functions exist in
libe8kv.so; a fetch from an address where nothing listens raises e8kv.Unavailable."""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import e8kv
from e8kv import fetch as F

REPO = Path(__file__).resolve().parents[2]
STRUCTS = {"e8kv_options": F._Options, "e8kv_error": F._Error, "e8kv_fetched": F._Fetched}


def _c_layout(tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("cc")
    assert cc, "a C compiler is needed to check the ABI (cc)"
    build = Path(os.environ.get("E8KV_BUILD", REPO / "build"))
    gen = build / "gen" / "proto"
    assert (gen / "e8kv" / "v1" / "kvstore.pb-c.h").is_file(), f"{gen}: build first (make)"
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "clients/c/e8kv.h"',
             "int main(void) {"]
    for cname, st in STRUCTS.items():
        lines.append(f'  printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for f, _ in st._fields_:
            lines.append(f'  printf("{cname} {f} %zu\\n", offsetof({cname}, {f}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "abi"
    flags = subprocess.run(["pkg-config", "--cflags", "libprotobuf-c"], capture_output=True,
                           text=True).stdout.split()
    subprocess.run([cc, "-std=c11", "-I", str(REPO), "-I", str(gen), *flags, str(src), "-o",
                    str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {tuple(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


def test_struct_layouts_match_the_header(tmp_path):
    c = _c_layout(tmp_path)
    for cname, st in STRUCTS.items():
        assert ctypes.sizeof(st) == c[(cname, "sizeof")], cname
        for f, _ in st._fields_:
            assert getattr(st, f).offset == c[(cname, f)], f"{cname}.{f}"


def test_the_fetch_functions_are_in_the_library():
    assert F.available()
    lib = F._l()
    for name in F._PROTOTYPES:
        assert hasattr(lib, name), name


def test_no_daemon_is_unavailable(tmp_path):
    with F.NativeFetcher(f"unix:{tmp_path}/none.sock", 2, pinned=False) as nf:
        with pytest.raises(e8kv.Unavailable, match="GetChunks"):
            with nf.start([bytes(32)] * 3) as run:
                run.get()
        with pytest.raises(ValueError, match="32 bytes"):
            nf.start([b"short"])
        with pytest.raises(ValueError, match="no keys"):
            nf.start([])


def test_reserve_closes_an_open_run_before_replacing_its_buffer(tmp_path):
    """reserve() dropped the buffer an open FetchRun's C threads write into (numpy then frees
    it under them); now it closes the run first (joining its threads), as start() does, and
    a run keeps its buffer alive while it is open."""
    with F.NativeFetcher(f"unix:{tmp_path}/none.sock", 1, pinned=False) as nf:
        nf.reserve(1 << 16)
        run = nf.start([bytes(32)])
        assert run._buf is nf._buf
        nf.reserve(1 << 10)                 # already that big: the run stays open
        assert run._h is not None
        nf.reserve(1 << 20)
        assert run._h is None and run._buf is None and nf.buffer_bytes >= 1 << 20
        with pytest.raises(RuntimeError, match="closed"):
            run.get()
        with nf.start([bytes(32)], expect_bytes=1 << 22) as run2:  # start grows it too
            assert nf.buffer_bytes >= 1 << 22 and run2._buf is nf._buf
