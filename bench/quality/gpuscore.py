"""Batched scoring for the device run (bench/quality/fastrun.py): one forward for all codecs.

For one window, row 0 of the batch is the base (the prefix's own KV), row 1 the identity codec's
decoded KV, and the other rows each codec's decoded KV: the continuation runs once over all of them
(batch n = 1 + codecs), so the identity row is computed by the same kernels as the base and must
give bit-identical logits. Everything here stays on the model's device; what is returned is
small (per-row sums and histograms) and copied to the host once per window.

The figures are those of harness.run_window, computed the same way: log-softmax in float64 over the
vocabulary, KL(base || codec) per token, NLL of the targets, argmax agreement; per layer the K and V
error energy (float64) and the attention-output relative error of the continuation's real
(RoPE-applied) queries over prefix (decoded) + continuation (exact) KV, as log10 histograms with
metrics.LayerStats' bins.
"""
import torch

from . import metrics
from . import model as M


def prefix_kv(model, ids: torch.Tensor) -> torch.Tensor:
    """The prefix's KV cache as one float32 tensor [L, 2, H_kv, P, D] on the model's device."""
    with torch.no_grad():
        out = model(input_ids=ids[None], use_cache=True)
    return torch.stack([torch.stack([k[0], v[0]]) for k, v in
                        M.cache_layers(out.past_key_values)]).float().contiguous()


class QCapture:
    """Hooks on every layer's q_proj: row 0's pre-RoPE queries [H, C, D] of the next forward."""

    def __init__(self, model, n_heads: int, head_dim: int):
        self.q = {}
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            self.handles.append(layer.self_attn.q_proj.register_forward_hook(
                self._hook(i, n_heads, head_dim)))

    def _hook(self, i, h, d):
        def fn(_mod, _inp, out):
            o = out.detach()[0]
            self.q[i] = o.reshape(o.shape[0], h, d).permute(1, 0, 2).float()
        return fn

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def _forward(model, decs, cont):
    """Logits [n, C, V] of the continuation over each row's prefix cache; and the cache."""
    n = decs.shape[0]
    cache = M.make_cache([(decs[:, l, 0], decs[:, l, 1]) for l in range(decs.shape[1])])
    with torch.no_grad():
        logits = model(input_ids=cont[None].expand(n, -1).contiguous(), past_key_values=cache,
                       use_cache=True).logits
    return logits, cache


class Scorer:
    def __init__(self, model, rope_tables, info: dict):
        self.model, self.rope = model, rope_tables
        self.h, self.d = info["n_heads"], info["head_dim"]
        self.bins = torch.tensor(metrics.LayerStats.BINS, dtype=torch.float64,
                                 device=next(model.parameters()).device)

    def window(self, decs: torch.Tensor, cont: torch.Tensor, targets: torch.Tensor) -> dict:
        """decs [n, L, 2, H, P, D] (row 0 the base, row 1 the identity codec); cont, targets
        [C]. Returns host tensors: nll_mean [n], kl_sum [n], kl_mean [n], agree [n] (top-1 equal
        to row 0's), sig [L, 2], err [n, L, 2], hist [n, L, bins+1], exact [n, L], and
        identity_exact (bool), identity_max_diff (float)."""
        n, L, _, hkv, P, D = decs.shape
        cap = QCapture(self.model, self.h, self.d)
        try:
            logits, cache = _forward(self.model, decs, cont)
        finally:
            cap.close()
        out = {"identity_max_diff": float((logits[1] - logits[0]).abs().max()),
               "identity_exact": bool(torch.equal(logits[1], logits[0])
                                      and torch.equal(decs[1], decs[0]))}
        lp = torch.log_softmax(logits.double(), dim=-1)
        del logits
        nll = -lp.gather(2, targets.view(1, -1, 1).expand(n, -1, 1))[..., 0]
        am = lp.argmax(-1)
        pb = lp[0].exp()
        kl = torch.stack([(pb * (lp[0] - lp[i])).sum(-1) for i in range(n)])
        del lp, pb
        out.update(nll_mean=nll.mean(1), kl_sum=kl.sum(1), kl_mean=kl.mean(1),
                   agree=(am == am[0:1]).sum(1), finite=bool(torch.isfinite(kl).all()
                                                             and torch.isfinite(nll).all()))
        base = decs[0].double()
        out["sig"] = (base * base).sum((2, 3, 4))
        out["err"] = torch.stack([((decs[i].double() - base) ** 2).sum((2, 3, 4))
                                  for i in range(n)])
        del base
        hist, exact = self._attention(decs, cap.q, M.cache_layers(cache), P)
        out["hist"], out["exact"] = hist, exact
        return {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in out.items()}

    def _attention(self, decs, q_pre, full, P):
        n, L = decs.shape[:2]
        nb = len(self.bins) + 1
        hist = torch.zeros(n, L, nb, dtype=torch.int64, device=decs.device)
        exact = torch.zeros(n, L, dtype=torch.int64, device=decs.device)
        for layer in range(L):
            q = self.rope.rotate(q_pre[layer], P, 1.0).to(torch.float32)     # [H, C, D]
            c = q.shape[1]
            kc = full[layer][0][0, :, P:].float()
            vc = full[layer][1][0, :, P:].float()
            k = torch.cat([decs[:, layer, 0], kc[None].expand(n, -1, -1, -1)], 2)
            v = torch.cat([decs[:, layer, 1], vc[None].expand(n, -1, -1, -1)], 2)
            mask = torch.ones(c, P + c, dtype=torch.bool, device=q.device)
            mask[:, P:] = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
            o = torch.nn.functional.scaled_dot_product_attention(
                q[None].expand(n, -1, -1, -1), k, v, attn_mask=mask, enable_gqa=True)
            rel = ((o - o[0:1]).norm(dim=-1) / o[0:1].norm(dim=-1).clamp_min(1e-30))
            rel = rel.reshape(n, -1).double()
            zero = rel == 0
            exact[:, layer] = zero.sum(1)
            idx = torch.bucketize(torch.log10(torch.where(zero, 1.0, rel)), self.bins)
            hist[:, layer].scatter_add_(1, idx, (~zero).to(torch.int64))
        return hist, exact

    def probe(self, decs: torch.Tensor, cont: torch.Tensor, pos: torch.Tensor,
              want: torch.Tensor) -> torch.Tensor:
        """Top-1 hits on the repeated span per row [n] (host)."""
        logits, _ = _forward(self.model, decs, cont)
        return (logits[:, pos].argmax(-1) == want[None]).sum(1).cpu()
