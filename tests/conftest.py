"""Shared fixtures: a tiny but complete configuration for end-to-end tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CMU_DIR = ROOT.parent / "shared" / "data" / "cmu"

os.environ.setdefault("DUALPOSE_PROGRESS", "0")


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, for testing its functions."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_params_dict(root: Path) -> dict:
    """The repository's params.yaml shrunk so that every stage runs in seconds on 2 CPU cores."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["storage"]["root"] = str(root / "artifacts")
    params["datasets"]["synthetic"]["options"] = {
        "seed": 0, "subjects": 3, "actions": ["walk", "squat", "wave"], "seconds": 1.2, "cameras": 1,
    }
    params["datasets"]["cmu"]["files"]["motion"] = str(CMU_DIR / "cmu_train.npz")
    params["clips"].update({"length": 9, "min_length": 5})
    params["clips"]["splits"]["validation_fraction"] = 0.2
    params["masking"]["views"] = 2
    params["model"]["overrides"] = {"depth": 2, "dim": 16}
    params["pretrain"].update({"epochs": 1, "batch_size": 8, "top_k_blocks": 2, "save_every_steps": 4})
    params["finetune"].update({"epochs": 2, "batch_size": 8, "save_every_steps": 4})
    params["evaluate"]["batch_size"] = 16
    return params


@pytest.fixture
def tiny_params_path(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params_dict(tmp_path)))
    return path
