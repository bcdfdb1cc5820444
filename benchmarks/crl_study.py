"""Does CRL pretraining help? The paper's central claim at small scale, on real motion.

Data: ../shared/data/cmu/cmu_train.npz (CMU motion capture, 63 sequences) filmed by virtual
cameras with detector-like 2D noise; split by sequence into train / validation / test.
For each seed: CRL pretraining on the 2D of the training sequences, then finetuning with a
fraction of the 3D labels (default 10% of the training videos), against finetuning from scratch
with the same labels, steps and seed. Both are scored on the test sequences.

Everything runs through the CLI, as a user would::

    python benchmarks/crl_study.py --seeds 0 1 2 --out docs/crl-study

writes ``docs/crl-study/results.json`` and ``docs/crl-study.md`` (the tables and the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import DUALPOSE, run  # noqa: E402
from crl_diagnostics import diagnose  # noqa: E402

from dualpose.model.config import TEMPORAL_POS_EMB  # noqa: E402
from dualpose.train.crl import TARGET_NORMS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT.parent / "shared" / "data" / "cmu" / "cmu_train.npz"


def study_params(root: Path, args) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["storage"]["root"] = str(root / "artifacts")
    params["datasets"]["cmu"]["enabled"] = True
    params["datasets"]["cmu"]["files"]["motion"] = str(CMU)
    params["datasets"]["cmu"]["options"] = {"seed": 0, "test_fraction": 0.2, "cameras": args.cameras}
    params["train_dataset"] = "cmu"
    params["clips"]["length"] = args.T
    params["masking"]["views"] = args.views
    params["clips"]["splits"]["validation_fraction"] = 0.15
    params["model"]["overrides"] = {"depth": args.depth, "dim": args.dim, "layer_scale_init": args.layer_scale}
    params["model"]["overrides"]["temporal_pos_emb"] = args.temporal_pos_emb
    params["pretrain"].update({"epochs": args.pretrain_epochs, "batch_size": 32, "top_k_blocks": args.top_k,
                               "ema_start": args.ema_start, "ema_end": args.ema_end, "target": args.target,
                               "target_norm": args.target_norm,
                               "fresh_masks": not args.same_masks})
    params["finetune"].update({"epochs": args.finetune_epochs, "batch_size": args.finetune_batch,
                               "label_fraction": args.label_fraction})
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "crl-study")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dualpose-crl-study"))
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--views", type=int, default=2, help="masked views per clip in pretraining")
    ap.add_argument("--T", type=int, default=27)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--layer-scale", type=float, default=1e-5, help="layer-scale initialisation of every block")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=60)
    ap.add_argument("--finetune-batch", type=int, default=8)
    ap.add_argument("--label-fraction", type=float, default=0.1)
    # The paper's 0.999 -> 0.9999 assumes ~1e5 steps; a run of ~1e3 steps needs a faster teacher
    # (time constants of 100 -> 1000 steps), or the teacher stays at its random initialisation.
    ap.add_argument("--ema-start", type=float, default=0.99)
    ap.add_argument("--ema-end", type=float, default=0.999)
    ap.add_argument("--target-norm", choices=list(TARGET_NORMS), default="instance",
                    help="normalisation of each target block: over the clip's tokens, each joint over the batch, "
                         "over each joint's frames, per token")
    ap.add_argument("--target", choices=["ffn", "output"], default="ffn",
                    help="CRL target: the top blocks' pre-residual FFN outputs (data2vec) or their outputs (v1)")
    ap.add_argument("--same-masks", action="store_true", help="reuse the table's masks every epoch (v1)")
    ap.add_argument("--temporal-pos-emb", choices=list(TEMPORAL_POS_EMB), default="learned")
    ap.add_argument("--baseline", type=Path, nargs="+", default=None,
                    help="other studies' output folders (e.g. docs/crl-study-long) whose paired gains to show "
                         "beside these, on the same seeds")
    ap.add_argument("--scratch-from", type=Path, default=None,
                    help="another study's output folder whose scratch arms to reuse (same seed): the scratch "
                         "arm does not depend on pretraining, and reruns of it are bit-identical; refused "
                         "unless every setting the scratch arm depends on matches")
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from results.json")
    args = ap.parse_args()
    if args.report_only:
        write_markdown(json.loads((args.out / "results.json").read_text()), args.out.with_suffix(".md"))
        return
    if not CMU.exists():
        sys.exit(f"{CMU} not found: this study needs the CMU data in ../shared/data/cmu")

    dp = DUALPOSE
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    results["settings"] = {k: ([str(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], Path)
                               else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
                         f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    scratch_runs = reusable_scratch_runs(args)
    for seed in args.seeds:
        if any(r["seed"] == seed for r in results["runs"]):
            continue
        root = args.work / f"seed{seed}"
        root.mkdir(parents=True, exist_ok=True)
        params = root / "params.yaml"
        params.write_text(yaml.safe_dump(study_params(root, args)))
        log = root / "log.txt"
        p = ["-p", str(params)]
        record = {"seed": seed, "seconds": {}}
        t = record["seconds"]
        t["data"] = sum(run(dp + [stage, "cmu"] + p, log) for stage in ("prepare", "clips", "mask"))
        seed_o = ["-o", f"seed={seed}"]
        t["pretrain"] = run(dp + ["pretrain", "--fresh"] + p + seed_o, log)
        record["pretrain"] = json.loads((root / "artifacts/models/pretrain/metrics.json").read_text())
        record["diagnostics"] = diagnose(str(params))
        for init in ("pretrained", "scratch"):
            if init == "scratch" and seed in scratch_runs:
                record["scratch"] = {**scratch_runs[seed], "reused_from": str(args.scratch_from)}
                continue
            o = seed_o + ["-o", f"finetune.init={init}"]
            t[f"finetune_{init}"] = run(dp + ["finetune", "--fresh"] + p + o, log)
            finetune = json.loads((root / "artifacts/models/finetune/metrics.json").read_text())
            t[f"evaluate_{init}"] = run(dp + ["evaluate"] + p + o, log)
            metrics = json.loads((root / "artifacts/eval/cmu/metrics.json").read_text())
            record[init] = {
                "test_mpjpe_mm": metrics["mpjpe_mm"], "test_p_mpjpe_mm": metrics["p_mpjpe_mm"],
                "test_n_mpjpe_mm": metrics["n_mpjpe_mm"], "best_val_mpjpe_mm": finetune["best_val_mpjpe_mm"],
                "best_epoch": finetune["best_epoch"], "steps": finetune["steps"],
                "train_clips": finetune["train_clips"],
            }
        results["runs"].append(record)
        results_path.write_text(json.dumps(results, indent=1))
        print(json.dumps(record, indent=1), flush=True)
    write_markdown(results, args.out.with_suffix(".md"))


# The settings a scratch arm depends on (the others only change pretraining).
SCRATCH_SETTINGS = ("cameras", "T", "depth", "dim", "layer_scale", "finetune_epochs", "finetune_batch",
                    "label_fraction", "temporal_pos_emb")


def reusable_scratch_runs(args) -> dict[int, dict]:
    """Seed -> scratch record of ``args.scratch_from``'s study, after checking its settings match."""
    if args.scratch_from is None:
        return {}
    base = json.loads((args.scratch_from / "results.json").read_text())
    wrong = [f"{k}: {base['settings'].get(k)!r} there, {getattr(args, k)!r} here" for k in SCRATCH_SETTINGS
             if base["settings"].get(k) != getattr(args, k)]
    if wrong:
        sys.exit(f"--scratch-from {args.scratch_from}: its scratch arms ran with other settings ({'; '.join(wrong)})")
    return {r["seed"]: r["scratch"] for r in base["runs"]}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def paired_gain(runs: list[dict], key: str) -> list[float]:
    """Pretrained minus scratch per seed (negative: pretraining helped)."""
    return [r["pretrained"][key] - r["scratch"][key] for r in runs]


def _repo_relative(path: Path) -> str:
    """``path`` as written from the repository root when it lies inside it."""
    path = path if path.is_absolute() else ROOT / path
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _baselines(settings: dict) -> list[Path]:
    """The study folders named by ``--baseline`` (one path in older results, a list now) that exist."""
    named = settings.get("baseline") or []
    folders = [Path(f) if Path(f).is_absolute() else ROOT / f for f in ([named] if isinstance(named, str) else named)]
    return [f for f in folders if (f / "results.json").exists()]


def write_markdown(results: dict, path: Path) -> None:
    runs = results["runs"]
    s = results["settings"]
    earlier = ROOT / "docs" / "crl-study"  # the first study (v1) and its rerun (v2), shown beside any study
    v1 = json.loads((earlier / "results-v1.json").read_text())["runs"] if (earlier / "results-v1.json").exists() else []
    v2 = [] if path.resolve() == earlier.with_suffix(".md").resolve() or not (earlier / "results.json").exists() \
        else json.loads((earlier / "results.json").read_text())["runs"]
    lines = [
        "# CRL pretraining on real motion (CMU), small scale"
        + (f": `{s['target_norm']}`-normalised targets" if s.get("target_norm", "instance") != "instance" else ""),
        "",
        f"Written by `benchmarks/crl_study.py` from `{path.stem}/results.json`; every number below was measured "
        "by that script.",
        "",
        f"Machine: {results['machine']}.",
        "",
        "## Setup",
        "",
        f"- Data: `../shared/data/cmu/cmu_train.npz` (63 sequences, 11,070 frames at 30 fps) filmed by "
        f"{s['cameras']} virtual camera(s) with detector-like 2D noise; 20% of the sequences are the test set, "
        "15% of the remaining recordings the validation set (model selection), the rest train.",
        f"- Model: XS shrunk to {s['depth']} blocks x {s['dim']} channels, T = {s['T']}, layer scale initialised "
        f"to {s.get('layer_scale', 1e-5):g}, temporal position embedding `{s.get('temporal_pos_emb', 'none')}`.",
        f"- Pretraining: CRL on the 2D of the training clips ({s['views']} masked views each, "
        f"{'the same masks every epoch' if s.get('same_masks', True) else 'a new mask per clip, epoch and view'}), "
        f"{s['pretrain_epochs']} epochs, K = {s['top_k']}, targets = the top blocks' "
        f"{'FFN outputs before layer scale and the last residual (data2vec)' if s.get('target') == 'ffn' else 'outputs'}, "
        f"each normalised `{s.get('target_norm', 'instance')}`, EMA decay {s['ema_start']} -> {s['ema_end']}.",
        f"- Finetuning: {int(s['label_fraction'] * 100)}% of the training videos keep their 3D labels; "
        f"{s['finetune_epochs']} epochs at batch {s['finetune_batch']}, identical for both arms (same seed, steps, "
        "data order).",
        "- Score: test MPJPE / P-MPJPE (mm) of the validation-selected weights, flip TTA. Token-local R²: how "
        "much of a token's teacher target the best linear map of its own input explains "
        "(`benchmarks/crl_diagnostics.py`, 256 training clips, after pretraining).",
        "",
        "## Results",
        "",
        "| seed | pretrained P1 | scratch P1 | pretrained P2 | scratch P2 | pretrain final loss | token-local R² "
        "| position-only R² |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        r2 = r.get("diagnostics", {}).get("linear_r2")
        r2_pos = r.get("diagnostics", {}).get("position_r2")
        lines.append(f"| {r['seed']} | {r['pretrained']['test_mpjpe_mm']:.1f} | {r['scratch']['test_mpjpe_mm']:.1f} | "
                     f"{r['pretrained']['test_p_mpjpe_mm']:.1f} | {r['scratch']['test_p_mpjpe_mm']:.1f} | "
                     f"{r['pretrain']['final_loss']:.4f} | {'' if r2 is None else f'{r2:.3f}'} | "
                     f"{'' if r2_pos is None else f'{r2_pos:.3f}'} |")
    cols = [[r[a][k] for r in runs] for a, k in (("pretrained", "test_mpjpe_mm"), ("scratch", "test_mpjpe_mm"),
                                                  ("pretrained", "test_p_mpjpe_mm"), ("scratch", "test_p_mpjpe_mm"))]
    lines += ["| mean ± sd | " + " | ".join(_mean_sd(c) for c in cols) + " | | | |", ""]
    baseline = []
    for folder in _baselines(s):
        base = json.loads((folder / "results.json").read_text())
        bs = base["settings"]
        label = (f"baseline: `{bs.get('target_norm', 'instance')}` target norm, {bs['pretrain_epochs']} pretraining "
                 f"epochs (`{folder.name}`)")
        baseline.append((label, [r for r in base["runs"] if r["seed"] in {x["seed"] for x in runs}]))
    gains = [("this study", runs)] + baseline + ([("before (v1: post-residual targets, same masks every epoch, no frame "
                                        "order; `crl-study/results-v1.json`)", v1)] if v1 else []) \
        + ([("v2: `instance` FFN targets, fresh masks, learned frame table, 2 pretraining epochs "
             "(`crl-study/results.json`)", v2)] if v2 else [])
    lines += ["Paired gain (pretrained minus scratch, same seed; negative = pretraining helped):", "",
              "| run | P1 per seed (mm) | P1 mean ± sd | P2 mean ± sd |", "|---|---|---|---|"]
    for name, rr in gains:
        p1, p2 = paired_gain(rr, "test_mpjpe_mm"), paired_gain(rr, "test_p_mpjpe_mm")
        lines.append(f"| {name} | {', '.join(f'{g:+.1f}' for g in p1)} | {_mean_sd(p1)} | {_mean_sd(p2)} |")
    secs: dict[str, float] = {}
    for r in runs:
        for k, v in r["seconds"].items():
            secs[k] = secs.get(k, 0.0) + v
    reused = sorted({r["scratch"]["reused_from"] for r in runs if "reused_from" in r["scratch"]})
    lines += ["", "Time taken (all seeds, wall clock): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in secs.items())
              + (f". The scratch arms are those of `{'`, `'.join(reused)}` (same seeds and finetuning settings; "
                 "a scratch arm does not depend on pretraining)." if reused else ""),
              "", "## Command", "", "```bash",
              "python benchmarks/crl_study.py --seeds " + " ".join(str(r["seed"]) for r in runs)
              + f" --cameras {s['cameras']} --views {s['views']} --T {s['T']} --depth {s['depth']} --dim {s['dim']}"
              f" --layer-scale {s.get('layer_scale', 1e-5):g}"
              f" --top-k {s['top_k']} --pretrain-epochs {s['pretrain_epochs']}"
              f" --finetune-epochs {s['finetune_epochs']} --finetune-batch {s['finetune_batch']}"
              f" --label-fraction {s['label_fraction']}"
              f" --ema-start {s['ema_start']} --ema-end {s['ema_end']}"
              f" --target {s.get('target', 'output')} --temporal-pos-emb {s.get('temporal_pos_emb', 'none')}"
              + (f" --target-norm {s['target_norm']}" if s.get("target_norm", "instance") != "instance" else "")
              + (" --baseline " + " ".join(_repo_relative(f) for f in _baselines(s)) if _baselines(s) else "")
              + (" --same-masks" if s.get("same_masks") else "")
              + (f" --scratch-from {s['scratch_from']}" if s.get("scratch_from") else ""),
              "```", ""]
    reading = path.with_name(path.stem + "-reading.md")
    if reading.exists():  # the hand-written interpretation, kept apart from the generated figures
        lines += [reading.read_text()]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
