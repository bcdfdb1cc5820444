"""Paired speed of this working tree against a git revision, in one process, step by step.

For levers of a few per cent, which the process-per-figure protocol of ``perf_vs_anchor.py``
cannot see on a shared 2-core machine (its figures of one side spread by 20-30 % between
rounds). The revision's ``dualpose`` package is extracted with ``git archive`` and imported under
another name (``dualpose_base``), so both models live in this process with the same weights and
inputs; their training steps (or inference calls) alternate, the order flipping every round, and
the speed-up is the median of the per-round ratios ``base seconds / tree seconds``, with its
quartiles. Before timing it checks that the two compute the same function (loss and gradients,
or outputs).

Run with the working tree equal to the revision (an A/A run) to see the harness's own spread.
``--tree-compile`` and ``--tree-autocast`` measure a runtime lever on the tree's side only (torch.compile
of its blocks or of the whole model, compiled during the warm-up; CPU autocast to bf16).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/paired_step.py --variant XS --rounds 30
    OMP_NUM_THREADS=2 python benchmarks/paired_step.py --base HEAD~3 --variant S --mode infer --batch 8 --json out.json
    OMP_NUM_THREADS=2 python benchmarks/paired_step.py --variant XS --tree-compile model --rounds 20
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import REPO, alternate, extract_package, paired_speedup, quartiles, run_context  # noqa: E402,F401

BASE_PACKAGE = "dualpose_base"
DEFAULT_BATCH = {"train": {"XS": 4, "S": 4, "B": 2, "L": 2}, "infer": {"XS": 1, "S": 1, "B": 1, "L": 1}}


def extract_base(rev: str, root: Path) -> None:
    """``git archive REV dualpose`` into ``root/dualpose_base`` with its imports renamed."""
    extract_package(rev, root)
    (root / "dualpose").rename(root / BASE_PACKAGE)
    pattern = re.compile(r"\bdualpose(?=[.\s]|$)", re.MULTILINE)
    for path in (root / BASE_PACKAGE).rglob("*.py"):
        text = path.read_text()
        path.write_text(pattern.sub(BASE_PACKAGE, text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--variant", default="XS", choices=["XS", "S", "B", "L"])
    parser.add_argument("--mode", default="train", choices=["train", "infer"])
    parser.add_argument("--batch", type=int, default=None, help="default: 4 (XS/S) or 2 (B/L) training, 1 inference")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tree-compile", choices=["none", "blocks", "blocks-dynamic", "model"], default="none",
                        help="torch.compile the tree's model: its blocks (static or dynamic shapes) or all of it")
    parser.add_argument("--tree-autocast", choices=["none", "bf16"], default="none",
                        help="run the tree's steps under CPU autocast to bfloat16")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and every round here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        extract_base(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        sys.path.insert(0, str(REPO))
        base_lib = importlib.import_module(f"{BASE_PACKAGE}.model")
        tree_lib = importlib.import_module("dualpose.model")
        from dualpose.config import OptimConfig
        from dualpose.train.loop import build_optimizer

        torch.manual_seed(0)
        base = base_lib.DualPoseLifter(base_lib.build_spec(args.variant))
        tree = tree_lib.DualPoseLifter(tree_lib.build_spec(args.variant))
        tree.load_state_dict(base.state_dict())  # same weights (raises if the parameter names differ)
        spec = tree.spec
        batch = args.batch or DEFAULT_BATCH[args.mode][args.variant]
        x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels)
        y = torch.randn(batch, spec.T, spec.num_joints, spec.out_channels)

        def loss_of(model):
            return (model(x) - y).norm(dim=-1).mean()

        if args.mode == "train":
            base.train()
            tree.train()
            loss_base, loss_tree = loss_of(base), loss_of(tree)
            loss_base.backward()
            loss_tree.backward()
            grad_diff = max(((a.grad - b.grad).abs().max() / a.grad.abs().max().clamp_min(1e-12)).item()
                            for a, b in zip(base.parameters(), tree.parameters()) if a.grad is not None)
            check = {"loss_abs_diff": abs(loss_base.item() - loss_tree.item()), "max_rel_grad_diff": grad_diff}
        else:
            base.eval()
            tree.eval()
            with torch.no_grad():
                check = {"max_abs_output_diff": (base(x) - tree(x)).abs().max().item()}
        print("equivalence:", check, flush=True)

        def step_of(model, autocast: bool = False):
            if args.mode == "infer":
                def infer() -> None:
                    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                        model(x)
                return infer
            optimizer = build_optimizer(model.parameters(), OptimConfig(lr=5e-4, weight_decay=0.01))

            def train() -> None:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                    loss = loss_of(model)
                loss.backward()
                optimizer.step()
            return train

        if args.tree_compile in ("blocks", "blocks-dynamic"):
            tree.backbone.compile_blocks(dynamic=args.tree_compile == "blocks-dynamic")
        elif args.tree_compile == "model":
            tree = torch.compile(tree)
        steps = {"base": step_of(base), "tree": step_of(tree, args.tree_autocast == "bf16")}
        started = time.time()
        seconds = alternate(steps, args.rounds, args.warmup)

    speedup, low, high = paired_speedup(seconds["base"], seconds["tree"])
    frames = batch * spec.T
    context = run_context()
    result = {
        "base": args.base, "tree": context["code"],
        "variant": args.variant, "mode": args.mode, "batch": batch, "T": spec.T, "rounds": args.rounds,
        "tree_compile": args.tree_compile, "tree_autocast": args.tree_autocast,
        "threads": args.threads, "allocator_preload": context["allocator_preload"], "machine": context["machine"],
        "load_at_end": os.getloadavg(), "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "equivalence": check,
        "frames_per_s": {name: frames / statistics.median(s) for name, s in seconds.items()},
        "speedup_median": speedup, "speedup_quartiles": [low, high],
        "seconds": seconds,
    }
    fps = result["frames_per_s"]
    print(f"{args.variant} {args.mode} batch {batch}: base ({args.base}) {fps['base']:.1f} frames/s, "
          f"tree ({result['tree']}) {fps['tree']:.1f} frames/s; paired speed-up {result['speedup_median']:.3f} "
          f"(quartiles {low:.3f}-{high:.3f}, {args.rounds} rounds)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
