"""Model sizes as data: :class:`ModelSpec`, the named variants and ``build_spec``.

The variants follow paper-notes section 2 (MotionAGFormer XS/S/B/L). ``T`` is the clip length a
variant was designed and trained for; the network itself accepts any sequence length (nothing
in it is tied to ``T``), so ``T`` only sets the clip length for training, model-info and
benchmarks. ``num_joints`` always comes from the skeleton.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dualpose.errors import ConfigError
from dualpose.skeleton import Skeleton, get_skeleton

if TYPE_CHECKING:
    from dualpose.config import Params

TEMPORAL_POS_EMB = ("learned", "sinusoidal", "relative", "rotary", "none")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build the network (saved as ``config.json`` beside the weights)."""

    depth: int  # number of dual-stream blocks
    dim: int  # channels C
    T: int  # design clip length (frames)
    num_joints: int  # J, from the skeleton
    skeleton: str = "h36m17"  # registry name, used to rebuild the graph when loading weights
    heads: int = 8
    mlp_ratio: float = 4.0
    k_neighbors: int = 2  # temporal kNN graph: neighbours per (frame, joint), self excluded
    rep_dim: int = 512  # motion representation width of the lifting head
    in_channels: int = 3  # (x, y, confidence)
    out_channels: int = 3
    layer_scale_init: float = 1e-5
    drop_path: float = 0.0  # stochastic depth, rising linearly to this value over the blocks
    graph_self_loops: bool = False  # spatial GCN: D^-1/2 (A + I) D^-1/2 instead of D^-1/2 A D^-1/2
    # Frame-order signal: "relative" (a learned bias per head and frame offset on the temporal
    # attention logits, zero at init; XS's default), "learned" (a (T, C) table starting at zero, linearly
    # resampled for other lengths; the default of S, B and L, see VARIANTS), "sinusoidal" (fixed, same
    # scale as the learned table at init), "rotary" (q and k of the temporal attention rotated by
    # the frame index, RoFormer: relative, parameter-free, keeps SDPA's fast kernels) or "none" (the
    # reference: the backbone is then exactly permutation-equivariant over frames and sees a clip
    # as a set). Why: docs/method-choices.md,
    # "Frame order" (CMU A/B, 3 seeds; speed at B).
    temporal_pos_emb: str = "relative"

    def __post_init__(self) -> None:
        problems = []
        for name in ("depth", "dim", "T", "num_joints", "heads", "k_neighbors", "rep_dim",
                     "in_channels", "out_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.dim, int) and isinstance(self.heads, int) and self.heads > 0 \
                and self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            problems.append(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not (isinstance(self.drop_path, (int, float)) and 0.0 <= self.drop_path < 1.0):
            problems.append(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.temporal_pos_emb not in TEMPORAL_POS_EMB:
            problems.append(f"temporal_pos_emb must be one of {TEMPORAL_POS_EMB}, got {self.temporal_pos_emb!r}")
        elif (self.temporal_pos_emb == "rotary" and isinstance(self.dim, int) and isinstance(self.heads, int)
              and self.heads > 0 and not self.dim % self.heads and (self.dim // self.heads) % 2):
            problems.append(f"temporal_pos_emb 'rotary' needs an even head size, got dim {self.dim} / "
                            f"heads {self.heads} = {self.dim // self.heads}")
        if problems:
            raise ConfigError("invalid model spec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo is never ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model spec: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @property
    def hidden_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)


# depth x dim at design length T (paper-notes section 2), and the frame signal per design length:
# the relative bias where the temporal attention runs the explicit kernel on the CPU (T <= 32: the
# bias rides free in its logits, and it won the CMU A/B at T = 27), the learned frame table for the
# long clips, where a logit bias pushes SDPA off its fast CPU kernel onto the math path (B training
# 44 vs 64 frames/s, inference 144 vs 180; benchmarks/RESULTS-perf.md, "Frame signal at B").
# The rotary embedding keeps SDPA fast and is the smoothest, but is 2-3 mm behind the table in
# P1/P2 at T = 81 (benchmarks/RESULTS-frame-order.md, "Rotary"): an option, not a default.
VARIANTS: dict[str, dict[str, Any]] = {
    "XS": {"depth": 12, "dim": 64, "T": 27, "temporal_pos_emb": "relative"},
    "S": {"depth": 26, "dim": 64, "T": 81, "temporal_pos_emb": "learned"},
    "B": {"depth": 16, "dim": 128, "T": 243, "temporal_pos_emb": "learned"},
    "L": {"depth": 26, "dim": 128, "T": 243, "temporal_pos_emb": "learned"},
}

_DERIVED = {"num_joints", "skeleton"}


def build_spec(variant: str, overrides: dict[str, Any] | None = None,
               skeleton: Skeleton | str = "h36m17") -> ModelSpec:
    """The named variant, with ``overrides`` (``params.yaml: model.overrides``) applied.

    ``num_joints`` and ``skeleton`` come from ``skeleton`` and cannot be overridden.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown model variant {variant!r}; known: {list(VARIANTS)}")
    skel = get_skeleton(skeleton) if isinstance(skeleton, str) else skeleton
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    derived = sorted(_DERIVED & set(overrides))
    if derived:
        raise ConfigError(f"model.overrides: {derived} come from the skeleton (params.yaml: skeleton), "
                          "not from model overrides")
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"model.overrides: unknown keys {unknown}; known: {sorted(fields - _DERIVED)}")
    values: dict[str, Any] = {**VARIANTS[variant], **overrides}
    return ModelSpec(num_joints=skel.num_joints, skeleton=skel.name, **values)


def spec_from_params(params: "Params", skeleton: Skeleton | None = None) -> ModelSpec:
    """The model spec a ``params.yaml`` describes (``model.variant`` + ``model.overrides``)."""
    return build_spec(params.model.variant, params.model.overrides, skeleton or params.skeleton)
