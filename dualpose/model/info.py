"""Parameters and multiply-accumulates (MACs) of every variant, for ``dualpose model-info``.

Two MAC counts, both measured on the meta device (no memory, no arithmetic, well under a second):

- ``macs_linear``: every ``nn.Linear`` call, ``rows x in_features x out_features`` (forward hooks).
  This is the convention of the reference figures (paper-notes section 2, "linear layers
  counted"), so it is the column compared with them.
- ``macs_total``: everything ``torch.utils.flop_counter.FlopCounterMode`` sees (FLOPs / 2): the
  linear layers plus the attention matmuls (QK^T and AV), the skeleton-graph aggregation and
  the temporal kNN similarity. The kNN gather and elementwise ops are not counted.

Per-frame figures are the per-clip figures divided by the variant's T. Batch size 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dualpose.model.backbone import DualPoseLifter
from dualpose.model.config import VARIANTS, ModelSpec, build_spec
from dualpose.skeleton import H36M_17, Skeleton

# Reference parameter counts and MACs per clip (paper-notes section 2): (params, macs).
REFERENCE_FIGURES: dict[str, tuple[float, float]] = {
    "XS": (2.2e6, 1.0e9),
    "S": (4.8e6, 6.6e9),
    "B": (11.7e6, 48.3e9),
    "L": (19.0e6, 78.3e9),
}


def count_model(spec: ModelSpec, skeleton: Skeleton | None = None, frames: int | None = None) -> dict[str, int]:
    """Parameters and MACs of the lifting model on one clip of ``frames`` (default spec.T)."""
    frames = frames or spec.T
    with torch.device("meta"):
        model = DualPoseLifter(spec, skeleton).eval()
    linear_macs = 0

    def hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal linear_macs
        rows = inputs[0].numel() // module.in_features
        linear_macs += rows * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    x = torch.empty(1, frames, spec.num_joints, spec.in_channels, device="meta")
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs_linear": linear_macs,
        "macs_total": counter.get_total_flops() // 2,
    }


def model_info(variants: list[str] | None = None, skeleton: Skeleton = H36M_17,
               overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per variant: size, T, parameters, MACs per clip and per frame, and the relative
    deviation from the reference figures (``None`` when overrides change the architecture)."""
    rows = []
    for name in variants or list(VARIANTS):
        spec = build_spec(name, overrides, skeleton)
        counts = count_model(spec, skeleton)
        ref_params, ref_macs = REFERENCE_FIGURES.get(name, (None, None))
        comparable = not overrides and ref_params is not None
        rows.append({
            "variant": name,
            "depth": spec.depth,
            "dim": spec.dim,
            "T": spec.T,
            "num_joints": spec.num_joints,
            "params": counts["params"],
            "macs_per_clip": counts["macs_linear"],
            "macs_per_frame": counts["macs_linear"] / spec.T,
            "macs_total_per_clip": counts["macs_total"],
            "macs_total_per_frame": counts["macs_total"] / spec.T,
            "reference_params": ref_params if comparable else None,
            "reference_macs_per_clip": ref_macs if comparable else None,
            "params_deviation": counts["params"] / ref_params - 1 if comparable else None,
            "macs_deviation": counts["macs_linear"] / ref_macs - 1 if comparable else None,
        })
    return rows


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def format_model_info(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`model_info` rows."""
    header = ["variant", "blocks x C", "T", "params", "MACs/clip", "MACs/frame", "all MACs/clip",
              "all MACs/frame", "ref params", "ref MACs", "d params", "d MACs"]
    table = [header]
    for r in rows:
        table.append([
            r["variant"], f"{r['depth']} x {r['dim']}", str(r["T"]), _si(r["params"]),
            _si(r["macs_per_clip"]), _si(r["macs_per_frame"]), _si(r["macs_total_per_clip"]),
            _si(r["macs_total_per_frame"]),
            "-" if r["reference_params"] is None else _si(r["reference_params"]),
            "-" if r["reference_macs_per_clip"] is None else _si(r["reference_macs_per_clip"]),
            _pct(r["params_deviation"]), _pct(r["macs_deviation"]),
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("MACs: linear layers (the reference's convention); all MACs: plus attention and graph "
                 "matmuls (FlopCounterMode). Batch 1, one clip of T frames.")
    return "\n".join(lines)


def saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``module(x)`` (saved-tensor
    hooks, each storage counted once; ``x`` and the module's parameters excluded)."""
    excluded = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in excluded:
            kept[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(kept.values())
