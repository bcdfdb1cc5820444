"""What the model speed benchmarks time: one inference or one training step, and peak memory."""

from __future__ import annotations

import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]


def extract_package(rev: str, target: Path) -> None:
    """The ``dualpose`` package of git revision ``rev`` into ``target/dualpose`` (``git archive``)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "dualpose"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def run_context() -> dict:
    """What a results record names about the run: this checkout's commit and the machine."""
    import os
    import platform

    import torch

    code = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip()
    machine = (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__}")
    return {"code": code, "machine": machine, "allocator_preload": os.environ.get("LD_PRELOAD", "")}


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` to the JSON list in ``path`` (created if missing)."""
    import json

    existing = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing + [record], indent=1) + "\n")


def rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quartiles(values: list[float]) -> tuple[float, float]:
    """Lower and upper quartile (both the value itself for a single one)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], q[2]


def alternate(steps: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of every call of two steps run alternately, ``warmup`` untimed pairs first; the
    order flips every round, so neither side always runs on the other's caches or heat."""
    names = list(steps)
    if len(names) != 2:
        raise ValueError(f"alternate() takes two steps, got {names}")
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def paired_speedup(base: list[float], tree: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratios ``base / tree`` (> 1: ``tree`` is faster)."""
    ratios = [b / t for b, t in zip(base, tree)]
    low, high = quartiles(ratios)
    return statistics.median(ratios), low, high


def model_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str,
               optimizer: torch.optim.Optimizer | None = None) -> Callable[[], None]:
    """``mode="infer"``: a no-grad forward in eval mode; otherwise forward + backward + optimiser
    step (``optimizer``, by default PyTorch's plain AdamW at lr 5e-4, weight decay 0.01)."""
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(x)
        return step
    model.train()
    optim = optimizer or torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)

    def train_step() -> None:
        optim.zero_grad(set_to_none=True)
        loss = (model(x) - y).norm(dim=-1).mean()
        loss.backward()
        optim.step()
    return train_step
