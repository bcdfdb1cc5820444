"""Check a weights folder's ``config.json`` before a model is built from it.

A tiny config can ask for an enormous network (``dim: 1048576``); building it would exhaust
memory long before the weights are compared. These bounds and a size cross-check against the
safetensors file refuse such a config first, naming the file and the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dualpose.errors import DataFormatError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
SPEC_LIMITS = {"depth": 512, "dim": 8192, "T": 100_000, "num_joints": 1024, "heads": 1024, "k_neighbors": 256,
               "rep_dim": 16_384, "in_channels": 64, "out_channels": 64, "mlp_ratio": 64}


def check_weights_config(source: str | os.PathLike) -> None:
    """Refuse a config whose spec is out of bounds or far larger than its weights file."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config.is_file():
        return  # the loader reports a missing config in its own words
    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise DataFormatError(config, "<file>", f"a model config of at most {MAX_CONFIG_BYTES} bytes",
                              f"{config.stat().st_size} bytes")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise DataFormatError(config, "<file>", "JSON", str(exc) or type(exc).__name__) from None
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return
    for key, limit in SPEC_LIMITS.items():
        value = spec.get(key)
        if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
            raise DataFormatError(config, f"spec.{key}", "a number", repr(value)[:40])
        if value is not None and not 0 < value <= limit:
            raise DataFormatError(config, f"spec.{key}", f"a value in (0, {limit}]", repr(value)[:40])
    skeleton = spec.get("skeleton", "h36m17")
    from dualpose.io.names import NAME_PATTERN
    from dualpose.skeleton import SKELETONS

    if not isinstance(skeleton, str) or not NAME_PATTERN.fullmatch(skeleton) or skeleton not in SKELETONS:
        raise DataFormatError(config, "spec.skeleton", f"one of {sorted(SKELETONS)}", repr(skeleton)[:40])
    depth, dim = spec.get("depth"), spec.get("dim")
    if isinstance(depth, int) and isinstance(dim, int) and weights.is_file():
        # every block holds at least dim x dim weights of at least 2 bytes each
        needed = 2 * depth * dim * dim
        if needed > weights.stat().st_size:
            raise DataFormatError(config, "spec.dim/depth", f"a model that fits its weights file "
                                  f"({weights.stat().st_size} bytes)", f"depth {depth} x dim {dim} (>= {needed} bytes)")


def check_finite_weights(model: torch.nn.Module, source: str | os.PathLike) -> None:
    """Refuse weights holding NaN or inf: they give garbage, never an error, downstream."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DataFormatError(source, name, "finite weights", "NaN/inf values")
