"""e8kv.hfrope: a transformers config's RoPE as an e8kv.v1.RopeConfig (no torch needed).

The one reading of HF's RoPE parameters in the package: e8kv.hf's model fingerprints and
e8kv.codec.Rope.from_hf_config both come from :func:`rope_config` (the latter through the
daemon's own conversion, proto/e8kv_fp.c). Covers rope_theta, every rope_type HF defines
(default, linear, dynamic, yarn, llama3, longrope) with HF's default attention factors, and
partial_rotary_factor (rotary_dim); tests/python/test_hf_fingerprint.py checks the result
against each model's own inv_freq.
"""
import math

from .v1 import kvstore_pb2 as pb

_SCALING = {"default": pb.ROPE_SCALING_NONE, "linear": pb.ROPE_SCALING_LINEAR,
            "dynamic": pb.ROPE_SCALING_DYNAMIC, "yarn": pb.ROPE_SCALING_YARN,
            "llama3": pb.ROPE_SCALING_LLAMA3, "longrope": pb.ROPE_SCALING_LONGROPE}


def _rope_params(config):
    """HF rope parameters as one dict with rope_theta and rope_type (any transformers version)."""
    if hasattr(config, "standardize_rope_params"):
        config.standardize_rope_params()
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        d = dict(rp)
    else:
        d = dict(getattr(config, "rope_scaling", None) or {})
        d.setdefault("rope_theta", getattr(config, "rope_theta", None))
    d["rope_type"] = d.get("rope_type") or d.get("type") or "default"
    if d.get("partial_rotary_factor") is None:
        d["partial_rotary_factor"] = getattr(config, "partial_rotary_factor", None) or 1.0
    if d["rope_theta"] is None:
        raise ValueError("model.config has no rope_theta: cannot describe its RoPE")
    return d


def _yarn_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_config(config, head_dim, layout="split_half"):
    """The RopeConfig message for a transformers config (every rope_type HF defines)."""
    d = _rope_params(config)
    kind = d["rope_type"]
    if kind not in _SCALING:
        raise ValueError(f"RoPE type {kind!r} is not supported by e8kv "
                         f"(supported: {sorted(_SCALING)})")
    rotary_dim = int(head_dim * float(d["partial_rotary_factor"]))
    if rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} (head_dim {head_dim} x partial_rotary_factor "
                         f"{d['partial_rotary_factor']}) must be even and in [2, head_dim]")
    layouts = {"split_half": pb.ROPE_LAYOUT_SPLIT_HALF, "interleaved": pb.ROPE_LAYOUT_INTERLEAVED}
    r = pb.RopeConfig(theta=float(d["rope_theta"]),
                      rotary_dim=rotary_dim if rotary_dim != head_dim else 0,
                      layout=layouts[layout], scaling=_SCALING[kind])
    max_pos = getattr(config, "max_position_embeddings", 0) or 0
    orig = d.get("original_max_position_embeddings") or \
        getattr(config, "original_max_position_embeddings", None)
    if kind == "linear":
        r.factor = float(d["factor"])
    elif kind == "dynamic":
        r.factor = float(d["factor"])
        r.original_max_position_embeddings = int(orig or max_pos)
    elif kind == "llama3":
        r.factor = float(d["factor"])
        r.low_freq_factor = float(d["low_freq_factor"])
        r.high_freq_factor = float(d["high_freq_factor"])
        r.original_max_position_embeddings = int(d["original_max_position_embeddings"])
    elif kind == "yarn":
        orig = int(orig or max_pos)
        factor = d.get("factor") or max_pos / orig
        att = d.get("attention_factor")
        if att is None:
            ms, msa = d.get("mscale"), d.get("mscale_all_dim")
            att = (_yarn_mscale(factor, ms) / _yarn_mscale(factor, msa)) if ms and msa \
                else _yarn_mscale(factor)
        r.factor = float(factor)
        r.original_max_position_embeddings = orig
        r.beta_fast = float(d.get("beta_fast") or 32)
        r.beta_slow = float(d.get("beta_slow") or 1)
        r.attention_factor = float(att)
        r.yarn_no_truncate = d.get("truncate", True) is False
    elif kind == "longrope":
        orig = int(orig)
        att = d.get("attention_factor")
        if att is None:
            factor = d.get("factor") or max_pos / orig
            att = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        r.original_max_position_embeddings = orig
        r.attention_factor = float(att)
        r.short_factor.extend(float(x) for x in d["short_factor"])
        r.long_factor.extend(float(x) for x in d["long_factor"])
    return r
