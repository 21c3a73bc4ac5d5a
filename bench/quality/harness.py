"""The measurement loop: prefix -> KV cache -> codec bytes -> decoded cache -> continuation.

For each window (P prefix tokens, C continuation tokens, and one more token as the last target):
  1. run the prefix once; copy its cache (float32, [n_kv_heads, P, head_dim] per layer);
  2. base: score the continuation on a cache rebuilt from those copies (hooks capture the
     continuation's pre-RoPE queries; its own K/V are read back from the cache afterwards);
  3. for every codec: encode every layer's K and V to bytes, decode from the bytes only,
     rebuild the cache, score the continuation (its own KV is computed exactly by the model).
The identity codec goes through exactly the same path as the base, so its logits must be
bit-identical; anything else is a harness or codec bug and stops the run (HarnessError).

Retrieval probe: a span of random token ids is planted in the prefix; the continuation is a short
lead of text followed by the same span, and top-1 accuracy is scored on the second copy (from
its second token on): induction heads must find the first copy in the compressed prefix.
"""
import time

import numpy as np
import torch

from . import metrics
from . import model as M
from .rope import rope_apply


class HarnessError(RuntimeError):
    pass


class Point:
    """Accumulators for one codec configuration."""

    def __init__(self, codec, n_layers):
        self.codec = codec
        self.bytes = 0
        self.elements = 0
        self.kl_sum = 0.0
        self.tokens = 0
        self.agree = 0
        self.nll = []            # mean NLL per window
        self.kl_windows = []
        self.layers = metrics.LayerStats(n_layers)
        self.probe_correct = 0
        self.probe_total = 0
        self.encode_s = 0.0
        self.decode_s = 0.0

    def bpe(self) -> float:
        return self.bytes * 8.0 / self.elements if self.elements else float("nan")


def _roundtrip(codec, kv, pos0, point):
    """Encode the whole cache to bytes and decode it back from those bytes only; counts the
    bytes and the elements. Codecs with encode_cache/decode_cache (e8: chunks of all layers)
    are called once; the others once per (layer, K or V) frame."""
    elements = sum(k.size + v.size for k, v in kv)
    t0 = time.perf_counter()
    if hasattr(codec, "encode_cache"):
        blobs = codec.encode_cache(kv, pos0)
        t1 = time.perf_counter()
        out = codec.decode_cache([bytes(b) for b in blobs])
    else:
        blobs, out = [], []
        for k, v in kv:
            fk, fv = codec.encode(k, "k", pos0), codec.encode(v, "v", pos0)
            blobs += [fk, fv]
        t1 = time.perf_counter()
        for i in range(0, len(blobs), 2):
            out.append((codec.decode(bytes(blobs[i])), codec.decode(bytes(blobs[i + 1]))))
    t2 = time.perf_counter()
    point.encode_s += t1 - t0
    point.decode_s += t2 - t1
    if any(not isinstance(b, (bytes, bytearray)) or len(b) == 0 for b in blobs):
        raise HarnessError(f"{codec.label()}: encode returned no bytes")
    if len(out) != len(kv):
        raise HarnessError(f"{codec.label()}: decoded {len(out)} layers, expected {len(kv)}")
    for (k, v), (k2, v2) in zip(kv, out):
        for x, y, name in ((k, k2, "K"), (v, v2, "V")):
            if y.shape != x.shape or y.dtype != np.float32:
                raise HarnessError(f"{codec.label()}: decoded {name} {y.shape} {y.dtype}, "
                                   f"expected {x.shape} float32")
            if not np.isfinite(y).all():
                raise HarnessError(f"{codec.label()}: decoded {name} has NaN/Inf")
    point.bytes += sum(len(b) for b in blobs)
    point.elements += elements
    return out


def _to_cache(kv):
    return M.make_cache([(torch.from_numpy(k)[None], torch.from_numpy(v)[None]) for k, v in kv])


def _prefix_kv(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids[None], use_cache=True)
    return [(k[0].float().numpy().copy(), v[0].float().numpy().copy())
            for k, v in M.cache_layers(out.past_key_values)]


def _continue(model, kv, cont_ids):
    cache = _to_cache(kv)
    with torch.no_grad():
        logits = model(input_ids=cont_ids[None], past_key_values=cache, use_cache=True).logits[0]
    return logits, cache


def run_window(model, rope, codecs, points, win, P, C):
    ids = torch.from_numpy(win)
    kv = _prefix_kv(model, ids[:P])
    cont, targets = ids[P:P + C], ids[P + 1:P + C + 1]
    cap = M.QKVCapture(model)
    try:
        base_logits, base_cache = _continue(model, kv, cont)
    finally:
        cap.close()
    lp_b, nll_b, am_b = metrics.token_stats(base_logits, targets)
    full = M.cache_layers(base_cache)
    exact = []
    for layer, (k, v) in enumerate(kv):
        q = torch.from_numpy(rope_apply(cap.q[layer], rope, P).astype(np.float32))
        kc, vc = full[layer][0][0, :, P:].float(), full[layer][1][0, :, P:].float()
        o = metrics.attention_output(q, torch.from_numpy(k), torch.from_numpy(v), kc, vc)
        exact.append((q, kc, vc, o))
    for codec in codecs:
        pt = points[codec.label()]
        dec = _roundtrip(codec, kv, 0, pt)
        logits, _ = _continue(model, dec, cont)
        if codec.codec == "identity":
            for (k, v), (k2, v2) in zip(kv, dec):
                if not (np.array_equal(k, k2) and np.array_equal(v, v2)):
                    raise HarnessError("identity codec changed the KV cache")
            if not torch.equal(logits, base_logits):
                raise HarnessError("identity codec: logits differ from the base run "
                                   f"(max |diff| {(logits - base_logits).abs().max():.3e})")
        lp_c, nll_c, am_c = metrics.token_stats(logits, targets)
        kl = metrics.kl_per_token(lp_b, lp_c)
        if not torch.isfinite(kl).all() or not torch.isfinite(nll_c).all():
            raise HarnessError(f"{codec.label()}: non-finite KL or NLL")
        pt.kl_sum += float(kl.sum())
        pt.kl_windows.append(float(kl.mean()))
        pt.tokens += C
        pt.agree += int((am_c == am_b).sum())
        pt.nll.append(float(nll_c.mean()))
        for layer, ((k, v), (k2, v2)) in enumerate(zip(kv, dec)):
            pt.layers.add_kv(layer, 0, k, k2)
            pt.layers.add_kv(layer, 1, v, v2)
            q, kc, vc, o = exact[layer]
            o2 = metrics.attention_output(q, torch.from_numpy(k2), torch.from_numpy(v2), kc, vc)
            pt.layers.add_attn(layer, metrics.rel_error(o, o2))
    return float(nll_b.mean())


def make_probe(tokens, rng, P, span, lead, vocab):
    """One retrieval probe: (prefix ids [P], continuation ids [lead + span]).
    The random span sits at a random place in the first half of the prefix."""
    start = int(rng.integers(0, len(tokens) - P - lead - 1))
    text = tokens[start:start + P + lead]
    s = rng.integers(1000, vocab, size=span)
    at = int(rng.integers(8, P // 2))
    prefix = np.concatenate([text[:at], s, text[at:P - span]])
    cont = np.concatenate([text[P - span:P - span + lead], s])
    return prefix.astype(np.int64), cont.astype(np.int64)


def run_probe(model, codecs, points, prefix, cont, lead, span):
    """Top-1 accuracy on the repeated span (positions that predict span[1:])."""
    kv = _prefix_kv(model, torch.from_numpy(prefix))
    c = torch.from_numpy(cont)
    pos = torch.arange(lead, lead + span - 1)            # logits at these positions
    want = c[lead + 1:lead + span]
    base_logits, _ = _continue(model, kv, c)
    base_ok = int((base_logits[pos].argmax(-1) == want).sum())
    for codec in codecs:
        pt = points[codec.label()]
        scratch = Point(codec, len(kv))                   # probe bytes do not enter bpe
        dec = _roundtrip(codec, kv, 0, scratch)
        logits, _ = _continue(model, dec, c)
        pt.probe_correct += int((logits[pos].argmax(-1) == want).sum())
        pt.probe_total += span - 1
    return base_ok, span - 1
