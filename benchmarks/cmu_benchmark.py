"""The CMU real-motion benchmark behind the README's results table.

Data and settings: ``profiles/cmu.yaml`` (both CMU files, one virtual camera per take, split by
subject, takes with joint flips rejected). Arms, all through the CLI as a user runs them, scored
on the test subjects (P1, P2, MPJVE, acceleration error, and P1 on the references' windows):

=================  =========================================================================
arm                what changes
=================  =========================================================================
no-frame-order     scratch, ``temporal_pos_emb: none`` (the reference's set-like backbone)
scratch            scratch, the default frame signal (the relative frame bias since the 12-epoch A/B)
frame-relative     scratch, relative frame bias on the temporal attention logits, explicit
frame-table        scratch, the learned (T, C) frame table (the default before that A/B)
frame-rotary       scratch, rotary frame embedding on the temporal attention's q and k
crl                CRL pretraining (FFN targets, a new mask per epoch), then finetuning
scratch-10pct      scratch, 10% of the training videos keep their 3D labels
crl-10pct          CRL pretraining, then finetuning with the same 10% of labels
=================  =========================================================================

Paired arms share seed, steps and data order. Every arm's best weights are kept under
``<work>/arms/<arm>/``. Usage::

    python benchmarks/cmu_benchmark.py [--work /tmp/dualpose-cmu] [--arms scratch crl ...]

writes ``benchmarks/RESULTS-cmu.json`` and ``benchmarks/RESULTS-cmu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import DUALPOSE, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "cmu.yaml"
CMU = ROOT.parent / "shared" / "data" / "cmu"

ARMS: dict[str, list[str]] = {
    "no-frame-order": ["-o", "finetune.init=scratch", "-o", "model.overrides.temporal_pos_emb=none"],
    "scratch": ["-o", "finetune.init=scratch"],
    "frame-relative": ["-o", "finetune.init=scratch", "-o", "model.overrides.temporal_pos_emb=relative"],
    "frame-table": ["-o", "finetune.init=scratch", "-o", "model.overrides.temporal_pos_emb=learned"],
    "frame-rotary": ["-o", "finetune.init=scratch", "-o", "model.overrides.temporal_pos_emb=rotary"],
    "crl": ["-o", "finetune.init=pretrained"],
    "scratch-10pct": ["-o", "finetune.init=scratch", "-o", "finetune.label_fraction=0.1"],
    "crl-10pct": ["-o", "finetune.init=pretrained", "-o", "finetune.label_fraction=0.1"],
}
NEEDS_PRETRAINING = {"crl", "crl-10pct"}
METRICS = ("mpjpe_mm", "p_mpjpe_mm", "mpjve_mm_per_frame", "accel_error_mm_per_frame2")


def work_params(work: Path) -> Path:
    """profiles/cmu.yaml with absolute paths and the work folder as storage root."""
    params = yaml.safe_load(PROFILE.read_text())
    params["storage"]["root"] = str(work / "artifacts")
    for key, rel in params["datasets"]["cmu"]["files"].items():
        params["datasets"]["cmu"]["files"][key] = str((PROFILE.parent / rel).resolve())
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dualpose-cmu"))
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--epochs-10pct", type=int, default=10, help="finetuning epochs of the 10%%-label arms")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS-cmu")
    ap.add_argument("--seed", type=int, default=0, help="training seed (arms are recorded as ARM-seedN for N > 0)")
    ap.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="added to every stage's overrides, data and pretraining included (e.g. "
                         "finetune.epochs=8 for a longer budget, clips.length=81 for longer clips)")
    ap.add_argument("--tag", default="", help="suffix of the recorded arm names (e.g. t81 -> scratch-t81)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON")
    args = ap.parse_args()
    if args.report_only:
        write_markdown(json.loads(args.out.with_suffix(".json").read_text()), args.out.with_suffix(".md"), args)
        return
    if not (CMU / "cmu_extra_train.npz").exists():
        sys.exit(f"{CMU} lacks the CMU files: this benchmark reads ../shared/data/cmu")
    args.work.mkdir(parents=True, exist_ok=True)
    params = work_params(args.work)
    for arm in ("scratch-10pct", "crl-10pct"):
        ARMS[arm] = ARMS[arm] + ["-o", f"finetune.epochs={args.epochs_10pct}"]
    log = args.work / "log.txt"
    dp = DUALPOSE
    extra = [a for o in args.override for a in ("-o", o)]
    p = ["-p", str(params)] + extra
    results_path = args.out.with_suffix(".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {"arms": {}}
    results["machine"] = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    results["profile"] = str(PROFILE.relative_to(ROOT))

    artifacts = args.work / "artifacts"
    if not (artifacts / "masked" / "cmu.parquet").exists():
        results["data_seconds"] = sum(run(dp + [stage, "cmu"] + p, log) for stage in ("prepare", "clips", "mask"))
    results["manifest"] = json.loads((artifacts / "tables" / "cmu" / "manifest.json").read_text())
    if NEEDS_PRETRAINING & set(args.arms) and not (artifacts / "models" / "pretrain" / "model.safetensors").exists():
        seconds = run(dp + ["pretrain", "--fresh"] + p, log)
        metrics = json.loads((artifacts / "models" / "pretrain" / "metrics.json").read_text())
        if args.tag:  # a tagged run (other clips or model) has its own pretraining
            results.setdefault("pretrain_by_tag", {})[args.tag] = {"seconds": seconds, "metrics": metrics}
        else:
            results["pretrain_seconds"], results["pretrain"] = seconds, metrics
    for arm in args.arms:
        overrides = ARMS[arm] + ["-o", f"seed={args.seed}"]
        name = "-".join([arm] + ([args.tag] if args.tag else []) + ([f"seed{args.seed}"] if args.seed else []))
        record = {"overrides": extra + overrides,
                  "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python "
                             + " ".join(["benchmarks/cmu_benchmark.py", *sys.argv[1:]])}
        record["finetune_seconds"] = run(dp + ["finetune", "--fresh"] + p + overrides, log)
        record["finetune"] = json.loads((artifacts / "models" / "finetune" / "metrics.json").read_text())
        record["evaluate_seconds"] = run(dp + ["evaluate"] + p + overrides, log)
        metrics = json.loads((artifacts / "eval" / "cmu" / "metrics_detail.json").read_text())
        record["test"] = {k: metrics.get(k) for k in METRICS}
        record["test"]["reference_windows_mpjpe_mm"] = metrics.get("reference_windows", {}).get("mpjpe_mm")
        keep = args.work / "arms" / name
        if keep.exists():
            shutil.rmtree(keep)
        shutil.copytree(artifacts / "models" / "finetune", keep)
        shutil.copy(artifacts / "eval" / "cmu" / "metrics_detail.json", keep / "test-metrics.json")
        results["arms"][name] = record
        results_path.write_text(json.dumps(results, indent=1))
        print(name, json.dumps(record["test"]), flush=True)
    write_markdown(results, args.out.with_suffix(".md"), args)


def write_markdown(results: dict, path: Path, args) -> None:
    m = results["manifest"]
    notes = m.get("notes", {})
    lines = [
        "# CMU real-motion benchmark",
        "",
        f"Written by `benchmarks/cmu_benchmark.py` from `{path.with_suffix('.json').name}`; every figure was "
        "measured by that script on this machine: " + results["machine"] + ".",
        "",
        f"Data (`{results['profile']}`): {m['rows']} frames in {m['videos']} videos "
        f"({', '.join(f'{k} {v}' for k, v in m['splits'].items())}); "
        f"{notes.get('rejected_sequences', 0)} takes rejected for joint flips faster than "
        f"{notes.get('max_joint_speed_ms')} m/s ({', '.join(notes.get('rejected_names', []))}).",
        "",
        "| arm | P1 mm | P2 mm | MPJVE mm/frame | accel. error mm/frame² | P1, references' windows | "
        "finetune steps | finetune min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in results["arms"].items():
        t = r["test"]
        lines.append(f"| {arm} | {t['mpjpe_mm']:.1f} | {t['p_mpjpe_mm']:.1f} | {t['mpjve_mm_per_frame']:.2f} | "
                     f"{t['accel_error_mm_per_frame2']:.2f} | {t['reference_windows_mpjpe_mm']:.1f} | "
                     f"{r['finetune']['steps']} | {r['finetune_seconds'] / 60:.1f} |")
    if "pretrain_seconds" in results:
        lines += ["", f"CRL pretraining: {results['pretrain']['steps']} steps in "
                      f"{results['pretrain_seconds'] / 60:.1f} min (shared by the untagged crl arms)."]
    for tag, pre in results.get("pretrain_by_tag", {}).items():
        lines += ["", f"CRL pretraining of the `{tag}` arms (their own clips and model): {pre['metrics']['steps']} "
                      f"steps in {pre['seconds'] / 60:.1f} min."]
    # the first arms were recorded without their command; these are the commands that produced them
    legacy = ["OMP_NUM_THREADS=1 python benchmarks/cmu_benchmark.py --epochs-10pct 10",
              "OMP_NUM_THREADS=1 python benchmarks/cmu_benchmark.py --seed 1 --arms no-frame-order "
              "--work /tmp/dualpose-cmu-no-frame-order --out /tmp/no-frame-order",
              "OMP_NUM_THREADS=1 python benchmarks/cmu_benchmark.py --seed 1 --arms scratch "
              "--work /tmp/dualpose-cmu-scratch --out /tmp/scratch"]
    recorded = list(dict.fromkeys(r["command"] for r in results["arms"].values() if "command" in r))
    commands = (legacy if any("command" not in r for r in results["arms"].values()) else []) + recorded
    lines += ["", "Each arm's overrides of the profile are in the JSON (`overrides`). Commands (1 thread per run; "
              "runs with other seeds or overrides used their own work folders):", "", "```bash", *commands, "```", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
