"""Per-seed A/B tables of CMU benchmark arms: each arm's test figures, and paired differences.

Reads the JSON files that ``benchmarks/cmu_benchmark.py`` writes (one per lane or seed, as many as
were run) and writes a markdown table of every (arm, seed) record and a table of paired
differences between arms of the same seed (negative = the first arm is better; P1 / P2 in mm,
MPJVE and acceleration error in %), with each seed's value, the mean ± sample sd, and how many
seeds the first arm wins. With ``--plot`` the paired differences are also drawn, one panel per
metric, one dot per seed::

    python benchmarks/paired_arms.py benchmarks/RESULTS-frame-order/frame-order-t81-*.json \\
        --tag t81 --arm none=no-frame-order --arm relative=frame-relative --pair relative:none \\
        --plot benchmarks/RESULTS-frame-order/paired-t81.png

An arm is named by ``LABEL=ARM`` where ARM is the benchmark's arm name (``scratch``,
``frame-relative``, ...); the records of a seed are ``ARM[-TAG][-seedN]``. Arms are only paired
when they saw the same data at the same budget (finetuning steps, training clips, batch): the
script refuses a pair that did not.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

# (record key, column title, paired difference in percent of the second arm?)
METRICS = (("mpjpe_mm", "P1 mm", False), ("p_mpjpe_mm", "P2 mm", False),
           ("mpjve_mm_per_frame", "MPJVE", True), ("accel_error_mm_per_frame2", "accel. error", True))
# What two arms of one seed must share for their difference to be a paired comparison.
SAME_BUDGET = ("steps", "train_clips", "global_batch")


def load(paths: list[Path], arms: dict[str, str], tag: str = "") -> dict[str, dict[int, dict]]:
    """label -> seed -> record, from every file; a (label, seed) found twice is an error."""
    pattern = {label: re.compile(rf"^{re.escape(arm)}{'-' + re.escape(tag) if tag else ''}(?:-seed(\d+))?$")
               for label, arm in arms.items()}
    found: dict[str, dict[int, dict]] = {label: {} for label in arms}
    where: dict[tuple[str, int], Path] = {}
    for path in paths:
        for name, record in json.loads(path.read_text())["arms"].items():
            for label, rx in pattern.items():
                m = rx.match(name)
                if not m:
                    continue
                seed = int(m.group(1) or 0)
                if (label, seed) in where:
                    sys.exit(f"{path}: arm {name!r} (seed {seed}) is also in {where[label, seed]}; "
                             "pass each run once")
                where[label, seed] = path
                found[label][seed] = {**record, "source": path}
    for label, by_seed in found.items():
        if not by_seed:
            sys.exit(f"no record of arm {arms[label]!r}{' with tag ' + repr(tag) if tag else ''} "
                     f"in {', '.join(map(str, paths))}")
    return found


def paired(found: dict[str, dict[int, dict]], a: str, b: str) -> dict[int, tuple[dict, dict]]:
    """seed -> (record of a, record of b) for the seeds both arms ran, checked to share a budget."""
    pairs = {}
    for seed in sorted(set(found[a]) & set(found[b])):
        ra, rb = found[a][seed], found[b][seed]
        wrong = [f"{k}: {ra['finetune'].get(k)} vs {rb['finetune'].get(k)}" for k in SAME_BUDGET
                 if ra["finetune"].get(k) != rb["finetune"].get(k)]
        if wrong:
            sys.exit(f"arms {a!r} and {b!r}, seed {seed}: not a paired comparison ({'; '.join(wrong)}; "
                     f"{ra['source']} and {rb['source']})")
        pairs[seed] = (ra, rb)
    if not pairs:
        sys.exit(f"arms {a!r} and {b!r} share no seed")
    return pairs


def differences(pairs: dict[int, tuple[dict, dict]], key: str, percent: bool) -> list[float]:
    out = []
    for ra, rb in pairs.values():
        x, y = ra["test"][key], rb["test"][key]
        out.append(100.0 * (x - y) / y if percent else x - y)
    return out


def _summary(values: list[float]) -> str:
    per_seed = " / ".join(f"{v:+.1f}" for v in values)
    if len(values) < 2:
        return per_seed
    wins = sum(v < 0 for v in values)
    return (f"{per_seed} (mean {statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}; "
            f"better in {wins}/{len(values)})")


def _selected_epoch(finetune: dict) -> str:
    """1-based epoch of the validation-selected weights (the loop records a 0-based index)."""
    epoch = finetune.get("best_epoch")
    return "-" if epoch is None or epoch < 0 else str(epoch + 1)


def arm_table(found: dict[str, dict[int, dict]], arms: dict[str, str]) -> list[str]:
    lines = ["| arm | seed | P1 mm | P2 mm | MPJVE mm/frame | accel. error mm/frame² | selected epoch | "
             "steps | finetune min |", "|---|---|---|---|---|---|---|---|---|"]
    for label, by_seed in found.items():
        for seed in sorted(by_seed):
            r = by_seed[seed]
            t, f = r["test"], r["finetune"]
            lines.append(f"| `{label}` ({arms[label]}) | {seed} | {t['mpjpe_mm']:.1f} | {t['p_mpjpe_mm']:.1f} | "
                         f"{t['mpjve_mm_per_frame']:.2f} | {t['accel_error_mm_per_frame2']:.2f} | "
                         f"{_selected_epoch(f)} | {f.get('steps', '-')} | {r['finetune_seconds'] / 60:.1f} |")
    return lines


def pair_table(found: dict[str, dict[int, dict]], pair_list: list[tuple[str, str]]) -> list[str]:
    lines = ["| pair (seeds) | " + " | ".join(title + (" %" if pct else "") for _, title, pct in METRICS) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    for a, b in pair_list:
        pairs = paired(found, a, b)
        cells = [_summary(differences(pairs, key, pct)) for key, _, pct in METRICS]
        lines.append(f"| `{a}` vs `{b}` ({', '.join(map(str, pairs))}) | " + " | ".join(cells) + " |")
    return lines


def plot(found: dict[str, dict[int, dict]], pair_list: list[tuple[str, str]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4))
    for ax, (key, title, pct) in zip(axes, METRICS):
        for i, (a, b) in enumerate(pair_list):
            values = differences(paired(found, a, b), key, pct)
            ax.scatter([i] * len(values), values, color="tab:blue", zorder=3, label="seed" if i == 0 else None)
            ax.hlines(statistics.mean(values), i - 0.25, i + 0.25, color="black", zorder=4,
                      label="mean" if i == 0 else None)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(pair_list)), [f"{a}\nvs {b}" for a, b in pair_list])
        ax.set_xlim(-0.6, len(pair_list) - 0.4)
        ax.set_title(f"{title.removesuffix(' mm')} ({'%' if pct else 'mm'})\nbelow 0 = first arm better", fontsize=9)
    axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def _label_arm(text: str) -> tuple[str, str]:
    label, sep, arm = text.partition("=")
    if not sep or not label or not arm:
        raise argparse.ArgumentTypeError(f"--arm takes LABEL=ARM (e.g. none=no-frame-order), got {text!r}")
    return label, arm


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"--pair takes A:B (two --arm labels), got {text!r}")
    return a, b


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="JSON files written by cmu_benchmark.py")
    ap.add_argument("--arm", type=_label_arm, action="append", required=True, metavar="LABEL=ARM")
    ap.add_argument("--pair", type=_pair, action="append", required=True, metavar="A:B",
                    help="difference A minus B per seed (labels of --arm)")
    ap.add_argument("--tag", default="", help="the --tag the arms were run with (e.g. t81)")
    ap.add_argument("--out", type=Path, help="write the markdown here (default: print it)")
    ap.add_argument("--plot", type=Path, help="also draw the paired differences to this PNG")
    args = ap.parse_args(argv)
    arms = dict(args.arm)
    for a, b in args.pair:
        for label in (a, b):
            if label not in arms:
                ap.error(f"--pair {a}:{b}: {label!r} is not an --arm label ({', '.join(arms)})")
    found = load(args.results, arms, args.tag)
    text = "\n".join(arm_table(found, arms) + [""] + pair_table(found, args.pair)) + "\n"
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    else:
        print(text, end="")
    if args.plot:
        plot(found, args.pair, args.plot)


if __name__ == "__main__":
    main()
