"""Lift one person's 2D track to root-relative 3D with the training codec and window machinery.

:class:`Lifter` loads weights once, runs on the GPU when there is one, and lifts tracks of any
length (windows of the model's T, overlapping, averaged; flip test-time augmentation). When the
weights record the frame rate they were trained at (``config.json: "fps"``) and the video's rate
differs, the 2D track is resampled to the model's rate, lifted, and the 3D resampled back to the
video's frames, so every output row still belongs to a video frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from dualpose.codec import PoseCodec
from dualpose.eval.windows import BLENDS, predict_sequences
from dualpose.model.flip import flip_tta
from dualpose.model.weights import load_weights, read_weights
from dualpose.skeleton import Skeleton, get_skeleton

FPS_TOLERANCE = 0.01  # relative difference under which no resampling is done


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resample_track(values: np.ndarray, times: np.ndarray, new_times: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0 of (F, ...) ``values`` from ``times`` to ``new_times``;
    NaN entries are skipped (interpolated over from their finite neighbours)."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    out = np.full((len(new_times), flat.shape[1]), np.nan)
    for c in range(flat.shape[1]):
        ok = np.isfinite(flat[:, c])
        if ok.sum() >= 2:
            out[:, c] = np.interp(new_times, times[ok], flat[ok, c])
        elif ok.sum() == 1:
            out[:, c] = flat[ok, c][0]
    return out.reshape((len(new_times),) + values.shape[1:])


@dataclass
class Lifter:
    model: torch.nn.Module
    skeleton: Skeleton
    device: torch.device
    model_fps: float | None  # the frame rate the weights were trained at, when recorded
    flip: bool = True
    batch_size: int = 32
    name: str = ""
    blend: str = "taper"  # overlapping windows fade in and out (dualpose.eval.windows): no steps at window edges

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)} (how overlapping windows combine), "
                             f"got {self.blend!r}")

    @classmethod
    def from_weights(cls, weights: str | os.PathLike, *, device: str | None = None, flip: bool = True,
                     batch_size: int = 32, name: str = "", blend: str = "taper") -> "Lifter":
        _, config = read_weights(weights)
        spec_skeleton = get_skeleton((config or {}).get("spec", {}).get("skeleton", "h36m17"))
        model = load_weights(weights, skeleton=spec_skeleton)
        dev = pick_device(device)
        model = model.float().to(dev).eval()
        fps = (config or {}).get("fps")
        return cls(model, spec_skeleton, dev, float(fps) if fps else None, flip, batch_size, name or str(weights),
                   blend)

    @property
    def window(self) -> int:
        return int(self.model.spec.T)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        with torch.inference_mode():
            y = flip_tta(self.model, x, self.skeleton) if self.flip else self.model(x)
        return y.float().cpu()

    def lift(self, kp2d: np.ndarray, conf: np.ndarray, width: int, height: int, fps: float,
             stride: int | None = None) -> np.ndarray:
        """(F, J, 2) pixels + (F, J) confidence (0 = missing) -> (F, J, 3) normalised root-relative
        3D (the codec's units), camera axes x right, y down, z away. Windows start every ``stride``
        frames (default T // 3: each frame is predicted about 3 times and the predictions blended
        with ``self.blend``; T: once, 3x faster, with a step at every window edge)."""
        n = len(kp2d)
        resample = self.model_fps is not None and abs(fps - self.model_fps) > FPS_TOLERANCE * self.model_fps
        if resample:
            times = np.arange(n) / fps
            new_times = np.arange(0.0, times[-1] + 0.5 / self.model_fps, 1.0 / self.model_fps)
            missing = conf <= 0
            kp2d = resample_track(np.where(missing[..., None], np.nan, kp2d), times, new_times)
            conf = np.nan_to_num(resample_track(np.where(missing, 0.0, conf), times, new_times))
        codec = PoseCodec(self.skeleton)
        inputs = codec.encode_input(kp2d, conf, width, height)
        t = self.window
        step = stride or max(1, t // 3)
        pred = predict_sequences(self._predict, [inputs], t, min(step, t), batch_size=self.batch_size,
                                 blend=self.blend)[0]
        pred = pred - pred[:, self.skeleton.root:self.skeleton.root + 1]
        if resample:
            pred = resample_track(pred, new_times, times)
        return pred.astype(np.float32)
