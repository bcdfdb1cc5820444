"""Batches for training and evaluation, gathered from in-memory tables with one fancy index.

Every table row is encoded once (normalised 2D input, normalised root-relative 3D target) by
the codec; a batch of clips is then ``inputs[rows]`` with ``rows`` the (B, T) row indices from
the clip index. No per-clip Python, no DataLoader workers, no file per clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dualpose.codec import PoseCodec
from dualpose.config import Params
from dualpose.data.clips import ClipIndex
from dualpose.data.schema import KeypointArrays, read_keypoint_table
from dualpose.errors import ConfigError
from dualpose.layout import Layout
from dualpose.skeleton import Skeleton, get_skeleton


@dataclass
class EncodedTable:
    """A keypoint table encoded for the model: tensors indexed by table row."""

    arrays: KeypointArrays
    inputs: torch.Tensor  # (N, J, 3) u', v', confidence
    targets: torch.Tensor | None  # (N, J, 3) normalised root-relative 3D (None for 2D-only data)
    codec: PoseCodec

    @classmethod
    def load(cls, layout: Layout, dataset: str, codec: PoseCodec) -> "EncodedTable":
        arrays = read_keypoint_table(layout.table_files(dataset))
        inputs = codec.encode_input(arrays.kp2d, arrays.conf, arrays.width, arrays.height)
        targets = None
        if arrays.has_3d.any():
            targets = codec.encode_target(arrays.kp3d, arrays.factor_2_5d, arrays.width)
            targets = np.nan_to_num(targets, nan=0.0)
        return cls(
            arrays=arrays,
            inputs=torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
            targets=None if targets is None else torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)),
            codec=codec,
        )

    def flip_permutation(self) -> torch.Tensor:
        return torch.as_tensor(self.arrays.skeleton.flip_permutation)


def flip_batch(x: torch.Tensor, flip: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the samples of ``x`` (B, T, J, C) where ``flip`` (B,) is True.

    Screen-normalised coordinates are centred on the image, so a flip negates x and swaps
    left/right joints (confidence, channel 2 of the input, only follows the swap).
    """
    if not bool(flip.any()):
        return x
    flipped = x[:, :, perm].clone()
    flipped[..., 0] = -flipped[..., 0]
    return torch.where(flip.view(-1, 1, 1, 1), flipped, x)


def flip_draw(seed: int, step: int, n: int, probability: float) -> torch.Tensor:
    """Which of ``n`` samples to flip at ``step``: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step, 0xF11B])
    return torch.from_numpy(rng.random(n) < probability)


class ClipSet:
    """The clips of one split over an :class:`EncodedTable`."""

    def __init__(self, table: EncodedTable, index: ClipIndex, split: str, clip_subset: np.ndarray | None = None):
        self.table = table
        self.index = index.select(split)
        if clip_subset is not None:
            self.index = self.index.take(clip_subset)
        if len(self.index) == 0:
            raise ValueError(f"no clips in split {split!r}: check clips.splits in params.yaml")
        self.rows = torch.from_numpy(self.index.frame_rows(np.arange(len(self.index))))  # (n, T)
        self.split = split

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def batch(self, items: np.ndarray, flip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        rows = self.rows[torch.as_tensor(items)]
        x = self.table.inputs[rows]
        out = {"input": x, "rows": rows}
        if self.table.targets is not None:
            y = self.table.targets[rows]
            out["target"] = y
        if flip is not None:
            perm = self.table.flip_permutation()
            out["input"] = flip_batch(out["input"], flip, perm)
            if "target" in out:
                out["target"] = flip_batch(out["target"], flip, perm)
        return out


@dataclass
class StageData:
    """What every training and evaluation stage loads first: the encoded table of
    ``params.train_dataset`` and its (checked) clip index."""

    skeleton: Skeleton
    codec: PoseCodec
    table: EncodedTable
    index: ClipIndex

    @classmethod
    def load(cls, params: Params, layout: Layout, need_3d: str | None = None) -> "StageData":
        """``need_3d``: what the 3D labels are needed for; raises when the data set has none."""
        skeleton = get_skeleton(params.skeleton)
        codec = PoseCodec(skeleton)
        dataset = params.train_dataset
        table = EncodedTable.load(layout, dataset, codec)
        if need_3d and table.targets is None:
            raise ConfigError(f"data set {dataset!r} has no 3D keypoints: {need_3d} needs 3D labels")
        index = ClipIndex.load(layout.clips(dataset), tables=table.arrays)
        return cls(skeleton, codec, table, index)
