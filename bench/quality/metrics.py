"""Quality metrics of the harness: KL, NLL, bootstrap intervals, SNR, attention-output error.

All reductions over the vocabulary are done in float64. Windows have equal token counts, so a
pooled mean over tokens equals the mean of the windows' means; the paired bootstrap resamples
windows (the unit that is independent), keeping each window's base and codec values together.
"""
import numpy as np
import torch


def token_stats(logits: torch.Tensor, targets: torch.Tensor):
    """logits [T, V] -> (log-probs float64 [T, V], NLL per token [T], argmax [T])."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    nll = -lp.gather(1, targets[:, None])[:, 0]
    return lp, nll, lp.argmax(dim=-1)


def kl_per_token(lp_base: torch.Tensor, lp_codec: torch.Tensor) -> torch.Tensor:
    """KL(base || codec) in nats per token, float64 [T]."""
    return (lp_base.exp() * (lp_base - lp_codec)).sum(dim=-1)


def bootstrap_ci(base_nll: np.ndarray, codec_nll: np.ndarray, n_boot: int = 2000,
                 seed: int = 0):
    """Paired bootstrap over windows. base_nll, codec_nll: [W] mean NLL per window.
    Returns dict with dnll, dnll_ci95, dppl_pct, dppl_ci95 (percent)."""
    base_nll = np.asarray(base_nll, np.float64)
    codec_nll = np.asarray(codec_nll, np.float64)
    diff = codec_nll - base_nll
    w = len(diff)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, w, size=(n_boot, w))
    boot = diff[idx].mean(axis=1)
    d = float(diff.mean())
    lo, hi = np.percentile(boot, [2.5, 97.5])
    pct = lambda x: float(np.expm1(x) * 100.0)   # noqa: E731
    return {"dnll": d, "dnll_ci95": [float(lo), float(hi)],
            "dppl_pct": pct(d), "dppl_ci95": [pct(lo), pct(hi)]}


class LayerStats:
    """Per layer: K and V signal-to-noise ratio (dB, energy pooled over all windows) and the
    distribution of the attention-output relative error ||o - o'|| / ||o|| over (query head,
    query token), kept as a log10 histogram so that medians and p95 cost no memory."""
    BINS = np.linspace(-8.0, 1.0, 901)

    def __init__(self, n_layers: int):
        self.sig = np.zeros((n_layers, 2))
        self.err = np.zeros((n_layers, 2))
        self.hist = np.zeros((n_layers, len(self.BINS) + 1), np.int64)
        self.exact = np.zeros(n_layers, np.int64)

    def add_kv(self, layer: int, kind: int, x: np.ndarray, y: np.ndarray):
        x64 = x.astype(np.float64)
        self.sig[layer, kind] += float((x64 ** 2).sum())
        self.err[layer, kind] += float(((x64 - y.astype(np.float64)) ** 2).sum())

    def add_attn(self, layer: int, rel: np.ndarray):
        rel = rel.reshape(-1)
        zero = rel == 0
        self.exact[layer] += int(zero.sum())
        idx = np.searchsorted(self.BINS, np.log10(rel[~zero]))
        self.hist[layer] += np.bincount(idx, minlength=len(self.BINS) + 1)

    def _quantile(self, layer: int, q: float) -> float:
        total = self.exact[layer] + self.hist[layer].sum()
        rank = q * total
        if rank <= self.exact[layer]:
            return 0.0
        c = np.cumsum(self.hist[layer]) + self.exact[layer]
        i = int(np.searchsorted(c, rank))
        if i == 0:
            return float(10 ** self.BINS[0])
        return float(10 ** self.BINS[min(i, len(self.BINS) - 1)])  # upper edge of the bin

    def summary(self) -> list:
        out = []
        for layer in range(self.sig.shape[0]):
            snr = [float(10 * np.log10(self.sig[layer, k] / self.err[layer, k]))
                   if self.err[layer, k] > 0 else float("inf") for k in (0, 1)]
            out.append({"layer": layer, "k_snr_db": snr[0], "v_snr_db": snr[1],
                        "attn_rel_err_median": self._quantile(layer, 0.5),
                        "attn_rel_err_p95": self._quantile(layer, 0.95)})
        return out


def attention_output(q: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
                     k_cont: torch.Tensor, v_cont: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention of the continuation's queries over prefix + continuation.
    q [H, C, D] (RoPE applied), k/v_prefix [Hkv, P, D], k/v_cont [Hkv, C, D] -> [H, C, D]."""
    c = q.shape[1]
    p = k_prefix.shape[1]
    k = torch.cat([k_prefix, k_cont], dim=1)[None]
    v = torch.cat([v_prefix, v_cont], dim=1)[None]
    mask = torch.ones(c, p + c, dtype=torch.bool)
    mask[:, p:] = torch.ones(c, c, dtype=torch.bool).tril()
    return torch.nn.functional.scaled_dot_product_attention(q[None], k, v, attn_mask=mask,
                                                            enable_gqa=True)[0]


def rel_error(o: torch.Tensor, o2: torch.Tensor) -> np.ndarray:
    num = (o - o2).norm(dim=-1)
    den = o.norm(dim=-1).clamp_min(1e-30)
    return (num / den).numpy()
