"""The numbers behind the asset checks, computed with numpy over whole tables (no Dagster here).

Each function returns a :class:`Finding`: pass/fail, a one-line description and the measured
numbers that the check attaches as metadata. Limits are named fields of :class:`TableLimits`
(documented defaults), never literals in the checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualpose.config import ClipConfig, MaskingConfig
from dualpose.data.plausibility import PlausibilityLimits, limb_bones
from dualpose.data.schema import KeypointArrays


@dataclass(frozen=True)
class TableLimits:
    """Plausibility limits for keypoint tables.

    - ``max_bone_rel_std`` / ``max_torso_bone_rel_std``: a bone's length may vary within one
      video by this relative standard deviation (limbs / synthesised torso and head bones);
      the defaults are :class:`dualpose.data.plausibility.PlausibilityLimits`'.
    - ``image_margin``: visible 2D keypoints lie within the image grown by this fraction of its
      width/height on every side; ``max_outside_fraction`` of them may lie beyond.
    - ``min_extent_mm`` / ``max_extent_mm``: the farthest joint from the root is this far in
      every 3D frame (a person, in millimetres: metres or centimetres fail).
    """

    max_bone_rel_std: float = PlausibilityLimits.max_bone_rel_std
    max_torso_bone_rel_std: float = PlausibilityLimits.max_torso_bone_rel_std
    image_margin: float = 0.5
    max_outside_fraction: float = 0.001
    min_extent_mm: float = 100.0
    max_extent_mm: float = 2000.0


@dataclass
class Finding:
    passed: bool
    description: str
    numbers: dict[str, Any] = field(default_factory=dict)


def finite_values(arrays: KeypointArrays) -> Finding:
    """No NaN/inf where a value is promised: visible 2D joints, confidences, 3D frames that have 3D,
    frame rates, and no inf anywhere (NaN marks missing data; inf never does)."""
    conf = arrays.conf
    visible = conf > 0
    bad_conf = int((~np.isfinite(conf) | (conf < 0) | (conf > 1)).sum())
    bad_2d = int((~np.isfinite(arrays.kp2d).all(axis=-1) & visible).sum())
    finite3d = np.isfinite(arrays.kp3d).all(axis=-1)  # (N, J)
    partial_3d = int((finite3d.any(axis=1) & ~finite3d.all(axis=1)).sum())
    inf_values = int(sum(int(np.isinf(a).sum()) for a in (arrays.kp2d, arrays.kp3d, arrays.factor_2_5d,
                                                            arrays.cam_intrinsics, arrays.cam_rotation,
                                                            arrays.cam_translation)))
    bad_fps = int((~np.isfinite(arrays.fps) | (arrays.fps <= 0)).sum())
    numbers = {"frames": arrays.num_frames, "visible_2d_joints_not_finite": bad_2d, "confidences_invalid": bad_conf,
               "frames_with_partial_3d": partial_3d, "inf_values": inf_values, "frame_rates_invalid": bad_fps}
    problems = {k: v for k, v in numbers.items() if k != "frames" and v}
    if problems:
        return Finding(False, "non-finite or invalid values: " + ", ".join(f"{k} {v}" for k, v in problems.items()),
                       numbers)
    return Finding(True, f"{arrays.num_frames} frames: every promised value is finite", numbers)


def _group_stats(values: np.ndarray, groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group count, mean and standard deviation of the rows of ``values`` (N, B), in float64."""
    values = values.astype(np.float64)
    count = np.bincount(groups, minlength=num_groups).astype(np.float64)
    sums = np.zeros((num_groups, values.shape[1]))
    np.add.at(sums, groups, values)
    mean = sums / np.maximum(count, 1)[:, None]
    sq = np.zeros_like(sums)
    np.add.at(sq, groups, (values - mean[groups]) ** 2)
    std = np.sqrt(sq / np.maximum(count, 1)[:, None])
    return count, mean, std


def bone_lengths_consistent(arrays: KeypointArrays, limits: TableLimits = TableLimits()) -> Finding:
    """Every bone keeps its length within each video (3D frames only): relative std <= the limit."""
    skeleton = arrays.skeleton
    has3d = arrays.has_3d
    if not has3d.any():
        return Finding(True, "no 3D keypoints: bone lengths not applicable", {"frames_3d": 0})
    lengths = skeleton.bone_lengths(arrays.kp3d[has3d].astype(np.float64))  # (n, B)
    names = arrays.categories["video_id"]
    codes = arrays.codes["video_id"][has3d]
    count, mean, std = _group_stats(lengths, codes, len(names))
    present = count > 1
    rel = std / np.maximum(mean, 1e-9)
    limit = np.where(limb_bones(skeleton), limits.max_bone_rel_std, limits.max_torso_bone_rel_std)
    ratio = np.where(present[:, None], rel / limit, 0.0)
    worst_video, worst_bone = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    parent, child = skeleton.bones[worst_bone]
    bone = f"{skeleton.joint_names[parent]}-{skeleton.joint_names[child]}"
    failing = int((ratio > 1.0).any(axis=1).sum())
    numbers = {"videos_checked": int(present.sum()), "videos_failing": failing,
               "worst_ratio_to_limit": round(float(ratio.max()), 4), "worst_video": names[worst_video],
               "worst_bone": bone, "worst_relative_std": float(rel[worst_video, worst_bone])}
    text = (f"worst: video {names[worst_video]!r}, bone {bone}: relative std {rel[worst_video, worst_bone]:.2e} "
            f"vs limit {limit[worst_bone]:.0e}")
    if failing:
        return Finding(False, f"bone lengths vary within {failing} video(s); {text}", numbers)
    return Finding(True, f"bone lengths constant within all {int(present.sum())} videos; {text}", numbers)


def plausible_range(arrays: KeypointArrays, limits: TableLimits = TableLimits()) -> Finding:
    """Visible 2D keypoints inside the (grown) image, and every 3D pose the size of a person."""
    visible = (arrays.conf > 0) & np.isfinite(arrays.kp2d).all(axis=-1)
    size = np.stack([arrays.width, arrays.height], axis=-1).astype(np.float64)[:, None, :]  # (N, 1, 2)
    lo, hi = -limits.image_margin * size, (1.0 + limits.image_margin) * size
    outside = ((arrays.kp2d < lo) | (arrays.kp2d > hi)).any(axis=-1) & visible
    n_visible = int(visible.sum())
    outside_fraction = float(outside.sum() / max(n_visible, 1))
    numbers: dict[str, Any] = {"visible_2d_joints": n_visible, "outside_image_fraction": round(outside_fraction, 6)}
    problems = []
    if outside_fraction > limits.max_outside_fraction:
        problems.append(f"{outside_fraction:.2%} of visible 2D joints lie outside the image grown by "
                        f"{limits.image_margin:.0%} (limit {limits.max_outside_fraction:.2%})")
    has3d = arrays.has_3d
    if has3d.any():
        pose = arrays.kp3d[has3d].astype(np.float64)
        extent = np.linalg.norm(pose - pose[:, arrays.skeleton.root : arrays.skeleton.root + 1], axis=-1).max(axis=1)
        small = int((extent < limits.min_extent_mm).sum())
        large = int((extent > limits.max_extent_mm).sum())
        numbers.update({"frames_3d": int(has3d.sum()), "extent_min_mm": round(float(extent.min()), 1),
                        "extent_max_mm": round(float(extent.max()), 1), "frames_too_small": small,
                        "frames_too_large": large})
        if small or large:
            problems.append(f"{small + large} 3D frames with the farthest joint outside "
                            f"[{limits.min_extent_mm:g}, {limits.max_extent_mm:g}] mm of the root "
                            f"(seen {extent.min():.1f} .. {extent.max():.1f} mm)")
    if problems:
        return Finding(False, "; ".join(problems), numbers)
    return Finding(True, "2D keypoints within the images and 3D poses the size of a person", numbers)


def clip_counts(observed: dict[str, int], expected: dict[str, int], clip_cfg: ClipConfig,
                has_test_rows: bool) -> Finding:
    """The stored index has the clips its tables and ``clips`` settings imply, and none of the
    splits that training needs is empty."""
    numbers = {f"{k}_clips": int(v) for k, v in observed.items()}
    problems = []
    if observed != expected:
        problems.append(f"stored counts {observed} differ from the {expected} that the tables imply (stale index?)")
    if observed.get("train", 0) == 0:
        problems.append("no training clips")
    wants_validation = bool(clip_cfg.splits.validation_subjects) or clip_cfg.splits.validation_fraction > 0
    if wants_validation and observed.get("validation", 0) == 0:
        problems.append("no validation clips although clips.splits asks for a validation split")
    if has_test_rows and observed.get("test", 0) == 0:
        problems.append("the tables have test frames but the index has no test clips")
    if problems:
        return Finding(False, "; ".join(problems), numbers)
    return Finding(True, "clip counts as the tables and settings imply: " +
                   ", ".join(f"{k} {v}" for k, v in observed.items()), numbers)


REFERENCE_CLIP_ID = 1 << 40  # reference masks use clip ids far from any real one


def masked_ratio(masked_cfg: MaskingConfig, stored_cfg: MaskingConfig, stored_ratio: np.ndarray,
                 recomputed_ratio: np.ndarray, sample_ratio: np.ndarray, T: int, J: int,
                 reference_samples: int = 2000) -> Finding:
    """The masks were made with the configured settings and their ratio is what those settings give.

    ``stored_ratio``: the table's ``masked_ratio`` column; ``recomputed_ratio``: the ratio of the
    stored bit masks for ``sample`` rows whose stored ratio is ``sample_ratio``. The expected mean
    comes from ``reference_samples`` fresh masks drawn with the configured settings; the observed
    mean must lie within four standard errors (of both estimates) plus 0.01.
    """
    from dualpose.data.masking import generate_masks

    numbers: dict[str, Any] = {"rows": int(stored_ratio.size)}
    problems = []
    if stored_cfg != masked_cfg:
        want, got = masked_cfg.model_dump(), stored_cfg.model_dump()
        diff = {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}
        problems.append("masks were made with other settings: " +
                        ", ".join(f"{k} configured {w} stored {g}" for k, (w, g) in diff.items()))
    mismatch = float(np.abs(recomputed_ratio - sample_ratio).max()) if recomputed_ratio.size else 0.0
    numbers["ratio_column_vs_masks_max_diff"] = round(mismatch, 6)
    if mismatch > 1e-6:
        problems.append(f"the masked_ratio column disagrees with the stored masks by up to {mismatch:.3f}")
    ref = generate_masks(reference_samples, T, J, masked_cfg,
                         REFERENCE_CLIP_ID + np.arange(reference_samples), 0).mean(axis=(1, 2))
    observed = float(stored_ratio.mean()) if stored_ratio.size else float("nan")
    expected = float(ref.mean())
    se = ref.std() * np.sqrt(1.0 / max(stored_ratio.size, 1) + 1.0 / reference_samples)
    tolerance = float(4 * se + 0.01)
    numbers.update({"masked_ratio_mean": round(observed, 4), "expected_ratio": round(expected, 4),
                    "tolerance": round(tolerance, 4)})
    if not np.isfinite(observed) or abs(observed - expected) > tolerance:
        problems.append(f"mean masked ratio {observed:.3f}, expected {expected:.3f} ± {tolerance:.3f} for "
                        f"probability {masked_cfg.probability}, span {masked_cfg.span}, "
                        f"frame_ratio {masked_cfg.frame_ratio}")
    if problems:
        return Finding(False, "; ".join(problems), numbers)
    return Finding(True, f"mean masked ratio {observed:.3f} as configured (expected {expected:.3f} ± {tolerance:.3f})",
                   numbers)


def tensors_finite(tensors: dict[str, Any]) -> Finding:
    """Every weight tensor is finite."""
    import torch

    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    numbers = {"tensors": len(tensors), "parameters": int(sum(t.numel() for t in tensors.values())),
               "tensors_not_finite": len(bad)}
    if bad:
        return Finding(False, f"{len(bad)} tensors hold NaN/inf, e.g. {bad[:3]}", numbers)
    return Finding(True, f"all {len(tensors)} tensors finite", numbers)


def within_threshold(mpjpe_mm: float | None, max_mpjpe_mm: float | None) -> Finding:
    """The evaluation's MPJPE is at most the configured threshold (``evaluate.max_mpjpe_mm``)."""
    numbers = {"mpjpe_mm": mpjpe_mm, "max_mpjpe_mm": max_mpjpe_mm}
    if mpjpe_mm is None or not np.isfinite(mpjpe_mm):
        return Finding(False, "the evaluation reported no finite MPJPE", numbers)
    if max_mpjpe_mm is None:
        return Finding(True, f"MPJPE {mpjpe_mm:.1f} mm (no threshold configured: evaluate.max_mpjpe_mm)", numbers)
    if mpjpe_mm > max_mpjpe_mm:
        return Finding(False, f"MPJPE {mpjpe_mm:.1f} mm is worse than evaluate.max_mpjpe_mm = {max_mpjpe_mm:g}",
                       numbers)
    return Finding(True, f"MPJPE {mpjpe_mm:.1f} mm <= {max_mpjpe_mm:g}", numbers)
