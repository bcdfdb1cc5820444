"""Predict sequences of any length with a fixed-window model (paper-notes sections 5 and 6).

Two protocols:

- ``mode="average"`` (Human3.6M): windows of T frames every ``stride`` frames inside each
  video, the last window end-aligned so that every frame is covered; where windows overlap,
  predictions are averaged with per-frame counts. A video shorter than T is either resampled to
  T frames (``short="resample"``, as the references do; position i reads frame
  ``round(i * (L - 1) / (T - 1))``, the offsets of the training clip index
  :func:`dualpose.data.clips.resample_offsets`, so every frame appears at least once and its
  predictions are averaged back) or edge-padded at the end (``short="pad"``, padded positions
  are dropped).
  With ``tails="drop"`` the windows are the references' Human3.6M test clips instead: windows
  start every ``stride`` frames only while they fit (no end-aligned last window), so with
  ``stride = T`` they do not overlap and the frames after the last whole window are not predicted.
- ``mode="centre"`` (MPI-INF-3DHP): every target frame is predicted at the centre position
  ``(T - 1) // 2`` of its own window, edge-padded at the video's ends.

``blend`` (average mode) says how overlapping windows are combined: ``uniform`` (the plain mean,
as the references) or ``taper``: each window's position t weighs ``sin(pi (t + 0.5) / T)^2``
(a Hann window that never reaches zero), so a window fades in and out instead of starting and
stopping, and the frames a window sees with context on both sides count most. With ``stride = T``
(no overlap) both give the same result; with overlap, ``uniform`` leaves a step wherever a window
starts or ends (benchmarks/RESULTS-frame-order.md, trajectories), ``taper`` does not.

Windows never cross a video boundary. Index arrays are built per batch with numpy (no
per-frame Python loop); the predictor sees ``torch.Tensor (B, T, J, C)`` float32 and returns
``(B, T, ...)`` (typically ``(B, T, J, 3)``), as a tensor or an array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dualpose.data.clips import resample_offsets
from dualpose.errors import DataFormatError

Predictor = Callable[[torch.Tensor], Any]
BLENDS = ("uniform", "taper")


@dataclass
class WindowPlan:
    """Every window as (video start row, video length, offset of position 0 in the video, resampled?).

    Position t of a window reads row ``start + clip(offset + t, 0, length - 1)``, or for a
    resampled window row ``start + resample_offsets(length, T)[t]``. ``weight(t)`` says which positions'
    predictions are written back.
    """

    window: int
    mode: Literal["average", "centre"]
    start: np.ndarray  # (W,) int64
    length: np.ndarray  # (W,) int64
    offset: np.ndarray  # (W,) int64
    resampled: np.ndarray  # (W,) bool
    blend: Literal["uniform", "taper"] = "uniform"

    def position_weights(self) -> np.ndarray:
        """(T,) float64 weight of each window position when overlapping predictions are combined."""
        if self.blend == "uniform" or self.mode == "centre":
            return np.ones(self.window)
        return np.sin(np.pi * (np.arange(self.window) + 0.5) / self.window) ** 2

    @property
    def num_windows(self) -> int:
        return int(self.start.size)

    def indices(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``(B, T)`` to gather for windows ``lo:hi`` and the write-back weights ``(B, T)``."""
        t = np.arange(self.window, dtype=np.int64)[None, :]
        start = self.start[lo:hi, None]
        length = self.length[lo:hi, None]
        offset = self.offset[lo:hi, None]
        resampled = self.resampled[lo:hi, None]
        local = offset + t
        inside = (local >= 0) & (local < length)
        local = np.clip(local, 0, length - 1)
        if resampled.any():
            local = np.where(resampled, resample_offsets(length[:, 0], self.window), local)
        if self.mode == "centre":
            weight = np.broadcast_to(t == (self.window - 1) // 2, local.shape)
        else:
            weight = inside | resampled
        return start + local, weight


def _check_sizes(window: int, stride: int) -> None:
    if window < 1:
        raise ValueError(f"window length T must be >= 1, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, T={window}] so that windows cover every frame, got {stride}")


def plan_windows(
    starts: Any,
    lengths: Any,
    window: int,
    stride: int | None = None,
    mode: Literal["average", "centre"] = "average",
    short: Literal["resample", "pad"] = "resample",
    targets: Any = None,
    tails: Literal["cover", "drop"] = "cover",
    blend: Literal["uniform", "taper"] = "uniform",
) -> WindowPlan:
    """Plan the windows for videos given as runs of rows ``(starts, lengths)``.

    ``tails`` (average mode): ``cover`` end-aligns a last window so every frame is predicted;
    ``drop`` keeps only windows that fit at multiples of ``stride`` (the references' test clips).

    ``targets`` (centre mode only): boolean mask over all rows, the frames to predict (e.g.
    the valid 3DHP frames); default every frame of every run.
    """
    stride = window if stride is None else stride
    _check_sizes(window, stride)
    if mode not in ("average", "centre"):
        raise ValueError(f"unknown mode {mode!r}; known: 'average', 'centre'")
    if tails not in ("cover", "drop"):
        raise ValueError(f"unknown tails policy {tails!r}; known: 'cover', 'drop'")
    if short not in ("resample", "pad"):
        raise ValueError(f"unknown short-video policy {short!r}; known: 'resample', 'pad'")
    if blend not in BLENDS:
        raise ValueError(f"unknown window blend {blend!r}; known: {', '.join(map(repr, BLENDS))}")
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    nonempty = lengths > 0
    starts, lengths = starts[nonempty], lengths[nonempty]

    if mode == "centre":
        row_start = np.repeat(starts, lengths)
        row_length = np.repeat(lengths, lengths)
        rows = row_start + np.arange(row_length.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        if targets is not None:
            keep = np.asarray(targets, dtype=bool)[rows]
            rows, row_start, row_length = rows[keep], row_start[keep], row_length[keep]
        offset = rows - row_start - (window - 1) // 2
        return WindowPlan(window, mode, row_start, row_length, offset, np.zeros(rows.size, dtype=bool))
    if targets is not None:
        raise ValueError("targets select frames in centre mode only; average mode predicts every frame")

    long_ = lengths >= window
    s, n = starts[long_], lengths[long_]
    if tails == "cover":
        count = (n - window + stride - 1) // stride + 1  # windows per video, the last one end-aligned
    else:
        count = (n - window) // stride + 1  # only windows that fit at multiples of the stride
    video = np.repeat(np.arange(s.size), count)
    k = np.arange(video.size) - np.repeat(np.cumsum(count) - count, count)
    long_offset = np.minimum(k * stride, n[video] - window)
    short_start, short_length = starts[~long_], lengths[~long_]
    return WindowPlan(
        window,
        mode,
        np.concatenate([s[video], short_start]),
        np.concatenate([n[video], short_length]),
        np.concatenate([long_offset, np.zeros(short_start.size, dtype=np.int64)]),
        np.concatenate([np.zeros(video.size, dtype=bool), np.full(short_start.size, short == "resample")]),
        blend,
    )


def _check_runs(num_rows: int, starts: np.ndarray, lengths: np.ndarray) -> None:
    if starts.shape != lengths.shape or starts.ndim != 1:
        raise DataFormatError(None, "starts/lengths", "two (V,) arrays", f"shapes {starts.shape}, {lengths.shape}")
    if (lengths < 0).any() or (starts < 0).any() or (starts + lengths > num_rows).any():
        raise DataFormatError(None, "starts/lengths", f"runs inside the {num_rows} rows of the sequence array")
    order = np.argsort(starts, kind="stable")
    ends = starts[order] + lengths[order]
    if (starts[order][1:] < ends[:-1]).any():
        raise DataFormatError(None, "starts/lengths", "non-overlapping video runs")


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().to("cpu", torch.float64).numpy()
    return np.asarray(out, dtype=np.float64)


def predict_windows(
    predict: Predictor,
    frames: np.ndarray,
    plan: WindowPlan,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``predict`` over the planned windows; return per-row weighted sums ``(N, ...)`` and the
    sums of the weights ``(N,)`` (float64; the weights are 1 unless ``plan.blend`` tapers)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = frames.shape[0]
    sums: np.ndarray | None = None
    counts = np.zeros(n, dtype=np.float64)
    position_weight = plan.position_weights()
    for lo in range(0, plan.num_windows, batch_size):
        hi = min(lo + batch_size, plan.num_windows)
        idx, weight = plan.indices(lo, hi)
        batch = torch.from_numpy(np.ascontiguousarray(frames[idx], dtype=np.float32)).to(device)
        with torch.inference_mode():
            out = _to_numpy(predict(batch))
        if out.shape[:2] != idx.shape:
            raise DataFormatError(None, "predict output", f"shape (B, T, ...) with (B, T) = {idx.shape}",
                                  f"shape {out.shape}")
        if sums is None:
            sums = np.zeros((n, *out.shape[2:]), dtype=np.float64)
        rows = idx[weight]
        w = np.broadcast_to(position_weight, idx.shape)[weight]
        np.add.at(sums, rows, out[weight] * w.reshape((-1,) + (1,) * (out.ndim - 2)))
        np.add.at(counts, rows, w)
        if progress is not None:
            progress(hi - lo)
    if sums is None:
        sums = np.zeros((n, 0))
    return sums, counts


def _mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Averages per row; rows that no window wrote (outside every run, non-targets) are NaN."""
    shape = (-1,) + (1,) * (sums.ndim - 1)
    safe = np.where(counts > 0, counts, 1.0).reshape(shape)
    return np.where(counts.reshape(shape) > 0, sums / safe, np.nan)


def predict_sequences(
    predict: Predictor,
    sequences: Sequence[np.ndarray] | np.ndarray,
    window: int,
    stride: int | None = None,
    *,
    mode: Literal["average", "centre"] = "average",
    short: Literal["resample", "pad"] = "resample",
    starts: Any = None,
    lengths: Any = None,
    targets: Any = None,
    tails: Literal["cover", "drop"] = "cover",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    blend: Literal["uniform", "taper"] = "uniform",
) -> list[np.ndarray] | np.ndarray:
    """Predict every frame of many videos through windows of ``window`` frames (float64 output).

    ``sequences`` is a list of ``(F_i, J, C)`` arrays (returns a list of ``(F_i, ...)``), or
    one flat ``(N, J, C)`` array whose videos are the runs ``(starts, lengths)`` (default: one
    video; returns ``(N, ...)``, NaN on rows no window predicts). ``stride`` defaults to T.
    ``targets``: in centre mode, the frames to predict (a bool mask per row, or one per video
    for list input); others come back NaN. ``progress`` is called with the windows done per batch.
    ``blend``: how overlapping windows combine in average mode (module docstring).
    """
    as_list = not isinstance(sequences, np.ndarray)
    if as_list:
        seqs = [np.asarray(s) for s in sequences]
        if not seqs:
            return []
        for i, s in enumerate(seqs):
            if s.ndim != 3 or s.shape[1:] != seqs[0].shape[1:]:
                raise DataFormatError(None, f"sequences[{i}]", f"(F, J, C) like sequences[0] {seqs[0].shape[1:]}",
                                      f"shape {s.shape}")
        if starts is not None or lengths is not None:
            raise ValueError("starts/lengths describe a flat array; a list of sequences has one video per item")
        lengths_arr = np.array([s.shape[0] for s in seqs], dtype=np.int64)
        starts_arr = np.cumsum(lengths_arr) - lengths_arr
        frames = np.concatenate(seqs, axis=0)
        if targets is not None:
            targets = np.concatenate([np.asarray(t, dtype=bool).reshape(-1) for t in targets])
    else:
        frames = sequences
        if frames.ndim != 3:
            raise DataFormatError(None, "sequences", "an (N, J, C) array or a list of (F, J, C) arrays",
                                  f"shape {frames.shape}")
        if (starts is None) != (lengths is None):
            raise ValueError("give both starts and lengths, or neither")
        starts_arr = np.zeros(1, np.int64) if starts is None else np.asarray(starts, dtype=np.int64).reshape(-1)
        lengths_arr = (np.array([frames.shape[0]], np.int64) if lengths is None
                       else np.asarray(lengths, dtype=np.int64).reshape(-1))
    _check_runs(frames.shape[0], starts_arr, lengths_arr)
    if targets is not None:
        targets = np.asarray(targets, dtype=bool)
        if targets.shape != (frames.shape[0],):
            raise DataFormatError(None, "targets", f"one flag per frame, shape ({frames.shape[0]},)",
                                  f"shape {targets.shape}")
    plan = plan_windows(starts_arr, lengths_arr, window, stride, mode=mode, short=short, targets=targets,
                        tails=tails, blend=blend)
    sums, counts = predict_windows(predict, frames, plan, batch_size=batch_size, device=device, progress=progress)
    result = _mean(sums, counts)
    if as_list:
        return [result[s : s + n] for s, n in zip(starts_arr.tolist(), lengths_arr.tolist())]
    return result
