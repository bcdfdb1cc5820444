"""Render an MP4: the video with the 2D skeletons beside the 3D skeletons from a fixed viewpoint.

The 3D panel uses one camera for the whole clip (azimuth/elevation fixed, scale and centre from
the extent of every track over every frame, floor grid at y = 0), so the view never jumps. Left
limbs are drawn in blue, right limbs in orange, the centre line in the track's colour. Drawing
uses Pillow; encoding uses :class:`dualpose.video.decode.VideoWriter`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dualpose.video.decode import VideoWriter
from dualpose.video.outputs import InferenceResult

LEFT, RIGHT = (40, 120, 255), (255, 140, 0)
TRACK_COLOURS = ((60, 200, 90), (230, 60, 200), (0, 200, 220), (240, 220, 40), (160, 100, 255))
BACKGROUND = (24, 24, 28)
GRID = (70, 70, 80)


@dataclass(frozen=True)
class View:
    azimuth_deg: float = 35.0  # around the vertical axis, from the camera's direction
    elevation_deg: float = 15.0  # above the horizon
    margin: float = 0.1  # fraction of the panel left around the motion's extent


def _limb_colours(result: InferenceResult, track_index: int) -> list[tuple[int, int, int]]:
    sk = result.skeleton
    left, right = set(sk.left_joints), set(sk.right_joints)
    own = TRACK_COLOURS[track_index % len(TRACK_COLOURS)]
    return [LEFT if c in left else RIGHT if c in right else own for _, c in sk.bones]


def view_rotation(view: View) -> np.ndarray:
    """World -> view rotation: x right on screen, y up on screen, z toward the viewer."""
    a, e = np.radians(view.azimuth_deg), np.radians(view.elevation_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return rx @ ry


class Panel3D:
    """Orthographic projection of world-frame mm into a square panel, fixed for the whole clip."""

    def __init__(self, result: InferenceResult, size: int, view: View = View()) -> None:
        self.size = size
        self.bones = result.skeleton.bones
        self.rot = view_rotation(view)
        pts = np.concatenate([t.world_mm.reshape(-1, 3) for t in result.tracks]) if result.tracks else np.zeros((1, 3))
        pts = pts[np.isfinite(pts).all(-1)]
        if not len(pts):
            pts = np.zeros((1, 3))
        lo, hi = pts.min(0), pts.max(0)
        floor = np.array([[x, 0.0, z] for x in (lo[0], hi[0]) for z in (lo[2], hi[2])])
        proj = np.concatenate([pts, floor]) @ self.rot.T
        plo, phi = proj[:, :2].min(0), proj[:, :2].max(0)
        self.centre = (plo + phi) / 2
        self.scale = (1 - 2 * view.margin) * size / max(float((phi - plo).max()), 1.0)
        self.grid = self._grid(lo, hi)

    def project(self, world: np.ndarray) -> np.ndarray:
        p = world @ self.rot.T
        xy = (p[..., :2] - self.centre) * self.scale
        return np.stack([self.size / 2 + xy[..., 0], self.size / 2 - xy[..., 1]], -1)

    def _grid(self, lo: np.ndarray, hi: np.ndarray, step_mm: float = 500.0) -> list[np.ndarray]:
        xs = np.arange(np.floor(lo[0] / step_mm) * step_mm, hi[0] + step_mm, step_mm)
        zs = np.arange(np.floor(lo[2] / step_mm) * step_mm, hi[2] + step_mm, step_mm)
        lines = [np.array([[x, 0, zs[0]], [x, 0, zs[-1]]]) for x in xs]
        lines += [np.array([[xs[0], 0, z], [xs[-1], 0, z]]) for z in zs]
        return [self.project(seg) for seg in lines]

    def draw(self, poses: list[tuple[np.ndarray, list]]) -> Image.Image:
        img = Image.new("RGB", (self.size, self.size), BACKGROUND)
        d = ImageDraw.Draw(img)
        for seg in self.grid:
            d.line([tuple(seg[0]), tuple(seg[1])], fill=GRID, width=1)
        for world, colours in poses:
            _skeleton(d, self.project(world), self.bones, colours, width=max(2, self.size // 160))
        return img


def _skeleton(d: ImageDraw.ImageDraw, pts: np.ndarray, bones, colours: list, width: int) -> None:
    for (p, c), colour in zip(bones, colours):
        a, b = pts[p], pts[c]
        if np.isfinite(a).all() and np.isfinite(b).all():
            d.line([tuple(a), tuple(b)], fill=colour, width=width)


def render_video(frames: Iterable[np.ndarray], result: InferenceResult, out: Path, *, height: int | None = None,
                 view: View = View(), smoothed: bool = True) -> Path:
    """Write ``out`` (MP4): each video frame (scaled to ``height``, default min(720, video height))
    with its 2D overlay, beside the 3D panel of the same height."""
    h = int(height or min(720, result.height))
    h -= h % 2
    w = int(round(result.width * h / result.height))
    w -= w % 2
    panel = Panel3D(result, h, view)
    colours = [_limb_colours(result, i) for i in range(len(result.tracks))]
    index = [{int(f): k for k, f in enumerate(t.frame)} for t in result.tracks]
    sx = w / result.width
    with VideoWriter(out, result.fps) as writer:
        for i, frame in enumerate(frames):
            left = Image.fromarray(frame).resize((w, h), Image.BILINEAR)
            d = ImageDraw.Draw(left)
            posed = []
            for t, track in enumerate(result.tracks):
                k = index[t].get(i)
                if k is None:
                    continue
                if track.valid[k]:
                    _skeleton(d, track.kp2d[k] * sx, result.skeleton.bones, colours[t], width=max(2, h // 240))
                world = track.smoothed.get("world_mm", track.world_mm) if smoothed else track.world_mm
                posed.append((world[k], colours[t]))
            canvas = Image.new("RGB", (w + h, h))
            canvas.paste(left, (0, 0))
            canvas.paste(panel.draw(posed), (w, 0))
            writer.write(np.asarray(canvas))
    return out
