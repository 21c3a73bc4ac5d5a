"""Deadlines of e8kv's Python calls: one check for e8kv.Client (grpcio: float seconds) and for
e8kv.upload / e8kv.fetch (libe8kv: uint32 milliseconds, 0 = none).

A deadline is a number of seconds > 0, or None for none. Infinity, and anything past what
libe8kv's uint32 milliseconds hold (about 49.7 days), is none: grpcio turns an infinite or
huge timeout into a deadline already past (every call failed at once with DEADLINE_EXCEEDED),
and ctypes wrapped milliseconds past 2^32 around (a 50-day deadline became a few minutes).
NaN, 0 and negative numbers raise ValueError, and non-numbers (bool too) TypeError, when the
client is made instead of failing every call later as "no answer from e8kvd".
"""
import math
import numbers

MAX_S = (2 ** 32 - 1) / 1000


def seconds(t, what="timeout"):
    """``t`` as a deadline in seconds, or None (no deadline); raises as the module doc says."""
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds > 0, or None (no deadline), "
                        f"not {type(t).__name__}")
    t = float(t)
    if math.isnan(t) or t <= 0:
        raise ValueError(f"{what} must be a number of seconds > 0, or None (no deadline), "
                         f"not {t:g}")
    return None if t > MAX_S else t


def millis(t, what="timeout"):
    """``t`` as libe8kv's uint32 milliseconds (0 = no deadline, at least 1 otherwise)."""
    s = seconds(t, what)
    return 0 if s is None else max(1, min(int(s * 1000), 2 ** 32 - 1))
