"""ONNX export of the lifting model with dynamic batch and sequence length.

Uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs no
extra package, handles ``scaled_dot_product_attention``, ``topk`` and ``gather`` at opset >= 14,
and keeps batch and frame axes symbolic. (The dynamo exporter, torch's default since 2.9, needs
the optional ``onnxscript`` package.)

The exported graph needs clips longer than ``k_neighbors`` frames (3+ for k = 2): the kNN
``TopK`` has a fixed k, while PyTorch falls back to every other frame on shorter clips.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualpose.io.atomic import atomic_path

INPUT_NAME = "poses2d"
OUTPUT_NAME = "poses3d"


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17, example_frames: int | None = None) -> Path:
    """Write ``model`` (2D poses (B, T, J, C) -> 3D poses) to ``path`` as ONNX, with batch and
    frame axes dynamic. The model is exported in eval mode; its mode is restored afterwards."""
    spec = model.spec
    frames = example_frames or min(spec.T, 27)
    example = torch.zeros(2, frames, spec.num_joints, spec.in_channels)
    example[..., :2] = torch.linspace(-1, 1, frames * spec.num_joints * 2).reshape(frames, spec.num_joints, 2)
    was_training = model.training
    model.eval()
    path = Path(path)
    try:
        with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 1: "frames"}, OUTPUT_NAME: {0: "batch", 1: "frames"}},
            )
    finally:
        model.train(was_training)
    return path


def run_onnx(path: str | os.PathLike, poses2d: np.ndarray) -> np.ndarray:
    """Run an exported model with onnxruntime on CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(poses2d, dtype=np.float32)})[0]


def check_onnx(model: nn.Module, path: str | os.PathLike, poses2d: torch.Tensor) -> float:
    """Max absolute difference between onnxruntime and PyTorch (eval mode) on ``poses2d``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(poses2d.float()).numpy()
    finally:
        model.train(was_training)
    got = run_onnx(path, poses2d.numpy())
    if got.shape != expected.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    return float(np.max(np.abs(got - expected)))
