"""The restore-or-recompute rule of e8kv.decide.Decider (used by e8kv.hf and bench/e2e's kvio),
from measured times alone (no model, no daemon). Figures are those of the session-3 H200 run
(bench/e2e/results/2026-11-29-h200-s3):
for SmolLM2-135M the forward of the 64 remaining tokens over an 8K restored cache (0.030 s) costs
more than recomputing all 8K tokens (0.025 s), so restoring can never win there, while for the
Llama-3-8B shape restoring 8K tokens wins clearly."""
import sys
from pathlib import Path

import pytest

from e8kv.decide import Decider

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "e2e"))


def _decider(prefills, restore, forward=None):
    d = Decider()
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


def test_decide_small_model_recomputes_where_per_token_rates_would_restore():
    # what e8kv.hf did before the rule moved into the library: restore when
    # n / restore rate < n / prefill rate, i.e. lookup + n * per_tok < recompute
    d = _decider(SMALL, (8192, 0.018), (64, 8192, 0.030))
    per = d.restore_per_token_s()
    assert 0.003 + 8192 * per < d.recompute_s(8192, 64)          # rates alone: restore
    dec = d.decide(0.003, 8192, 64)
    assert not dec.restore and dec.recompute_s == 0.0254
    assert dec.restore_s == pytest.approx(0.003 + 0.018 + 0.030)
    assert "forward of 64 tokens 0.0300" in dec.reason and ">= recompute" in dec.reason


def test_decide_large_model_restores_with_both_predictions():
    d = _decider(LARGE, (8192, 0.074), (64, 8192, 0.048))
    dec = d.decide(0.003, 8192, 64)
    assert dec.restore and dec.restore_s == pytest.approx(0.003 + 0.074 + 0.048)
    assert dec.recompute_s == 0.247 and "< recompute" in dec.reason


def test_decide_before_any_restore_and_any_prefill():
    d = Decider()
    with pytest.raises(ValueError):
        d.decide(0.001, 1024, 16)
    d.add_prefill(256, 0.01)
    dec = d.decide(0.001, 1024, 16)
    assert dec.restore and dec.restore_s is None
    assert dec.recompute_s == pytest.approx(0.01 * 1040 / 256)
    # with the first chunk's time given, the rule runs: 1 s per token can never win
    assert not d.decide(0.001, 1024, 16, per_tok=1.0).restore


def test_prefill_fit_over_three_lengths_is_quadratic():
    d = Decider()
    for n in (64, 256, 1024, 4096):
        d.add_prefill(n, 0.001 + 1e-6 * n + 1e-9 * n * n)
    assert d.prefill_s(16384) == pytest.approx(0.001 + 1e-6 * 16384 + 1e-9 * 16384 ** 2, rel=1e-6)
    assert d.prefill_s(4096) == 0.001 + 1e-6 * 4096 + 1e-9 * 4096 ** 2   # measured: as is


def test_kvio_uses_the_library_rule():
    import kvio
    assert kvio.Decider is Decider
