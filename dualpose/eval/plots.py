"""Evaluation figures as PNG files (matplotlib's Agg renderer, no pyplot global state).

Every function draws one figure, writes it atomically and returns its path.
3D poses are in the camera frame (x right, y down, z forward, mm); skeleton plots show x
across, depth z into the picture and -y up, so that the person stands upright.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dualpose.errors import DataFormatError
from dualpose.io.atomic import atomic_path
from dualpose.skeleton import H36M_17, Skeleton

LEFT_COLOUR = "tab:blue"
RIGHT_COLOUR = "tab:red"
CENTRE_COLOUR = "0.25"
METRIC_LABELS = {
    "mpjpe_mm": "MPJPE (mm)",
    "p_mpjpe_mm": "P-MPJPE (mm)",
    "n_mpjpe_mm": "N-MPJPE (mm)",
    "mpjve_mm_per_frame": "MPJVE (mm/frame)",
    "accel_error_mm_per_frame2": "acceleration error (mm/frame²)",
    "pck_percent": "PCK (%)",
}


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _table_values(metrics: Mapping[str, Any], section: str, metric: str) -> tuple[list[str], np.ndarray]:
    table = metrics[section] if isinstance(metrics.get(section), Mapping) else metrics
    names, values = [], []
    for name, entry in table.items():
        value = entry.get(metric) if isinstance(entry, Mapping) else entry
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            names.append(str(name))
            values.append(float(value))
    if not names:
        raise DataFormatError(None, f"{section}.*.{metric}", f"numbers for {metric!r} in the {section!r} table")
    return names, np.asarray(values)


def _bar_chart(names: list[str], values: np.ndarray, path, *, title: str, ylabel: str,
               reference: float | None, reference_label: str, dpi: int) -> Path:
    fig = Figure(figsize=(max(6.0, 0.45 * len(names) + 2.0), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    bars = ax.bar(x, values, color="tab:blue", alpha=0.85)
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=2)
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="tab:orange", linestyle="--", linewidth=1.2,
                   label=f"{reference_label}: {reference:.1f}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, float(np.nanmax(values)) * 1.15 if np.nanmax(values) > 0 else 1.0)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, dpi)


def plot_per_action(metrics: Mapping[str, Any], path: str | os.PathLike, metric: str = "mpjpe_mm",
                    title: str | None = None, dpi: int = 120) -> Path:
    """Bar chart of one metric per action (from a metrics dict or its ``per_action`` table);
    a dashed line marks the average over actions when the metrics dict has it."""
    names, values = _table_values(metrics, "per_action", metric)
    reference = metrics.get(metric) if isinstance(metrics.get(metric), (int, float)) else None
    return _bar_chart(names, values, path, title=title or f"{METRIC_LABELS.get(metric, metric)} per action",
                      ylabel=METRIC_LABELS.get(metric, metric), reference=reference,
                      reference_label="average over actions", dpi=dpi)


def plot_per_joint(metrics: Mapping[str, Any], path: str | os.PathLike, metric: str = "mpjpe_mm",
                   title: str | None = None, dpi: int = 120) -> Path:
    """Bar chart of one metric per joint (from a metrics dict or its ``per_joint`` table)."""
    names, values = _table_values(metrics, "per_joint", metric)
    reference = metrics.get(f"{metric.removesuffix('_mm')}_frame_mean_mm") if metric.endswith("_mm") else None
    return _bar_chart(names, values, path, title=title or f"{METRIC_LABELS.get(metric, metric)} per joint",
                      ylabel=METRIC_LABELS.get(metric, metric), reference=reference,
                      reference_label="mean over frames", dpi=dpi)


def _display(pose: np.ndarray) -> np.ndarray:
    """Camera frame (x right, y down, z forward) -> plot axes (x, z, -y)."""
    return np.stack([pose[:, 0], pose[:, 2], -pose[:, 1]], axis=1)


def _bone_colour(skeleton: Skeleton, child: int) -> str:
    if child in skeleton.left_joints:
        return LEFT_COLOUR
    if child in skeleton.right_joints:
        return RIGHT_COLOUR
    return CENTRE_COLOUR


def plot_skeleton_pair(pred: Any, gt: Any, path: str | os.PathLike, skeleton: Skeleton = H36M_17,
                       title: str | None = None, error_mm: float | None = None, dpi: int = 120,
                       elev: float = 12.0, azim: float = -70.0) -> Path:
    """The predicted pose beside the ground truth for one frame, ``(J, 3)`` each, same 3D limits.

    Left limbs blue, right limbs red, as seen from one fixed viewpoint for both panels.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    expected = (skeleton.num_joints, 3)
    for name, a in (("pred", p), ("gt", g)):
        if a.shape != expected:
            raise DataFormatError(None, name, f"one pose of shape {expected}", f"shape {a.shape}")
    shown = [_display(p), _display(g)]
    both = np.concatenate(shown)
    centre = (both.max(axis=0) + both.min(axis=0)) / 2
    half = max(float((both.max(axis=0) - both.min(axis=0)).max()) / 2, 1.0) * 1.1
    fig = Figure(figsize=(9.0, 4.8), layout="constrained")
    heading = title or "predicted vs ground truth"
    if error_mm is not None:
        heading += f" (MPJPE {error_mm:.1f} mm)"
    fig.suptitle(heading)
    for k, (pose, label) in enumerate(zip(shown, ("prediction", "ground truth"))):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        for parent, child in skeleton.bones:
            seg = pose[[parent, child]]
            ax.plot(seg[:, 0], seg[:, 1], seg[:, 2], color=_bone_colour(skeleton, child), linewidth=2.5)
        ax.scatter(pose[:, 0], pose[:, 1], pose[:, 2], s=10, color="black", depthshade=False)
        ax.set_xlim(centre[0] - half, centre[0] + half)
        ax.set_ylim(centre[1] - half, centre[1] + half)
        ax.set_zlim(centre[2] - half, centre[2] + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("x (mm)", fontsize=8)
        ax.set_ylabel("depth z (mm)", fontsize=8)
        ax.set_zlabel("up −y (mm)", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_title(label)
    fig.supxlabel("blue: left limbs   red: right limbs   grey: torso and head", fontsize=8)
    return _save(fig, path, dpi)


def plot_loss_curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike,
                     title: str = "training curves", xlabel: str = "step", ylabel: str = "loss",
                     log_y: bool | None = None, dpi: int = 120) -> Path:
    """Curves from ``{name: [(step, value), ...]}``. ``log_y=None`` picks a log axis when all
    values are positive and span more than two decades."""
    if not series:
        raise DataFormatError(None, "series", "at least one named list of (step, value) pairs", "nothing")
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    values_all = []
    for name, points in series.items():
        arr = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else np.zeros((0, 2))
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DataFormatError(None, f"series[{name!r}]", "(step, value) pairs", f"shape {arr.shape}")
        ax.plot(arr[:, 0], arr[:, 1], label=name, linewidth=1.4, marker="o" if len(arr) < 20 else None,
                markersize=3)
        values_all.append(arr[:, 1])
    values = np.concatenate(values_all)
    values = values[np.isfinite(values)]
    if log_y is None:
        log_y = bool(values.size) and values.min() > 0 and values.max() / values.min() > 100
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path, dpi)
