"""CRL gain and target locality against pretraining length, one line per target normalisation.

Reads the ``results*.json`` files that ``benchmarks/crl_study.py`` writes and plots, per target
normalisation (``pretrain.target_norm``) and pretraining length, the paired P1 gain (pretrained
minus scratch, same seed; negative = pretraining helped) and the token-local R² of the teacher's
targets after pretraining, with the issue's two bars: the first study's gain (v1) and R² 0.9::

    python benchmarks/crl_budget_plot.py docs/crl-study-long/results-2ep.json docs/crl-study-long/results.json \\
        docs/crl-study-24ep-instance/results.json docs/crl-study-48ep-instance/results.json \\
        docs/crl-study-joint/results-2ep.json \\
        docs/crl-study-joint/results.json docs/crl-study-24ep-joint/results.json \\
        --v1 docs/crl-study/results-v1.json --out docs/crl-budget.png

Only studies that differ in nothing but target normalisation and pretraining length belong on one
plot: the script refuses a mix.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

# Settings every study on one plot must share (pretraining length and target norm are the axes):
# finetuning, model, data, and the rest of the pretraining recipe.
SHARED = ("T", "depth", "dim", "cameras", "finetune_epochs", "finetune_batch", "label_fraction",
          "temporal_pos_emb", "target", "top_k", "views", "layer_scale", "ema_start", "ema_end", "same_masks")


def load(paths: list[Path]) -> dict[str, dict[int, list[dict]]]:
    """target norm -> pretraining epochs -> runs, after checking the studies are comparable."""
    series: dict[str, dict[int, list[dict]]] = {}
    first = None
    for path in paths:
        results = json.loads(path.read_text())
        s = results["settings"]
        if first is None:
            first = (path, s)
        wrong = [f"{k}: {first[1].get(k)!r} in {first[0]}, {s.get(k)!r} here" for k in SHARED if s.get(k) != first[1].get(k)]
        if wrong:
            sys.exit(f"{path}: not comparable with the other studies ({'; '.join(wrong)})")
        runs = series.setdefault(s.get("target_norm", "instance"), {}).setdefault(int(s["pretrain_epochs"]), [])
        runs += results["runs"]
    return series


def gains(runs: list[dict]) -> list[float]:
    return [r["pretrained"]["test_mpjpe_mm"] - r["scratch"]["test_mpjpe_mm"] for r in runs]


def table(series: dict[str, dict[int, list[dict]]]) -> list[str]:
    lines = ["| target norm | pretraining epochs | seeds | P1 gain per seed (mm) | P1 gain mean ± sd | "
             "token-local R² | position-only R² |", "|---|---|---|---|---|---|---|"]
    for norm, by_epochs in series.items():
        for epochs in sorted(by_epochs):
            runs = by_epochs[epochs]
            g = gains(runs)
            r2 = [r["diagnostics"]["linear_r2"] for r in runs if "linear_r2" in r.get("diagnostics", {})]
            r2p = [r["diagnostics"]["position_r2"] for r in runs if "position_r2" in r.get("diagnostics", {})]
            sd = f" ± {statistics.stdev(g):.1f}" if len(g) > 1 else ""
            lines.append(f"| `{norm}` | {epochs} | {', '.join(str(r['seed']) for r in runs)} | "
                         f"{', '.join(f'{x:+.1f}' for x in g)} | {statistics.mean(g):+.1f}{sd} | "
                         f"{f'{min(r2):.2f}-{max(r2):.2f}' if r2 else ''} | "
                         f"{f'{min(r2p):.2f}-{max(r2p):.2f}' if r2p else ''} |")
    return lines


def plot(series: dict[str, dict[int, list[dict]]], v1_gain: float | None, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gain, ax_r2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (norm, by_epochs) in enumerate(series.items()):
        epochs = sorted(by_epochs)
        colour = f"C{i}"
        means = [statistics.mean(gains(by_epochs[e])) for e in epochs]
        sds = [statistics.stdev(gains(by_epochs[e])) if len(by_epochs[e]) > 1 else 0.0 for e in epochs]
        ax_gain.errorbar(epochs, means, yerr=sds, color=colour, marker="o", capsize=4, label=f"{norm} (mean ± sd)")
        for e in epochs:
            ax_gain.scatter([e * (1 + 0.04 * (i - 0.5))] * len(by_epochs[e]), gains(by_epochs[e]), color=colour,
                            s=12, alpha=0.5)
            r2 = [r["diagnostics"]["linear_r2"] for r in by_epochs[e] if "linear_r2" in r.get("diagnostics", {})]
            ax_r2.scatter([e * (1 + 0.04 * (i - 0.5))] * len(r2), r2, color=colour, s=16, label=norm if e == epochs[0] else None)
    if v1_gain is not None:
        ax_gain.axhline(v1_gain, color="grey", ls="--", lw=1, label=f"v1 gain ({v1_gain:+.1f} mm)")
    ax_gain.axhline(0.0, color="black", lw=0.5)
    ax_r2.axhline(0.9, color="grey", ls="--", lw=1, label="R² 0.9 (issue 8.2)")
    for ax in (ax_gain, ax_r2):
        ax.set_xscale("log")
        ax.set_xlabel("pretraining epochs")
        ticks = sorted({e for by in series.values() for e in by})
        ax.minorticks_off()
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.legend(fontsize=8)
    ax_gain.set_ylabel("P1 pretrained - scratch (mm, same seed)")
    ax_gain.set_title("Paired gain (negative = CRL helped)")
    ax_r2.set_ylabel("token-local R² of the targets")
    ax_r2.set_ylim(0, 1.02)
    ax_r2.set_title("How much a target is its token's own input")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+", help="crl_study results*.json files")
    ap.add_argument("--v1", type=Path, default=None, help="the first study's results (its mean gain is drawn as a bar)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args()
    series = load(args.results)
    v1 = statistics.mean(gains(json.loads(args.v1.read_text())["runs"])) if args.v1 else None
    plot(series, v1, args.out)
    print("\n".join(table(series)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
