"""Protocol metrics for 3D pose lifting (paper-notes section 6), in numpy with float64 accumulation.

Inputs are poses in millimetres, shape ``(..., J, 3)`` (per-frame functions) or ``(N, J, 3)``
with frames on axis 0 (temporal functions). Positional errors assume root-relative poses; use
:func:`root_relative` first (``compute_all`` does it for you).

Conventions, and where they come from:

- **P1 / MPJPE**: mean Euclidean joint error. **P2 / P-MPJPE**: the same after a per-frame
  similarity Procrustes alignment of the prediction to the ground truth (rotation with the
  reflection fix, uniform scale, translation). **N-MPJPE**: after the per-frame least-squares
  scale only (no rotation, no translation).
- **MPJVE** (velocity error): L2 norm of the difference of first-order frame differences,
  reported in **mm per frame** like the references; pass ``fps`` to also get mm/s
  (= mm/frame x fps). **Acceleration error**: the same on second differences, mm/frame^2
  (x fps^2 for mm/s^2). Differences are taken only between consecutive rows of the same video
  (never across a video boundary) and only when every frame involved is valid; the error of a
  difference is attributed to its last frame (velocity) or its centre frame (acceleration).
- **Human3.6M**: errors are averaged per action, then across actions (MotionBERT and
  MotionAGFormer do this), after excluding three corrupted S9 videos (see
  :data:`H36M_EXCLUDED_VIDEO_PATTERNS`).
- **MPI-INF-3DHP PCK / AUC**, as ``mpii_compute_3d_pck.m`` of the official test-set release
  defines them: a joint is correct when its error is *strictly below* the threshold
  (``error < t``); PCK uses 150 mm; AUC is the mean of the PCK curve over thresholds 0, 5, ...,
  150 mm (31 values, 0 included). The script's "Total" column weights each joint group by its
  joint count, which equals the fraction pooled over every (frame, joint) pair of the joints in
  the groups, and the reported "All" row pools every valid frame of the six test sequences.
  The joint groups of the release used by the PoseFormer / P-STMO / MotionAGFormer lineage
  (``mpii_get_pck_auc_joint_groups.m``: head [1,17], neck, shoulders, elbows, wrists, spine,
  hips [9,12,15], knees, ankles) cover **all 17 joints**, the root included (root-relative, so
  its error is 0); that is our default (``joint_set="all"``). Some copies of the script comment
  out head 17, spine and pelvis, leaving 14 joints: ``joint_set="mpi14"`` reproduces that
  variant. Only valid frames count. Functions return fractions; ``compute_all`` reports percent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17, Skeleton

PCK_THRESHOLD_MM = 150.0
AUC_MAX_MM = 150.0
AUC_STEP_MM = 5.0
_PROCRUSTES_BLOCK = 65_536  # frames per SVD batch: bounds temporary memory on large test sets

# ---------------------------------------------------------------------------------------------
# input checks


def _poses_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(gt, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if g.ndim < 2 or g.shape[-1] != 3:
        raise DataFormatError(None, "gt", "poses of shape (..., J, 3) in mm", f"shape {g.shape}")
    if p.shape != g.shape:
        raise DataFormatError(None, "pred", f"the shape of gt {g.shape}", f"shape {p.shape}")
    return p, g


def _norm(x: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis (faster than ``np.linalg.norm`` for small vectors)."""
    return np.sqrt(np.einsum("...k,...k->...", x, x))


def _sequence_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _poses_pair(pred, gt)
    if g.ndim != 3:
        raise DataFormatError(None, "gt", "frames of poses, shape (N, J, 3)", f"shape {g.shape}")
    return p, g


def _frame_vector(values: Any, n: int, field: str, dtype: Any = None) -> np.ndarray:
    a = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if a.shape != (n,):
        raise DataFormatError(None, field, f"one value per frame, shape ({n},)", f"shape {a.shape}")
    return a


def _valid_mask(valid: Any, n: int) -> np.ndarray:
    if valid is None:
        return np.ones(n, dtype=bool)
    return _frame_vector(valid, n, "valid", dtype=bool)


# ---------------------------------------------------------------------------------------------
# positional errors


def root_relative(poses: Any, root: int = 0) -> np.ndarray:
    """Subtract the root joint from every joint: ``(..., J, 3)`` -> root at the origin (float64)."""
    p = np.asarray(poses, dtype=np.float64)
    return p - p[..., root : root + 1, :]


def mpjpe(pred: Any, gt: Any) -> np.ndarray:
    """Per-frame, per-joint Euclidean errors ``(..., J)``; their mean is P1."""
    p, g = _poses_pair(pred, gt)
    return _norm(p - g)


def procrustes_align(pred: Any, gt: Any) -> np.ndarray:
    """Similarity-align each predicted pose to its ground truth (rotation, uniform scale, translation).

    Batched over all leading axes with one SVD per frame. A reflection is never used: when the
    best orthogonal matrix has det < 0, the last singular vector (and singular value) is flipped,
    so a mirrored pose keeps a non-zero error. A constant prediction maps to the gt centroid.
    """
    p, g = _poses_pair(pred, gt)
    shape = p.shape
    p = p.reshape(-1, shape[-2], 3)
    g = g.reshape(-1, shape[-2], 3)
    out = np.empty_like(p)
    for lo in range(0, p.shape[0], _PROCRUSTES_BLOCK):
        hi = lo + _PROCRUSTES_BLOCK
        out[lo:hi] = _procrustes_block(p[lo:hi], g[lo:hi])
    return out.reshape(shape)


def _procrustes_block(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    mu_p = p.mean(axis=1, keepdims=True)
    mu_g = g.mean(axis=1, keepdims=True)
    p0 = p - mu_p
    g0 = g - mu_g
    norm_p = np.sqrt((p0**2).sum(axis=(1, 2)))
    norm_g = np.sqrt((g0**2).sum(axis=(1, 2)))
    safe_p = np.where(norm_p > 0, norm_p, 1.0)
    safe_g = np.where(norm_g > 0, norm_g, 1.0)
    h = np.einsum("nji,njk->nik", g0 / safe_g[:, None, None], p0 / safe_p[:, None, None])
    u, s, vt = np.linalg.svd(h)
    v = np.swapaxes(vt, 1, 2)
    ut = np.swapaxes(u, 1, 2)
    sign = np.where(np.linalg.det(v @ ut) < 0, -1.0, 1.0)
    v[:, :, -1] *= sign[:, None]
    s[:, -1] *= sign
    rot = v @ ut
    scale = np.where(norm_p > 0, s.sum(axis=1) * norm_g / safe_p, 0.0)
    return scale[:, None, None] * (p0 @ rot) + mu_g


def p_mpjpe(pred: Any, gt: Any) -> np.ndarray:
    """Per-frame, per-joint errors after :func:`procrustes_align` ``(..., J)``; their mean is P2."""
    p, g = _poses_pair(pred, gt)
    return _norm(procrustes_align(p, g) - g)


def scale_align(pred: Any, gt: Any) -> np.ndarray:
    """Scale each predicted pose by its least-squares factor ``<pred, gt> / <pred, pred>``."""
    p, g = _poses_pair(pred, gt)
    num = (p * g).sum(axis=(-2, -1))
    den = (p * p).sum(axis=(-2, -1))
    scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return scale[..., None, None] * p


def n_mpjpe(pred: Any, gt: Any) -> np.ndarray:
    """Per-frame, per-joint errors after :func:`scale_align` ``(..., J)`` (N-MPJPE)."""
    p, g = _poses_pair(pred, gt)
    return _norm(scale_align(p, g) - g)


# ---------------------------------------------------------------------------------------------
# temporal errors


def frame_links(n: int, video_codes: Any = None, valid: Any = None) -> np.ndarray:
    """``(n - 1,)`` bool: rows i and i+1 are consecutive frames of one video and both valid.

    Rows must be frame-ordered within each video (the keypoint table guarantees it); a change
    of ``video_codes`` between two rows is a video boundary.
    """
    keep = _valid_mask(valid, n)
    links = keep[1:] & keep[:-1]
    if video_codes is not None:
        codes = _frame_vector(video_codes, n, "video_codes")
        links &= codes[1:] == codes[:-1]
    return links


def velocity_errors(pred: Any, gt: Any, video_codes: Any = None, valid: Any = None) -> np.ndarray:
    """``(N, J)`` velocity errors, mm/frame, NaN where no valid difference ends at that frame."""
    p, g = _sequence_pair(pred, gt)
    n, j = p.shape[:2]
    out = np.full((n, j), np.nan)
    if n < 2:
        return out
    ok = frame_links(n, video_codes, valid)
    err = _norm(np.diff(p, axis=0) - np.diff(g, axis=0))
    out[1:][ok] = err[ok]
    return out


def acceleration_errors(pred: Any, gt: Any, video_codes: Any = None, valid: Any = None) -> np.ndarray:
    """``(N, J)`` acceleration errors, mm/frame^2, at the centre frame; NaN where undefined."""
    p, g = _sequence_pair(pred, gt)
    n, j = p.shape[:2]
    out = np.full((n, j), np.nan)
    if n < 3:
        return out
    links = frame_links(n, video_codes, valid)
    ok = links[:-1] & links[1:]
    err = _norm(np.diff(p, n=2, axis=0) - np.diff(g, n=2, axis=0))
    out[1:-1][ok] = err[ok]
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def mpjve(pred: Any, gt: Any, video_codes: Any = None, valid: Any = None, fps: float | None = None) -> float:
    """Mean velocity error: mm/frame, or mm/s when ``fps`` is given."""
    value = _nanmean(velocity_errors(pred, gt, video_codes, valid))
    return value * fps if fps is not None else value


def acceleration_error(pred: Any, gt: Any, video_codes: Any = None, valid: Any = None,
                       fps: float | None = None) -> float:
    """Mean acceleration error: mm/frame^2, or mm/s^2 when ``fps`` is given."""
    value = _nanmean(acceleration_errors(pred, gt, video_codes, valid))
    return value * fps**2 if fps is not None else value


# ---------------------------------------------------------------------------------------------
# tables and per-action averaging


def per_joint_table(errors: Any, joint_names: Sequence[str], valid: Any = None) -> dict[str, float]:
    """Mean error of each joint over (valid) frames: ``(N, J)`` -> ``{joint name: mm}``; NaNs skipped."""
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != len(joint_names):
        raise DataFormatError(None, "errors", f"shape (N, {len(joint_names)})", f"shape {e.shape}")
    e = e[_valid_mask(valid, e.shape[0])]
    finite = np.isfinite(e)
    counts = finite.sum(axis=0)
    sums = np.where(finite, e, 0.0).sum(axis=0)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return {name: float(m) for name, m in zip(joint_names, means)}


class ActionAverages(NamedTuple):
    mean: float  # mean over actions of the per-action means
    per_action: dict[str, float]
    counts: dict[str, int]  # frames that entered each action's mean


def aggregate_by_action(errors_per_frame: Any, action_labels: Any) -> ActionAverages:
    """Average errors per action, then across actions (the Human3.6M protocol).

    ``errors_per_frame`` is ``(N,)`` or ``(N, J)`` (joints are averaged first); non-finite
    entries (e.g. frames without a velocity) are skipped. Actions are sorted by label.
    """
    e = np.asarray(errors_per_frame, dtype=np.float64)
    if e.ndim == 2:
        e = e.mean(axis=1)
    if e.ndim != 1:
        raise DataFormatError(None, "errors_per_frame", "shape (N,) or (N, J)", f"shape {e.shape}")
    labels = _frame_vector(action_labels, e.shape[0], "action_labels")
    names, inverse = np.unique(labels, return_inverse=True)
    return _group_means(e, inverse.reshape(-1), [str(a) for a in names.tolist()])


def _group_means(values: np.ndarray, group: np.ndarray, names: Sequence[str]) -> ActionAverages:
    """Per-group means of the finite ``values`` (group codes index ``names``), and their mean."""
    finite = np.isfinite(values)
    counts = np.bincount(group[finite], minlength=len(names))
    sums = np.bincount(group[finite], weights=values[finite], minlength=len(names))
    present = np.flatnonzero(counts)
    means = sums[present] / counts[present]
    return ActionAverages(
        float(means.mean()) if present.size else float("nan"),
        {names[i]: float(m) for i, m in zip(present, means)},
        {names[i]: int(counts[i]) for i in present},
    )


_SUBACTION_SUFFIX = re.compile(r"[ _-]\d{1,2}$")


def strip_subaction(action_labels: Any) -> np.ndarray:
    """Human3.6M action labels without a trailing subaction number ("Greeting 1" -> "Greeting").

    VideoPose3D-style keys name the two takes of an action "Greeting" and "Greeting 1" (or
    "... 2"); the protocol averages per action, so both takes must share one label.
    """
    labels = np.asarray(action_labels).astype(str)
    names, inverse = np.unique(labels, return_inverse=True)
    stripped = np.array([_SUBACTION_SUFFIX.sub("", s) for s in names.tolist()], dtype=object)
    return stripped[inverse].astype(str).reshape(labels.shape)


# ---------------------------------------------------------------------------------------------
# Human3.6M exclusions


@dataclass(frozen=True)
class ExcludedVideo:
    """A Human3.6M recording left out of evaluation, with its names in the common id styles."""

    subject: int
    action: int  # H36M action index (2 Directions ... 16 WalkTogether)
    subaction: int
    action_name: str
    videopose3d_name: str  # the action key of the S9 recording in VideoPose3D-style npz files

    @property
    def patterns(self) -> tuple[str, ...]:
        s, a, sa = self.subject, self.action, self.subaction
        motionbert = rf"(?<![A-Za-z0-9])s_0*{s}_act_0*{a}_subact_0*{sa}(?!\d)"
        subject = rf"(?<![A-Za-z0-9])S0*{s}[^A-Za-z0-9]+"
        name = re.escape(self.videopose3d_name)
        if " " in self.videopose3d_name:  # a numbered take: the number must end there
            videopose3d = subject + name + r"(?!\d)"
        else:  # the unnumbered take: not followed by a take number (" 1", "-1"); a camera id is fine
            videopose3d = subject + name + r"(?![A-Za-z0-9])(?![ -]\d{1,2}(?!\d))"
        folder = subject + re.escape(self.action_name) + rf"-{sa}(?!\d)"
        return motionbert, videopose3d, folder


#: The three corrupted S9 recordings (all cameras) that the MotionBERT lineage skips
#: (``block_list`` in its evaluation: act 05 subact 02, act 10 subact 02, act 13 subact 01).
#: Their VideoPose3D-style keys are "Greeting", "SittingDown 1" and "Waiting 1" (reported as the
#: shifted S9 recordings in MHFormer issue #92), and "Greeting-2", "SittingDown-2", "Waiting-1"
#: in the original folder naming (learnable-triangulation's ``damaged_actions``).
H36M_CORRUPTED_VIDEOS: tuple[ExcludedVideo, ...] = (
    ExcludedVideo(9, 5, 2, "Greeting", "Greeting"),
    ExcludedVideo(9, 10, 2, "SittingDown", "SittingDown 1"),
    ExcludedVideo(9, 13, 1, "Waiting", "Waiting 1"),
)

#: Regular expressions (``re.search``) matching the corrupted videos in any of three id styles:
#: MotionBERT sources ("s_09_act_05_subact_02_ca_01"), VideoPose3D-style ids that contain the
#: subject and the npz action key verbatim (the h36m_videopose adapter's "S9_SittingDown 1.54138969",
#: "S9_Greeting.55011271"; "S9_Greeting 1.55011271" is the other, uncorrupted take and does not
#: match), and the original folder names ("S9/Waiting-1"). Configurable as
#: ``evaluate.excluded_videos`` (the mapping of takes to VideoPose3D keys was not checked against
#: the data here).
H36M_EXCLUDED_VIDEO_PATTERNS: tuple[str, ...] = tuple(p for v in H36M_CORRUPTED_VIDEOS for p in v.patterns)


def excluded_video_mask(video_ids: Any, patterns: Sequence[str] = H36M_EXCLUDED_VIDEO_PATTERNS) -> np.ndarray:
    """``(N,)`` bool: the row's video id matches one of ``patterns`` (regular expressions, ``re.search``).

    Each distinct id is tested once, so the cost grows with the number of videos, not frames.
    """
    ids = np.asarray(video_ids)
    if ids.ndim != 1:
        raise DataFormatError(None, "video_ids", "one video id per frame, shape (N,)", f"shape {ids.shape}")
    if not patterns or ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    regex = re.compile("|".join(f"(?:{p})" for p in patterns))
    names, inverse = np.unique(ids.astype(str), return_inverse=True)
    hit = np.array([regex.search(s) is not None for s in names.tolist()], dtype=bool)
    return hit[inverse]


# ---------------------------------------------------------------------------------------------
# MPI-INF-3DHP PCK / AUC

#: Joints the 14-joint variant of the 3DHP script leaves out, as H36M-17 names (3DHP "pelvis",
#: "spine" and "head"; the 3DHP "neck" is the H36M thorax).
MPI_3DHP_14_EXCLUDED: tuple[str, ...] = ("pelvis", "spine", "neck_nose")


def pck_joints(skeleton: Skeleton = H36M_17, joint_set: Literal["all", "mpi14"] = "all") -> np.ndarray:
    """Joint indices that enter PCK/AUC: every joint, or the 14-joint variant."""
    if joint_set == "all":
        return np.arange(skeleton.num_joints)
    if joint_set == "mpi14":
        drop = {skeleton.index(name) for name in MPI_3DHP_14_EXCLUDED}
        return np.array([j for j in range(skeleton.num_joints) if j not in drop])
    raise ValueError(f"unknown PCK joint set {joint_set!r}; known: 'all', 'mpi14'")


def auc_thresholds(max_mm: float = AUC_MAX_MM, step_mm: float = AUC_STEP_MM) -> np.ndarray:
    """Thresholds 0, step, ..., max (inclusive): 0..150 step 5 gives 31 values."""
    if step_mm <= 0 or max_mm < 0:
        raise ValueError(f"AUC thresholds need step > 0 and max >= 0, got step {step_mm}, max {max_mm}")
    count = int(round(max_mm / step_mm))
    if not np.isclose(count * step_mm, max_mm):
        raise ValueError(f"AUC max {max_mm} mm is not a multiple of the step {step_mm} mm")
    return np.arange(count + 1, dtype=np.float64) * step_mm


def _selected_errors(errors: Any, valid: Any, joints: Any) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 2:
        raise DataFormatError(None, "errors", "per-frame, per-joint errors of shape (N, J)", f"shape {e.shape}")
    e = e[_valid_mask(valid, e.shape[0])]
    if joints is not None:
        e = e[:, np.asarray(joints, dtype=np.int64)]
    return e.ravel()


def pck_curve(errors: Any, thresholds: Any, valid: Any = None, joints: Any = None) -> np.ndarray:
    """Fraction of (valid frame, joint) errors strictly below each threshold (NaN when nothing counts)."""
    t = np.asarray(thresholds, dtype=np.float64)
    e = _selected_errors(errors, valid, joints)
    if e.size == 0:
        return np.full(t.shape, np.nan)
    below = np.searchsorted(np.sort(e), t, side="left")  # count of e < t; NaN errors sort last
    return below / e.size


def pck(errors: Any, threshold: float = PCK_THRESHOLD_MM, valid: Any = None, joints: Any = None) -> float:
    """3D-PCK as a fraction: errors ``< threshold`` over valid frames and the chosen joints."""
    return float(pck_curve(errors, [threshold], valid, joints)[0])


def auc(errors: Any, thresholds: Any = None, valid: Any = None, joints: Any = None) -> float:
    """Area under the PCK curve as a fraction: the mean PCK over ``thresholds`` (default 0..150 step 5)."""
    t = auc_thresholds() if thresholds is None else thresholds
    return float(pck_curve(errors, t, valid, joints).mean())


# ---------------------------------------------------------------------------------------------
# everything at once


def _json_number(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _count_videos(video_codes: np.ndarray | None, keep: np.ndarray) -> int:
    if not keep.any():
        return 0
    if video_codes is None:
        return 1
    return int(np.unique(video_codes[keep]).size)


def compute_all(
    pred_mm: Any,
    gt_mm: Any,
    actions: Any = None,
    valid: Any = None,
    fps: float | Any = None,
    video_codes: Any = None,
    *,
    skeleton: Skeleton = H36M_17,
    exclude_patterns: Sequence[str] = (),
    root_align: bool = True,
    pck_threshold_mm: float = PCK_THRESHOLD_MM,
    auc_max_mm: float = AUC_MAX_MM,
    auc_step_mm: float = AUC_STEP_MM,
    pck_joint_set: Literal["all", "mpi14"] = "all",
) -> dict[str, Any]:
    """Every metric of the protocols for ``(N, J, 3)`` predictions and ground truth in mm.

    - ``actions`` (N,): when given, P1, P2, N-MPJPE, MPJVE and acceleration error are averaged
      per action then across actions (Human3.6M); otherwise over frames (MPI-INF-3DHP). The
      plain frame means are always reported too (``*_frame_mean_*``).
    - ``valid`` (N,) bool: only valid frames count (3DHP flags). Rows whose video id matches
      ``exclude_patterns`` (e.g. :data:`H36M_EXCLUDED_VIDEO_PATTERNS`; needs ``video_codes``)
      are left out as well.
    - ``video_codes`` (N,): any per-frame video identifier; rows of one video must be
      contiguous and frame-ordered. Velocity/acceleration never cross a video boundary.
    - ``fps``: scalar or (N,); adds the mm/s and mm/s^2 forms of the temporal errors.

    Returns a JSON-ready dict: top-level numbers (undefined ones as None), ``per_action`` and
    ``per_joint`` tables, and a ``protocol`` section describing how the numbers were made.
    """
    p, g = _sequence_pair(pred_mm, gt_mm)
    n, num_joints = p.shape[:2]
    if num_joints != skeleton.num_joints:
        raise DataFormatError(None, "gt", f"{skeleton.num_joints} joints of skeleton {skeleton.name!r}",
                              f"{num_joints} joints")
    codes = None if video_codes is None else _frame_vector(video_codes, n, "video_codes")
    labels = None if actions is None else _frame_vector(actions, n, "actions").astype(str)
    if labels is not None:
        action_names, action_codes = np.unique(labels, return_inverse=True)
        action_names = [str(a) for a in action_names.tolist()]
    flagged_invalid = ~_valid_mask(valid, n)
    excluded = np.zeros(n, dtype=bool)
    if exclude_patterns:
        if codes is None:
            raise DataFormatError(None, "video_codes", "video ids (strings) to match the exclusion patterns",
                                  "nothing")
        excluded = excluded_video_mask(codes, exclude_patterns)
    keep = ~flagged_invalid & ~excluded
    if root_align:
        p = root_relative(p, skeleton.root)
        g = root_relative(g, skeleton.root)

    rows = np.flatnonzero(keep)
    kept = {
        "mpjpe": mpjpe(p[rows], g[rows]),
        "p_mpjpe": p_mpjpe(p[rows], g[rows]),
        "n_mpjpe": n_mpjpe(p[rows], g[rows]),
    }
    temporal = {
        "velocity": velocity_errors(p, g, codes, keep)[rows],
        "accel": acceleration_errors(p, g, codes, keep)[rows],
    }
    fps_rows = None
    if fps is not None:
        fps_arr = np.asarray(fps, dtype=np.float64)
        fps_rows = (np.broadcast_to(fps_arr, (n,)) if fps_arr.ndim == 0 else _frame_vector(fps_arr, n, "fps"))[rows]

    per_frame = {k: v.mean(axis=1) for k, v in {**kept, **temporal}.items()}
    if fps_rows is not None:
        per_frame["velocity_per_s"] = per_frame["velocity"] * fps_rows
        per_frame["accel_per_s2"] = per_frame["accel"] * fps_rows**2

    frame_mean = {k: _nanmean(v) for k, v in per_frame.items()}
    per_action: dict[str, dict[str, Any]] = {}
    if labels is not None:
        by_action = {k: _group_means(v, action_codes[rows], action_names) for k, v in per_frame.items()}
        protocol_mean = {k: agg.mean for k, agg in by_action.items()}
        for action, count in by_action["mpjpe"].counts.items():
            entry: dict[str, Any] = {
                "mpjpe_mm": _json_number(by_action["mpjpe"].per_action[action]),
                "p_mpjpe_mm": _json_number(by_action["p_mpjpe"].per_action[action]),
                "n_mpjpe_mm": _json_number(by_action["n_mpjpe"].per_action[action]),
                "mpjve_mm_per_frame": _json_number(by_action["velocity"].per_action.get(action, np.nan)),
                "accel_error_mm_per_frame2": _json_number(by_action["accel"].per_action.get(action, np.nan)),
                "num_frames": count,
            }
            per_action[action] = entry
    else:
        protocol_mean = frame_mean

    thresholds = auc_thresholds(auc_max_mm, auc_step_mm)
    joints = pck_joints(skeleton, pck_joint_set)
    curve_and_pck = pck_curve(kept["mpjpe"], np.r_[thresholds, pck_threshold_mm], joints=joints)
    curve, pck_value = curve_and_pck[:-1], curve_and_pck[-1]
    joint_pck = (kept["mpjpe"] < pck_threshold_mm).mean(axis=0) if rows.size else np.full(num_joints, np.nan)
    mpjpe_joint = per_joint_table(kept["mpjpe"], skeleton.joint_names)
    p_mpjpe_joint = per_joint_table(kept["p_mpjpe"], skeleton.joint_names)
    velocity_joint = per_joint_table(temporal["velocity"], skeleton.joint_names)
    per_joint = {
        name: {
            "mpjpe_mm": _json_number(mpjpe_joint[name]),
            "p_mpjpe_mm": _json_number(p_mpjpe_joint[name]),
            "mpjve_mm_per_frame": _json_number(velocity_joint[name]),
            "pck_percent": _json_number(100.0 * joint_pck[j]),
        }
        for j, name in enumerate(skeleton.joint_names)
    }

    out: dict[str, Any] = {
        "mpjpe_mm": _json_number(protocol_mean["mpjpe"]),
        "p_mpjpe_mm": _json_number(protocol_mean["p_mpjpe"]),
        "n_mpjpe_mm": _json_number(protocol_mean["n_mpjpe"]),
        "mpjve_mm_per_frame": _json_number(protocol_mean["velocity"]),
        "accel_error_mm_per_frame2": _json_number(protocol_mean["accel"]),
    }
    if fps_rows is not None:
        out["mpjve_mm_per_s"] = _json_number(protocol_mean["velocity_per_s"])
        out["accel_error_mm_per_s2"] = _json_number(protocol_mean["accel_per_s2"])
    out.update(
        {
            "pck_percent": _json_number(100.0 * pck_value),
            "auc_percent": _json_number(100.0 * curve.mean()),
            "mpjpe_frame_mean_mm": _json_number(frame_mean["mpjpe"]),
            "p_mpjpe_frame_mean_mm": _json_number(frame_mean["p_mpjpe"]),
            "n_mpjpe_frame_mean_mm": _json_number(frame_mean["n_mpjpe"]),
            "mpjve_frame_mean_mm_per_frame": _json_number(frame_mean["velocity"]),
            "accel_error_frame_mean_mm_per_frame2": _json_number(frame_mean["accel"]),
            "num_frames": int(rows.size),
            "num_frames_total": int(n),
            "num_frames_invalid": int(flagged_invalid.sum()),
            "num_frames_excluded": int((excluded & ~flagged_invalid).sum()),
            "num_videos": _count_videos(codes, keep),
            "num_actions": len(per_action),
            "num_velocity_frames": int(np.isfinite(per_frame["velocity"]).sum()),
            "num_accel_frames": int(np.isfinite(per_frame["accel"]).sum()),
            "pck_num_joints": int(joints.size),
            "pck_threshold_mm": float(pck_threshold_mm),
            "per_action": per_action,
            "per_joint": per_joint,
            "protocol": {
                "averaging": "per_action" if labels is not None else "per_frame",
                "root_aligned": bool(root_align),
                "skeleton": skeleton.name,
                "pck_rule": "error < threshold",
                "pck_joint_set": pck_joint_set,
                "auc_thresholds_mm": f"0..{auc_max_mm:g} step {auc_step_mm:g} ({thresholds.size} values)",
                "velocity_units": "mm/frame (x fps = mm/s)",
                "excluded_patterns": len(exclude_patterns),
            },
        }
    )
    return out
