"""Where the e8kv package looks for libe8codec.so / libe8kv.so, and what it says when they
are missing. No daemon, no model."""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB_PY = REPO / "clients" / "python" / "e8kv" / "_lib.py"


def load_copy(dest):
    """e8kv/_lib.py copied to dest/e8kv/ (as pip install --target would place it), loaded."""
    (dest / "e8kv").mkdir(parents=True)
    shutil.copy(LIB_PY, dest / "e8kv" / "_lib.py")
    spec = importlib.util.spec_from_file_location("e8kv_lib_copy", dest / "e8kv" / "_lib.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def no_env(monkeypatch):
    for v in ("E8KV_BUILD", "E8KV_LIB", "E8KV_CLIENT_LIB"):
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_lib_not_found_outside_a_checkout_names_the_variables(tmp_path, no_env):
    """A pip-installed package said "(looked at /build/lib/libe8kv.so)": a path made from
    site-packages' parents (user trial, finding 15)."""
    L = load_copy(tmp_path / "site")
    assert L.checkout_build_lib("libe8kv.so") is None
    with pytest.raises(OSError) as e:
        L.find_library("libe8kv.so", "E8KV_CLIENT_LIB")
    msg = str(e.value)
    assert "E8KV_BUILD" in msg and "E8KV_CLIENT_LIB" in msg and "not inside a checkout" in msg
    assert "build/lib" not in msg and "looked at" not in msg, msg
    no_env.setenv("E8KV_BUILD", str(tmp_path / "b"))
    with pytest.raises(OSError, match=r"looked at " + str(tmp_path / "b" / "lib" / "libe8kv.so")
                       + r"\)$"):
        L.find_library("libe8kv.so", "E8KV_CLIENT_LIB")


def test_lib_in_the_checkout_is_looked_for_in_its_build():
    sys.path.insert(0, str(REPO / "clients" / "python"))
    from e8kv import _lib
    assert _lib.checkout_build_lib("libe8kv.so") == REPO / "build" / "lib" / "libe8kv.so"
