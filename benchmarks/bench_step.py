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
