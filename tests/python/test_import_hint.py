"""`import e8kv` without its dependencies names the virtual environment that has them.

A new user ran the README's `PYTHONPATH=clients/python python -c "import e8kv"` with the
system python and got only "No module named 'grpc_tools'". The error now names
$E8KV_VENV/bin/python and `make deps`. Simulated in a subprocess of this (complete) python
with the module blocked (sys.modules[name] = None makes its import fail as missing);
checked against the previous __init__.py: the hint is absent.
"""
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("blocked", ["grpc_tools", "grpc"])
def test_import_without_dependency_names_the_venv(blocked):
    code = (f"import sys; sys.modules[{blocked!r}] = None; "
            f"sys.path.insert(0, {str(REPO / 'clients' / 'python')!r}); import e8kv")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "E8KV_VENV": "/opt/venv-x"}, timeout=120)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError"), p.stderr
    assert f"{blocked!r}" in last and "$E8KV_VENV/bin/python" in last, last
    assert "/opt/venv-x/bin/python" in last and "make deps" in last, last


def test_import_with_dependencies_works():
    code = f"import sys; sys.path.insert(0, {str(REPO / 'clients' / 'python')!r}); import e8kv"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
