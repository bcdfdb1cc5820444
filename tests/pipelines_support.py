"""Shared pieces of the Dagster tests: a tiny params.yaml, resources, and a corrupting adapter.

The tiny configuration (3 synthetic subjects x 2 actions x 1 s at 25 fps x 2 cameras = 300
frames, clips of 9 frames, a 2-block width-16 model, one epoch per stage) materialises the
whole graph in about half a minute on 2 CPU cores.

This module is also a data set adapter (``Options``, ``REQUIRED_FILES``, ``convert``): the
synthetic data with one deliberate defect that the keypoint-table schema accepts but an asset
check must catch. Tests register it with ``monkeypatch.setitem(ADAPTERS, "corrupted", __name__)``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from dualpose.data.adapters import synthetic
from dualpose.data.adapters.base import TablePart
from dualpose.skeleton import H36M_17, Skeleton

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "synthetic"

TINY_SYNTHETIC = {"subjects": 3, "actions": ["walk", "jump"], "seconds": 1.0, "fps": 25.0, "cameras": 2}


def tiny_params(root: str | os.PathLike, datasets: dict | None = None, **sections) -> dict:
    """A params dict small enough for tests; ``sections`` replace top-level sections."""
    data = {
        "seed": 0,
        "storage": {"root": str(root)},
        "datasets": datasets or {DATASET: {"adapter": "synthetic", "options": dict(TINY_SYNTHETIC)}},
        "train_dataset": DATASET,
        "clips": {"length": 9, "min_length": 9, "splits": {"validation_fraction": 0.3, "seed": 0}},
        "masking": {"probability": 0.7, "span": 3, "views": 2},
        "model": {"variant": "XS", "overrides": {"depth": 2, "dim": 16}},
        "pretrain": {"epochs": 1, "batch_size": 8, "top_k_blocks": 2, "save_every_steps": 1000},
        "finetune": {"epochs": 1, "batch_size": 8, "save_every_steps": 1000},
        "evaluate": {"batch_size": 16, "max_mpjpe_mm": 5000.0},
    }
    data.update(sections)
    return data


def write_params(folder: Path, data: dict) -> Path:
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_definitions(monkeypatch, params_path: Path):
    """The code location's Definitions as ``dagster dev`` builds them, from ``params_path``."""
    monkeypatch.setenv("DUALPOSE_PARAMS", str(params_path))
    from pipelines.definitions import defs

    return defs()


def make_resources(params_path: Path, root: str | None = None, launcher: str = "python", num_processes: int = 1,
                   work_dir: Path | None = None) -> dict:
    from pipelines.defs.resources import DualPoseConfig, StorageResource, TrainingLauncher

    config = DualPoseConfig(params_path=str(params_path))
    return {
        "dualpose": config,
        "storage": StorageResource(dualpose=config, root=root, work_dir=str(work_dir) if work_dir else None),
        "launcher": TrainingLauncher(launcher=launcher, num_processes=num_processes,
                                     env={"OMP_NUM_THREADS": "1"}),
    }


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUALPOSE_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    env.update(extra)
    return env


def venv_bin(name: str) -> str:
    """A console script of the running interpreter's environment (dagster, accelerate ...)."""
    return str(Path(sys.executable).parent / name)


# -- the corrupting adapter ------------------------------------------------------------------------
REQUIRED_FILES: tuple[str, ...] = ()


class Options(synthetic.Options):
    defect: Literal["bones", "metres"] = "bones"


def convert(files: dict[str, Path], options: Options, dataset: str,
            skeleton: Skeleton = H36M_17) -> Iterator[TablePart]:
    """The synthetic data with a defect: ``bones``: from the middle of every video on, each pose is
    stretched by 30% about its root (bone lengths jump within the video); ``metres``: 3D in metres."""
    base = synthetic.Options.model_validate(options.model_dump(exclude={"defect"}))
    for part in synthetic.convert(files, base, dataset, skeleton):
        frames = part.frames
        kp3d = np.asarray(frames.kp3d, dtype=np.float64).copy()
        if options.defect == "metres":
            kp3d /= 1000.0
        else:
            video = np.asarray(frames.video_id)
            _, codes = np.unique(video, return_inverse=True)
            position = np.zeros(len(video))
            for c in np.unique(codes):  # per video (a handful), not per frame
                rows = np.flatnonzero(codes == c)
                position[rows] = np.arange(rows.size) / max(rows.size - 1, 1)
            late = position > 0.5
            root = kp3d[:, skeleton.root : skeleton.root + 1]
            kp3d[late] = root[late] + 1.3 * (kp3d[late] - root[late])
        frames.kp3d = kp3d.astype(np.float32)
        yield TablePart(part.name, frames)
