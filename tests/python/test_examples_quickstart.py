"""examples/quickstart.py runs as the README shows it: against a running e8kvd its second
prompt restores the first one's stored chunks; without a daemon both prompts are prefilled
(the engine's fallback on e8kv.Unavailable). --tiny: a random 2-layer model, byte tokens;
test_hf_smollm2_quickstart runs it on SmolLM2 itself (the README's model)."""
import re
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "examples" / "quickstart.py"
LINE = re.compile(r"prompt (\d): (.*); first token in [\d.]+ s: '.*'$")


def run(*args):
    p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("prompt ")]
    assert len(lines) == 2 and all(LINE.match(ln) for ln in lines), p.stdout
    assert "FutureWarning" not in p.stderr, p.stderr
    return [LINE.match(ln).group(2) for ln in lines]


def restored(how):
    m = re.fullmatch(r"restore: (\d+) of (\d+) tokens restored", how)
    assert m, how
    return int(m.group(1)), int(m.group(2))


def test_examples_quickstart_tiny_restores_the_first_prompt(daemon):
    first, second = run("--address", daemon.address, "--tiny", "--policy", "restore",
                        "--timeout", "60")
    assert first.startswith("miss: 0 of"), first
    n, total = restored(second)
    assert 0 < n < total and n % 32 == 0, second     # whole 32-token chunks of prompt 1


def test_examples_quickstart_tiny_without_daemon_prefills(tmp_path):
    first, second = run("--address", f"unix:{tmp_path}/none.sock", "--tiny", "--timeout", "60")
    assert first == second == "e8kvd unavailable, prefilled (UNAVAILABLE)", (first, second)


def test_hf_smollm2_quickstart(daemon):
    first, second = run("--address", daemon.address, "--policy", "restore", "--timeout", "60")
    assert first.startswith("miss: 0 of"), first
    n, total = restored(second)
    assert 0 < n < total, second
