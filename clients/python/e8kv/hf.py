"""e8kv.hf: store a transformers model's KV cache in e8kvd and restore it for a later request.

    import e8kv, e8kv.hf
    client = e8kv.Client("unix:/run/e8kvd.sock")
    logits, cache = e8kv.hf.prefill(model, input_ids)              # or your own forward
    e8kv.hf.store_prefix(client, model, input_ids, cache)          # after the prefill
    ...
    r = e8kv.hf.restore_prefix(client, model, new_input_ids)       # a later request
    cache, n_cached = r                                            # DynamicCache, tokens
    out = model.generate(r.input_ids, attention_mask=r.attention_mask, **{r.cache_kwarg: cache})

What is stored. The KV cache of each row is cut into chunks of ``chunk_tokens`` tokens
(DESIGN.md); a chunk key is the daemon's chain hash of the model fingerprint and the token
ids, so a later request that shares a prefix finds it with Lookup. ``store_prefix`` looks
up first and writes only the chunks not stored yet: storing a longer conversation later
extends the same chain (a short last chunk stored earlier is replaced by its full version).

Model fingerprint (:func:`model_fingerprint`): from ``model.config``: n_layers
(num_hidden_layers), KV heads (num_key_value_heads, GQA), head_dim, the model's dtype, and
the full RoPE description: rope_theta, the rope_scaling / rope_parameters type with every
parameter HF uses (linear, dynamic, yarn, llama3, longrope) and partial_rotary_factor
(rotary_dim). HF Llama-family models rotate split-half (``rotate_half``); pass
``rope_layout="interleaved"`` for GPT-J-style models.

Positions. The codec removes RoPE from keys at their positions, taken to be 0..n-1 for the
n real tokens of a row: compute padded batches with position_ids from the attention mask
(as ``model.generate`` and :func:`prefill` do).

Limits. Dynamic-NTK models whose prefill went past original_max_position_embeddings use
frequencies that depend on the prefill's length; chunks are encoded with their own end as
that length, so RoPE removal is exact only within the original context there. Sliding-
window and hybrid (linear-attention) caches are not handled: every layer must be a full
attention layer holding every token.

Padding. With ``attention_mask`` (batch [B, T], left or right padding), each row's pad
positions are dropped before anything is chunked: pad tokens never enter a chunk key or
a chunk. A restored batch holds the same number of cached tokens for every row; its
``input_ids`` / ``attention_mask`` put those first, then each row's padding, then the
tokens left to compute (position ids from the mask stay right).

Data path. Chunks are encoded on the client with ``e8kv.codec`` (libe8codec) when that
module is available, else uploaded raw in the model's dtype for the daemon to encode;
restore mirrors it (client decode, or the daemon decodes to the model's dtype).

Load or recompute. :func:`restore_prefix` restores only when fetching + decoding the
cached tokens is expected to take less time than recomputing them, from measured rates
kept on the client (``client.rates``): the model's prefill throughput (tokens/s, measured
once per model and device by a prefill of ``chunk_tokens`` tokens; a rate measured on a
short prefill over-estimates the speed of long recomputes, so the choice leans toward
recompute) and the restore throughput (tokens/s of fetch + decode, measured on every
restore, the first chunk of the first restore timed before the rest is fetched). The
result says which it chose (``.decision``, ``.reason``), also logged on logger "e8kv.hf".
"""
import inspect
import logging
import math
import time

import numpy as np
import torch

from . import errors
from .client import ChunkIn
from .v1 import kvstore_pb2 as pb

log = logging.getLogger("e8kv.hf")

DEFAULT_CHUNK_TOKENS = 256
_TORCH_DTYPES = {torch.float16: (pb.DTYPE_FP16, "fp16", np.float16),
                 torch.bfloat16: (pb.DTYPE_BF16, "bf16", None),
                 torch.float32: (pb.DTYPE_FP32, "fp32", np.float32)}
_SCALING = {"default": pb.ROPE_SCALING_NONE, "linear": pb.ROPE_SCALING_LINEAR,
            "dynamic": pb.ROPE_SCALING_DYNAMIC, "yarn": pb.ROPE_SCALING_YARN,
            "llama3": pb.ROPE_SCALING_LLAMA3, "longrope": pb.ROPE_SCALING_LONGROPE}


# ----------------------------------------------------------------------------- fingerprint

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


def _text_config(model):
    c = model.config
    return c.get_text_config(decoder=True) if hasattr(c, "get_text_config") else c


def model_fingerprint(model, *, model_id=None, preset=None, codec=None, rope_layout="split_half",
                      dtype=None):
    """The ModelFingerprint of a transformers model (see the module doc).

    model_id: defaults to ``config.name_or_path`` (its last 127 bytes); give the hub name
    when the model was loaded from a local path, so that every machine agrees.
    preset: codec preset ("K4V4" ... "K2V2"; None = the codec default, K3V2).
    codec: other CodecConfig fields as a dict. dtype: the KV dtype (default model.dtype).
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
    fp.codec.SetInParent()          # explicit defaults (e8kvd gives an unset codec another id)
    if preset:
        fp.codec.preset = preset
    for k, v in (codec or {}).items():
        if isinstance(v, (list, tuple)):
            getattr(fp.codec, k).extend(v)
        else:
            setattr(fp.codec, k, v)
    return fp


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


# ----------------------------------------------------------------------------- cache helpers

def cache_kwarg(model):
    """Name of the forward/generate keyword that takes the cache: "cache" (transformers 5)
    or "past_key_values" (4.x)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The cache of a forward's output, whatever this transformers version calls it."""
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def cache_layers(cache):
    """[(K, V)] per layer, each [batch, n_kv_heads, tokens, head_dim], of a DynamicCache
    (any version) or a legacy tuple of (K, V)."""
    if hasattr(cache, "layers"):
        return [(ly.keys, ly.values) for ly in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(kv[0], kv[1]) for kv in cache]


def new_cache(model, layers):
    """A DynamicCache holding ``layers`` = [(K, V)] ([B, H, T, D] each)."""
    from transformers import DynamicCache
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:
        cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def positions_from_mask(attention_mask):
    """position_ids that number each row's real tokens 0, 1, ... (pads get 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def prefill(model, input_ids, attention_mask=None, cache=None):
    """One forward over ``input_ids`` ([B, T]) after ``cache`` (None = empty), with position
    ids from ``attention_mask`` ([B, cached + T], covering the cache too) so that each row's
    real tokens sit at positions 0..n-1 whatever its padding; returns (logits [B, T, vocab],
    cache)."""
    kw = {cache_kwarg(model): cache} if cache is not None else {}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
        past = cache.get_seq_length() if cache is not None else 0
        kw["position_ids"] = positions_from_mask(attention_mask)[:, past:]
    out = model(input_ids=input_ids, use_cache=True, **kw)
    return out.logits, output_cache(out)


def _rows(input_ids, attention_mask):
    """[(token list, column indices)] per row, pads dropped."""
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if attention_mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        mask = torch.as_tensor(attention_mask).bool()
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape "
                             f"{tuple(ids.shape)}")
    rows = []
    for b in range(ids.shape[0]):
        cols = torch.nonzero(mask[b], as_tuple=False).flatten()
        rows.append((ids[b, cols].tolist(), cols.to(ids.device)))
    return ids, mask, rows


# ----------------------------------------------------------------------------- codec glue

def _codec_module():
    """e8kv.codec when it is importable and can encode chunks, else None (raw path)."""
    try:
        from . import codec
    except Exception:       # missing module or missing libe8codec.so: use the raw path
        return None
    return codec if hasattr(codec, "encode_chunk") and hasattr(codec, "decode_chunk") else None


def _chunk_raw(layers, b, cols, dtype):
    """The raw layout [L][2][H][t][D] (numpy, contiguous) of row b's tokens at ``cols``."""
    per = [torch.stack((k[b, :, cols, :], v[b, :, cols, :])) for k, v in layers]
    t = torch.stack(per).to("cpu", dtype).contiguous()
    return t


# ----------------------------------------------------------------------------- store

class StoreResult(list):
    """Per row: dict(tokens, chunks_written, chunks_deduplicated, stored_bytes, chunk_keys,
    skipped_tokens: tokens already stored and not sent again)."""


def store_prefix(client, model, input_ids, past_key_values, session=None, *,
                 attention_mask=None, chunk_tokens=DEFAULT_CHUNK_TOKENS, model_id=None,
                 preset=None, codec=None, fingerprint=None, encoding=None,
                 session_metadata=None):
    """Stores the KV cache of ``input_ids`` ([T] or [B, T]) from ``past_key_values``.

    The cache must hold at least the tokens of ``input_ids`` (position j of the cache is
    column j of input_ids; extra trailing cache positions are ignored). Looks up first and
    sends only the chunks not stored yet. ``session``: a name (one row) or one name per row;
    the session is created if missing and grows to hold the whole sequence; its current
    tokens must be a prefix of the sequence (else ValueError). ``encoding``: None = e8 frames
    encoded here when e8kv.codec is available, else "raw"; "raw" or "e8" force one.
    Returns a StoreResult (one dict per row).
    """
    fp = fingerprint or model_fingerprint(model, model_id=model_id, preset=preset, codec=codec)
    ids, mask, rows = _rows(input_ids, attention_mask)
    layers = cache_layers(past_key_values)
    if len(layers) != fp.n_layers:
        raise ValueError(f"cache has {len(layers)} layers, the model {fp.n_layers}")
    k0 = layers[0][0]
    if k0.shape[0] != ids.shape[0] or k0.shape[1] != fp.n_kv_heads or k0.shape[3] != fp.head_dim:
        raise ValueError(f"cache layer 0 K shape {tuple(k0.shape)} does not fit batch "
                         f"{ids.shape[0]}, {fp.n_kv_heads} KV heads, head_dim {fp.head_dim}")
    if k0.shape[2] < ids.shape[1]:
        raise ValueError(f"cache holds {k0.shape[2]} tokens, input_ids {ids.shape[1]}")
    sessions = [session] * len(rows) if session is None or isinstance(session, str) else session
    if len(sessions) != len(rows):
        raise ValueError(f"{len(sessions)} session names for {len(rows)} rows")
    if len(rows) > 1 and isinstance(session, str):
        raise ValueError("one session name for several rows: give one name per row")
    cmod = _codec_module() if encoding in (None, "e8") else None
    if encoding == "e8" and cmod is None:
        raise RuntimeError("encoding='e8' needs e8kv.codec (libe8codec), which is unavailable")
    result = StoreResult()
    for b, (tokens, cols) in enumerate(rows):
        result.append(_store_row(client, fp, layers, b, tokens, cols, sessions[b], chunk_tokens,
                                 cmod, session_metadata))
    return result


def _store_row(client, fp, layers, b, tokens, cols, session, C, cmod, session_metadata):
    n = len(tokens)
    if n == 0:
        raise ValueError(f"row {b} has no tokens (all padding)")
    lk = client.lookup(fp, tokens, chunk_tokens=C)
    counts, keys, M = list(lk.chunk_token_counts), list(lk.chunk_keys), lk.matched_tokens
    if cmod is not None and cmod.fingerprint_from_proto(fp).id() != lk.fingerprint_id:
        log.warning("e8kv.codec computes another fingerprint id than e8kvd for %s; "
                    "uploading raw KV for the daemon to encode", fp.model_id)
        cmod = None
    full = 0                                   # leading matched chunks that are full
    while full < len(counts) and counts[full] == C:
        full += 1
    F = full * C                               # tokens covered by full stored chunks

    def done(start):
        return dict(tokens=n, chunks_written=0, chunks_deduplicated=0, stored_bytes=0,
                    chunk_keys=keys, skipped_tokens=start)
    if session:
        S = client.create_session(session, fp, chunk_tokens=C, if_not_exists=True,
                                  metadata=session_metadata).session.n_tokens
        _check_session_prefix(client, fp, session, tokens, keys, F, S, C)
        if S % C == 0 and S < M:           # stored chunks the session lacks: no data to send
            client.append_session(session, tokens[S:M], expect_session_tokens=S)
            S = M
        if S == n:
            return done(n)
        start = S - S % C                  # a short last chunk of the session is replaced
        put_kw = dict(session=session, session_start_token=start, expect_session_tokens=S,
                      session_metadata=session_metadata)
    else:
        if M == n:
            return done(n)
        start = F
        put_kw = dict(parent_key=keys[full - 1] if full else b"", parent_end_token=F)

    dt = [t for t, v in _TORCH_DTYPES.items() if v[0] == fp.source_dtype][0]

    def chunks():
        for s in range(start, n, C):
            e = min(n, s + C)
            raw = _chunk_raw(layers, b, cols[s:e], dt)
            if cmod is not None:
                data = cmod.encode_chunk(fp, raw, first_pos=s)
            else:
                data = raw.view(torch.uint8).numpy() if dt == torch.bfloat16 else raw.numpy()
            yield ChunkIn(tokens[s:e], data)
    enc = "e8" if cmod is not None else "raw"
    r = client.put_chunks(fp, chunks(), encoding=enc,
                          raw_dtype=None if enc == "e8" else _TORCH_DTYPES[dt][1],
                          chunk_tokens=C, **put_kw)
    return dict(tokens=n, chunks_written=r.chunks_stored, chunks_deduplicated=r.chunks_deduplicated,
                stored_bytes=r.stored_bytes, chunk_keys=keys[:start // C] + list(r.chunk_keys),
                skipped_tokens=start)


def _check_session_prefix(client, fp, session, tokens, keys, F, S, C):
    """ValueError unless the session's S tokens are a prefix of ``tokens`` (same chunk keys)."""
    if S == 0:
        return
    have = list(client.get_session(session, include_chunk_keys=True).chunk_keys)
    want = None
    if S <= len(tokens) and S - S % C <= F:
        want = keys[:S // C]
        if S % C:
            lk = client.lookup(fp, tokens[:S], chunk_tokens=C)
            want = list(lk.chunk_keys) if lk.matched_tokens == S else None
    if want is None or have != want:
        raise ValueError(f"session {session!r} holds {S} tokens that are not a prefix of this "
                         f"{len(tokens)}-token sequence")


# ----------------------------------------------------------------------------- restore

class Restored(tuple):
    """(cache, n_cached_tokens), plus attributes:

    decision: "restore" | "recompute" | "miss" (nothing stored); reason: why, in words;
    input_ids / attention_mask: what to give generate() or forward() with this cache
    (cached tokens first, then each row's padding, then the rest; use position_ids from
    the mask); cache_kwarg: "cache" or "past_key_values"; timings: seconds and rates.
    """

    def __new__(cls, cache, n_cached, **attrs):
        self = super().__new__(cls, (cache, n_cached))
        self.__dict__.update(attrs)
        return self

    @property
    def cache(self):
        return self[0]

    @property
    def n_cached(self):
        return self[1]


def _rate_key(model, fp):
    dev = next(model.parameters()).device
    return (id(model), str(dev), fp.model_id)


def rates_for(client, model, fingerprint=None):
    """The dict of measured rates the decision uses for this model on this client:
    "prefill_tok_s" and "restore_tok_s" (tokens/s); set them to override measurements."""
    fp = fingerprint or model_fingerprint(model)
    return client.rates.setdefault(_rate_key(model, fp), {})


@torch.no_grad()
def measure_prefill_rate(client, model, n_tokens=DEFAULT_CHUNK_TOKENS, fingerprint=None):
    """Times one prefill of ``n_tokens`` tokens; stores and returns tokens/s on the client."""
    fp = fingerprint or model_fingerprint(model)
    vocab = _text_config(model).vocab_size
    ids = torch.randint(0, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=True)
    rate = n_tokens / (time.perf_counter() - t0)
    client.rates.setdefault(_rate_key(model, fp), {})["prefill_tok_s"] = rate
    return rate


def _decode_chunk(ch, fp, dt, cmod):
    """torch tensor [L][2][H][t][D] of a fetched chunk."""
    if cmod is not None and ch.encoding == pb.ENCODING_E8_FRAME:
        return cmod.decode_chunk(fp, ch.data, dtype=dt)
    np_dt = _TORCH_DTYPES[dt][2]
    shape = (fp.n_layers, 2, fp.n_kv_heads, ch.n_tokens, fp.head_dim)
    if np_dt is None:                          # bf16: numpy has none, go through int16
        a = np.frombuffer(ch.data, dtype=np.int16).reshape(shape)
        return torch.from_numpy(a.copy()).view(torch.bfloat16)
    return torch.from_numpy(np.frombuffer(ch.data, dtype=np_dt).reshape(shape).copy())


def _fetch(client, fp, keys, dt, cmod):
    """Iterator of decoded chunks for ``keys``: (Chunk, tensor [L][2][H][t][D])."""
    if cmod is not None:
        it = client.get_chunks(list(keys), encoding="e8")
    else:
        it = client.get_chunks(list(keys), encoding="raw", dtype=_TORCH_DTYPES[dt][1])
    for ch in it:
        yield ch, _decode_chunk(ch, fp, dt, cmod)


def restore_prefix(client, model, input_ids, *, attention_mask=None,
                   chunk_tokens=DEFAULT_CHUNK_TOKENS, model_id=None, preset=None, codec=None,
                   fingerprint=None, policy="auto"):
    """Restores the longest stored prefix of ``input_ids`` ([T] or [B, T]) into a DynamicCache.

    Returns a :class:`Restored`: ``cache, n_cached = restore_prefix(...)``. The cache is on
    the model's device in its dtype and holds ``n_cached`` tokens of every row; at least one
    token of every row is left to compute. policy: "auto" (measured load-or-recompute
    decision), "restore" (always restore what is stored), "recompute" (look up only).
    With decision "recompute" or "miss" the cache is empty and n_cached is 0.
    """
    if policy not in ("auto", "restore", "recompute"):
        raise ValueError(f"policy must be auto, restore or recompute, not {policy!r}")
    fp = fingerprint or model_fingerprint(model, model_id=model_id, preset=preset, codec=codec)
    ids, mask, rows = _rows(input_ids, attention_mask)
    device = next(model.parameters()).device
    dt = [t for t, v in _TORCH_DTYPES.items() if v[0] == fp.source_dtype][0]
    t0 = time.perf_counter()
    lks = [client.lookup(fp, tokens, chunk_tokens=chunk_tokens) for tokens, _ in rows]
    t_lookup = time.perf_counter() - t0
    # Every row gets the same number of cached tokens; each keeps >= 1 token to compute.
    n = min(min(lk.matched_tokens, len(tok) - 1) for lk, (tok, _) in zip(lks, rows))
    n = max(n, 0)
    timings = dict(lookup_s=t_lookup)

    def result(cache, n_cached, decision, reason):
        new_ids, new_mask = _arrange(ids, mask, rows, n_cached)
        log.info("restore_prefix: %s (%s)", decision, reason)
        return Restored(cache, n_cached, decision=decision, reason=reason, input_ids=new_ids,
                        attention_mask=new_mask, cache_kwarg=cache_kwarg(model),
                        timings=timings, fingerprint=fp)

    if n == 0:
        return result(new_cache(model, []), 0, "miss", "no stored prefix (at least one token "
                      "of every row must stay to compute)")
    rates = rates_for(client, model, fp)
    if policy == "recompute":
        return result(new_cache(model, []), 0, "recompute", "policy=recompute")
    if policy == "auto" and "prefill_tok_s" not in rates:
        measure_prefill_rate(client, model, chunk_tokens, fp)
    cmod = _codec_module()
    if cmod is not None and cmod.fingerprint_from_proto(fp).id() != lks[0].fingerprint_id:
        cmod = None                    # ids disagree: let the daemon decode (raw fetch)
    n_chunks = [math.ceil(n / chunk_tokens)] * len(rows)
    per_row = [[] for _ in rows]
    t1 = time.perf_counter()
    fetched = 0
    decided = policy == "restore" or "restore_tok_s" in rates
    if policy == "auto" and decided:
        est_r, est_c = n / rates["restore_tok_s"], n / rates["prefill_tok_s"]
        if est_r >= est_c:
            return result(new_cache(model, []), 0, "recompute",
                          f"estimated restore {est_r:.3f} s >= recompute {est_c:.3f} s")
    for b, lk in enumerate(lks):
        keys = list(lk.chunk_keys[:n_chunks[b]])
        for ch, t in _fetch(client, fp, keys, dt, cmod):
            per_row[b].append(t)
            fetched += ch.n_tokens
            if not decided:             # first chunk ever: decide from its measured rate
                decided = True
                rate = ch.n_tokens / (time.perf_counter() - t1)
                est_r, est_c = n / rate, n / rates["prefill_tok_s"]
                if est_r >= est_c:
                    rates["restore_tok_s"] = rate
                    return result(new_cache(model, []), 0, "recompute",
                                  f"estimated restore {est_r:.3f} s >= recompute {est_c:.3f} s "
                                  f"(first chunk measured)")
    layers = []
    for li in range(fp.n_layers):
        ks, vs = [], []
        for b in range(len(rows)):
            kv = torch.cat([t[li] for t in per_row[b]], dim=2)[:, :, :n]   # [2, H, n, D]
            ks.append(kv[0])
            vs.append(kv[1])
        layers.append((torch.stack(ks).to(device), torch.stack(vs).to(device)))
    cache = new_cache(model, layers)
    dt_restore = time.perf_counter() - t1
    rate = fetched / dt_restore
    rates["restore_tok_s"] = rate if "restore_tok_s" not in rates \
        else 0.5 * rates["restore_tok_s"] + 0.5 * rate
    timings.update(restore_s=dt_restore, restore_tok_s=rate,
                   prefill_tok_s=rates.get("prefill_tok_s"))
    if policy == "restore":
        reason = "policy=restore"
    else:
        reason = (f"estimated restore {n / rates['restore_tok_s']:.3f} s < recompute "
                  f"{n / rates['prefill_tok_s']:.3f} s")
    return result(cache, n, "restore", reason)


def _arrange(ids, mask, rows, n):
    """input_ids / attention_mask for a cache of n tokens per row: per row the n cached
    tokens, then its padding, then its remaining tokens (all rows the same width)."""
    B, T = ids.shape
    if attention_mask_all_ones(mask) and n >= 0:
        return ids, torch.ones_like(ids)
    width = n + max(len(tok) - n for tok, _ in rows)
    out = torch.zeros((B, width), dtype=ids.dtype, device=ids.device)
    m = torch.zeros((B, width), dtype=torch.long, device=ids.device)
    for b, (tok, _) in enumerate(rows):
        t = torch.tensor(tok, dtype=ids.dtype, device=ids.device)
        rest = len(tok) - n
        out[b, :n] = t[:n]
        m[b, :n] = 1
        out[b, width - rest:] = t[n:]
        m[b, width - rest:] = 1
    return out, m


def attention_mask_all_ones(mask):
    return bool(mask.all())


__all__ = ["model_fingerprint", "rope_config", "store_prefix", "restore_prefix", "prefill",
           "measure_prefill_rate", "rates_for", "load_gguf", "cache_kwarg", "output_cache", "cache_layers", "new_cache",
           "positions_from_mask", "Restored", "StoreResult", "errors"]
