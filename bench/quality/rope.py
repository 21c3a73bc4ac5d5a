"""RoPE (rotary position embedding, Su et al. 2021, arXiv:2104.09864) for the harness.

The description is a plain dict, the same fields the model fingerprint names:
  {"theta": float, "rotary_dim": int, "style": "split_half" | "interleaved",
   "scaling": None | {...}}
"split_half" is the Llama/HF layout (dimension i pairs with i + rotary_dim/2, `rotate_half`);
"interleaved" pairs 2i with 2i+1 (GPT-J / llama.cpp's own layout). Only unscaled RoPE is
implemented here (SmolLM2 has rope_scaling = None); other scalings raise.

Angles are computed in float64 and the rotation applied in float64, so remove(apply(x)) == x to
~1e-7 relative for float32 inputs.
"""
import numpy as np


def check_rope(rope: dict, head_dim: int) -> None:
    if rope.get("scaling") not in (None, {}, "none"):
        raise NotImplementedError(f"RoPE scaling {rope.get('scaling')!r} not implemented here")
    if rope["style"] not in ("split_half", "interleaved"):
        raise ValueError(f"unknown RoPE style {rope['style']!r}")
    rd = rope["rotary_dim"]
    if rd % 2 or rd < 2 or rd > head_dim:
        raise ValueError(f"rotary_dim {rd} must be even and <= head_dim {head_dim}")


def _angles(rope: dict, positions: np.ndarray) -> np.ndarray:
    rd = rope["rotary_dim"]
    inv_freq = 1.0 / (float(rope["theta"]) ** (np.arange(0, rd, 2, dtype=np.float64) / rd))
    return positions.astype(np.float64)[:, None] * inv_freq[None, :]   # [T, rd/2]


def _rotate(x: np.ndarray, rope: dict, pos0: int, sign: float) -> np.ndarray:
    """x: [..., T, D]; rotates each token t by angle(pos0 + t) * sign."""
    d = x.shape[-1]
    check_rope(rope, d)
    rd = rope["rotary_dim"]
    t = x.shape[-2]
    ang = _angles(rope, np.arange(pos0, pos0 + t)) * sign
    cos, sin = np.cos(ang), np.sin(ang)
    y = x.astype(np.float64, copy=True)
    if rope["style"] == "split_half":
        a, b = y[..., : rd // 2].copy(), y[..., rd // 2: rd].copy()
        y[..., : rd // 2] = a * cos - b * sin
        y[..., rd // 2: rd] = b * cos + a * sin
    else:
        a, b = y[..., 0:rd:2].copy(), y[..., 1:rd:2].copy()
        y[..., 0:rd:2] = a * cos - b * sin
        y[..., 1:rd:2] = b * cos + a * sin
    return y


def rope_apply(x: np.ndarray, rope: dict, pos0: int) -> np.ndarray:
    """Rotate keys/queries [..., T, D] at positions pos0.. (float64 result)."""
    return _rotate(x, rope, pos0, +1.0)


def rope_remove(x: np.ndarray, rope: dict, pos0: int) -> np.ndarray:
    """Exact inverse of rope_apply (float64 result)."""
    return _rotate(x, rope, pos0, -1.0)
