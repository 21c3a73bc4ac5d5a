"""e8kv.decide: the load-or-recompute rule, from measured times of one model on one client.

Used by e8kv.hf.restore_prefix (policy="auto") and by bench/e2e (kvio.restore): one rule.

    d = Decider()
    d.add_prefill(n_tokens, seconds)           # the engine's own prefills (forward over nothing)
    d.add_restore(n_tokens, seconds)           # fetch + decode of n restored tokens
    d.add_forward(rest, n_cached, seconds)     # forward of `rest` tokens over a restored cache
    dec = d.decide(lookup_s, n, rest)          # dec.restore: True / False; dec.reason

The rule: restore when the predicted time to first token of restoring is below that of
recomputing. For a request of n cached + ``rest`` remaining tokens:

  restore TTFT   = this request's measured Lookup time
                 + n x the per-token fetch + decode time (of the largest restore measured on
                   this client; before any, of this request's first chunk, timed alone)
                 + the forward of the ``rest`` tokens over the restored cache (the fastest
                   measured at the nearest cached length, log distance, scaled linearly in
                   ``rest``; before any, the prefill of ``rest`` tokens alone)
  recompute TTFT = the prefill of n + rest tokens (the fastest measured run of that very
                   length (within 2 %); else a least-squares fit t = c + a*m + b*m^2 with
                   c, a, b >= 0 (launch overhead, weights, attention) over >= 3 measured
                   lengths, each sample weighted by 1/t; else the nearest measured length
                   scaled linearly)

Why the forward of the remaining tokens is in it: for a small model it can alone cost more
than recomputing everything (SmolLM2-135M on an H200: 0.030 s for 64 tokens over 8K
restored ones, 0.025 s to prefill the 8K; bench/e2e/results/2026-11-29-h200-s3), so a rule
that compares per-token rates only restores there and is slower than recomputing. With this
rule the session-3 H200 run kept all 28 requests at or below recompute's TTFT.

Units: tokens and seconds. Measurements are only added, never forgotten: a Decider belongs
to one model on one device (e8kv.hf keeps one per model, device and model_id on the client:
e8kv.hf.decider_for). Not thread-safe: one Decider per engine thread, or a lock around it.
"""
import math
from dataclasses import dataclass

__all__ = ["Decider", "Decision"]


@dataclass
class Decision:
    """What Decider.decide chose: restore (bool), the two predicted TTFTs (seconds; restore_s
    None when it could not be predicted) and the reason in words."""
    restore: bool
    restore_s: float
    recompute_s: float
    reason: str


class Decider:
    """Measured times of one model on one client (see the module doc)."""

    def __init__(self):
        self.prefills = []          # (tokens, seconds) of the engine's own prefills
        self.restores = []          # (tokens, seconds of fetch + decode, lookup excluded)
        self.forwards = {}          # cached tokens -> {rest tokens: fastest forward seconds}

    # ---------------------------------------------------------------- measurements
    def add_prefill(self, n, s):
        """A prefill (forward over an empty cache) of n tokens took s seconds."""
        self.prefills.append((int(n), float(s)))

    def add_restore(self, n, s):
        """Fetching and decoding n tokens took s seconds (lookup excluded)."""
        self.restores.append((int(n), float(s)))

    def add_forward(self, rest, n_cached, s):
        """A forward of `rest` tokens over a restored cache of `n_cached` tokens took s."""
        d = self.forwards.setdefault(int(n_cached), {})
        d[int(rest)] = min(float(s), d.get(int(rest), float(s)))

    # ---------------------------------------------------------------- predictions
    def forward_s(self, rest, n):
        """Predicted forward of rest tokens over n restored ones (None before any prefill)."""
        if not self.forwards:
            return self.prefill_s(rest)
        m = min(self.forwards, key=lambda x: abs(math.log(max(x, 1) / max(n, 1))))
        r = min(self.forwards[m], key=lambda x: abs(math.log(max(x, 1) / max(rest, 1))))
        return self.forwards[m][r] * max(1.0, rest / max(r, 1))

    def prefill_s(self, n):
        """Predicted prefill time of n tokens (None before any prefill was measured)."""
        if not self.prefills:
            return None
        best = {}
        for m, t in self.prefills:             # fastest run of each length
            best[m] = min(t, best.get(m, t))
        near = min(best, key=lambda x: abs(x - n))
        if abs(near - n) <= 0.02 * max(n, 1):  # this length was measured: no model needed
            return best[near]
        if len(best) >= 3:
            return _fit(best, n)
        m = min(best, key=lambda x: abs(math.log(max(x, 1) / max(n, 1))))
        return best[m] * n / m

    def recompute_s(self, n, rest=1):
        """Predicted time to first token when recomputing all n + rest tokens."""
        return self.prefill_s(n + rest)

    def restore_per_token_s(self):
        """Seconds per token of fetch + decode of the largest restore measured, or None."""
        if not self.restores:
            return None
        m, s = max(self.restores)
        return s / m

    def restore_ttft_s(self, t_lookup, n, rest, per_tok=None):
        """Predicted time to first token when restoring n tokens and computing the rest;
        per_tok: seconds per restored token (default: restore_per_token_s()). None when it
        cannot be predicted yet (no restore, or no prefill, measured)."""
        per_tok = self.restore_per_token_s() if per_tok is None else per_tok
        fwd = self.forward_s(rest, n)
        if per_tok is None or fwd is None:
            return None
        return t_lookup + n * per_tok + fwd

    def decide(self, t_lookup, n, rest, per_tok=None):
        """The rule of the module doc for n cached and rest remaining tokens. Before any
        prefill was measured: ValueError (measure one first). Before any restore (and without
        per_tok): restore, with a reason saying so (time the first chunk, then decide again)."""
        est_c = self.recompute_s(n, rest)
        if est_c is None:
            raise ValueError("no prefill measured yet: add_prefill first")
        est_r = self.restore_ttft_s(t_lookup, n, rest, per_tok)
        if est_r is None:
            return Decision(True, None, est_c, "no restore measured yet")
        fwd = self.forward_s(rest, n)
        parts = (f"lookup {t_lookup:.4f} + fetch/decode {est_r - t_lookup - fwd:.4f} + "
                 f"forward of {rest} tokens {fwd:.4f}")
        if est_r < est_c:
            return Decision(True, est_r, est_c, f"predicted TTFT restore {est_r:.4f} s ({parts})"
                            f" < recompute {est_c:.4f} s")
        return Decision(False, est_r, est_c, f"predicted TTFT restore {est_r:.4f} s ({parts}) "
                        f">= recompute {est_c:.4f} s")


def _fit(best, n):
    """t = c + a n + b n^2, c, a, b >= 0, least squares over {length: seconds} weighted by 1/t."""
    import numpy as np
    ms = np.array(sorted(best), dtype=np.float64)
    ts = np.array([best[m] for m in sorted(best)])
    A = np.stack([np.ones_like(ms), ms, ms * ms], 1) / ts[:, None]
    coef = np.linalg.lstsq(A, np.ones_like(ts), rcond=None)[0]
    coef = np.maximum(coef, 0.0)
    return float(coef[0] + coef[1] * n + coef[2] * n * n)
