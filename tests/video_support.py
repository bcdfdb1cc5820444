"""Helpers for the video tests: tiny weights, a scripted detector and a generated video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dualpose.keypoint_formats import COCO17_JOINT_NAMES
from dualpose.model.backbone import DualPoseLifter
from dualpose.model.config import build_spec
from dualpose.model.weights import save_weights
from dualpose.video.detectors import Person


def tiny_weights(folder: Path, fps: float | None = None, seed: int = 0) -> Path:
    """A 1-block lifter with a random non-degenerate head (untrained: for plumbing, not accuracy)."""
    torch.manual_seed(seed)
    spec = build_spec("XS", {"depth": 1, "dim": 16, "T": 9})
    model = DualPoseLifter(spec)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        for name, p in model.named_parameters():  # layer scales up from 1e-5: the blocks mix frames
            if name.endswith((".ls1", ".ls2")):
                p.fill_(0.5)
    save_weights(model, spec, folder)
    if fps is not None:
        import json

        cfg = json.loads((folder / "config.json").read_text())
        cfg["fps"] = fps
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


class ScriptedDetector:
    """A detector (the :class:`dualpose.video.detectors.Detector` interface) that returns known
    COCO-17 keypoints for the i-th frame it is shown: what a perfect detector would find."""

    keypoint_format = "coco17"
    name = "scripted"

    def __init__(self, people_px: list[np.ndarray]) -> None:
        self.people = people_px
        self.calls = 0

    def detect(self, frame_rgb: np.ndarray) -> list[Person]:
        i = self.calls
        self.calls += 1
        return [Person(p[i], np.full(len(p[i]), 0.9), 0.9) for p in self.people if i < len(p)]


COCO_BONES = [(COCO17_JOINT_NAMES.index(a), COCO17_JOINT_NAMES.index(b)) for a, b in (
    ("l_shoulder", "r_shoulder"), ("l_hip", "r_hip"), ("l_shoulder", "l_hip"), ("r_shoulder", "r_hip"),
    ("l_shoulder", "l_elbow"), ("l_elbow", "l_wrist"), ("r_shoulder", "r_elbow"), ("r_elbow", "r_wrist"),
    ("l_hip", "l_knee"), ("l_knee", "l_ankle"), ("r_hip", "r_knee"), ("r_knee", "r_ankle"))]


def write_stick_video(path: Path, people_px: list[np.ndarray], width: int, height: int, fps: float) -> Path:
    """An MP4 of white stick figures on grey: a tiny, generated stand-in for a real clip."""
    from dualpose.video.decode import VideoWriter

    with VideoWriter(path, fps) as writer:
        for f in range(len(people_px[0])):
            img = Image.new("RGB", (width, height), (90, 90, 90))
            d = ImageDraw.Draw(img)
            for pts in people_px:
                for a, b in COCO_BONES:
                    d.line([tuple(pts[f, a]), tuple(pts[f, b])], fill=(255, 255, 255), width=3)
            writer.write(np.asarray(img))
    return path
