"""e8kv.hfmodel: the model side of e8kv.hf: a transformers model's fingerprint and GGUF loading.

``model_fingerprint`` reads what makes KV bytes comparable from ``model.config``: n_layers
(num_hidden_layers), KV heads (num_key_value_heads, GQA), head_dim, the model's dtype, and
the full RoPE description: rope_theta, the rope_scaling / rope_parameters type with every
parameter HF uses (linear, dynamic, yarn, llama3, longrope) and partial_rotary_factor
(rotary_dim). HF Llama-family models rotate split-half (``rotate_half``); pass
``rope_layout="interleaved"`` for GPT-J-style models. ``layer_types`` says which decoder
layers are full or sliding-window attention (e8kv.hf refuses models with other layers).
Everything here is re-exported by e8kv.hf; import it from there.
"""
import logging

import numpy as np
import torch

from .hfrope import rope_config
from .v1 import kvstore_pb2 as pb

log = logging.getLogger("e8kv.hf")

_TORCH_DTYPES = {torch.float16: (pb.DTYPE_FP16, "fp16", np.float16),
                 torch.bfloat16: (pb.DTYPE_BF16, "bf16", None),
                 torch.float32: (pb.DTYPE_FP32, "fp32", np.float32)}


def _text_config(model):
    c = model.config
    return c.get_text_config(decoder=True) if hasattr(c, "get_text_config") else c


def model_fingerprint(model, *, model_id=None, preset=None, codec=None, rope_layout="split_half",
                      dtype=None):
    """The ModelFingerprint of a transformers model (see the module doc).

    model_id: defaults to ``config.name_or_path`` (its last 127 bytes); give the hub name
    when the model was loaded from a local path, so that every machine agrees.
    preset: codec preset ("K4V4" ... "K2V2"). codec: other CodecConfig fields as a dict.
    With neither, ``codec`` stays unset: the daemon's default configuration (K3V2 and one
    sink token). With either, the counts the caller does not give (sink_tokens,
    recent_window_tokens, protect_*_layers) are spelled out with the library's defaults,
    because in a set CodecConfig a count left 0 means none (proto/e8kv_fp.h): naming a
    preset keeps the default sink token. dtype: the KV dtype (default model.dtype).
    """
    c = _text_config(model)
    n_heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    dt = dtype or next(model.parameters()).dtype
    if dt not in _TORCH_DTYPES:
        raise ValueError(f"KV dtype {dt} not supported (fp16, bf16, fp32)")
    mid = model_id or getattr(c, "name_or_path", "") or getattr(model, "name_or_path", "")
    mid = mid.encode()[-127:].decode(errors="ignore") or "unnamed-model"
    fp = pb.ModelFingerprint(model_id=mid, n_layers=c.num_hidden_layers, n_kv_heads=n_kv,
                             head_dim=head_dim, source_dtype=_TORCH_DTYPES[dt][0],
                             rope=rope_config(c, head_dim, rope_layout))
    if not preset and not codec:
        return fp
    fp.codec.SetInParent()
    if preset:
        fp.codec.preset = preset
    for k, v in (codec or {}).items():
        if isinstance(v, (list, tuple)):
            getattr(fp.codec, k).extend(v)
        else:
            setattr(fp.codec, k, v)
    for field, n in _default_counts().items():
        if field not in (codec or {}):
            setattr(fp.codec, field, n)
    return fp


_COUNTS = {"sink_tokens": "sink_tokens", "recent_window_tokens": "recent_tokens",
           "protect_first_layers": "protect_first", "protect_last_layers": "protect_last"}


def _default_counts():
    """{CodecConfig count field: the library's default} for the counts that default to > 0."""
    try:
        from . import codec
        d = codec.default_config()
    except OSError as e:              # no libe8codec: counts stay 0 (none), said once
        log.warning("libe8codec unavailable (%s): a set CodecConfig gets no default sink "
                    "token", e)
        return {}
    return {f: getattr(d, a) for f, a in _COUNTS.items() if getattr(d, a)}


# ----------------------------------------------------------------------------- layer types

# transformers layer types whose cache holds K and V of every token (sliding: of the window)
_KV_LAYER_TYPES = ("full_attention", "sliding_attention")


def layer_types(model):
    """The type of each decoder layer as transformers reads it from the model config:
    "full_attention", "sliding_attention", or another (e.g. "linear_attention", "conv",
    "chunked_attention"; "dummy" for a layer that shares another's KV)."""
    c = _text_config(model)
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
        return list(get_layer_types_and_kwargs(c)[0])
    except (ImportError, AttributeError, TypeError):     # transformers < 4.56
        pass
    types = getattr(c, "layer_types", None)
    if types:
        return list(types)
    sliding = getattr(c, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * c.num_hidden_layers


def _has_sliding(model):
    return "sliding_attention" in layer_types(model)


def _check_kv_layers(model, what):
    """ValueError unless every decoder layer of model is attention with a KV cache of every
    token (full or sliding-window): hybrid models have layers whose state is no KV."""
    for i, t in enumerate(layer_types(model)):
        if t not in _KV_LAYER_TYPES:
            raise ValueError(
                f"{what}: layer {i} of this model is a {t!r} layer (transformers layer type, "
                f"from the model config), not attention with a KV cache of every token: e8kv "
                f"stores and restores the K/V of {' and '.join(_KV_LAYER_TYPES)} layers "
                "only (hybrid models with linear-attention, state-space or convolution "
                "layers, chunked attention or KV shared between layers are not supported): "
                "recompute this model's prefill instead")


# ----------------------------------------------------------------------------- loading

def load_gguf(gguf_path, *, cache_dir=None, dtype=torch.float32):
    """(tokenizer, model) from a GGUF file through transformers (``gguf_file=``), offline.

    transformers parses a GGUF's metadata in pure Python (about a minute for SmolLM2 on a
    busy CPU); with ``cache_dir`` the converted tokenizer and model are saved there once
    (safetensors, keyed by the GGUF's path, size and mtime) and loaded from there after.
    """
    import fcntl
    import hashlib
    import os
    from pathlib import Path
    from transformers import AutoModelForCausalLM, AutoTokenizer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    g = Path(gguf_path).resolve()
    st = g.stat()

    def from_gguf():
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=dtype)
        return tok, model
    if cache_dir is None:
        tok, model = from_gguf()
    else:
        tag = hashlib.sha256(f"{g}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
        d = Path(cache_dir) / f"{g.stem}-{tag}"
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(cache_dir) / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (d / "done").exists():
                tok, model = from_gguf()
                _save_converted(tok, model, d)
                (d / "done").write_text(str(g) + "\n")
        tok, model = _load_converted(d, dtype)
        model.config.name_or_path = str(g)
    model.eval()
    return tok, model


def _save_converted(tok, model, d):
    """Tokenizer, config and weights of a GGUF-loaded model (its weights are dequantized
    already; save_pretrained refuses models that carry the gguf quantizer)."""
    import copy as _copy
    from safetensors.torch import save_model
    d.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(d)
    cfg = _copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(d)
    model.generation_config.save_pretrained(d)
    save_model(model, str(d / "model.safetensors"))


def _load_converted(d, dtype):
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(d)), dtype=dtype)
    load_model(model, str(d / "model.safetensors"))
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig.from_pretrained(str(d))
    return tok, model


