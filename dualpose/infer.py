"""Lift your own 2D keypoints (detector JSON: COCO-17, Halpe-26, BlazePose-33) to 3D.

The same codec as training normalises the input, the same window machinery as evaluation runs
the model, with flip test-time augmentation. What comes out:

- ``poses_3d``: (F, J, 3) root-relative, in the codec's normalised units (the image-width scale);
- ``poses_3d_mm``: the same in millimetres *for an assumed stature*: in the wild the depth of the
  subject (and so the metric scale) is unknown, so the pose is scaled so that its median
  ankle-to-head-top chain length equals ``subject_height_mm * CHAIN_TO_STATURE``. Camera frame
  axes: x right, y down, z away from the camera; root (pelvis) at the origin.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dualpose.codec import PoseCodec
from dualpose.data.adapters import get_adapter
from dualpose.eval.windows import predict_sequences
from dualpose.io.atomic import atomic_path
from dualpose.model.flip import flip_tta
from dualpose.model.weights import load_weights
from dualpose.skeleton import Skeleton, get_skeleton

# ankle -> knee -> hip -> pelvis -> spine -> thorax -> neck -> head top is about 0.93 of standing
# height (the rest is the foot below the ankle and the skull above the head-top joint).
CHAIN_TO_STATURE = 0.93
LOW_CONFIDENCE = 0.3  # a frame whose mean joint confidence is below this is flagged in the output
log = logging.getLogger(__name__)
_CHAIN = ("ankle", "knee", "hip", "pelvis", "spine", "thorax", "neck_nose", "head_top")


def stature_chain(poses: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Per-frame length of the ankle-to-head-top chain (both legs averaged), (F,)."""
    def chain(side: str) -> np.ndarray:
        names = [f"{side}_{n}" if n in ("ankle", "knee", "hip") else n for n in _CHAIN]
        idx = [skeleton.index(n) for n in names]
        return np.linalg.norm(np.diff(poses[:, idx], axis=1), axis=-1).sum(-1)

    return 0.5 * (chain("l") + chain("r"))


def lift_keypoints_file(path: str | Path, weights: str | Path, fmt: str = "coco17", width: int | None = None,
                        height: int | None = None, fps: float | None = None, subject_height_mm: float = 1700.0,
                        flip: bool = True, window: int | None = None, batch_size: int = 16,
                        skeleton: str = "h36m17") -> dict[str, np.ndarray]:
    sk = get_skeleton(skeleton)
    adapter = get_adapter("keypoints_json")
    options = adapter.Options(format=fmt, width=width, height=height, fps=fps, split="test")
    parts = list(adapter.convert({"keypoints": Path(path)}, options, "wild", sk))
    frames = parts[0].frames
    cols = frames.normalised(path, sk)
    codec = PoseCodec(sk)
    inputs = codec.encode_input(cols["kp2d"], cols["conf"], cols["width"], cols["height"])
    from dualpose.errors import DataFormatError
    from dualpose.io.weights_check import check_finite_weights, check_weights_config

    check_weights_config(weights)
    model = load_weights(weights, skeleton=sk)
    check_finite_weights(model, weights)
    model.eval()
    low = cols["conf"].mean(axis=1) < LOW_CONFIDENCE
    if low.any():
        log.warning("%s: %d of %d frames have mean confidence < %g; they are flagged in 'low_confidence'",
                    path, int(low.sum()), low.size, LOW_CONFIDENCE)
    T = window or model.spec.T

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return flip_tta(model, x, sk) if flip else model(x)

    pred = predict_sequences(predictor, [inputs], T, max(1, T // 3), batch_size=batch_size,
                             blend="taper")[0].astype(np.float32)
    pred = pred - pred[:, sk.root:sk.root + 1]
    if not np.isfinite(pred).all():
        raise DataFormatError(weights, "<output>", "finite 3D poses from these weights and inputs", "NaN/inf")
    chain = float(np.median(stature_chain(pred, sk)))
    if not (np.isfinite(chain) and chain > 1e-6):
        raise DataFormatError(weights, "<output>", "3D poses with a measurable stature",
                              f"a degenerate skeleton (median ankle-to-head chain {chain:.3g})")
    scale = subject_height_mm * CHAIN_TO_STATURE / chain
    return {"poses_3d": pred, "poses_3d_mm": pred * scale, "frame": cols["frame"], "kp2d": cols["kp2d"],
            "conf": cols["conf"], "scale_mm_per_unit": np.float32(scale), "low_confidence": low}


def save_prediction(result: dict[str, np.ndarray], out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **result)
    return out
