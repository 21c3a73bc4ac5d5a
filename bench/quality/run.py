"""e8kv quality benchmark: SmolLM2-135M on WikiText-2, E8 against the other KV codecs.

usage: python -m bench.quality.run [--quick] [--out build/bench/quality.json]
                                   [--plot build/bench/quality_rd.png] [--no-e8] ...
Full run (make bench-quality): W=128 windows for each P in {512, 1024, 2048}, C=256.
Quick run (QUICK=1, the smoke test in make test): 2 windows, P=512, 1 retrieval probe.
Exit status 0 when every check held; 1 with a message on stderr otherwise (identity codec not
exactly lossless, a NaN anywhere, a codec that stored no bytes, the e8 codec missing).
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from . import baselines as B
from . import harness as H
from . import metrics
from . import model as M
from . import report


def build_codecs(rope, info, with_e8: bool):
    cs = [B.Identity(), B.Int8(),
          B.Kivi(2), B.Kivi(4), B.Kivi(2, window=32),
          B.TurboQuant(2), B.TurboQuant(3), B.TurboQuant(4),
          B.NexusQuant(2, 2, rope), B.NexusQuant(3, 2, rope), B.NexusQuant(3, 3, rope),
          B.NexusQuant(4, 4, rope)]
    if with_e8:
        from . import e8adapter
        cs += e8adapter.codecs(rope, info["n_layers"], info["n_kv_heads"], info["head_dim"])
    return cs


def log(msg):
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_one(model, tok_ids, rope, codecs, P, C, W, n_probes, seed):
    n_layers = model.config.num_hidden_layers
    avail = len(tok_ids) // (P + C + 1)
    notes = []
    if W > avail:
        notes.append(f"only {avail} non-overlapping windows of {P}+{C}+1 tokens in the text; "
                     f"asked for {W}")
        W = avail
    points = {c.label(): H.Point(c, n_layers) for c in codecs}
    base_nll = []
    for w in range(W):
        t0 = time.time()
        win = tok_ids[w * (P + C + 1):(w + 1) * (P + C + 1)]
        base_nll.append(H.run_window(model, rope, codecs, points, win, P, C))
        log(f"P={P} window {w + 1}/{W}: base NLL {base_nll[-1]:.4f} ({time.time() - t0:.1f} s)")
    rng = np.random.default_rng(seed)
    probe_base = [0, 0]
    for i in range(n_probes):
        prefix, cont = H.make_probe(tok_ids, rng, P, span=32, lead=16,
                                    vocab=model.config.vocab_size)
        ok, tot = H.run_probe(model, codecs, points, prefix, cont, lead=16, span=32)
        probe_base[0] += ok
        probe_base[1] += tot
        log(f"P={P} probe {i + 1}/{n_probes}: base {ok}/{tot}")
    return run_dict(points, base_nll, probe_base, W, P, C, n_probes, notes, seed)


def point_dict(pt, base_nll, seed) -> dict:
    """One codec configuration's figures (issue 3's point fields and the harness's extras)."""
    ci = metrics.bootstrap_ci(base_nll, pt.nll, seed=seed)
    return {
        "codec": pt.codec.codec, "config": pt.codec.config, "bpe": pt.bpe(),
        "kl_mean": pt.kl_sum / pt.tokens, "dppl_pct": ci["dppl_pct"],
        "dppl_ci95": ci["dppl_ci95"], "top1_agree": pt.agree / pt.tokens,
        "dnll": ci["dnll"], "dnll_ci95": ci["dnll_ci95"],
        "kl_window_max": max(pt.kl_windows),
        "retrieval_acc": (pt.probe_correct / pt.probe_total) if pt.probe_total else None,
        "stored_bytes": pt.bytes, "elements": pt.elements,
        "encode_s": pt.encode_s, "decode_s": pt.decode_s,
        "layers": pt.layers.summary(),
    }


def run_dict(points, base_nll, probe_base, W, P, C, n_probes, notes, seed) -> dict:
    """One prefix length's result: its points, base PPL, probes and the matched-bpe check."""
    out = [point_dict(pt, base_nll, seed) for pt in points.values()]
    run = {"windows": W, "prefix_tokens": P, "continuation_tokens": C,
           "base_nll": float(np.mean(base_nll)), "base_ppl": float(np.exp(np.mean(base_nll))),
           "retrieval_probes": n_probes,
           "retrieval_base_acc": probe_base[0] / probe_base[1] if probe_base[1] else None,
           "points": out, "notes": notes}
    run["comparison"] = report.compare(out)
    return run


def result_dict(runs, quick, with_e8, t0) -> dict:
    """quality.json: issue 3's top-level fields from the longest prefix, every run, summary."""
    head = runs[-1]
    result = {"model": M.MODEL_ID, "windows": head["windows"],
              "prefix_tokens": head["prefix_tokens"], "points": head["points"],
              "runs": runs, "quick": quick, "e8": with_e8,
              "summary": {}, "machine": {"cpu": platform.processor() or platform.machine(),
                                         "torch_threads": torch.get_num_threads(),
                                         "torch": torch.__version__},
              "elapsed_s": None}
    for run in runs:
        best = report.closest_e8(run["points"])
        if best:
            result["summary"][f"P{run['prefix_tokens']}"] = {
                "e8_closest_to_2.75_bpe": best["config"], "bpe": best["bpe"],
                "dppl_pct": best["dppl_pct"], "dppl_ci95": best["dppl_ci95"]}
    result["elapsed_s"] = time.time() - t0
    return result


def print_tables(result) -> None:
    for run in result["runs"]:
        print(f"\nP={run['prefix_tokens']}, {run['windows']} windows, base PPL "
              f"{run['base_ppl']:.3f}, retrieval base acc {run['retrieval_base_acc']}")
        print("\n".join(report.table_lines(run["points"])))
        losses = [c for c in run["comparison"] if not c["e8_wins"]]
        for c in losses:
            print(f"  baseline lower at matched bpe: {c['other']} KL {c['other_kl']:.3e} vs "
                  f"e8 {c['e8_kl']:.3e} at {c['bpe']:.3f} bpe ({c['at']})")


def check(result, with_e8):
    """The smoke checks: returns a list of problems (empty when all is well)."""
    bad = []
    for run in result["runs"]:
        codecs = {p["codec"] for p in run["points"]}
        if with_e8 and "e8" not in codecs:
            bad.append("no e8 codec point")
        for p in run["points"]:
            name = f"P={run['prefix_tokens']} {p['codec']}:{p['config']}"
            for key in ("bpe", "kl_mean", "dppl_pct", "top1_agree", "dnll"):
                if not report.finite(p[key]):
                    bad.append(f"{name}: {key} is {p[key]}")
            if not p["stored_bytes"] > 0 or not p["bpe"] > 0:
                bad.append(f"{name}: no stored bytes counted")
            if p["codec"] == "identity":
                if p["kl_mean"] != 0.0 or p["dnll"] != 0.0 or p["top1_agree"] != 1.0:
                    bad.append(f"{name}: identity is not exactly lossless")
                if p["bpe"] < 32.0:
                    bad.append(f"{name}: identity stores float32, bpe {p['bpe']} < 32")
            elif p["bpe"] >= 32.0:
                bad.append(f"{name}: bpe {p['bpe']} not below the float32 identity")
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 windows, P=512, 1 probe")
    ap.add_argument("--windows", type=int, help="windows per prefix length (full: 128)")
    ap.add_argument("--prefix", type=int, nargs="+", help="prefix lengths (full: 512 1024 2048)")
    ap.add_argument("--continuation", type=int, default=256)
    ap.add_argument("--probes", type=int, help="retrieval probes per prefix length (full: 16)")
    ap.add_argument("--no-e8", action="store_true", help="baselines only (says so in the JSON)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("E8KV_THREADS", "1")),
                    help="torch threads (default 1: fastest on a few shared cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-cache", help="directory for the dequantized model (made once)")
    ap.add_argument("--out", default="build/bench/quality.json")
    ap.add_argument("--plot", default="build/bench/quality_rd.png")
    a = ap.parse_args(argv)
    W = a.windows or (2 if a.quick else 128)
    Ps = a.prefix or ([512] if a.quick else [512, 1024, 2048])
    n_probes = a.probes if a.probes is not None else (1 if a.quick else 16)

    t0 = time.time()
    model, tok = M.load(a.threads, a.model_cache)
    rope = M.rope_description(model.config)
    tok_ids = M.tokenize_text(tok)
    codecs = build_codecs(rope, M.shape_info(model.config), not a.no_e8)
    log(f"model loaded, {len(tok_ids)} WikiText-2 tokens, {len(codecs)} codec configs, "
        f"rope {rope}")
    runs = []
    try:
        for P in Ps:
            runs.append(run_one(model, tok_ids, rope, codecs, P, a.continuation, W, n_probes,
                                a.seed))
    except H.HarnessError as e:
        print(f"quality: FAILED: {e}", file=sys.stderr)
        return 1
    result = result_dict(runs, a.quick, not a.no_e8, t0)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    report.plot(result, a.plot)
    print_tables(result)
    print(f"\nwrote {a.out} and {a.plot} in {result['elapsed_s']:.0f} s")
    bad = check(result, not a.no_e8)
    for b in bad:
        print(f"quality: FAILED: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
