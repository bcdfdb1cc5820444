"""DualPose speed and memory with the protocol of ../shared/docs/perf-anchors.md, before and after
the fast paths, in one run on one machine, with ratios against the MotionAGFormer anchor figures.

Protocol (as the anchors): fp32, ``torch.set_num_threads(2)`` and ``OMP_NUM_THREADS=2``; XS at
T=27, S at T=81, B and L at T=243; inference (eval, no_grad) at batch 1 and 8; training = forward +
MPJPE loss + backward + AdamW step (the optimiser each side's own training loop builds:
fused AdamW ``after``, PyTorch's plain one ``before``) at batch 4 (XS, S) or 2 (B, L); frames/s = batch x T / median
seconds of the timed calls after warm-up; every figure in its own process; peak RSS = that
process's ``ru_maxrss``.

Code paths ("sides"), run interleaved per figure (before, after, before, after...) so that load
from other jobs on a shared machine falls on both alike:

- ``before``: the code of git commit f5dad27 (the anchors' DualPose), extracted with
  ``git archive`` into a temporary directory and put first on ``PYTHONPATH``;
- ``after``: this checkout with its automatic choices (attention kernel by shape and device,
  index_select kNN gather, split fusion, activation checkpointing "auto": blocks past 1/8 of the
  host's memory are recomputed);
- ``after-malloc-tuned`` (training): ``after`` with the opt-in allocator setting
  (``DUALPOSE_MALLOC_TUNING=1``, ``dualpose.train.allocator``: freed activations go back to the OS);
- ``after-fullckpt`` / ``after-fullckpt-malloc-tuned`` (training): every block checkpointed,
  without / with the allocator setting;
- ``after-nockpt`` (B/L training only): the same with activation checkpointing off, to show what
  checkpointing costs in time and saves in memory;
- ``after-compiled`` (XS inference only): the same with ``backbone.compile_blocks(dynamic=True)``
  (torch.compile per block, dynamic T); compilation happens in the warm-up and is not timed;
- ``after-frozen`` (inference only, with ``--figures``): ``compile_for_inference(model)``: the whole
  model compiled for the static shape with inductor weight freezing (``dualpose.model.compiled``);
- ``after-selective``, ``after-sdpa``, ``after-plaingather`` (only with ``--figures``): selective
  activation checkpointing (keep matmul/attention outputs, recompute the rest); SDPA at every
  length; the kNN gather of f5dad27;
- ``after-frametable``, ``after-noframe``, ``after-rotary``, ``after-relative`` (only with
  ``--figures``): the learned (T, C) frame table, no frame signal, the rotary embedding or the
  relative bias instead of the variant's default frame signal (SDPA cannot run a logit bias on its
  fast CPU kernel: it sends it to the math path);
- ``after-plainadam`` (training, only with ``--figures``): PyTorch's plain AdamW instead of the
  fused one the training loop builds;
- ``after-plainacts`` (training, only with ``--figures``): the plain modules, which keep every
  activation autograd saves, instead of the fused training sub-layers of ``dualpose.model.lean``
  (``set_lean_activations(False)``; "auto" checkpointing then budgets with the plain size);
- ``after-tcmalloc``, ``before-tcmalloc``, ``after-plainacts-tcmalloc`` (training, only with
  ``--figures``): the same, in a process started with gperftools' tcmalloc preloaded
  (``LD_PRELOAD``), as the ``dualpose`` training commands re-execute themselves where it is
  installed (``dualpose.train.allocator``); the anchors' figures used glibc's allocator.

``--figures`` replaces the plan, e.g. ``--figures B:train:before,after,after-selective,after-nockpt``
(variant:mode[batch]:sides; mode ``train``, ``infer1`` or ``infer8``).

Usage::

    python benchmarks/perf_vs_anchor.py                      # full run, writes benchmarks/RESULTS-perf.md
    python benchmarks/perf_vs_anchor.py --variants XS --out /tmp/x.md
    python benchmarks/perf_vs_anchor.py one --side after --variant XS --mode train --batch 4   # one figure (JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import extract_package, model_step, rss_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "f5dad27"
THREADS = 2
TRAIN_BATCH = {"XS": 4, "S": 4, "B": 2, "L": 2}
# (warm-up calls, timed calls, soft time budget in seconds for the timed calls) per variant
REPEATS = {"XS": (2, 10, 15.0), "S": (1, 5, 20.0), "B": (1, 2, 60.0), "L": (1, 1, 30.0)}  # B: 30 s in the 16:09 run

# MotionAGFormer and DualPose@f5dad27 as measured for ../shared/docs/perf-anchors.md (frames/s, MiB).
ANCHOR_PEER = {
    ("XS", "infer1"): 667, ("XS", "infer8"): 962, ("XS", "train"): 217, ("XS", "rss"): 888,
    ("S", "infer1"): 273, ("S", "infer8"): 265, ("S", "train"): 125, ("S", "rss"): 4131,
    ("B", "infer1"): 140, ("B", "infer8"): 120, ("B", "train"): 64, ("B", "rss"): 7689,
}
ANCHOR_OURS = {
    ("XS", "infer1"): 469, ("XS", "infer8"): 619, ("XS", "train"): 211, ("XS", "rss"): 857,
    ("S", "infer1"): 325, ("S", "infer8"): 289, ("S", "train"): 95, ("S", "rss"): 3564,
    ("B", "infer1"): 197, ("B", "infer8"): 152, ("B", "train"): 72, ("B", "rss"): 6406,
}
DESIGN_T = {"XS": 27, "S": 81, "B": 243, "L": 243}


def training_optimizer(model, side: str):
    """The optimiser each side's own training loop builds (``dualpose.train.loop.build_optimizer``:
    fused AdamW in ``after``, the plain one at f5dad27), at lr 5e-4 and weight decay 0.01;
    ``after-plainadam``: PyTorch's plain AdamW, the lever switched off."""
    import torch

    if side == "after-plainadam":
        return torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    from dualpose.config import OptimConfig
    from dualpose.train.loop import build_optimizer
    return build_optimizer(model.parameters(), OptimConfig(lr=5e-4, weight_decay=0.01))


def measure(side: str, variant: str, mode: str, batch: int, warmup: int, repeats: int, budget: float) -> dict:
    """One figure, in this process (the caller made it a fresh one)."""
    import torch

    from dualpose.model import DualPoseLifter, build_spec

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    # the frame signal (default: the relative bias on the temporal attention logits) or another one
    frame = {"after-frametable": "learned", "after-noframe": "none", "after-rotary": "rotary",
             "after-relative": "relative"}.get(side)
    spec = build_spec(variant, {"temporal_pos_emb": frame} if frame else None)
    model = DualPoseLifter(spec)
    if side.endswith("malloc-tuned"):  # the opt-in allocator setting (DUALPOSE_MALLOC_TUNING=1)
        os.environ["DUALPOSE_MALLOC_TUNING"] = "1"
        from dualpose.train.allocator import tune_cpu_allocator
        tune_cpu_allocator()
    if side in ("after-nockpt", "after-selective", "after-fullckpt", "after-fullckpt-malloc-tuned"):
        from dualpose.model.blocks import set_activation_checkpointing
        set_activation_checkpointing(model, {"after-nockpt": False, "after-selective": "selective",
                                             "after-fullckpt": "full", "after-fullckpt-malloc-tuned": "full"}[side])
    if side == "after-plaingather":  # the kNN gather of f5dad27 (transpose + expanded-index gather)
        from dualpose.model.gcn import TemporalKNNGCN
        for module in model.modules():
            if isinstance(module, TemporalKNNGCN):
                module.fast_gather = False
    if side.startswith("after-plainacts"):  # the fused sub-layers that keep fewer activations off
        from dualpose.model.lean import set_lean_activations
        set_lean_activations(False)
    if side == "after-sdpa":  # SDPA for every sequence length (the CPU explicit path off)
        from dualpose.model.attention import set_attention_kernel
        set_attention_kernel("sdpa")
    if side == "after-compiled":  # regional inductor compilation, dynamic T; compiled during warm-up
        model.backbone.compile_blocks(dynamic=True)
    if side == "after-frozen":  # whole model, static shape, inductor weight freezing; compiled during warm-up
        from dualpose.model.compiled import compile_for_inference
        if mode != "infer":
            raise SystemExit("after-frozen is an inference path (frozen weights cannot train)")
        model = compile_for_inference(model)
    x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels)
    y = torch.randn(batch, spec.T, spec.num_joints, spec.out_channels)
    step = model_step(model, x, y, mode, optimizer=None if mode == "infer" else training_optimizer(model, side))

    for _ in range(warmup):
        step()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    import dualpose
    return {"side": side, "variant": variant, "mode": mode, "batch": batch, "T": spec.T,
            "seconds_median": median, "seconds_all": times, "frames_per_s": batch * spec.T / median,
            "peak_rss_mib": rss_mib(), "code": str(Path(dualpose.__file__).parent)}


def before_tree(root: Path) -> Path:
    """Extract the f5dad27 library into ``root`` (once) and return the directory for PYTHONPATH."""
    target = root / f"dualpose-{BEFORE_COMMIT}"
    if not (target / "dualpose" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        extract_package(BEFORE_COMMIT, target)
    return target


def run_one(side: str, variant: str, mode: str, batch: int, code_dir: Path, wait_policy: str | None) -> dict:
    warmup, repeats, budget = REPEATS[variant]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "PYTHONPATH": os.pathsep.join([str(code_dir), str(REPO)]), "DUALPOSE_PROGRESS": "0"}
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    env.pop("DUALPOSE_ATTENTION", None)  # the automatic choice is what is measured
    env.pop("LD_PRELOAD", None)
    if side.endswith("-tcmalloc"):  # what the dualpose training commands do where tcmalloc is installed
        from dualpose.train.allocator import find_tcmalloc
        library = find_tcmalloc()
        if library is None:
            raise SystemExit(f"side {side}: tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
        env["LD_PRELOAD"] = library
    cmd = [sys.executable, str(Path(__file__).resolve()), "one", "--side", side, "--variant", variant,
           "--mode", mode, "--batch", str(batch), "--warmup", str(warmup), "--repeats", str(repeats),
           "--budget", str(budget)]
    load_before = os.getloadavg()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=str(code_dir)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = load_before[0], os.getloadavg()[0]
    return result


def figures_plan(variants: list[str]) -> list[tuple[str, str, int, list[str]]]:
    """(variant, mode, batch, sides in interleaved order) for every figure."""
    plan = []
    for v in variants:
        infer_sides = ["before", "after", "after-compiled"] if v == "XS" else ["before", "after"]
        train = (v, "train", TRAIN_BATCH[v], ["before", "after", "after-nockpt"] if v in ("B", "L") else ["before", "after"])
        infer = [(v, "infer", 1, infer_sides), (v, "infer", 8, infer_sides)]
        plan += [*infer, train] if v in ("XS", "S") else [train, *infer]  # B/L: the training figures first
    return plan


SIDES = ("before", "after", "after-malloc-tuned", "after-nockpt", "after-fullckpt", "after-fullckpt-malloc-tuned",
         "after-selective", "after-sdpa", "after-plaingather", "after-compiled", "after-frozen", "after-frametable",
         "after-noframe", "after-rotary", "after-relative", "after-plainadam", "after-plainacts", "after-tcmalloc", "before-tcmalloc",
         "after-plainacts-tcmalloc")
SIDE_LABELS = {"before": "before", "after": "after", "after-malloc-tuned": "after, malloc tuned",
               "after-fullckpt": "after, full ckpt", "after-fullckpt-malloc-tuned": "after, full ckpt + malloc tuned",
               "after-nockpt": "after, no ckpt",
               "after-selective": "after, selective ckpt", "after-sdpa": "after, SDPA",
               "after-plaingather": "after, plain kNN gather", "after-compiled": "after, compiled",
               "after-frozen": "after, compiled + frozen", "after-frametable": "after, learned frame table",
               "after-noframe": "after, no frame signal", "after-rotary": "after, rotary frame embedding",
               "after-relative": "after, relative frame bias", "after-plainadam": "after, plain AdamW",
               "after-plainacts": "after, plain activations", "after-tcmalloc": "after, tcmalloc",
               "before-tcmalloc": "before, tcmalloc", "after-plainacts-tcmalloc": "after, plain activations, tcmalloc"}


def parse_figures(specs: list[str]) -> list[tuple[str, str, int, list[str]]]:
    plan = []
    for spec in specs:
        variant, what, sides = spec.split(":")
        mode, batch = ("train", TRAIN_BATCH[variant]) if what == "train" else ("infer", int(what.removeprefix("infer")))
        unknown = sorted(set(sides.split(",")) - set(SIDES))
        if variant not in REPEATS or unknown or what not in ("train", "infer1", "infer8"):
            raise SystemExit(f"--figures {spec!r}: expected variant:train|infer1|infer8:sides from {SIDES}")
        plan.append((variant, mode, batch, sides.split(",")))
    return plan


def _key(r: dict) -> str:
    return "train" if r["mode"] == "train" else f"infer{r['batch']}"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def merge_rounds(results: list[dict]) -> dict[tuple[str, str, str], dict]:
    """One record per (variant, figure, side): a figure measured in several rounds (the same
    ``--figures`` entry given more than once) gets the median of its rounds' frames/s, peak RSS and
    load, and ``rounds``: every round's frames/s in run order."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["variant"], _key(r), r["side"]), []).append(r)
    merged = {}
    for key, records in groups.items():
        record = dict(records[-1])
        if len(records) > 1:
            for field in ("frames_per_s", "peak_rss_mib", "load_before"):
                values = [x[field] for x in records if x.get(field) is not None]
                record[field] = statistics.median(values) if values else None
        record["rounds"] = [x["frames_per_s"] for x in records]
        merged[key] = record
    return merged


def _cell(record: dict, field: str) -> str:
    text = f"{record[field]:,.0f}"
    rounds = record["rounds"]
    if field == "frames_per_s" and len(rounds) > 1:
        text += f" ({min(rounds):,.0f}-{max(rounds):,.0f}, {len(rounds)} rounds)"
    return text


def render(results: list[dict], command: str, started: str, finished: str, uptime_start: str,
           uptime_end: str, wall_s: float, wait_policy: str | None = None) -> str:
    import torch

    by = merge_rounds(results)
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "<!-- generated by benchmarks/perf_vs_anchor.py: do not edit by hand -->",
        f"Code: `after` = this checkout at `{commit}`, `before` = `{BEFORE_COMMIT}` (`git archive`).",
        "",
        f"Command: `{command}` (wall time {wall_s / 60:.1f} min, {started} to {finished} UTC).",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}; fp32, {THREADS} threads, "
        f"OMP_NUM_THREADS={THREADS}, OMP_WAIT_POLICY={wait_policy or 'unset (as the anchors)'}.",
        "",
        f"Load (`uptime`) at the start: `{uptime_start}`; at the end: `{uptime_end}`.",
        "",
        "Frames/s (higher is better) from the median call; peak RSS (MiB) of the training process. "
        "`before` = commit f5dad27, `after` = this branch (automatic choices), `after, no ckpt` = "
        "activation checkpointing off, `after, selective ckpt` = selective checkpointing, `after, SDPA` = "
        "SDPA at every length, `after, plain kNN gather` = the f5dad27 gather, `after, compiled` = "
        "`backbone.compile_blocks(dynamic=True)`, `after, compiled + frozen` = "
        "`dualpose.model.compiled.compile_for_inference(model)` (whole model, static shape, inductor "
        "weight freezing) (compile time not counted). Sides were run interleaved "
        "per figure. `anchor ratio x after/before` = the anchors' DualPose/MotionAGFormer ratio times "
        "this run's after/before: the estimate of after/MotionAGFormer that does not depend on this "
        "machine's absolute speed." + (" A figure measured in several rounds shows the median of its "
                                       "rounds, then their range." if any(len(r["rounds"]) > 1 for r in by.values())
                                       else ""),
        "",
    ]
    sides = [side for side in SIDES if any(r["side"] == side for r in results)]
    lines += [
        "| variant (T) | metric | " + " | ".join(SIDE_LABELS[side] for side in sides)
        + " | after / before | load 1-min (before/after) | anchor peer | after / anchor peer "
        "| anchor ratio x after/before |",
        "|---|---|" + "---|" * (len(sides) + 5),
    ]
    metrics = [("infer1", "inference bs1, frames/s"), ("infer8", "inference bs8, frames/s"),
               ("train", "training, frames/s"), ("rss", "training peak RSS, MiB")]
    for v in dict.fromkeys(r["variant"] for r in results):
        for key, label in metrics:
            src = "train" if key == "rss" else key
            field = "peak_rss_mib" if key == "rss" else "frames_per_s"
            values = {side: by[(v, src, side)][field] for side in sides if (v, src, side) in by}
            if not values:
                continue
            b, a = values.get("before"), values.get("after")
            rb, ra = by.get((v, src, "before")), by.get((v, src, "after"))
            peer, ours = ANCHOR_PEER.get((v, key)), ANCHOR_OURS.get((v, key))
            # machine-independent estimate: the anchors' DualPose/peer ratio times our after/before
            est = (ours / peer) * (a / b) if (peer and ours and a and b) else None
            load = f"{rb['load_before']:.1f}/{ra['load_before']:.1f}" if rb and ra else "-"
            cells = " | ".join("-" if side not in values else _cell(by[(v, src, side)], field) for side in sides)
            lines.append(
                f"| {v} ({DESIGN_T[v]}) | {label} | {cells} | {_fmt_ratio(a, b)} | {load} | "
                f"{'-' if peer is None else f'{peer:,}'} | {_fmt_ratio(a, peer)} | "
                f"{'-' if est is None else f'{est:.2f}'} |")
    lines += ["", "Raw per-figure results (seconds of every timed call, load before and after) are in the JSON "
              "written with `--json`."]
    return "\n".join(lines) + "\n"


def write_results(path: Path, body: str, section: str = "") -> None:
    """Replace the generated section (``section`` names it) of ``path`` (or create the file); temp
    file then rename."""
    name = f" {section}" if section else ""
    BEGIN, END = f"<!-- BEGIN GENERATED{name} -->", f"<!-- END GENERATED{name} -->"
    text = path.read_text() if path.exists() else f"# Performance against MotionAGFormer\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="all", choices=["all", "one"])
    parser.add_argument("--variants", nargs="+", default=["XS", "S", "B", "L"])
    parser.add_argument("--figures", nargs="+", help="explicit plan instead of --variants (see above)")
    parser.add_argument("--section", default="", help="name of the generated section of --out to replace")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS-perf.md"))
    parser.add_argument("--json", help="also write every raw result to this JSON file")
    parser.add_argument("--max-minutes", type=float, default=25.0,
                        help="skip the figures that would start after this much wall time")
    parser.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"],
                        help="OMP_WAIT_POLICY for every figure (unset: as the anchors). PASSIVE keeps two "
                             "OpenMP threads from spin-waiting on each other when other jobs share the cores")
    parser.add_argument("--side", choices=list(SIDES), default="after")
    parser.add_argument("--variant", default="XS")
    parser.add_argument("--mode", choices=["infer", "train"], default="infer")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=30.0)
    args = parser.parse_args()

    if args.command == "one":
        print(json.dumps(measure(args.side, args.variant, args.mode, args.batch, args.warmup, args.repeats,
                                 args.budget)))
        return

    command = "python benchmarks/perf_vs_anchor.py " + " ".join(sys.argv[1:])
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dualpose-before-") as tmp:
        code = {side: REPO for side in SIDES}
        code["before"] = code["before-tcmalloc"] = before_tree(Path(tmp))
        plan = parse_figures(args.figures) if args.figures else figures_plan(args.variants)
        for variant, mode, batch, sides in plan:
            if time.perf_counter() - t0 > args.max_minutes * 60:
                print(f"skipped {variant} {mode} bs{batch}: over --max-minutes", file=sys.stderr)
                continue
            for side in sides:
                r = run_one(side, variant, mode, batch, code[side], args.omp_wait_policy)
                results.append(r)
                print(f"{variant} {mode} bs{batch} {side}: {r['frames_per_s']:.1f} frames/s, "
                      f"{r['peak_rss_mib']:.0f} MiB, {len(r['seconds_all'])} calls, load {r['load_before']:.1f}",
                      file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    finished = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    write_results(Path(args.out), render(results, command, started, finished, uptime_start, uptime_end, wall,
                                         args.omp_wait_policy), args.section)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
