"""The TTFT part of `make demo`'s report, kept apart from the model code (no torch) so that a
test can check it on made-up rounds (tests/demo/test_demo_report.py).

Every time compared comes from the same TTFT rounds (medians), and the one ratio printed is
the headline: TTFT by prefill over TTFT with e8kv. A new user's trial (session 6) saw
"recompute of those 12.232 s" for 1024 tokens beside "TTFT by prefill 6.019 s" for 1152 and an
"84x" from that single noisy run: a one-run figure next to medians, and a second ratio that
is not what an engine gets."""
import statistics

MEDIAN_KEYS = ("restore_s", "restore_alone_s", "recompute_s")


def ttft_medians(rounds):
    """Median of each of MEDIAN_KEYS over the rounds (dicts with those keys, seconds)."""
    return {k: statistics.median(r[k] for r in rounds) for k in MEDIAN_KEYS}


def ttft_lines(res, mach):
    """The report's machine, TTFT, decision and request-1 lines. res: run_requests' result
    (ttft = ttft_medians of ttft_rounds, n_prompt, n_cached, decision, reason,
    predicted_restore_s / predicted_recompute_s (None when not predicted), prefill1_s,
    store_s, stored_tokens); mach: machine() plus load_1m_before / load_1m_after."""
    t, rounds = res["ttft"], res["ttft_rounds"]
    speedup = t["recompute_s"] / t["restore_s"]
    rest = res["n_prompt"] - res["n_cached"]
    k = len(rounds)
    out = [
        f"machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch_threads']} "
        f"threads; 1-min load average {mach['load_1m_before']:.1f} before the TTFT rounds, "
        f"{mach['load_1m_after']:.1f} after (shared machine: equal work can take different "
        "time)",
        f"time to first token, request 2 ({res['n_prompt']} tokens; wall-clock s, median of "
        f"{k} rounds, the side going first alternating):",
        f"  TTFT with e8kv         {t['restore_s']:.3f} s: restore of {res['n_cached']} cached "
        f"tokens (lookup, fetch, decode: {t['restore_alone_s']:.3f} s, median of its part of "
        f"the same rounds) + forward of the {rest} remaining tokens over them",
        f"  TTFT by prefill        {t['recompute_s']:.3f} s: forward of all "
        f"{res['n_prompt']} tokens (both: logits of the last position only)",
        f"  TTFT speedup           {speedup:.1f}x (rounds: e8kv "
        + " / ".join(f"{r['restore_s']:.2f}" for r in rounds) + ", prefill "
        + " / ".join(f"{r['recompute_s']:.2f}" for r in rounds) + " s; same first token: "
        f"{sum(r['token_restore'] == r['token_recompute'] for r in rounds)}/{k})",
    ]
    pr, pc = res["predicted_restore_s"], res["predicted_recompute_s"]
    if pr is not None and pc is not None:
        pred = (f"predicted TTFT {pr:.2f} s with e8kv against {pc:.2f} s by prefill (measured: "
                "the medians above)")
    else:
        pred = "no prediction (no restore timed yet when it decided)"
    out += [
        f"  decision (policy=auto) {res['decision']}: {pred}",
        f"                         ({res['reason']})",
        "request 1 (wall-clock s, one run each; not a baseline: the TTFT rounds are):",
        f"  prefill                {res['prefill1_s']:.2f} s: {res['stored_tokens']} tokens, "
        "the run's first forward pass (warm-up included)",
        f"  store                  {res['store_s']:.2f} s: encode + PutChunks of that cache",
    ]
    return out, speedup
