"""The pose codec: every normalisation between pixels/millimetres and model space, both ways.

Training, evaluation and in-the-wild inference all go through one :class:`PoseCodec`, so they
cannot drift apart (paper-notes section 5). Conventions:

- 2D input, screen normalisation with both axes divided by the image width:
  ``u' = 2u/w - 1``, ``v' = 2v/w - h/w``. The image centre maps to (0, 0), x spans [-1, 1] and y
  spans [-h/w, h/w], so the aspect ratio is kept.
- 3D target, root-relative: ``2 * (X - X_root) / (f25 * w)`` for all three axes, where ``X`` is the
  keypoint table's ``kp3d`` (camera frame, mm) and ``f25 = factor_2_5d`` the millimetres per
  pixel at the root's depth (``Z_root / focal``). Back to millimetres: ``pred * f25 * w / 2`` with
  the root joint set to exactly 0. For the MotionBERT Human3.6M pickle (``kp3d`` = its 2.5D
  pose, ``factor_2_5d`` = its ``2.5d_factor``) this equals MotionBERT's root-relative
  ``joint3d_image`` normalisation.
- Horizontal flip of normalised data: negate x and swap left/right joints. For 2D this is the
  mirror about the image's vertical centre line (pixel ``u -> w - u``) only because ``u'`` is
  centred: ``2(w - u)/w - 1 = -(2u/w - 1)``. For root-relative 3D it is the mirror through the
  camera's y-z plane.

Per-frame parameters (width, height, factor) are scalars or arrays whose shape is the leading
(frame) part of the data's shape: with data (B, T, J, C), width may be (), (B,) or (B, T).
Every method accepts numpy arrays or torch tensors and returns the same kind (torch: same
device; dtype of the data, float32 for :meth:`PoseCodec.encode_input`).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import numpy as np

from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17, Skeleton, get_skeleton

Array = TypeVar("Array")  # np.ndarray or torch.Tensor; outputs are of the input's kind

CODEC_TYPE = "dualpose.PoseCodec"
CODEC_VERSION = 1
INPUT_2D_RULE = "u' = 2u/w - 1, v' = 2v/w - h/w; missing joints (NaN or conf 0) -> (0, 0, 0)"
TARGET_3D_RULE = "t = 2 (X - X_root) / (factor_2_5d * w); X_mm = t * factor_2_5d * w / 2, root = 0"


# --------------------------------------------------------------------------- numpy/torch glue
def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _float(x: Any) -> Any:
    """The data as a floating array/tensor of its own kind."""
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _like(value: Any, ref: Any) -> Any:
    """``value`` as an array of ``ref``'s kind, dtype and device."""
    if _is_torch(ref):
        import torch

        return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    if _is_torch(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=ref.dtype)


def _per_frame(value: Any, data: Any, name: str) -> Any:
    """A per-frame parameter for (..., J, C) ``data``, shaped (...,) with trailing size-1 axes.

    ``value`` is a scalar or has the shape of a prefix of the frame axes ``data.shape[:-2]``.
    """
    v = _like(value, data)
    lead = tuple(data.shape[:-2])
    if v.ndim > len(lead) or tuple(v.shape) != lead[: v.ndim]:
        raise DataFormatError(None, name, f"a scalar or one value per frame, shape a prefix of {lead}",
                              f"shape {tuple(v.shape)}")
    return v.reshape(tuple(v.shape) + (1,) * (len(lead) - v.ndim))


def _ones(shape: tuple[int, ...], ref: Any) -> Any:
    if _is_torch(ref):
        import torch

        return torch.ones(shape, dtype=ref.dtype, device=ref.device)
    return np.ones(shape, dtype=ref.dtype)


def _isfinite(x: Any) -> Any:
    if _is_torch(x):
        import torch

        return torch.isfinite(x)
    return np.isfinite(x)


def _where(cond: Any, a: Any, b: Any) -> Any:
    """``where(cond, a, b)``; the kind follows whichever of ``a``, ``b`` is an array."""
    ref = b if np.isscalar(a) else a
    if _is_torch(ref):
        import torch

        return torch.where(cond, _like(a, ref), _like(b, ref))
    return np.where(cond, a, b).astype(ref.dtype, copy=False)


def _stack(parts: list, axis: int = -1) -> Any:
    if _is_torch(parts[0]):
        import torch

        return torch.stack(parts, dim=axis)
    return np.stack(parts, axis=axis)


def _index(x: Any, perm: np.ndarray) -> Any:
    """``x[..., perm, :]``."""
    if _is_torch(x):
        import torch

        return x[..., torch.as_tensor(perm, dtype=torch.long, device=x.device), :]
    return x[..., perm, :]


def _float32(x: Any) -> Any:
    if _is_torch(x):
        import torch

        return x.to(torch.float32)
    return x.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------- codec
class PoseCodec:
    """Owns the normalisation of 2D inputs and 3D targets for one skeleton (see module doc)."""

    def __init__(self, skeleton: Skeleton = H36M_17) -> None:
        self.skeleton = skeleton
        self._flip = np.asarray(skeleton.flip_permutation)
        self._is_root = (np.arange(skeleton.num_joints) == skeleton.root)[:, None]  # (J, 1)

    def __repr__(self) -> str:
        return f"PoseCodec(skeleton={self.skeleton.name!r})"

    # ------------------------------------------------------------------------------ 2D
    def normalize_2d(self, kp2d_px: Array, width: Any, height: Any) -> Array:
        """(..., J, 2) pixels -> screen-normalised (..., J, 2)."""
        kp = _float(kp2d_px)
        self._check(kp, "kp2d", channels=2)
        w = _per_frame(width, kp, "width")[..., None]
        h = _per_frame(height, kp, "height")[..., None]
        return _stack([2 * kp[..., 0] / w - 1, (2 * kp[..., 1] - h) / w])

    def denormalize_2d(self, norm: Array, width: Any, height: Any) -> Array:
        """Screen-normalised (..., J, >=2) -> pixels (..., J, 2)."""
        x = _float(norm)
        self._check(x, "normalised 2D", min_channels=2)
        w = _per_frame(width, x, "width")[..., None]
        h = _per_frame(height, x, "height")[..., None]
        return _stack([(x[..., 0] + 1) * w / 2, (x[..., 1] * w + h) / 2])

    def encode_input(self, kp2d_px: Array, conf: Array | None, width: Any, height: Any) -> Array:
        """Model input (..., J, 3) float32 ``[u', v', conf]``; missing joints (NaN or conf <= 0) are 0.

        ``conf=None`` means confidence 1 for every finite joint.
        """
        kp = _float(kp2d_px)
        norm = self.normalize_2d(kp, width, height)
        c = _ones(tuple(norm.shape[:-1]), norm) if conf is None else _like(conf, norm)
        if tuple(c.shape) == tuple(norm.shape[:-1]) + (1,):
            c = c[..., 0]
        if tuple(c.shape) != tuple(norm.shape[:-1]):
            raise DataFormatError(None, "conf", f"shape {tuple(norm.shape[:-1])}", f"shape {tuple(c.shape)}")
        valid = _isfinite(norm).all(-1) & _isfinite(c) & (c > 0)
        out = _stack([norm[..., 0], norm[..., 1], c])
        return _float32(_where(valid[..., None], out, 0.0))

    # ------------------------------------------------------------------------------ 3D
    def encode_target(self, kp3d_mm: Array, factor_2_5d: Any, width: Any) -> Array:
        """(..., J, 3) camera-frame mm -> normalised root-relative target (..., J, 3)."""
        x = _float(kp3d_mm)
        self._check(x, "kp3d", channels=3)
        r = self.skeleton.root
        rel = x - x[..., r : r + 1, :]
        return 2 * rel / self._scale(factor_2_5d, width, x)

    def decode_target(self, pred: Array, factor_2_5d: Any, width: Any) -> Array:
        """Normalised (..., J, 3) -> root-relative millimetres (..., J, 3), root exactly 0.

        The root is zeroed, not subtracted: a model trained on root-relative targets estimates
        the other joints relative to the true root, so its (near-zero) root output is discarded.
        """
        x = _float(pred)
        self._check(x, "prediction", channels=3)
        mm = x * (self._scale(factor_2_5d, width, x) / 2)
        return _where(_like(self._is_root, mm) > 0, 0.0, mm)

    # ---------------------------------------------------------------------------- flip
    def flip(self, x: Array) -> Array:
        """Horizontal flip of normalised (..., J, C) data: negate channel 0, swap left/right joints."""
        x = _float(x)
        self._check(x, "pose")
        sign = np.ones(x.shape[-1])
        sign[0] = -1.0
        return _index(x, self._flip) * _like(sign, x)

    flip_2d = flip  # screen-normalised 2D (any extra channels such as confidence are kept)
    flip_3d = flip  # root-relative normalised 3D

    # ----------------------------------------------------------------------- metadata
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, stored with checkpoints and predictions."""
        return {
            "type": CODEC_TYPE,
            "version": CODEC_VERSION,
            "skeleton": self.skeleton.name,
            "joint_names": list(self.skeleton.joint_names),
            "root": self.skeleton.root,
            "input_2d": INPUT_2D_RULE,
            "target_3d": TARGET_3D_RULE,
        }

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: str | os.PathLike | None = None) -> "PoseCodec":
        """Rebuild from :meth:`to_dict`; refuses a different codec version or skeleton."""
        if not isinstance(meta, dict):
            raise DataFormatError(source, "codec", "a mapping written by PoseCodec.to_dict", type(meta).__name__)
        for key, expected in (("type", CODEC_TYPE), ("version", CODEC_VERSION)):
            if meta.get(key) != expected:
                raise DataFormatError(source, f"codec.{key}", repr(expected), repr(meta.get(key)))
        try:
            skeleton = get_skeleton(meta.get("skeleton"))
        except KeyError as e:
            raise DataFormatError(source, "codec.skeleton", "a known skeleton name", repr(meta.get("skeleton"))) from e
        for key, expected in (("joint_names", list(skeleton.joint_names)), ("root", skeleton.root)):
            if meta.get(key) != expected:
                raise DataFormatError(source, f"codec.{key}", f"{expected!r} (skeleton {skeleton.name!r})",
                                      repr(meta.get(key)))
        return cls(skeleton)

    from_metadata = from_dict

    # --------------------------------------------------------------------------- checks
    def _scale(self, factor_2_5d: Any, width: Any, x: Any) -> Any:
        """``factor_2_5d * width`` per frame, shaped to broadcast against (..., J, 3)."""
        return (_per_frame(factor_2_5d, x, "factor_2_5d") * _per_frame(width, x, "width"))[..., None, None]

    def _check(self, x: Any, name: str, channels: int | None = None, min_channels: int = 1) -> None:
        j = self.skeleton.num_joints
        shape = tuple(x.shape)
        ok = len(shape) >= 2 and shape[-2] == j
        ok = ok and (shape[-1] == channels if channels else shape[-1] >= min_channels)
        if not ok:
            want = f"(..., {j}, {channels})" if channels else f"(..., {j}, C) with C >= {min_channels}"
            raise DataFormatError(None, name, f"shape {want}", f"shape {shape}")
