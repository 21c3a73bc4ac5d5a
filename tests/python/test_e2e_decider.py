"""The restore-or-recompute rule of bench/e2e/kvio.Decider, from measured times alone (no model,
no daemon). Figures are those of the session-3 H200 run (bench/e2e/results/2026-11-29-h200-s3):
for SmolLM2-135M the forward of the 64 remaining tokens over an 8K restored cache (0.030 s) costs
more than recomputing all 8K tokens (0.025 s), so restoring can never win there, while for the
Llama-3-8B shape restoring 8K tokens wins clearly."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "e2e"))
import kvio  # noqa: E402


def _decider(prefills, restore, forward=None):
    d = kvio.Decider()
    for n, t in prefills:
        d.add_prefill(n, t)
    d.add_restore(*restore)
    if forward:
        d.add_forward(*forward)
    return d


SMALL = [(64, 0.004), (256, 0.005), (1024, 0.006), (8256, 0.0254)]
LARGE = [(64, 0.006), (256, 0.024), (1024, 0.035), (8256, 0.247)]


def test_measured_length_is_used_as_measured():
    d = _decider(SMALL, (8192, 0.036))
    assert d.recompute_s(8192, 64) == 0.0254


def test_small_model_recomputes_once_the_forward_over_the_cache_is_known():
    d = _decider(SMALL, (8192, 0.036), (64, 8192, 0.030))
    per = d.restore_per_token_s()
    assert d.restore_ttft_s(0.003, 8192, 64, per) >= d.recompute_s(8192, 64)


def test_large_model_restores():
    d = _decider(LARGE, (8192, 0.074), (64, 8192, 0.048))
    per = d.restore_per_token_s()
    assert d.restore_ttft_s(0.003, 8192, 64, per) < d.recompute_s(8192, 64)


def test_forward_before_any_measurement_is_the_prefill_of_the_rest():
    d = _decider(SMALL, (8192, 0.036))
    assert d.forward_s(64, 8192) == d.prefill_s(64)


def test_fastest_forward_at_the_nearest_cached_length():
    d = _decider(SMALL, (8192, 0.036))
    d.add_forward(64, 8192, 0.10)          # a first forward at a new length: warm-up
    d.add_forward(64, 8192, 0.03)
    d.add_forward(64, 256, 0.02)
    assert d.forward_s(64, 10000) == 0.03
    assert d.forward_s(128, 8192) == 0.06  # scaled linearly in the remaining tokens
