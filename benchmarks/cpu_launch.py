"""CPU training: one process with N intra-op threads against N processes with one thread each.

The second is the README's multi-process CPU launch (``ACCELERATE_USE_CPU=1 accelerate launch
--multi_gpu --num_processes N``, gloo), at the same global batch (each process takes 1/N of it).
Both run the training stages' own set-up (``make_accelerator``, ``build_optimizer``,
``accelerator.prepare``/``backward``) on the perf protocol's step: forward, MPJPE, backward,
AdamW. Each figure is one launch (its own processes); the driver alternates the two launches
round by round, order flipped every round, and reports the median per-round speed-up.

Usage (driver)::

    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/cpu_launch.py --variant XS --rounds 6 --json out.json

``worker`` is what each launch runs (``python benchmarks/cpu_launch.py worker --batch 4``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import REPO, append_record, paired_speedup, rss_mib, run_context  # noqa: E402

DEFAULT_BATCH = {"XS": 4, "S": 4, "B": 2, "L": 2}


def worker(args: argparse.Namespace) -> None:
    """One launch's training steps; rank 0 prints one JSON line (``RESULT {...}``)."""
    sys.path.insert(0, str(REPO))
    import torch

    from dualpose.config import OptimConfig
    from dualpose.model import DualPoseLifter, build_spec
    from dualpose.train.loop import build_optimizer
    from dualpose.train.runtime import make_accelerator

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    acc = make_accelerator(1)
    torch.manual_seed(0)
    model = DualPoseLifter(build_spec(args.variant))
    spec = model.spec
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=5e-4, weight_decay=0.01))
    model, optimizer = acc.prepare(model, optimizer)
    model.train()
    generator = torch.Generator().manual_seed(1 + acc.process_index)
    x = torch.randn(args.batch, spec.T, spec.num_joints, spec.in_channels, generator=generator)
    y = torch.randn(args.batch, spec.T, spec.num_joints, spec.out_channels, generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        acc.backward((model(x) - y).norm(dim=-1).mean())
        optimizer.step()

    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.steps):
        acc.wait_for_everyone()
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    rss = acc.gather(torch.tensor([rss_mib()])).tolist()
    if acc.is_main_process:
        median = statistics.median(seconds)
        print("RESULT " + json.dumps({
            "processes": acc.num_processes, "threads_per_process": torch.get_num_threads(),
            "batch_per_process": args.batch, "global_batch": args.batch * acc.num_processes,
            "median_step_s": median, "frames_per_s": args.batch * acc.num_processes * spec.T / median,
            "peak_rss_mib_per_process": rss, "seconds": seconds}), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, variant: str, batch: int, processes: int, steps: int, warmup: int) -> dict:
    """Run one launch: ``"threads"`` (1 process, ``processes`` threads, the whole batch) or
    ``"processes"`` (``processes`` processes of one thread, 1/N of the batch each)."""
    env = dict(os.environ)
    worker_args = [str(Path(__file__).resolve()), "worker", "--variant", variant, "--steps", str(steps),
                   "--warmup", str(warmup)]
    if config == "threads":
        env["OMP_NUM_THREADS"] = str(processes)
        command = [sys.executable, *worker_args, "--batch", str(batch)]
    else:
        if batch % processes:
            raise SystemExit(f"--batch {batch} does not split over {processes} processes")
        env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *worker_args, "--batch", str(batch // processes)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{config} launch failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["driver", "worker"], default="driver")
    parser.add_argument("--variant", default="XS", choices=list(DEFAULT_BATCH))
    parser.add_argument("--batch", type=int, default=None,
                        help="driver: global batch (default 4 XS/S, 2 B/L); worker: per process")
    parser.add_argument("--processes", type=int, default=2, help="N: threads of the one process, or processes")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args)
        return
    batch = args.batch or DEFAULT_BATCH[args.variant]
    runs: dict[str, list[dict]] = {"threads": [], "processes": []}
    started = time.time()
    for r in range(args.rounds):
        for config in (("threads", "processes") if r % 2 == 0 else ("processes", "threads")):
            result = launch(config, args.variant, batch, args.processes, args.steps, args.warmup)
            runs[config].append(result)
            print(f"round {r + 1} {config}: {result['frames_per_s']:.1f} frames/s", flush=True)
    step_s = {config: [run["median_step_s"] for run in results] for config, results in runs.items()}
    speedup, low, high = paired_speedup(step_s["threads"], step_s["processes"])
    summary = {
        "variant": args.variant, "global_batch": batch, "n": args.processes, "rounds": args.rounds,
        "steps_per_launch": args.steps, **run_context(),
        "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)), "load_at_end": os.getloadavg(),
        "frames_per_s": {config: statistics.median(run["frames_per_s"] for run in results)
                         for config, results in runs.items()},
        "speedup_median": speedup, "speedup_quartiles": [low, high], "runs": runs,
    }
    fps = summary["frames_per_s"]
    print(f"{args.variant} global batch {batch}: 1 process x {args.processes} threads {fps['threads']:.1f} frames/s, "
          f"{args.processes} processes x 1 thread {fps['processes']:.1f} frames/s; paired speed-up {speedup:.3f} "
          f"(quartiles {low:.3f}-{high:.3f}, {args.rounds} rounds)")
    if args.json:
        append_record(args.json, summary)


if __name__ == "__main__":
    main()
