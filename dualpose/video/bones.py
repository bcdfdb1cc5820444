"""Per-track bone-length consistency: one length per bone for a whole track, imposed on every frame.

A lifter predicts every frame's joints without a body model, so one person's thigh can be 10 %
longer in one frame than in the next. Bones do not change length, so per track:

1. **Estimate** each bone's length robustly (:func:`estimate_bone_lengths`): the median over the
   track's usable frames, each frame weighted by the 2D confidence of the bone's two joints (the
   lower one). With ``symmetric=True`` a left bone and its right mirror (the skeleton's
   ``flip_pairs``) both get the mean of their two medians.
2. **Impose** the lengths on every usable frame (:func:`impose_bone_lengths`), the root joint
   staying where it is:

   - ``"chain"`` (default): walk the kinematic tree from the root and put each child at its parent
     plus the fixed length along the predicted bone direction. Every bone direction is kept
     exactly; a correction near the root moves every joint below it.
   - ``"fit"``: the joints closest to the prediction (least squares, sum over joints of
     ``|x_j - y_j|^2``) among the poses with these lengths. Solved over the unit bone directions
     by block coordinate descent started from ``"chain"``: each bone in turn (root to leaves) takes
     the direction that minimises the sum exactly, the normalised sum over the joints of its
     subtree of (prediction - current position) plus its current vector times the subtree's size.
     Each step can only lower the sum, so ``"fit"`` is never further from the prediction than
     ``"chain"``; lengths are exact by construction, directions move a little.

   Measured on the CMU test subjects (benchmarks/RESULTS-video-quality.md), ``"chain"`` is the
   more accurate: a lifter's per-frame errors are mostly wrong lengths along well-predicted
   directions, so moving the joints below a too-long bone inward is a correction, not an
   accumulated error, and ``"fit"``, by pulling joints back toward the prediction, turns part of the
   length error back into direction error (higher P1, worse facing). Symmetric lengths also
   measured better than per-side ones.

A frame is usable when it is ``valid`` (the person was detected) and all its joints are finite;
other frames are returned unchanged and do not enter the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualpose.skeleton import Skeleton

METHODS = ("chain", "fit")
_TINY = 1e-12


@dataclass(frozen=True)
class BoneOptions:
    method: str = "chain"  # "chain" or "fit" (see the module docstring)
    symmetric: bool = True  # left and right bones get the same length
    iterations: int = 10  # "fit" sweeps over the bones

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"bone method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.iterations < 0:
            raise ValueError(f"bone iterations {self.iterations}: expected >= 0")


# ------------------------------------------------------------------------------------- checks
def _check_poses(poses: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    poses = np.asarray(poses)
    if poses.ndim != 3 or poses.shape[1:] != (skeleton.num_joints, 3):
        raise ValueError(f"poses: expected shape (frames, {skeleton.num_joints}, 3) for skeleton "
                         f"{skeleton.name!r}, got {poses.shape}")
    return poses


def usable_frames(poses: np.ndarray, skeleton: Skeleton, valid: np.ndarray | None = None) -> np.ndarray:
    """(F,) bool: ``valid`` (all frames when None) and every joint finite."""
    poses = _check_poses(poses, skeleton)
    ok = np.isfinite(poses).all(axis=(1, 2))
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != (len(poses),):
            raise ValueError(f"valid: expected shape ({len(poses)},) (one flag per frame), got {valid.shape}")
        ok &= valid.astype(bool)
    return ok


def _bone_arrays(skeleton: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    bones = skeleton.bones
    return np.array([p for p, _ in bones], int), np.array([c for _, c in bones], int)


def mirror_bones(skeleton: Skeleton) -> np.ndarray:
    """(B,) index of each bone's left/right mirror (itself for the middle bones)."""
    parents, children = _bone_arrays(skeleton)
    perm = skeleton.flip_permutation
    by_child = {int(c): b for b, c in enumerate(children)}
    return np.array([by_child[int(perm[c])] for c in children], int)


# --------------------------------------------------------------------------------- estimation
def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value where the cumulative weight (values sorted) reaches half the total; NaN when empty."""
    values, weights = np.asarray(values, float), np.asarray(weights, float)
    keep = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    values, weights = values[keep], weights[keep]
    if not values.size:
        return float("nan")
    order = np.argsort(values)
    values, cum = values[order], np.cumsum(weights[order])
    half = 0.5 * cum[-1]
    i = int(np.searchsorted(cum, half))
    if np.isclose(cum[i], half) and i + 1 < len(values):  # exactly half: the midpoint of the two
        return float(0.5 * (values[i] + values[i + 1]))
    return float(values[i])


def estimate_bone_lengths(poses: np.ndarray, skeleton: Skeleton, conf: np.ndarray | None = None,
                          valid: np.ndarray | None = None, symmetric: bool = True) -> np.ndarray:
    """(B,) one length per bone (``skeleton.bones`` order) for a track (F, J, 3): the median over
    usable frames weighted by the lower 2D confidence of the bone's two joints (unweighted when
    ``conf`` is None or a bone has no confident frame); NaN for every bone when no frame is usable."""
    poses = _check_poses(poses, skeleton)
    ok = usable_frames(poses, skeleton, valid)
    parents, children = _bone_arrays(skeleton)
    if conf is not None:
        conf = np.asarray(conf, float)
        if conf.shape != poses.shape[:2]:
            raise ValueError(f"conf: expected shape {poses.shape[:2]} (frames, joints), got {conf.shape}")
    lengths = skeleton.bone_lengths(poses[ok].astype(np.float64))  # (F_ok, B)
    out = np.full(len(children), np.nan)
    for b in range(len(children)):
        w = np.ones(len(lengths))
        if conf is not None:
            w = np.minimum(conf[ok, parents[b]], conf[ok, children[b]])
            w = np.where(np.isfinite(w), w, 0.0)
            if not (w > 0).any():
                w = np.ones(len(lengths))
        out[b] = weighted_median(lengths[:, b], w)
    if symmetric:
        out = 0.5 * (out + out[mirror_bones(skeleton)])
    return out


# --------------------------------------------------------------------------------- imposition
def _children_order(skeleton: Skeleton) -> list[int]:
    """Bone indices ordered root to leaves (every parent bone before its children)."""
    _, children = _bone_arrays(skeleton)
    depth = np.zeros(skeleton.num_joints, int)
    for j in range(skeleton.num_joints):
        k = j
        while skeleton.parents[k] >= 0:
            depth[j] += 1
            k = skeleton.parents[k]
    return sorted(range(len(children)), key=lambda b: (depth[children[b]], b))


def _subtrees(skeleton: Skeleton) -> list[np.ndarray]:
    """Per bone, the joints its child carries along (the child and all its descendants)."""
    _, children = _bone_arrays(skeleton)
    out = []
    for c in children:
        members = []
        for j in range(skeleton.num_joints):
            k = j
            while k >= 0 and k != c:
                k = skeleton.parents[k]
            if k == c:
                members.append(j)
        out.append(np.array(members, int))
    return out


def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, _TINY), n[..., 0]


def _check_lengths(lengths: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    lengths = np.asarray(lengths, float)
    nb = len(skeleton.bones)
    if lengths.shape != (nb,):
        raise ValueError(f"lengths: expected shape ({nb},) (one per bone of {skeleton.name!r}), got {lengths.shape}")
    if not (np.isfinite(lengths).all() and (lengths >= 0).all()):
        raise ValueError(f"lengths: expected finite lengths >= 0, got {lengths.tolist()}")
    return lengths


def impose_bone_lengths(poses: np.ndarray, skeleton: Skeleton, lengths: np.ndarray,
                        valid: np.ndarray | None = None, method: str = "chain", iterations: int = 10) -> np.ndarray:
    """Poses (F, J, 3) with every bone of every usable frame at ``lengths`` (B,), root kept in place.
    Unusable frames (``valid`` false or a joint not finite) are copied unchanged."""
    BoneOptions(method=method, iterations=iterations)  # validates
    poses = _check_poses(poses, skeleton)
    lengths = _check_lengths(lengths, skeleton)
    ok = usable_frames(poses, skeleton, valid)
    out = np.array(poses, copy=True)
    if not ok.any():
        return out
    y = poses[ok].astype(np.float64)
    parents, children = _bone_arrays(skeleton)
    order = _children_order(skeleton)
    # "chain": predicted directions, fixed lengths. A zero-length predicted bone takes the bone's
    # mean direction over the track (or, if that too is zero, the +x axis).
    dirs, norms = _unit(y[:, children] - y[:, parents])  # (F, B, 3)
    zero = norms < _TINY
    if zero.any():
        mean, mean_norm = _unit(dirs.sum(0))
        mean[mean_norm < _TINY] = np.eye(3)[0]
        dirs = np.where(zero[..., None], mean[None], dirs)
    x = np.empty_like(y)
    x[:, skeleton.root] = y[:, skeleton.root]
    for b in order:
        x[:, children[b]] = x[:, parents[b]] + lengths[b] * dirs[:, b]
    if method == "fit":
        subtrees = _subtrees(skeleton)
        for _ in range(iterations):
            for b in order:
                s = subtrees[b]
                target = (y[:, s] - x[:, s]).sum(1) + lengths[b] * len(s) * dirs[:, b]
                new, n = _unit(target)
                new = np.where((n < _TINY)[:, None], dirs[:, b], new)
                x[:, s] += (lengths[b] * (new - dirs[:, b]))[:, None]
                dirs[:, b] = new
    out[ok] = x.astype(out.dtype)
    return out


def constrain_track(poses: np.ndarray, skeleton: Skeleton, conf: np.ndarray | None = None,
                    valid: np.ndarray | None = None,
                    options: BoneOptions = BoneOptions()) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the track's bone lengths and impose them: (constrained poses, lengths (B,)).
    With no usable frame the poses come back unchanged and the lengths are NaN."""
    lengths = estimate_bone_lengths(poses, skeleton, conf, valid, options.symmetric)
    if not np.isfinite(lengths).all():
        return np.array(poses, copy=True), lengths
    return impose_bone_lengths(poses, skeleton, lengths, valid, options.method, options.iterations), lengths
