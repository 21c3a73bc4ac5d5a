"""quality.json and the rate-distortion plot quality_rd.png.

JSON (issue 3): {"model", "windows", "prefix_tokens", "points": [{"codec", "config", "bpe",
"kl_mean", "dppl_pct", "dppl_ci95", "top1_agree", ...}]}. Each point also carries dnll,
dnll_ci95, retrieval_acc and per-layer statistics; the top level adds runs (one per prefix
length when several are measured), the comparison at matched bpe and the machine.
"""
import math

import numpy as np

COLORS = {"e8": "#d62728", "nexusquant": "#9467bd", "turboquant": "#1f77b4", "kivi": "#2ca02c",
          "int8": "#7f7f7f", "identity": "#000000"}
MARKERS = {"e8": "o", "nexusquant": "D", "turboquant": "s", "kivi": "^", "int8": "v"}


def _interp_log_kl(points, bpe):
    """log-KL of a codec family at `bpe`, linear in bpe between its measured points; None
    outside the family's measured range (no extrapolation)."""
    pts = sorted((p["bpe"], p["kl_mean"]) for p in points if p["kl_mean"] > 0)
    if not pts or bpe < pts[0][0] or bpe > pts[-1][0]:
        return None
    for (b0, k0), (b1, k1) in zip(pts, pts[1:]):
        if b0 <= bpe <= b1:
            t = 0 if b1 == b0 else (bpe - b0) / (b1 - b0)
            return math.exp((1 - t) * math.log(k0) + t * math.log(k1))
    return pts[-1][1] if bpe == pts[-1][0] else None


def compare(points, lo=2.0, hi=4.5):
    """For every e8 point with lo <= bpe <= hi: each baseline family's KL at the same measured
    bpe (interpolated on its own curve) and whether e8 is lower. Also the reverse: each baseline
    point in range against the e8 curve."""
    e8 = [p for p in points if p["codec"] == "e8"]
    fams = sorted({p["codec"] for p in points} - {"e8", "identity"})
    rows = []
    for p in sorted(e8, key=lambda p: p["bpe"]):
        if not lo <= p["bpe"] <= hi:
            continue
        for f in fams:
            kl = _interp_log_kl([q for q in points if q["codec"] == f], p["bpe"])
            if kl is not None:
                rows.append({"at": f"e8 {p['config']}", "bpe": p["bpe"], "e8_kl": p["kl_mean"],
                             "other": f, "other_kl": kl, "e8_wins": p["kl_mean"] < kl})
    for q in points:
        if q["codec"] in ("e8", "identity") or not lo <= q["bpe"] <= hi:
            continue
        kl = _interp_log_kl(e8, q["bpe"])
        if kl is not None:
            rows.append({"at": f"{q['codec']} {q['config']}", "bpe": q["bpe"], "e8_kl": kl,
                         "other": q["codec"], "other_kl": q["kl_mean"],
                         "e8_wins": kl < q["kl_mean"]})
    return rows


def closest_e8(points, target=2.75):
    e8 = [p for p in points if p["codec"] == "e8"]
    return min(e8, key=lambda p: abs(p["bpe"] - target)) if e8 else None


def table_lines(points):
    head = f"{'codec':<11}{'config':<24}{'bpe':>7}{'KL nats':>11}{'dPPL %':>9}" \
           f"{'95% CI':>19}{'top1':>8}{'retr':>7}"
    lines = [head]
    for p in sorted(points, key=lambda p: (p["codec"] != "identity", p["codec"], p["bpe"])):
        ci = f"[{p['dppl_ci95'][0]:+.2f},{p['dppl_ci95'][1]:+.2f}]"
        lines.append(f"{p['codec']:<11}{p['config'][:23]:<24}{p['bpe']:>7.3f}"
                     f"{p['kl_mean']:>11.2e}{p['dppl_pct']:>+9.3f}{ci:>19}"
                     f"{p['top1_agree']:>8.4f}{_num(p.get('retrieval_acc')):>7.3f}")
    return lines


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result.get("runs") or [result]
    fig = plt.figure(figsize=(17, 6.2 * len(runs)))
    for r, run in enumerate(runs):
        ax = fig.add_axes([0.05, 1 - (r + 1) / len(runs) + 0.09 / len(runs), 0.42,
                           0.8 / len(runs)])
        pts = [p for p in run["points"] if p["codec"] != "identity"]
        fams = {}
        for p in pts:                          # one curve per codec (and per KIVI window)
            fam = p["codec"] + (" r32" if p["codec"] == "kivi" and "r32" in p["config"] else "")
            fams.setdefault(fam, []).append(p)
        for fam in sorted(fams, key=lambda f: (f != "e8", f)):
            fp = sorted(fams[fam], key=lambda p: p["bpe"])
            base = fam.split(" ")[0]
            ax.plot([p["bpe"] for p in fp], [max(p["kl_mean"], 1e-9) for p in fp],
                    marker=MARKERS.get(base, "o"), color=COLORS.get(base), label=fam,
                    lw=2.6 if fam == "e8" else 1.3, ms=7, ls="--" if " r32" in fam else "-")
            for p in fp:
                ax.annotate(p["config"].split(" ")[0], (p["bpe"], max(p["kl_mean"], 1e-9)),
                            textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=COLORS.get(base))
        ax.set_yscale("log")
        ax.axvspan(2.0, 4.5, color="#f3f3f3", zorder=0)
        ax.set_xlabel("bits per element (measured: all stored bytes x 8 / elements)")
        ax.set_ylabel("mean per-token KL(base || codec), nats (log)")
        ax.set_title(f"{result['model']}: WikiText-2, {run['windows']} windows, "
                     f"P={run['prefix_tokens']} prefix + {run['continuation_tokens']} scored")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right")
        tx = fig.add_axes([0.5, 1 - (r + 1) / len(runs) + 0.05 / len(runs), 0.49,
                           0.88 / len(runs)])
        tx.axis("off")
        lines = table_lines(run["points"])
        best = closest_e8(run["points"])
        if best:
            lines += ["", f"e8 preset closest to 2.75 bpe: {best['config']} at "
                      f"{best['bpe']:.3f} bpe, dPPL {best['dppl_pct']:+.3f} % "
                      f"[{best['dppl_ci95'][0]:+.3f}, {best['dppl_ci95'][1]:+.3f}]"]
        losses = [c for c in run.get("comparison", []) if not c["e8_wins"]]
        if run.get("comparison"):
            lines.append("matched-bpe check (2..4.5 bpe): " +
                         ("e8 lowest KL everywhere" if not losses else
                          f"{len(losses)} comparisons where a baseline is lower: " +
                          ", ".join(sorted({c['other'] for c in losses}))))
        nq = [p["zstd"] for p in run["points"] if p.get("zstd")]
        if nq:
            z = nq[0]
            basis = (f"zstd-22 on {z['sample_windows']} sample windows" if z["bpe_zstd22_sample"]
                     else z["bpe_basis"])
            lines.append(f"nexusquant bpe: {basis}; KL etc. over all windows")
        lines += ["", "KL: mean per-token KL(base || codec) over the scored continuation;",
                  "dPPL: PPL change, 95% paired bootstrap CI over windows; top1: argmax",
                  "agreement with the base; retr: top-1 on a repeated random span (probe,",
                  f"base {run.get('retrieval_base_acc') or float('nan'):.3f}); shaded: 2..4.5 bpe."]
        tx.text(0, 1, "\n".join(lines), family="monospace", fontsize=8.2, va="top")
    if result.get("complete") is False:
        fig.suptitle(f"PARTIAL RUN: {result.get('stop_reason')}", color="#d62728")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _num(x):
    """A number for a table cell: None (not measured) shows as nan."""
    return float("nan") if x is None else x


def finite(x):
    return isinstance(x, float) and np.isfinite(x)
