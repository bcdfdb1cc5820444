"""What every training stage sets up the same way: Accelerator, seeds, threads, run folders."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch


def make_accelerator(grad_accum: int):
    """An Accelerator whose precision and process count come from the launcher, never from here."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    kwargs = {}
    if not torch.cuda.is_available():
        from dualpose.train.allocator import active_allocator, tune_cpu_allocator

        kwargs["cpu"] = True
        tune_cpu_allocator()  # opt-in (DUALPOSE_MALLOC_TUNING=1): less memory, slower (allocator.py)
        logging.getLogger(__name__).info("CPU allocator: %s (DUALPOSE_ALLOCATOR=system|tcmalloc; allocator.py)",
                                         active_allocator())
    return Accelerator(gradient_accumulation_steps=grad_accum,
                       dataloader_config=DataLoaderConfiguration(split_batches=False), **kwargs)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def write_json(path: Path, data: dict) -> None:
    from dualpose.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))


def progress_enabled() -> bool:
    """Progress bars unless DUALPOSE_PROGRESS=0 (CI logs, Dagster Pipes)."""
    return os.environ.get("DUALPOSE_PROGRESS", "1") != "0"
