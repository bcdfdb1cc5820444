"""Metrics JSON (DVC-friendly) and a markdown report of one evaluation.

The JSON is the dict of :func:`dualpose.eval.metrics.compute_all`: top-level scalars (what
``dvc metrics show`` tabulates), plus nested ``per_action``, ``per_joint`` and ``protocol``
sections. Undefined numbers are ``null``, never NaN (strict JSON). Files are written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualpose.errors import DataFormatError
from dualpose.io.atomic import atomic_path

#: (key, column title) of the summary table, in order; a column appears when any row has it.
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mpjpe_mm", "P1 MPJPE (mm)"),
    ("p_mpjpe_mm", "P2 P-MPJPE (mm)"),
    ("n_mpjpe_mm", "N-MPJPE (mm)"),
    ("mpjve_mm_per_frame", "MPJVE (mm/frame)"),
    ("accel_error_mm_per_frame2", "Accel. error (mm/frame²)"),
    ("pck_percent", "PCK (%)"),
    ("auc_percent", "AUC (%)"),
)
ACTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mpjpe_mm", "P1 (mm)"),
    ("p_mpjpe_mm", "P2 (mm)"),
    ("n_mpjpe_mm", "N-MPJPE (mm)"),
    ("mpjve_mm_per_frame", "MPJVE (mm/frame)"),
    ("num_frames", "frames"),
)
JOINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mpjpe_mm", "MPJPE (mm)"),
    ("p_mpjpe_mm", "P-MPJPE (mm)"),
    ("mpjve_mm_per_frame", "MPJVE (mm/frame)"),
    ("pck_percent", "PCK (%)"),
)
COUNT_KEYS: tuple[tuple[str, str], ...] = (
    ("num_frames", "frames evaluated"),
    ("num_frames_total", "frames given"),
    ("num_frames_invalid", "frames flagged invalid"),
    ("num_frames_excluded", "frames in excluded videos"),
    ("num_videos", "videos"),
    ("num_actions", "actions"),
)


def to_jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python numbers and lists; NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"cannot write {type(value).__name__} to a metrics JSON: {value!r}")


#: What ``metrics.json`` (the DVC metric) keeps, in this order: one readable row in ``dvc metrics show``.
SUMMARY_METRIC_KEYS = ("mpjpe_mm", "p_mpjpe_mm", "n_mpjpe_mm", "mpjve_mm_per_frame", "accel_error_mm_per_frame2",
                       "pck_percent", "auc_percent", "baseline_mean_pose_mpjpe_mm", "model_params", "frames")


def split_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, detail): the few numbers ``dvc metrics show`` tabulates readably, and everything
    (per action, per joint, protocol, counts, run settings) for a separate file that is not a DVC metric."""
    summary = {k: metrics[k] for k in SUMMARY_METRIC_KEYS if k in metrics}
    return summary, dict(metrics)


def describe_model(spec: Any, params: int, variant: str, designed: Mapping[str, int] | None) -> str:
    """One line naming the model actually trained, e.g. ``XS shrunk to 4 blocks x 32 channels, 0.3 M
    parameters (the quick start's; the XS of the paper is 12 x 64)``."""
    size = f"{spec.depth} blocks x {spec.dim} channels, {params / 1e6:.2f} M parameters, T = {spec.T}"
    if designed and (designed.get("depth"), designed.get("dim")) != (spec.depth, spec.dim):
        return (f"DualPose-{variant} shrunk to {size} (model.overrides; the {variant} of the paper is "
                f"{designed['depth']} x {designed['dim']}): a quick-start model, not the published size")
    return f"DualPose-{variant}: {size}"


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write metrics as strict JSON (indented, keys in the given order), atomically."""
    text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_metrics_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a metrics JSON written by :func:`write_metrics_json`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, "<file>", "a JSON metrics object", f"invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataFormatError(path, "<file>", "a JSON object at the top level", type(data).__name__)
    return data


# ---------------------------------------------------------------------------------------------
# markdown


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _present(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, t) for k, t in columns if any(r.get(k) is not None for r in rows)]


def summary_table(metrics: Mapping[str, Any], published: Sequence[Mapping[str, Any]] = (),
                  label: str = "this run") -> str:
    """Our numbers and the published ones side by side, with our P1 minus theirs."""
    rows = [{"method": label, **metrics}, *published]
    columns = _present(rows, SUMMARY_COLUMNS)
    threshold = metrics.get("pck_threshold_mm")
    header = ["method"] + [
        t.replace("PCK (%)", f"PCK@{threshold:g} (%)") if threshold is not None else t for _, t in columns
    ]
    ours_p1 = metrics.get("mpjpe_mm")
    with_delta = ours_p1 is not None and any(r.get("mpjpe_mm") is not None for r in published)
    if with_delta:
        header.append("ours − theirs, P1 (mm)")
    table_rows = []
    for i, r in enumerate(rows):
        row = [r.get("method", "?")] + [r.get(k) for k, _ in columns]
        if with_delta:
            theirs = r.get("mpjpe_mm")
            row.append(None if i == 0 or theirs is None else f"{ours_p1 - theirs:+.1f}")
        table_rows.append(row)
    return _table(header, table_rows)


def per_action_table(metrics: Mapping[str, Any]) -> str:
    actions: Mapping[str, Mapping[str, Any]] = metrics.get("per_action") or {}
    columns = _present(list(actions.values()), ACTION_COLUMNS)
    rows = [[name] + [entry.get(k) for k, _ in columns] for name, entry in actions.items()]
    average = ["**average over actions**"] + [
        metrics.get(k) if k != "num_frames" else sum(int(e.get("num_frames") or 0) for e in actions.values())
        for k, _ in columns
    ]
    return _table(["action"] + [t for _, t in columns], rows + [average])


def per_joint_table(metrics: Mapping[str, Any]) -> str:
    joints: Mapping[str, Mapping[str, Any]] = metrics.get("per_joint") or {}
    columns = _present(list(joints.values()), JOINT_COLUMNS)
    rows = [[name] + [entry.get(k) for k, _ in columns] for name, entry in joints.items()]
    return _table(["joint"] + [t for _, t in columns], rows)


def render_markdown(
    metrics: Mapping[str, Any],
    *,
    title: str = "Evaluation",
    published: Sequence[Mapping[str, Any]] = (),
    label: str = "this run",
    notes: Sequence[str] = (),
    figures: Mapping[str, str] | None = None,
    model: str | None = None,
    baselines: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A markdown report: summary (with published comparison rows), per-action, per-joint,
    counts and protocol. ``published`` rows are dicts with ``method`` and any summary keys
    (e.g. ``{"method": "paper (Ye et al. 2025)", "mpjpe_mm": 38.0, "p_mpjpe_mm": 31.9}``);
    ``figures`` maps captions to image paths relative to the report. ``model`` names what was
    trained (see :func:`describe_model`); ``baselines`` are reference rows computed on the same
    frames (e.g. the mean training pose), listed right under this run.
    """
    parts = [f"# {title}", ""]
    if model:
        parts += [f"Model: {model}", ""]
    parts += ["## Summary", "", summary_table(metrics, [*baselines, *published], label), ""]
    if baselines:
        parts += ["Baseline rows are computed on the same frames: a lifter must beat them to have learnt "
                  "anything from the 2D input.", ""]
    if metrics.get("per_action"):
        parts += ["## Per action", "", per_action_table(metrics), ""]
    if metrics.get("per_joint"):
        parts += ["## Per joint", "", per_joint_table(metrics), ""]
    counts = [(t, metrics[k]) for k, t in COUNT_KEYS if metrics.get(k) is not None]
    if counts:
        parts += ["## Counts", "", _table(["", "count"], counts), ""]
    protocol = metrics.get("protocol") or {}
    if protocol:
        parts += ["## Protocol", ""] + [f"- {k}: {_cell(v)}" for k, v in protocol.items()] + [""]
    if figures:
        parts += ["## Figures", ""] + [f"![{caption}]({target})" for caption, target in figures.items()] + [""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def write_markdown_report(path: str | os.PathLike, metrics: Mapping[str, Any], **kwargs: Any) -> Path:
    """Render with :func:`render_markdown` and write atomically."""
    path = Path(path)
    text = render_markdown(metrics, **kwargs)
    with atomic_path(path, suffix=".md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
