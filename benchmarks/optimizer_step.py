"""Time of one optimiser step and one EMA-teacher update per variant: PyTorch's plain AdamW (one
small kernel per op and tensor), its ``foreach`` form and its fused kernel (what
``dualpose.train.loop.build_optimizer`` builds), and the EMA-teacher update as the per-tensor
``lerp_`` loop vs one ``torch._foreach_lerp_`` over parameters paired once
(``dualpose.train.ema.EMATeacher``).

The whole-step protocol of ``perf_vs_anchor.py`` cannot resolve a lever of this size on a shared
machine (rounds of the same figure vary by 30 %), so this times the optimiser alone: the
implementations alternate call by call in one process on the same parameters and gradients, and
the median of each is kept. Usage::

    OMP_NUM_THREADS=2 python benchmarks/optimizer_step.py --out benchmarks/RESULTS-optimizer-step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dualpose.config import OptimConfig
from dualpose.model import DualPoseLifter, build_spec
from dualpose.train.ema import EMATeacher
from dualpose.train.loop import build_optimizer


def _ema_loop(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """The EMA update as one ``lerp_`` per tensor, matched by name (the implementation before)."""
    student_params = dict(student.named_parameters())
    with torch.no_grad():
        for name, t_param in teacher.named_parameters():
            t_param.lerp_(student_params[name].detach(), 1.0 - decay)


def measure(variant: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = DualPoseLifter(build_spec(variant))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    cfg = OptimConfig(lr=5e-4, weight_decay=0.01)
    optimizers = {
        "plain": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False),
        "foreach": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True),
        "fused (build_optimizer)": build_optimizer(params, cfg),
    }
    teacher = EMATeacher(model)
    updates = {"ema per-tensor loop": lambda: _ema_loop(teacher.module, model, 0.999),
               "ema foreach (EMATeacher)": lambda: teacher.update(model, 0.999)}
    calls = {**{name: opt.step for name, opt in optimizers.items()}, **updates}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 2):  # two warm-up rounds
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if round_ >= 2:
                times[name].append(time.perf_counter() - t0)
    return {"variant": variant, "tensors": len(params), "parameters": sum(p.numel() for p in params),
            "median_ms": {name: 1e3 * statistics.median(ts) for name, ts in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["XS", "S", "B"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(v, args.repeats) for v in args.variants]
    for row in rows:
        cells = ", ".join(f"{k} {v:.1f} ms" for k, v in row["median_ms"].items())
        print(f"{row['variant']} ({row['tensors']} tensors, {row['parameters'] / 1e6:.2f} M): {cells}")
    if args.out:
        record = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                  "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeats": args.repeats, "rows": rows}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
