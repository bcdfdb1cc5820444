"""Keypoint formats of 2D detectors and data sets, converted to the Human3.6M-17 skeleton.

Each source format is data: a :class:`KeypointFormat` with its joint names and, for every joint
of the target skeleton, a :class:`JointRule` = an affine combination of source joints
(``sum_i w_i * source_i`` with weights summing to 1, so conversion commutes with translation,
scaling and rotation). :func:`convert_keypoints` applies it to (..., Js, D) arrays (D = 2 or 3)
with one gather and one weighted sum; a converted joint's confidence is the minimum of its
sources' confidences (0 where any source is missing, i.e. NaN).

Formats (``FORMATS`` keys) and the rules for the joints that have no direct counterpart:

``coco17`` (COCO / ViTPose / RTMPose; order nose, l_eye, r_eye, l_ear, r_ear, l_shoulder,
r_shoulder, l_elbow, r_elbow, l_wrist, r_wrist, l_hip, r_hip, l_knee, r_knee, l_ankle, r_ankle)
    pelvis = mid(l_hip, r_hip); thorax = mid(l_shoulder, r_shoulder); spine = mid(pelvis,
    thorax); neck_nose = nose; head_top = extrapolated along the neck from the shoulders through
    the ears: ``ears + HEAD_TOP_EXTRAPOLATION * (ears - shoulders)`` with ears and shoulders the
    mid-points of each pair. Human3.6M's joint 9 sits at about ear height and its head top
    ~115 mm above it, about 0.7 of the shoulder-to-ear distance (anthropometric estimate;
    mid-eyes, a common shortcut, puts the head top ~10 cm too low).
``halpe26`` (AlphaPose Halpe-26 = COCO-17, then head 17, neck 18, hip 19, l/r big toe, l/r small
toe, l/r heel)
    pelvis = hip (19); thorax = neck (18); spine = mid(hip, neck); neck_nose = nose;
    head_top = head (17, Halpe's head-top point).
``blazepose33`` (MediaPipe Pose landmarks 0..32)
    pelvis = mid(23, 24); R hip/knee/ankle = 24/26/28; L = 23/25/27; thorax = mid(11, 12);
    spine = mid(pelvis, thorax); neck_nose = nose (0); head_top = mid(ears 7, 8);
    L shoulder/elbow/wrist = 11/13/15; R = 12/14/16. (Mid-ears is the head centre rather than
    the top: this is the project's agreed mapping, kept as data so it is easy to change.)
``mpi_inf_3dhp17`` (the 17 test joints of MPI-INF-3DHP as in the P-STMO / MotionAGFormer npz:
head_top, neck, r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist, r_hip, r_knee,
r_ankle, l_hip, l_knee, l_ankle, pelvis (root, 14), spine, head)
    a permutation: 3DHP ``neck`` is H36M thorax and 3DHP ``head`` is H36M neck_nose.
``h36m17``
    the identity.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17, Skeleton

HEAD_TOP_EXTRAPOLATION = 0.7
"""COCO head top: how far beyond the mid-ears, as a fraction of the shoulders-to-ears vector."""


# --------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class JointRule:
    """One target joint as ``sum_i weight_i * source_i`` over named source joints."""

    terms: tuple[tuple[str, float], ...]
    note: str

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.terms)


def take(name: str) -> JointRule:
    """The source joint itself."""
    return JointRule(((name, 1.0),), name)


def _as_rule(part: str | JointRule) -> JointRule:
    return take(part) if isinstance(part, str) else part


def combine(*parts: tuple[str | JointRule, float], note: str) -> JointRule:
    """Weighted sum of joints or rules; terms naming the same source joint are merged."""
    weights: dict[str, float] = {}
    for part, w in parts:
        for name, wi in _as_rule(part).terms:
            weights[name] = weights.get(name, 0.0) + w * wi
    return JointRule(tuple((n, w) for n, w in weights.items() if w != 0.0), note)


def mean(*parts: str | JointRule) -> JointRule:
    """Mean of joints (or of already synthesised joints)."""
    rules = [_as_rule(p) for p in parts]
    return combine(*((r, 1.0 / len(rules)) for r in rules), note=f"mid({', '.join(r.note for r in rules)})")


def extrapolate(origin: str | JointRule, through: str | JointRule, factor: float) -> JointRule:
    """``through + factor * (through - origin)``: continue the line origin -> through."""
    o, t = _as_rule(origin), _as_rule(through)
    return combine((t, 1.0 + factor), (o, -factor), note=f"{t.note} + {factor:g} * ({t.note} - {o.note})")


# ------------------------------------------------------------------------------------- formats
@dataclass(frozen=True, eq=False)
class KeypointFormat:
    """A source keypoint layout and how to build every joint of ``target`` from it."""

    name: str
    joint_names: tuple[str, ...]
    rules: Mapping[str, JointRule]  # keyed by target joint name
    target: Skeleton = H36M_17
    root: int | None = None  # the source format's own root joint, if it has one
    description: str = ""
    index: np.ndarray = field(init=False, repr=False)  # (target joints, K) source indices
    weight: np.ndarray = field(init=False, repr=False)  # (target joints, K), 0 on padding

    def __post_init__(self) -> None:
        pos = {n: i for i, n in enumerate(self.joint_names)}
        if len(pos) != len(self.joint_names):
            raise ValueError(f"keypoint format {self.name!r}: duplicate joint names")
        missing = [n for n in self.target.joint_names if n not in self.rules]
        extra = [n for n in self.rules if n not in self.target.joint_names]
        if missing or extra:
            raise ValueError(f"keypoint format {self.name!r}: no rule for target joints {missing}; "
                             f"rules for unknown target joints {extra}")
        width = max(len(r.terms) for r in self.rules.values())
        index = np.zeros((self.target.num_joints, width), dtype=np.intp)
        weight = np.zeros((self.target.num_joints, width), dtype=np.float64)
        for j, tname in enumerate(self.target.joint_names):
            rule = self.rules[tname]
            if not rule.terms:
                raise ValueError(f"keypoint format {self.name!r}: empty rule for {tname!r}")
            total = sum(w for _, w in rule.terms)
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"keypoint format {self.name!r}: weights for {tname!r} sum to {total}, not 1")
            for k, (src, w) in enumerate(rule.terms):
                if src not in pos:
                    raise ValueError(f"keypoint format {self.name!r}: rule for {tname!r} names unknown joint {src!r}")
                index[j, k] = pos[src]
                weight[j, k] = w
            # padding repeats the first source with weight 0: it cannot change the sum's NaN-ness
            # nor the minimum confidence
            index[j, len(rule.terms):] = index[j, 0]
        index.setflags(write=False)
        weight.setflags(write=False)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "weight", weight)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def describe(self) -> str:
        """One line per target joint: ``target <- rule``."""
        return "\n".join(f"{t:>12} <- {self.rules[t].note}" for t in self.target.joint_names)


def _rules(**rules: str | JointRule) -> dict[str, JointRule]:
    return {k: _as_rule(v) for k, v in rules.items()}


COCO17_JOINT_NAMES = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
HALPE26_JOINT_NAMES = COCO17_JOINT_NAMES + (
    "head", "neck", "hip", "l_big_toe", "r_big_toe", "l_small_toe", "r_small_toe", "l_heel", "r_heel",
)
BLAZEPOSE33_JOINT_NAMES = (
    "nose", "l_eye_inner", "l_eye", "l_eye_outer", "r_eye_inner", "r_eye", "r_eye_outer", "l_ear",
    "r_ear", "mouth_left", "mouth_right", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist",
    "r_wrist", "l_pinky", "r_pinky", "l_index", "r_index", "l_thumb", "r_thumb", "l_hip", "r_hip",
    "l_knee", "r_knee", "l_ankle", "r_ankle", "l_heel", "r_heel", "l_foot_index", "r_foot_index",
)
MPI_INF_3DHP17_JOINT_NAMES = (
    "head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "pelvis", "spine", "head",
)

# the twelve limb joints have the same names in COCO, Halpe, BlazePose and H36M
_SAME_LIMBS = _rules(**{n: n for n in (
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
    "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist")})


def _coco_like_rules(head_top: JointRule) -> dict[str, JointRule]:
    pelvis = mean("l_hip", "r_hip")
    thorax = mean("l_shoulder", "r_shoulder")
    return {**_SAME_LIMBS, **_rules(pelvis=pelvis, thorax=thorax, spine=mean(pelvis, thorax),
                                    neck_nose="nose", head_top=head_top)}


COCO17 = KeypointFormat(
    name="coco17",
    joint_names=COCO17_JOINT_NAMES,
    rules=_coco_like_rules(extrapolate(mean("l_shoulder", "r_shoulder"), mean("l_ear", "r_ear"),
                                       HEAD_TOP_EXTRAPOLATION)),
    description="COCO 17 keypoints (ViTPose, RTMPose, YOLO-pose, Detectron2)",
)

HALPE26 = KeypointFormat(
    name="halpe26",
    joint_names=HALPE26_JOINT_NAMES,
    rules={**_SAME_LIMBS, **_rules(pelvis="hip", thorax="neck", spine=mean("hip", "neck"),
                                   neck_nose="nose", head_top="head")},
    description="AlphaPose Halpe 26 keypoints (COCO-17 + head, neck, hip, feet)",
)

BLAZEPOSE33 = KeypointFormat(
    name="blazepose33",
    joint_names=BLAZEPOSE33_JOINT_NAMES,
    rules=_coco_like_rules(mean("l_ear", "r_ear")),
    description="MediaPipe BlazePose 33 landmarks",
)

MPI_INF_3DHP17 = KeypointFormat(
    name="mpi_inf_3dhp17",
    joint_names=MPI_INF_3DHP17_JOINT_NAMES,
    rules={**_SAME_LIMBS, **_rules(pelvis="pelvis", spine="spine", thorax="neck", neck_nose="head",
                                   head_top="head_top")},
    root=14,
    description="MPI-INF-3DHP 17 test joints, P-STMO / MotionAGFormer npz order (root 14)",
)

H36M17 = KeypointFormat(
    name="h36m17",
    joint_names=H36M_17.joint_names,
    rules=_rules(**{n: n for n in H36M_17.joint_names}),
    root=H36M_17.root,
    description="Human3.6M 17 joints (identity)",
)

FORMATS: dict[str, KeypointFormat] = {f.name: f for f in (COCO17, HALPE26, BLAZEPOSE33, MPI_INF_3DHP17, H36M17)}


def get_format(fmt: str | KeypointFormat) -> KeypointFormat:
    if isinstance(fmt, KeypointFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise KeyError(f"unknown keypoint format {fmt!r}; known formats: {sorted(FORMATS)}") from None


# ----------------------------------------------------------------------------------- converter
def convert_keypoints(
    points: np.ndarray,
    conf: np.ndarray | None,
    fmt: str | KeypointFormat,
    *,
    source: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert (..., Js, D) keypoints (D = 2 or 3) and (..., Js) confidences to the target skeleton.

    Returns ``(points17, conf17)`` of shapes (..., J, D) and (..., J), J = ``fmt.target.num_joints``.
    ``conf=None`` means confidence 1 for every finite joint. Missing source joints are NaN; a
    converted joint is NaN with confidence 0 when any of its sources is. ``source`` names the
    input file in error messages.
    """
    f = get_format(fmt)
    pts = np.asarray(points)
    if pts.ndim < 2 or pts.shape[-2] != f.num_joints or pts.shape[-1] not in (2, 3):
        raise DataFormatError(source, "keypoints", f"shape (..., {f.num_joints}, 2 or 3) for format {f.name!r}",
                              f"shape {pts.shape}")
    if pts.dtype.kind not in "fiu":
        raise DataFormatError(source, "keypoints", "a numeric array", f"dtype {pts.dtype}")
    if conf is None:
        c = np.ones(pts.shape[:-1], dtype=np.float32)
    else:
        c = np.asarray(conf)
        if c.shape == pts.shape[:-1] + (1,):
            c = c[..., 0]
        if c.shape != pts.shape[:-1]:
            raise DataFormatError(source, "confidence", f"shape {pts.shape[:-1]} (one per keypoint)",
                                  f"shape {c.shape}")
    dtype = np.result_type(pts.dtype, np.float32)
    pts = pts.astype(dtype, copy=False)
    out = np.einsum("...jkd,jk->...jd", pts[..., f.index, :], f.weight.astype(dtype))
    cdtype = np.result_type(c.dtype, np.float32)
    conf_out = c[..., f.index].min(axis=-1).astype(cdtype, copy=False)
    conf_out = np.where(np.isfinite(out).all(axis=-1) & np.isfinite(conf_out), conf_out, 0).astype(cdtype)
    return out, conf_out
