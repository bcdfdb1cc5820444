"""One lent-GPU session, prepared on the CPU machine and run on the GPU machine in one command.

Issues 8, 9, 11 and 12 each ask for figures that need a GPU; a lent machine comes for minutes, so
everything it runs is prepared here and run there as one script with a time budget per part:

1. ``perf``: :mod:`gpu_perf` (bf16/fp32, eager/compiled, checkpointing, MFU, largest batch);
2. ``b243``: DualPose-B at T=243 on the CMU benchmark (pretrain, finetune, evaluate), each stage
   started through the SLURM launcher's own code path: the script that
   :func:`pipelines.launchers.slurm.sbatch_script` writes for the stage's
   :class:`~pipelines.launchers.job.RemoteJob` (mixed precision bf16, as the remote launchers
   default to) runs under ``bash`` with ``srun``/``scontrol`` replaced by one-node shims, so
   :mod:`pipelines.remote_stage` stages the inputs from the storage root, runs the stage and
   uploads the outputs exactly as on a cluster;
3. ``xs`` and ``xs-noframe``: the real DualPose-XS (12 x 64, T=27) with the default frame signal
   (the relative frame bias) and without any, the same way, both at once (the frame-order A/B at a GPU budget; the first is a
   candidate for the shipped weights).

Epoch counts are chosen on the GPU from the measured step time of part 1 so that each arm fits its
budget; the chosen counts are recorded. Usage::

    python benchmarks/gpu_session.py prepare                 # here: tables, clips, masks into .gpu/
    python benchmarks/gpu_session.py run --out "$OUT"        # there (device tool), ~8 minutes
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROFILE = REPO / "profiles" / "cmu.yaml"
DATASET = "cmu"

COMMON = ["masking.views=2", "pretrain.target=ffn", "pretrain.save_every_steps=1000000",
          "finetune.save_every_steps=1000000", "evaluate.batch_size=64", "clips.min_length=9"]
ARMS: dict[str, list[str]] = {
    # B at the paper's T; clips every 27 frames (the CPU profile's non-overlapping stride would leave
    # ~220 training clips of 243 frames)
    "b243": ["model.variant=B", "clips.length=243", "clips.train_stride=27", "clips.test_stride=243",
             "pretrain.batch_size=32", "pretrain.top_k_blocks=6", "pretrain.ema_start=0.996",
             "pretrain.ema_end=0.9995", "finetune.batch_size=32", *COMMON],
    # the real XS (the CPU profile shrinks it to 4 x 32)
    "xs": ["model.overrides.depth=12", "model.overrides.dim=64", "clips.length=27", "clips.train_stride=9",
           "clips.test_stride=27", "pretrain.batch_size=64", "pretrain.top_k_blocks=4",
           "pretrain.ema_start=0.995", "pretrain.ema_end=0.9995", "finetune.batch_size=64", *COMMON],
}
ARMS["xs-noframe"] = [*ARMS["xs"], "model.overrides.temporal_pos_emb=none"]

SRUN_SHIM = '#!/bin/sh\n# one-node stand-in for srun: drop its options, run the command\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n'
SCONTROL_SHIM = "#!/bin/sh\necho localhost\n"


# ----------------------------------------------------------------------------------- here (CPU)
def prepare(dest: Path, shared: Path) -> None:
    """Tables once, then clips and masks per arm, each arm a storage root with its params file."""
    from dualpose.config import load_params

    dest.mkdir(parents=True, exist_ok=True)
    tables = None
    for arm, overrides in ARMS.items():
        root = dest / arm
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        params = load_params(PROFILE, [*overrides, f"storage.root={root.resolve()}",
                                       f"datasets.cmu.files.motion={shared / 'cmu_train.npz'}",
                                       f"datasets.cmu.files.extra={shared / 'cmu_extra_train.npz'}"])
        params_file = root / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        if tables is None:
            run_cli(["prepare", DATASET, "-p", str(params_file)])
            tables = root / "tables"
        else:
            shutil.copytree(tables, root / "tables")
        run_cli(["clips", DATASET, "-p", str(params_file)])
        run_cli(["mask", DATASET, "-p", str(params_file)])
        print(f"{arm}: {clip_counts(root)}", flush=True)
    # one copy of the tables travels (the device tool's tree is limited); `run` puts it in every root
    shutil.rmtree(dest / "tables", ignore_errors=True)
    shutil.move(tables, dest / "tables")
    for arm in ARMS:
        shutil.rmtree(dest / arm / "tables", ignore_errors=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {size / 2**20:.1f} MiB", flush=True)


def run_cli(args: list[str]) -> None:
    print("$ dualpose " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dualpose.cli", *args], check=True,
                   env={**os.environ, "DUALPOSE_PROGRESS": "0"})


def clip_counts(root: Path) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(root / "clips" / f"{DATASET}.parquet", columns=["split"])
    counts = pc.value_counts(table["split"].cast(pa.string())).to_pylist()
    return {c["values"]: int(c["counts"]) for c in counts}


# ----------------------------------------------------------------------------------- there (GPU)
def stage_job(arm: str, root: Path, stage: str):
    """The RemoteJob the remote launchers build for ``stage`` (pipelines/launchers/dagster_remote.py)."""
    from pipelines.launchers.job import RemoteJob, job_name
    from pipelines.staging import NAMES, name_of

    inputs = {"pretrain": [NAMES.tables(DATASET), NAMES.clips(DATASET), NAMES.masked(DATASET)],
              "finetune": [NAMES.tables(DATASET), NAMES.clips(DATASET), NAMES.model("pretrain")],
              "evaluate": [NAMES.tables(DATASET), NAMES.clips(DATASET), NAMES.model("finetune")]}[stage]
    outputs = {"pretrain": [NAMES.model("pretrain"), NAMES.run_dir("pretrain")],
               "finetune": [NAMES.model("finetune"), NAMES.run_dir("finetune")],
               "evaluate": [NAMES.eval_dir(DATASET)]}[stage]
    name = job_name("dualpose", arm, stage)
    return RemoteJob(name=name, stage_args=(stage,), root=str(root), params_name="launch/params.yaml",
                     local_root=f"/tmp/dualpose/{name}", inputs=tuple(name_of(i) for i in inputs),
                     outputs=tuple(name_of(o) for o in outputs),
                     env={"DUALPOSE_PROGRESS": "0", "ACCELERATE_MIXED_PRECISION": "bf16"})


def run_stage(arm: str, root: Path, stage: str, work: Path, timeout: float) -> dict:
    from pipelines.launchers.slurm import SlurmShape, sbatch_script

    job = stage_job(arm, root, stage)
    script = work / f"{job.name}.sbatch"
    script.write_text(sbatch_script(job, SlurmShape(gpus_per_node=1, workdir=str(REPO), python=sys.executable)))
    log = work / f"{job.name}.log"
    env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost"}
    start = time.monotonic()
    with log.open("w") as fh:
        try:
            code = subprocess.run(["bash", str(script)], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.monotonic() - start
    print(f"  {arm} {stage}: exit {code} in {seconds:.0f} s", flush=True)
    return {"stage": stage, "exit": code, "seconds": seconds, "log": log.name, "script": script.name}


def step_seconds(perf: dict, variant: str, batch: int, fallback: float) -> float:
    """Seconds per bf16 training step at ``batch``, from gpu_perf's eager figures without
    checkpointing: the figure at that batch, else the nearest batch scaled linearly."""
    runs = [r for r in perf.get("runs", []) if r.get("variant") == variant and r.get("mode") == "train"
            and r.get("precision") == "bf16" and not r.get("compiled") and r.get("checkpointing") == "False"
            and "seconds_median" in r]
    if not runs:
        return fallback
    r = min(runs, key=lambda r: abs(r["batch"] - batch))
    return r["seconds_median"] * batch / r["batch"]


def choose_epochs(params: dict, counts: dict[str, int], step_s: float, budget_s: float,
                  pretrain_share: float = 0.5, lo: int = 1, hi: int = 200) -> tuple[int, int]:
    """Epochs of pretraining and finetuning that fill ``budget_s`` of training time.

    A pretraining step costs ~1.5 training steps (the EMA teacher's forward, the masked views), a
    finetuning step ~1.2 (flip augmentation, validation); one epoch of pretraining sees every clip
    ``masking.views`` times."""
    train = counts.get("train", 1)
    pre_steps = train * params["masking"]["views"] / params["pretrain"]["batch_size"]
    fine_steps = train / params["finetune"]["batch_size"]
    pre = int(budget_s * pretrain_share / (pre_steps * step_s * 1.5))
    fine = int(budget_s * (1 - pretrain_share) / (fine_steps * step_s * 1.2))
    return max(lo, min(hi, pre)), max(lo, min(hi, fine))


def run_arm(arm: str, root: Path, work: Path, perf: dict, budget: float, overhead: float,
            max_steps: int | None = None) -> dict:
    """Pretrain, finetune and evaluate one arm within ``budget`` seconds (``overhead`` per stage)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    counts = clip_counts(root)
    variant = params["model"]["variant"]
    batch = params["pretrain"]["batch_size"]
    step_s = step_seconds(perf, variant, batch, fallback={"B": 0.12, "XS": 0.05}.get(variant, 0.1))
    train_budget = max(10.0, budget - 3 * overhead - 15)
    pre_epochs, fine_epochs = choose_epochs(params, counts, step_s, train_budget)
    params["pretrain"]["epochs"], params["finetune"]["epochs"] = pre_epochs, fine_epochs
    if max_steps:  # a smoke run of the whole path
        params["pretrain"]["max_steps"] = params["finetune"]["max_steps"] = max_steps
    (root / "launch").mkdir(exist_ok=True)
    (root / "launch" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    record = {"arm": arm, "clips": counts, "step_s_estimate": step_s, "pretrain_epochs": pre_epochs,
              "finetune_epochs": fine_epochs, "stages": []}
    print(f"{arm}: {counts}, est. {step_s * 1e3:.0f} ms/step -> {pre_epochs} + {fine_epochs} epochs", flush=True)
    deadline = time.monotonic() + budget
    for stage in ("pretrain", "finetune", "evaluate"):
        left = deadline - time.monotonic()
        if left < 20:
            record["stages"].append({"stage": stage, "exit": "skipped: budget spent"})
            break
        rec = run_stage(arm, root, stage, work, timeout=left + 60)
        record["stages"].append(rec)
        if rec["exit"] != 0:
            break
    record["results"] = collect(root)
    return record


def collect(root: Path) -> dict:
    out: dict = {}
    for stage in ("pretrain", "finetune"):
        model = root / "models" / stage
        if (model / "metrics.json").exists():
            out[stage] = json.loads((model / "metrics.json").read_text())
        hist = model / "history-train.json"
        if hist.exists():
            rates = [r["seq_per_s"] for r in json.loads(hist.read_text()) if "seq_per_s" in r]
            if rates:
                out[f"{stage}_clips_per_s_median"] = statistics.median(rates[len(rates) // 4:] or rates)
    detail = root / "eval" / DATASET / "metrics_detail.json"
    if detail.exists():
        data = json.loads(detail.read_text())
        out["evaluate"] = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    return out


def diagnostics(root: Path, clips: int, timeout: float) -> dict:
    params = root / "launch" / "params.yaml"
    data = yaml.safe_load(params.read_text())
    data["storage"]["root"] = str(root)
    diag_params = root / "diag-params.yaml"
    diag_params.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "crl_diagnostics.py"), str(diag_params),
                              "--clips", str(clips)], capture_output=True, text=True, timeout=timeout)
        return {"exit": out.returncode, "stdout": out.stdout[-4000:], "stderr": out.stderr[-2000:]}
    except subprocess.TimeoutExpired:
        return {"exit": "timeout"}


def environment() -> dict:
    import torch

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        smi = "none (no nvidia-smi)"
    return {"gpu": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def run(out: Path, src: Path, budgets: dict[str, float], parts: list[str], max_steps: int | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/dualpose-gpu-session")
    shutil.rmtree(work, ignore_errors=True)
    (work / "bin").mkdir(parents=True)
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM)):
        (work / "bin" / name).write_text(text)
        (work / "bin" / name).chmod(0o755)
    summary: dict = {"environment": environment(), "budgets_s": budgets, "arms": {}}
    print(json.dumps(summary["environment"]), flush=True)

    def save() -> None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    perf: dict = {}
    if "perf" in parts:
        start = time.monotonic()
        cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_perf.py"), "--budget", str(budgets["perf"]),
               "--out", str(out / "gpu_perf.json")]
        try:
            subprocess.run(cmd, timeout=budgets["perf"] + 90)
        except subprocess.TimeoutExpired:
            print("perf: timed out", flush=True)
        summary["perf_seconds"] = time.monotonic() - start
        if (out / "gpu_perf.json").exists():
            perf = json.loads((out / "gpu_perf.json").read_text())
        save()

    roots = {arm: work / arm for arm in ARMS}
    for arm in ARMS:
        shutil.copytree(src / arm, roots[arm])
        shutil.copytree(src / "tables", roots[arm] / "tables")

    if "b243" in parts:
        summary["arms"]["b243"] = run_arm("b243", roots["b243"], work, perf, budgets["b243"], 12, max_steps)
        save()
    xs_arms = [a for a in ("xs", "xs-noframe") if a in parts]
    if xs_arms:
        with concurrent.futures.ThreadPoolExecutor(len(xs_arms)) as pool:
            futures = {a: pool.submit(run_arm, a, roots[a], work, perf, budgets["xs"], 12, max_steps) for a in xs_arms}
            for a, f in futures.items():
                summary["arms"][a] = f.result()
        save()
    for arm, clips in (("b243", 32), ("xs", 256), ("xs-noframe", 256)):
        if arm in summary["arms"] and (roots[arm] / "models" / "pretrain" / "model.safetensors").exists():
            summary["arms"][arm]["crl_diagnostics"] = diagnostics(roots[arm], clips, budgets["diag"])
    save()
    pack(out / "session.tar.gz", work, roots)
    return 0


def pack(target: Path, work: Path, roots: dict[str, Path]) -> None:
    """Logs, scripts, params, metrics and histories of every arm, and the XS arms' finetuned weights."""
    keep_weights = {"xs"}  # the shipped-weights candidate (the tool brings back at most 16 MB a file)
    with tarfile.open(target, "w:gz") as tar:
        for f in sorted(work.glob("*.log")) + sorted(work.glob("*.sbatch")):
            tar.add(f, arcname=f"logs/{f.name}")
        for arm, root in roots.items():
            for f in sorted(root.rglob("*")):
                rel = f.relative_to(root)
                if not f.is_file() or rel.parts[0] in ("tables", "clips", "masked", "runs"):
                    continue
                if f.suffix == ".safetensors" and (arm not in keep_weights or rel.parts[1:3] != ("finetune", "best")):
                    continue
                tar.add(f, arcname=f"{arm}/{rel}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: tables, clips and masks of every arm into --dest")
    p.add_argument("--dest", type=Path, default=REPO / ".gpu")
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data" / "cmu")
    r = sub.add_parser("run", help="there: every part within its budget; results under --out")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--src", type=Path, default=REPO / ".gpu")
    r.add_argument("--parts", nargs="+", default=["perf", "b243", "xs", "xs-noframe"])
    r.add_argument("--perf-budget", type=float, default=130)
    r.add_argument("--b243-budget", type=float, default=160)
    r.add_argument("--xs-budget", type=float, default=160)
    r.add_argument("--diag-budget", type=float, default=60)
    r.add_argument("--smoke-steps", type=int, default=None, help="cap every training stage (checks the path)")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dest, args.shared.resolve())
        return 0
    return run(args.out, args.src, {"perf": args.perf_budget, "b243": args.b243_budget, "xs": args.xs_budget,
                                    "diag": args.diag_budget}, args.parts, args.smoke_steps)


if __name__ == "__main__":
    sys.exit(main())
