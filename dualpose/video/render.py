"""Render an MP4: the video with the 2D skeletons beside the 3D skeletons from a fixed viewpoint.

The 3D panel uses one viewing direction and one scale for the whole clip and glides with the
people (see :class:`Panel3D`), so the view never jumps; the floor grid is at y = 0. Left
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
    """Orthographic view of world-frame mm into a square panel.

    The viewing direction and the scale are fixed for the whole clip; the point looked at glides
    with the people (their mean root, smoothed over ``follow_s`` seconds), so the view never
    jumps and a person walking away does not shrink to a dot. The 0.5 m floor grid is fixed to
    the world, so travel shows as the grid sliding under the feet.
    """

    def __init__(self, result: InferenceResult, size: int, view: View = View(), follow_s: float = 0.5,
                 grid_mm: float = 500.0) -> None:
        self.size = size
        self.bones = result.skeleton.bones
        self.rot = view_rotation(view)
        self.grid_mm = grid_mm
        sk = result.skeleton
        first = min((int(t.frame[0]) for t in result.tracks), default=0)
        last = max((int(t.frame[-1]) for t in result.tracks), default=0)
        n = last - first + 1
        self.first = first
        roots = np.full((n, max(len(result.tracks), 1), 3), np.nan)
        heights = []
        for i, t in enumerate(result.tracks):
            roots[t.frame - first, i] = t.world_mm[:, sk.root]
            heights.append(np.nanmedian(t.world_mm[:, sk.index("head_top"), 1] - t.world_mm[:, sk.root, 1]))
        visible = np.isfinite(roots).all(-1)  # (n, tracks)
        counts = visible.sum(1)
        total = np.where(visible[..., None], roots, 0.0).sum(1)
        mean = np.where(counts[:, None] > 0, total / np.maximum(counts, 1)[:, None], np.nan)
        mean = _fill_and_smooth(mean, follow_s * result.fps)
        # how far apart people are (0 with one person): widens the fixed scale so all stay in view
        gaps = np.linalg.norm(roots[:, :, None, [0, 2]] - roots[:, None, :, [0, 2]], axis=-1)
        gaps = np.where(visible[:, :, None] & visible[:, None, :], gaps, 0.0).max(axis=(1, 2))
        spread = gaps[counts > 1] / 2
        body = float(np.nanmedian(heights)) if heights and np.isfinite(np.nanmedian(heights)) else 800.0
        self.centre = mean  # (x, y, z) of the mean root, smoothed: people stay near the panel's centre
        half = 2.2 * body + (float(np.percentile(spread, 90)) if spread.size else 0.0)
        self.half_mm = half
        self.scale = (1 - 2 * view.margin) * size / (2 * half)

    def project(self, world: np.ndarray, frame: int) -> np.ndarray:
        c = self.centre[int(np.clip(frame - self.first, 0, len(self.centre) - 1))]
        xy = ((world - c) @ self.rot.T)[..., :2] * self.scale
        return np.stack([self.size / 2 + xy[..., 0], self.size / 2 - xy[..., 1]], -1)

    def _grid(self, frame: int) -> list[np.ndarray]:
        c = self.centre[int(np.clip(frame - self.first, 0, len(self.centre) - 1))]
        r, g = 1.5 * self.half_mm, self.grid_mm
        xs = np.arange(np.floor((c[0] - r) / g) * g, c[0] + r + g, g)
        zs = np.arange(np.floor((c[2] - r) / g) * g, c[2] + r + g, g)
        lines = [np.array([[x, 0, zs[0]], [x, 0, zs[-1]]]) for x in xs]
        lines += [np.array([[xs[0], 0, z], [xs[-1], 0, z]]) for z in zs]
        return [self.project(seg, frame) for seg in lines]

    def draw(self, poses: list[tuple[np.ndarray, list]], frame: int) -> Image.Image:
        img = Image.new("RGB", (self.size, self.size), BACKGROUND)
        d = ImageDraw.Draw(img)
        for seg in self._grid(frame):
            d.line([tuple(seg[0]), tuple(seg[1])], fill=GRID, width=1)
        for world, colours in poses:
            _skeleton(d, self.project(world, frame), self.bones, colours, width=max(2, self.size // 160))
        return img


def _fill_and_smooth(values: np.ndarray, sigma_frames: float) -> np.ndarray:
    """(F, 3): NaN rows filled from their neighbours, then a Gaussian of ``sigma_frames`` (edges held)."""
    out = values.astype(np.float64).copy()
    idx = np.arange(len(out))
    ok = np.isfinite(out).all(-1)
    if not ok.any():
        return np.zeros_like(out)
    for k in range(out.shape[1]):
        out[:, k] = np.interp(idx, idx[ok], out[ok, k])
    if sigma_frames <= 0 or len(out) < 2:
        return out
    radius = int(3 * sigma_frames)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_frames) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(out, ((radius, radius), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(out.shape[1])], -1)


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
            canvas.paste(panel.draw(posed, i), (w, 0))
            writer.write(np.asarray(canvas))
    return out
