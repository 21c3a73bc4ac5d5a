"""e8kv.hf: store a transformers model's KV cache in e8kvd and restore it for a later request.

    import e8kv, e8kv.hf
    client = e8kv.Client("127.0.0.1:50051")
    logits, cache = e8kv.hf.prefill(model, input_ids)              # or your own forward
    e8kv.hf.store_prefix(client, model, input_ids, cache)          # after the prefill
    ...
    r = e8kv.hf.restore_prefix(client, model, new_input_ids)       # a later request
    cache, n_cached = r                                            # DynamicCache, tokens
    out = model.generate(r.input_ids, attention_mask=r.attention_mask, **{r.cache_kwarg: cache})

Errors. store_prefix and restore_prefix raise e8kv.Unavailable when e8kvd is down,
unreachable or does not answer in time (e8kv.DeadlineExceeded is a subclass): an engine
catches it and prefills from scratch. Give the engine's Client a short ``timeout=`` (and
``stream_timeout=`` for the chunk transfers) so that a hung daemon costs that much.

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
frequencies that depend on the prefill's length; chunks are encoded with the stored
sequence's length as that length (exact for that prefill; a chunk stored by an earlier,
shorter request keeps that request's length). A fingerprint's recent window likewise
keeps the last tokens of the stored sequence raw.

Sliding-window attention (Mistral's ``sliding_window``, Gemma / Qwen2 layers whose
``layer_types`` say "sliding_attention"). transformers' own cache for such a layer (a
DynamicSlidingWindowLayer) keeps only the last window - 1 tokens, while a chunk holds the KV
of every token. So for these models the caches of this module keep every token of every
layer (a DynamicCache made without the model config): :func:`prefill`'s, the cache a
restore returns, and an empty one from :func:`new_cache`. The window still applies: the
model builds its attention mask from the config, so the logits are those of the windowed
cache (tests/python/test_hf_sliding_window.py checks it, bit for bit); the memory is that of
a full-attention cache of the same length. ``store_prefix`` refuses, before storing
anything, a windowed cache that no longer holds every token of ``input_ids`` (the model's
own cache past the window) and says what to do. Layers without K/V of every token (hybrid
models: linear attention, state-space, convolution layers, chunked attention, KV shared
between layers) are refused by store and restore alike: recompute those models' prefill.

Padding. With ``attention_mask`` (batch [B, T], left or right padding), each row's pad
positions are dropped before anything is chunked: pad tokens never enter a chunk key or
a chunk. A restored batch holds the same number of cached tokens for every row; its
``input_ids`` / ``attention_mask`` put those first, then each row's padding, then the
tokens left to compute (position ids from the mask stay right).

Data path. Chunks are coded on the client by a KV codec (e8kv.kvcodec: ``encode_chunks``
from the cache tensors, ``decode_chunks_into`` preallocated cache tensors on the model's
device): ``kv_codec=`` (e.g. e8kv.cuda.CudaCodec for a model on a GPU), else
e8kv.kvcodec.CpuKVCodec (libe8codec). Without libe8codec, KV travels raw in the model's
dtype and the daemon encodes / decodes it. Restore fetches with several GetChunks calls
at once and decodes chunks as they arrive; the DynamicCache takes the decoded tensors
without a copy.

Load or recompute. :func:`restore_prefix` (policy="auto") restores only when its predicted
time to first token is below recomputing's, by the rule of e8kv.decide.Decider (the same one
bench/e2e uses): restore TTFT = the Lookup just made + the cached tokens x the per-token fetch
+ decode time measured on this client's earlier restores (before any, on this restore's
first chunk, timed alone) + the forward of the remaining tokens over the restored cache
(learned per cached length; before any, the prefill of those tokens alone); recompute TTFT =
the prefill of all the tokens (measured lengths; a fit over >= 3 lengths; else the nearest
scaled linearly). One Decider per model, device and model_id lives on the client
(:func:`decider_for`). Its measurements: a prefill of ``chunk_tokens`` random tokens timed on
the first auto decision (:func:`calibrate` times more lengths, e.g. at engine start), every
restore, and the forwards run through :func:`prefill` with ``decider=`` (the restored
result's ``r.decider``): run the first forward after a restore (or the recompute) that way,
or report your own with ``decider.add_forward`` / ``add_prefill``, so that the rule knows what
the forward over a long restored cache costs (for a small model it can cost more than
recomputing). The result says which it chose (``.decision``, ``.reason``, both predictions
in ``.timings``), also logged on logger "e8kv.hf".
"""
import contextlib
import inspect
import logging
import operator
import queue
import random
import threading
import time

import torch

from . import errors
from .decide import Decider
from .client import ChunkIn
from .hfmodel import (_TORCH_DTYPES, _check_kv_layers, _has_sliding, _text_config,  # noqa: F401
                      layer_types, load_gguf, model_fingerprint, rope_config)
from .v1 import kvstore_pb2 as pb

log = logging.getLogger("e8kv.hf")

DEFAULT_CHUNK_TOKENS = 256

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
    """A DynamicCache holding ``layers`` = [(K, V)] ([B, H, T, D] each); for a model with
    sliding-window layers one that keeps every token (module doc, "Sliding-window").

    The tensors become the cache's own, not copied, where this transformers version keeps
    them in DynamicCache.layers as plain DynamicLayer objects (transformers >= 4.56; checked
    with the installed 5.x); otherwise (other layer types, older versions) they go in
    through update(), which copies each once. The next forward appends to them (update()
    concatenates), so views of a larger allocation are fine."""
    cache = _empty_cache(model)
    if layers and _adopt(cache, layers):
        return cache
    cache = _empty_cache(model)
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def _adopt(cache, layers):
    """Puts layers into cache's DynamicLayer objects by reference; False if it cannot."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    own = getattr(cache, "layers", None)
    if own is None or len(own) != len(layers) or any(type(ly) is not DynamicLayer for ly in own):
        return False
    for ly, (k, v) in zip(own, layers):
        try:
            ly.lazy_initialization(k, v)
        except TypeError:                       # transformers 4.56: (key_states) only
            ly.lazy_initialization(k)
        ly.keys, ly.values = k, v
    return cache.get_seq_length() == layers[0][0].shape[2] and own[0].keys is layers[0][0]


def _empty_cache(model):
    """An empty DynamicCache for model: with the model config (its layer types), except for
    a model with sliding-window layers, whose cache here keeps every token (module doc)."""
    from transformers import DynamicCache
    if _has_sliding(model):
        return DynamicCache()
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def _check_holds_every_token(cache, layers, n, kwarg):
    """ValueError unless every layer of the cache holds at least n tokens; for a windowed
    layer (transformers' DynamicSlidingWindowLayer past its window) it says what to do."""
    own = getattr(cache, "layers", None)
    for i, (k, _) in enumerate(layers):
        if k.shape[2] >= n:
            continue
        w = getattr(own[i], "sliding_window", None) if own is not None else None
        if w is None:
            raise ValueError(f"cache layer {i} holds {k.shape[2]} tokens, input_ids {n}")
        raise ValueError(
            f"store_prefix: cache layer {i} is a sliding-window layer (a sliding window of {w} "
            f"tokens: transformers' {type(own[i]).__name__} keeps only the last {w - 1}) and "
            f"holds the last {k.shape[2]} of the {n} tokens of input_ids: e8kv stores the KV "
            "of every token, and this cache no longer has the older ones. Prefill with "
            "e8kv.hf.prefill (its cache keeps every token; the window stays in the attention "
            f"mask, same logits), or give your own forward {kwarg}=transformers.DynamicCache() "
            "(no config: every layer keeps every token); a prompt within the window is "
            "stored from the windowed cache as it is")


def positions_from_mask(attention_mask):
    """position_ids that number each row's real tokens 0, 1, ... (pads get 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _logits_kw(model, logits_to_keep):
    """The forward keyword that limits the logits to the last ``logits_to_keep`` positions
    (0 = all): transformers' logits_to_keep (>= 4.50) or num_logits_to_keep; {} when the
    model has neither (prefill then slices the full logits)."""
    if not logits_to_keep:
        return {}
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: int(logits_to_keep)}
    return {}


@torch.no_grad()
def prefill(model, input_ids, attention_mask=None, cache=None, *, decider=None,
            logits_to_keep=1):
    """One forward over ``input_ids`` ([B, T]) after ``cache`` (None = empty), with position
    ids from ``attention_mask`` ([B, cached + T], covering the cache too) so that each row's
    real tokens sit at positions 0..n-1 whatever its padding; returns (logits
    [B, min(logits_to_keep, T), vocab] of the last positions, cache). ``logits_to_keep``:
    1 (default) computes only the last position's logits, which is what an engine's prefill
    needs for the next token (all T positions in fp32 are T x vocab x 4 bytes: 1.6 GB at 8K
    tokens for SmolLM2's 49152-token vocabulary, and the LM head's time); 0 = every
    position (teacher forcing, perplexity). ``decider`` (an e8kv.decide.Decider, e.g. a
    Restored's ``.decider``): the forward is timed (the device synchronized) and recorded
    there: as a prefill of B x T tokens over an empty cache, else as the forward of B x T
    tokens over a cache of its length. For a
    model with sliding-window layers the cache keeps every token (module doc)."""
    if cache is None and _has_sliding(model):
        cache = _empty_cache(model)
    kw = {cache_kwarg(model): cache} if cache is not None else {}
    past = cache.get_seq_length() if cache is not None else 0
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
        kw["position_ids"] = positions_from_mask(attention_mask)[:, past:]
    if decider is not None:
        dev = next(model.parameters()).device
        _sync(dev)
        t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, **kw, **_logits_kw(model, logits_to_keep))
    if decider is not None:
        _sync(dev)
        s = time.perf_counter() - t0
        n = int(input_ids.shape[0] * input_ids.shape[1])
        if past:
            decider.add_forward(n, past, s)
        else:
            decider.add_prefill(n, s)
    logits = out.logits
    if logits_to_keep and logits.shape[1] > logits_to_keep:    # a model without the keyword
        logits = logits[:, -int(logits_to_keep):]
    return logits, output_cache(out)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_chunk_tokens(chunk_tokens):
    """ValueError unless chunk_tokens is a whole number in [1, 65536] (0 used to crash a store
    with "range() arg 3 must not be zero" and make a restore a silent miss)."""
    try:
        ok = not isinstance(chunk_tokens, bool) and 1 <= operator.index(chunk_tokens) <= 65536
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"chunk_tokens must be an int in [1, 65536] (default "
                         f"{DEFAULT_CHUNK_TOKENS}), not {chunk_tokens!r}")


def _check_fits(model, fp):
    """ValueError unless fingerprint fp has the model's layers, KV heads and head_dim (a
    restore with another model's fingerprint failed with an IndexError, or fed one model's
    KV to another when the layer counts allowed it)."""
    c = _text_config(model)
    n_heads = c.num_attention_heads
    have = dict(n_layers=c.num_hidden_layers,
                n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
                head_dim=getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    for f, v in have.items():
        if getattr(fp, f) != v:
            raise ValueError(f"the fingerprint has {f} = {getattr(fp, f)}, this model {v}: a "
                             f"fingerprint of another model (model_id {fp.model_id!r})")


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
    """e8kv.codec when it is importable and its library loads, else None (raw path)."""
    try:
        from . import codec
        codec.version()
    except Exception:       # noqa: BLE001 -- missing libe8codec.so: the raw path, said below
        return None
    return codec


class _Coder:
    """The KV codec of one store/restore call: the caller's ``kv_codec`` (explicit: a
    fingerprint mismatch is an error), else a CpuKVCodec made here (a mismatch falls back
    to raw transfers with a warning), else None (no libe8codec: raw transfers)."""

    def __init__(self, fp, kv_codec, encoding):
        self.explicit = kv_codec is not None
        self.own = False
        self.kvc = kv_codec
        if self.explicit and encoding == "raw":
            raise ValueError("kv_codec= encodes chunks: it cannot be combined with "
                             "encoding='raw'")
        if not self.explicit and encoding != "raw":
            cmod = _codec_module()
            if cmod is None and encoding == "e8":
                raise RuntimeError("encoding='e8' needs e8kv.codec (libe8codec), which is "
                                   "unavailable")
            if cmod is not None:
                from .kvcodec import CpuKVCodec
                try:
                    cfp = cmod.fingerprint_from_proto(fp)
                except OSError as e:      # libe8kv.so missing: the daemon codes (raw path)
                    if encoding == "e8":
                        raise
                    log.warning("e8kv.codec cannot resolve fingerprints (%s): transferring "
                                "raw KV", e)
                else:
                    self.kvc, self.own = CpuKVCodec(cfp), True
        self.id = None
        self.needs_seq_len = False
        if self.kvc is not None:
            from .kvcodec import fingerprint_id
            self.id = fingerprint_id(self.kvc)
            # The stored sequence's length matters for a recent window (its last tokens
            # are kept raw) and for dynamic-NTK RoPE (frequencies of the prefill's length).
            self.needs_seq_len = fp.codec.recent_window_tokens > 0 or \
                (fp.rope.theta > 0 and fp.rope.scaling == pb.ROPE_SCALING_DYNAMIC)

    def agree(self, daemon_id, model_id):
        """False (raw path) or ValueError when the codec's fingerprint id is not the
        daemon's for this request's fingerprint."""
        if self.kvc is None or self.id == daemon_id:
            return self.kvc is not None
        if self.explicit:
            raise ValueError(f"kv_codec codes for fingerprint {self.id.hex()[:16]}, e8kvd "
                             f"resolves this request's fingerprint to {daemon_id.hex()[:16]}: "
                             "make the codec from the same fingerprint")
        log.warning("e8kv.codec computes another fingerprint id than e8kvd for %s; "
                    "transferring raw KV (the daemon encodes/decodes)", model_id)
        self.close()
        self.kvc = None
        return False

    def close(self):
        if self.own and self.kvc is not None:
            self.kvc.close()
        self.own = False


def _chunk_raw(layers, b, cols, dtype):
    """The raw layout [L][2][H][t][D] (torch, CPU, contiguous) of row b's tokens at ``cols``."""
    per = [torch.stack((k[b, :, cols, :], v[b, :, cols, :])) for k, v in layers]
    return torch.stack(per).to("cpu", dtype).contiguous()


def _row_layers(layers, b, cols):
    """(row b's [(K, V)] as [H, T, D] tensors, index of its first real token): views when
    the row's real tokens are contiguous columns (no padding, or padding on one side),
    else a gathered copy."""
    c0, n = int(cols[0]), len(cols)
    if int(cols[-1]) - c0 + 1 == n:
        return [(k[b], v[b]) for k, v in layers], c0
    return [(k[b][:, cols], v[b][:, cols]) for k, v in layers], 0


# ----------------------------------------------------------------------------- store

class StoreResult(list):
    """Per row: dict(tokens, chunks_written, chunks_deduplicated, stored_bytes, chunk_keys,
    skipped_tokens: tokens already stored and not sent again)."""


ENCODE_GROUP = 8        # chunks per kv_codec.encode_chunks call while a put streams
STORE_ATTEMPTS = 8      # a row's store is redone (looked up again) when e8kvd answers ABORTED:
                        # another writer changed its session meanwhile (e8kvd: "retry")


def store_prefix(client, model, input_ids, past_key_values, session=None, *,
                 attention_mask=None, chunk_tokens=DEFAULT_CHUNK_TOKENS, model_id=None,
                 preset=None, codec=None, fingerprint=None, encoding=None,
                 session_metadata=None, kv_codec=None):
    """Stores the KV cache of ``input_ids`` ([T] or [B, T]) from ``past_key_values``.

    The cache must hold at least the tokens of ``input_ids`` (position j of the cache is
    column j of input_ids; extra trailing cache positions are ignored). Looks up first and
    sends only the chunks not stored yet. ``session``: a name (one row) or one name per row;
    the session is created if missing and grows to hold the whole sequence; its current
    tokens must be a prefix of the sequence (else ValueError). ``encoding``: None = e8 frames
    encoded here when e8kv.codec is available, else "raw"; "raw" or "e8" force one.
    ``kv_codec``: a KV codec (e8kv.kvcodec interface, e.g. e8kv.cuda.CudaCodec for this
    fingerprint) that encodes straight from the cache tensors; default: e8kv.kvcodec.CpuKVCodec.
    Returns a StoreResult (one dict per row). Writers of the same session at once: a row whose
    session another call changed meanwhile (e8kvd answers ABORTED) is looked up and stored
    again, up to STORE_ATTEMPTS times, then e8kv.Aborted.
    """
    _check_chunk_tokens(chunk_tokens)
    _check_kv_layers(model, "store_prefix")
    layers = _store_cache_layers(past_key_values)
    fp = fingerprint or model_fingerprint(model, model_id=model_id, preset=preset, codec=codec)
    ids, mask, rows = _rows(input_ids, attention_mask)
    if len(layers) != fp.n_layers:
        raise ValueError(f"cache has {len(layers)} layers, the model {fp.n_layers}")
    k0 = layers[0][0]
    if k0.shape[0] != ids.shape[0] or k0.shape[1] != fp.n_kv_heads or k0.shape[3] != fp.head_dim:
        raise ValueError(f"cache layer 0 K shape {tuple(k0.shape)} does not fit batch "
                         f"{ids.shape[0]}, {fp.n_kv_heads} KV heads, head_dim {fp.head_dim}")
    _check_holds_every_token(past_key_values, layers, ids.shape[1], cache_kwarg(model))
    sessions = [session] * len(rows) if session is None or isinstance(session, str) else session
    if len(sessions) != len(rows):
        raise ValueError(f"{len(sessions)} session names for {len(rows)} rows")
    if len(rows) > 1 and isinstance(session, str):
        raise ValueError("one session name for several rows: give one name per row")
    if encoding not in (None, "e8", "raw"):
        raise ValueError(f"encoding must be None, 'e8' or 'raw', not {encoding!r}")
    coder = _Coder(fp, kv_codec, encoding)
    try:
        result = StoreResult()
        for b, (tokens, cols) in enumerate(rows):
            for attempt in range(STORE_ATTEMPTS):
                try:
                    result.append(_store_row(client, fp, layers, b, tokens, cols, sessions[b],
                                             chunk_tokens, coder, session_metadata))
                    break
                except errors.Aborted:   # another call changed the session meanwhile
                    if attempt + 1 == STORE_ATTEMPTS:
                        raise
                    time.sleep(0.01 * (attempt + 1) * (1 + random.random()))
        return result
    finally:
        coder.close()


def _store_cache_layers(cache):
    """cache_layers of store_prefix's past_key_values, or a TypeError naming the argument (a
    None cache used to fail with "'NoneType' object is not iterable")."""
    why = "is None" if cache is None else f"is a {type(cache).__name__}, not a KV cache"
    if cache is not None:
        try:
            layers = cache_layers(cache)
            if layers and all(torch.is_tensor(k) and torch.is_tensor(v) for k, v in layers):
                return layers
            if all(k is None or (torch.is_tensor(k) and k.numel() == 0) for k, _ in layers):
                why = f"is an empty {type(cache).__name__} (no tokens)"
        except (TypeError, ValueError, AttributeError, IndexError, KeyError):
            pass
    raise TypeError(f"store_prefix: past_key_values (4th argument) {why}: pass the prefill's "
                    "cache (a DynamicCache: out.past_key_values of a forward with "
                    "use_cache=True, or the cache e8kv.hf.prefill returns)")


def _store_row(client, fp, layers, b, tokens, cols, session, C, coder, session_metadata):
    n = len(tokens)
    if n == 0:
        raise ValueError(f"row {b} has no tokens (all padding)")
    lk = client.lookup(fp, tokens, chunk_tokens=C, no_lease=True)   # asks only: no pins
    counts, keys, M = list(lk.chunk_token_counts), list(lk.chunk_keys), lk.matched_tokens
    use_codec = coder.agree(lk.fingerprint_id, fp.model_id)
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
            with _stale_as_aborted(client, session, S):
                try:
                    client.append_session(session, tokens[S:M], expect_session_tokens=S)
                except errors.NotFound as e:
                    # the lookup pins nothing (no_lease): chunks it found that a purge or
                    # eviction took since are the same case as a session changed meanwhile
                    if "are not stored" in e.message:
                        raise errors.Aborted(e.code, e.message, e.method) from e
                    raise
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
    spans = [(s, min(n, s + C) - s) for s in range(start, n, C)]

    def encoded():
        row, base = _row_layers(layers, b, cols)
        kw = dict(seq_len=n) if coder.needs_seq_len else {}
        for g in range(0, len(spans), ENCODE_GROUP):
            grp = spans[g:g + ENCODE_GROUP]
            datas = coder.kvc.encode_chunks(row, [base + s for s, _ in grp],
                                            [m for _, m in grp], pos_offset=-base, **kw)
            for (s, m), data in zip(grp, datas):
                yield ChunkIn(tokens[s:s + m], data)

    def raw():
        for s, m in spans:
            t = _chunk_raw(layers, b, cols[s:s + m], dt)
            yield ChunkIn(tokens[s:s + m],
                          t.view(torch.int16).numpy() if dt == torch.bfloat16 else t.numpy())
    with _stale_as_aborted(client, session, put_kw.get("expect_session_tokens")):
        try:
            r = client.put_chunks(fp, encoded() if use_codec else raw(),
                                  encoding="e8" if use_codec else "raw",
                                  raw_dtype=None if use_codec else _TORCH_DTYPES[dt][1],
                                  chunk_tokens=C, **put_kw)
        except errors.NotFound as e:
            # the lookup pins nothing (no_lease): a parent chunk evicted or purged since is
            # the same case as a session changed meanwhile: look up again (store_prefix)
            if put_kw.get("parent_key") and "parent_key" in e.message:
                raise errors.Aborted(e.code, e.message, e.method) from e
            raise
    return dict(tokens=n, chunks_written=r.chunks_stored, chunks_deduplicated=r.chunks_deduplicated,
                stored_bytes=r.stored_bytes, chunk_keys=keys[:start // C] + list(r.chunk_keys),
                skipped_tokens=start)


@contextlib.contextmanager
def _stale_as_aborted(client, session, expected):
    """A FAILED_PRECONDITION of a call made with expect_session_tokens=expected becomes
    e8kv.Aborted (store_prefix retries) when the session no longer holds that many tokens:
    another writer changed it meanwhile, the same case as e8kvd's ABORTED."""
    try:
        yield
    except errors.FailedPrecondition as e:
        if not session or expected is None:
            raise
        try:
            now = client.get_session(session).n_tokens
        except errors.E8kvError:
            raise e from None
        if now == expected:
            raise
        raise errors.Aborted(e.code, e.message, e.method) from e


def _check_session_prefix(client, fp, session, tokens, keys, F, S, C):
    """ValueError unless the session's S tokens are a prefix of ``tokens`` (same chunk keys)."""
    if S == 0:
        return
    have = list(client.get_session(session, include_chunk_keys=True).chunk_keys)
    want = None
    if S <= len(tokens) and S - S % C <= F:
        want = keys[:S // C]
        if S % C:
            lk = client.lookup(fp, tokens[:S], chunk_tokens=C, no_lease=True)
            want = list(lk.chunk_keys) if lk.matched_tokens == S else None
    if want is None or have != want:
        raise ValueError(f"session {session!r} holds {S} tokens that are not a prefix of this "
                         f"{len(tokens)}-token sequence")


# ----------------------------------------------------------------------------- restore

class Restored(tuple):
    """(cache, n_cached_tokens), plus attributes:

    decision: "restore" | "recompute" | "miss" (nothing stored, or lost twice); reason: why;
    input_ids / attention_mask: what to give generate() or forward() with this cache
    (cached tokens first, then each row's padding, then the rest; use position_ids from
    the mask); cache_kwarg: "cache" or "past_key_values"; timings: seconds and rates
    (with policy="auto": predicted_restore_s / predicted_recompute_s, the two TTFTs the
    decision compared); decider: the model's e8kv.decide.Decider on this client (pass it
    to :func:`prefill` for the first forward, so the next decisions know its cost).
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


def _decider_key(model, fp):
    dev = next(model.parameters()).device
    return (id(model), str(dev), fp.model_id)


def decider_for(client, model, fingerprint=None):
    """The e8kv.decide.Decider of this model (on its device, under the fingerprint's model_id)
    on this client, made on first use; add your own measurements to it (seconds, tokens)."""
    fp = fingerprint or model_fingerprint(model)
    return client.deciders.setdefault(_decider_key(model, fp), Decider())


@torch.no_grad()
def calibrate(client, model, lengths=(DEFAULT_CHUNK_TOKENS,), fingerprint=None, repeat=1):
    """Times prefills of random tokens of each length (the fastest of ``repeat`` runs, after
    one untimed warm-up forward) into the model's Decider; returns {length: seconds}. Each is
    :func:`prefill`'s forward as an engine runs it (the last position's logits only). Three
    lengths or more let the decision fit prefill time against length (attention's quadratic
    term) instead of scaling the nearest one linearly."""
    dec = decider_for(client, model, fingerprint)
    vocab = _text_config(model).vocab_size
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    model(input_ids=torch.randint(0, vocab, (1, 8), generator=g).to(dev), use_cache=True,
          **_logits_kw(model, 1))
    out = {}
    for n in lengths:
        ids = torch.randint(0, vocab, (1, int(n)), generator=g).to(dev)
        for _ in range(max(1, repeat)):
            prefill(model, ids, decider=dec)
        out[int(n)] = min(t for m, t in dec.prefills if m == int(n))
    return out


DEFAULT_FETCH_STREAMS = 4     # concurrent GetChunks per row (README "Python": measured)
DECODE_BATCH = 8              # most chunks per decode_chunks_into call


def _copy_raw(ch, views, fp, dt):
    """Writes a raw-fetched chunk (dtype dt) into views at its start token."""
    np_dt = _TORCH_DTYPES[dt][2]
    shape = (fp.n_layers, 2, fp.n_kv_heads, ch.n_tokens, fp.head_dim)
    if np_dt is None:                          # bf16: numpy has none, go through int16
        t = torch.frombuffer(bytearray(ch.data), dtype=torch.int16).view(torch.bfloat16)
    else:
        t = torch.frombuffer(bytearray(ch.data), dtype=dt)
    t = t.reshape(shape)
    t0 = ch.start_token
    for li, (k, v) in enumerate(views):
        k[:, t0:t0 + ch.n_tokens].copy_(t[li, 0])
        v[:, t0:t0 + ch.n_tokens].copy_(t[li, 1])
    return ch.n_tokens


def _needed(lk, n):
    """The chunk keys of lk that cover its first n tokens, and the tokens they hold."""
    keys, got = [], 0
    counts = list(lk.chunk_token_counts)
    while got < n:
        keys.append(lk.chunk_keys[len(keys)])
        got += counts[len(keys) - 1]
    return keys, got


class _FetchRows:
    """The chunks of one row's restore, in completion order, in batches: through libe8kv's C
    fetch (``nf``, an e8kv.fetch.NativeFetcher: E8 frames as memoryviews into its buffer,
    valid until close(); one restore at a time per fetcher, others wait), else grpcio's
    Client.get_chunks_parallel (E8 frames, or raw KV as Chunk objects for _copy_raw)."""

    def __init__(self, client, nf, keys, streams, use_codec, dt, fpid):
        self.nf, self.native = nf, None
        if nf is not None:
            lock = _fetcher_lock(nf)
            lock.acquire()
            try:
                self.native = nf.start(keys, streams=streams, expect_fingerprint_id=fpid)
            except BaseException:
                lock.release()
                raise
            self.lock = lock
        else:
            kw = dict(encoding="e8") if use_codec else \
                dict(encoding="raw", dtype=_TORCH_DTYPES[dt][1])
            self.run = client.get_chunks_parallel(keys, streams=streams, **kw)
        self.use_codec = use_codec

    def batch(self, most):
        """1..most ready chunks (waiting for the first); [] at the end."""
        if self.native is not None:
            return [f.view for f in self.native.get(most)]
        ch = self.run.get()
        if ch is None:
            return []
        out = [ch]
        while len(out) < most:
            try:
                more = self.run.get(block=False)
            except queue.Empty:
                break
            if more is None:
                break
            out.append(more)
        return [c.data for c in out] if self.use_codec else out

    def close(self):
        if self.native is not None:
            self.native.close()
            self.native = None
            self.lock.release()
        elif self.nf is None:
            self.run.close()


_LOCKS_LOCK = threading.Lock()


def _fetcher_lock(nf):
    """The lock that gives one restore at a time a NativeFetcher (its buffer is shared)."""
    with _LOCKS_LOCK:
        lock = getattr(nf, "_e8kv_hf_lock", None)
        if lock is None:
            lock = nf._e8kv_hf_lock = threading.Lock()
        return lock


def restore_prefix(client, model, input_ids, *, attention_mask=None,
                   chunk_tokens=DEFAULT_CHUNK_TOKENS, model_id=None, preset=None, codec=None,
                   fingerprint=None, policy="auto", kv_codec=None,
                   fetch_streams=DEFAULT_FETCH_STREAMS):
    """Restores the longest stored prefix of ``input_ids`` ([T] or [B, T]) into a DynamicCache.

    Returns a :class:`Restored`: ``cache, n_cached = restore_prefix(...)``. The cache is on
    the model's device in the fingerprint's source dtype and holds ``n_cached`` tokens of
    every row; at least one token of every row is left to compute. policy: "auto" (the
    measured load-or-recompute decision of the module doc, "Load or recompute"; for a batch
    its token counts are those of all rows together), "restore" (always restore what is stored), "recompute"
    (look up only). With decision "recompute" or "miss" the cache is empty and n_cached 0.
    A chunk the fetch finds corrupt (e8kv.DataLoss: e8kvd quarantines it) or gone (NotFound:
    evicted or purged since the Lookup) raises nothing: a warning is logged, the lookup is
    done again once (it now stops before that chunk) and the shorter prefix restored into
    new tensors, ``.reason`` saying so; a chunk lost again gives decision "miss".

    Data path: the cache tensors are allocated once, at their final size, on the model's
    device; chunks are fetched by ``fetch_streams`` concurrent GetChunks calls (separate
    connections: libe8kv's C fetch, client.native_fetcher, where it loads; else grpcio's
    Client.get_chunks_parallel, warned once; ``r.timings["fetch"]`` says which) and decoded
    into those tensors as they arrive, by ``kv_codec`` (the
    e8kv.kvcodec interface, e.g. e8kv.cuda.CudaCodec for a CUDA model; default: CpuKVCodec),
    or copied from raw chunks the daemon decoded when no codec library is available. The
    DynamicCache then takes the tensors without copying them (see :func:`new_cache`).
    """
    if policy not in ("auto", "restore", "recompute"):
        raise ValueError(f"policy must be auto, restore or recompute, not {policy!r}")
    _check_chunk_tokens(chunk_tokens)
    _check_kv_layers(model, "restore_prefix")
    fp = fingerprint or model_fingerprint(model, model_id=model_id, preset=preset, codec=codec)
    _check_fits(model, fp)
    ids, mask, rows = _rows(input_ids, attention_mask)
    for b, (tokens, _) in enumerate(rows):
        if not tokens:          # (was the daemon's "token_ids is empty" from the Lookup)
            raise ValueError(f"row {b} has no tokens (all padding)")
    device = next(model.parameters()).device
    dt = [t for t, v in _TORCH_DTYPES.items() if v[0] == fp.source_dtype][0]

    def attempt(lost):
        """One lookup and fetch; lost: None, or what the previous attempt's fetch lost. The
        lookups' leases end when it does, however it ends (_release_leases)."""
        lks = []
        try:
            t0 = time.perf_counter()
            for tokens, _ in rows:      # policy=recompute only asks: nothing to pin
                lks.append(client.lookup(fp, tokens, chunk_tokens=chunk_tokens,
                                         no_lease=policy == "recompute"))
            r = fetch(lost, lks, time.perf_counter() - t0)
        except BaseException as e:
            _release_leases(client, lks, e)
            raise
        _release_leases(client, lks, None)
        return r

    def fetch(lost, lks, t_lookup):
        """The restore from lookups lks (made in t_lookup s)."""
        # Every row gets the same number of cached tokens; each keeps >= 1 token to compute.
        n = max(0, min(min(lk.matched_tokens, len(tok) - 1) for lk, (tok, _) in zip(lks, rows)))
        timings = dict(lookup_s=t_lookup)

        def result(cache, n_cached, decision, reason):
            if lost:
                reason = f"{lost}; {reason}"
            new_ids, new_mask = _arrange(ids, mask, rows, n_cached)
            log.info("restore_prefix: %s (%s)", decision, reason)
            return Restored(cache, n_cached, decision=decision, reason=reason, input_ids=new_ids,
                            attention_mask=new_mask, cache_kwarg=cache_kwarg(model),
                            timings=timings, fingerprint=fp,
                            decider=decider_for(client, model, fp))

        if n == 0:
            if any(lk.matched_tokens == 0 for lk in lks):
                why = _nothing_stored(fp, lks, chunk_tokens)
            else:
                why = ("the stored prefix is the whole 1-token prompt: one token must stay to "
                       "compute")
            return result(new_cache(model, []), 0, "miss", why)
        dec = decider_for(client, model, fp)
        if policy == "recompute":
            return result(new_cache(model, []), 0, "recompute", "policy=recompute")
        if policy == "auto" and not dec.prefills:
            calibrate(client, model, (chunk_tokens,), fp)
        # the batch's tokens: B rows of n cached tokens each, and every row's remaining ones
        n_all, rest = len(rows) * n, sum(len(tok) - n for tok, _ in rows)
        per_tok = dec.restore_per_token_s()
        decided = policy == "restore" or per_tok is not None
        d = None
        if policy == "auto" and decided:
            d = dec.decide(t_lookup, n_all, rest, per_tok)
            timings.update(predicted_restore_s=d.restore_s, predicted_recompute_s=d.recompute_s)
            if not d.restore:
                return result(new_cache(model, []), 0, "recompute", d.reason)
        coder = _Coder(fp, kv_codec, None)
        try:
            use_codec = coder.agree(lks[0].fingerprint_id, fp.model_id)
            need = [_needed(lk, n) for lk in lks]
            G = max(got for _, got in need)
            shape = (len(rows), fp.n_kv_heads, G, fp.head_dim)
            kv = [(torch.empty(shape, dtype=dt, device=device),
                   torch.empty(shape, dtype=dt, device=device)) for _ in range(fp.n_layers)]
            t1 = time.perf_counter()
            fetched = 0
            nf = client.native_fetcher(fetch_streams) if use_codec else None
            for b, (keys, got) in enumerate(need):
                views = [(k[b], v[b]) for k, v in kv]
                try:
                    run = _FetchRows(client, nf, keys, fetch_streams, use_codec, dt,
                                     lks[b].fingerprint_id)
                except (errors.DataLoss, errors.NotFound) as e:
                    raise _ChunkLost(b, lks[b].matched_tokens, e) from e
                try:
                    while True:
                        try:
                            batch = run.batch(DECODE_BATCH if decided else 1)
                        except (errors.DataLoss, errors.NotFound) as e:
                            raise _ChunkLost(b, lks[b].matched_tokens, e) from e
                        if not batch:
                            break
                        if use_codec:
                            fetched += coder.kvc.decode_chunks_into(batch, views, pos_offset=0)
                        else:
                            fetched += sum(_copy_raw(c, views, fp, dt) for c in batch)
                        if not decided:     # first restore ever: decide from its first chunk
                            decided = True
                            if use_codec:
                                coder.kvc.synchronize()
                            _sync(device)
                            d = dec.decide(t_lookup, n_all, rest,
                                           (time.perf_counter() - t1) / fetched)
                            timings.update(predicted_restore_s=d.restore_s,
                                           predicted_recompute_s=d.recompute_s)
                            if not d.restore:
                                dec.add_restore(fetched, time.perf_counter() - t1)
                                return result(new_cache(model, []), 0, "recompute",
                                              d.reason + " (first chunk timed)")
                finally:
                    if use_codec:           # the decode may read the fetch buffer until then
                        coder.kvc.synchronize()
                    run.close()
            timings["fetch"] = "libe8kv e8kv_fetch (C)" if nf is not None else "grpcio"
            if use_codec:
                coder.kvc.synchronize()
        finally:
            coder.close()
        if G > n:
            kv = [(k[:, :, :n], v[:, :, :n]) for k, v in kv]
        cache = new_cache(model, kv)
        dt_restore = time.perf_counter() - t1
        dec.add_restore(fetched, dt_restore)
        timings.update(restore_s=dt_restore, restore_tok_s=fetched / dt_restore,
                       fetch_streams=fetch_streams,
                       codec=getattr(coder.kvc, "name", type(coder.kvc).__name__)
                       if use_codec else "raw (daemon decodes)")
        if policy == "restore":
            reason = "policy=restore"
        else:
            reason = d.reason
        return result(cache, n, "restore", reason)


    try:
        return attempt(None)
    except _ChunkLost as e:
        # The daemon quarantined a corrupt chunk (DataLoss) or it left the store (evicted,
        # purged: NotFound) after the Lookup matched it: the next Lookup stops before it.
        log.warning("restore_prefix: %s; looking up again", e)
        first = e
    try:
        return attempt(f"{first}; looked up again")
    except _ChunkLost as e:
        log.warning("restore_prefix: looked up again, and then %s; restoring nothing", e)
        new_ids, new_mask = _arrange(ids, mask, rows, 0)
        return Restored(new_cache(model, []), 0, decision="miss",
                        reason=f"{first}; looked up again, and then {e}: nothing restored",
                        input_ids=new_ids, attention_mask=new_mask,
                        cache_kwarg=cache_kwarg(model), timings={}, fingerprint=fp,
                        decider=decider_for(client, model, fp))


def _release_leases(client, lks, err):
    """Ends the leases of restore_prefix's lookups lks (Client.release_lease), so that the
    chunks it read or skipped are not pinned for e8kvd's --lookup-lease-ms (30 s) after it
    returns: meanwhile a DeleteSession with purge_chunks kept them all ("kept: a lookup
    lease holds them"), and once the session was gone nothing could purge them. Skipped
    after ``err`` e8kv.Unavailable (daemon down or not answering: the release would wait
    for its deadline too; the leases run out by themselves); a failed release is logged."""
    if isinstance(err, errors.Unavailable):         # DeadlineExceeded too (a subclass)
        return
    t = client.timeout
    for lk in lks:
        try:
            client.release_lease(lk, timeout=min(t, 10.0) if t else 10.0)
        except errors.E8kvError as e:
            log.warning("restore_prefix: could not end a lookup's lease (it runs out after "
                        "%d ms): %s", lk.lease_ms, e)


class _ChunkLost(Exception):
    """A fetch of restore_prefix lost a chunk that its Lookup had matched (DataLoss: corrupt,
    now quarantined; NotFound: evicted or purged meanwhile)."""

    def __init__(self, row, matched, err):
        super().__init__(row, matched, err)
        self.row, self.matched, self.err = row, matched, err

    def __str__(self):
        what = "corrupt (e8kv.DataLoss, quarantined by the daemon)" \
            if isinstance(self.err, errors.DataLoss) else \
            "gone since the Lookup (e8kv.NotFound: evicted or purged)"
        return (f"a chunk of row {self.row}'s stored prefix ({self.matched} tokens matched) was "
                f"{what}: {self.err.message}")

def _nothing_stored(fp, lks, chunk_tokens):
    """The miss reason when a row's Lookup matched no chunk at all: most often the restore's
    fingerprint (or chunk size) is not the store's."""
    fpid = bytes(next(lk for lk in lks if lk.matched_tokens == 0).fingerprint_id).hex()[:16]
    preset = fp.codec.preset if fp.HasField("codec") and fp.codec.preset else "default"
    return (f"nothing stored for this fingerprint matches the start of the prompt "
            f"(fingerprint id {fpid}..., model_id {fp.model_id!r}, preset {preset}, chunks of "
            f"{chunk_tokens} tokens): a different model_id, preset/codec or model config than "
            "at store time gives a different fingerprint, and a different chunk_tokens "
            "different chunks; store and restore must use the same. With those equal, the "
            "prompt's first chunk is not stored (never stored, evicted, purged, or stored with "
            "fewer tokens: chunks match whole)")


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
           "calibrate", "decider_for", "Decider", "load_gguf", "cache_kwarg", "output_cache",
           "cache_layers", "new_cache", "layer_types", "positions_from_mask", "Restored",
           "StoreResult", "errors", "DEFAULT_FETCH_STREAMS"]
