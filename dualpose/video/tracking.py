"""Link per-frame detections into person tracks; split identity switches; pick a person.

Each detection has a centre (middle of its valid joints' bounding box) and a scale (that box's
diagonal). Frame by frame, detections are matched greedily (lowest cost first) to tracks seen in
the last ``max_gap`` frames. A match is allowed only when

- the centre moved less than ``max_jump * scale`` (plus ``gap_growth * scale`` per missed
  frame), and
- the scale changed by less than a factor ``max_scale_ratio``.

A detection that matches no track starts a new one. So a single-person detector that jumps from
one person to another (an identity switch) produces two tracks instead of one impossible motion,
and when it jumps back the first track continues (if within ``max_gap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualpose.video.detectors import Detections

SELECTION_RULES = ("all", "longest", "largest", "central", "first")


@dataclass(frozen=True)
class TrackingOptions:
    max_jump: float = 0.35  # centre displacement per frame, in units of the person's scale
    gap_growth: float = 0.10  # extra allowed displacement per missed frame
    max_scale_ratio: float = 1.5  # allowed change of scale between matched detections
    max_gap: int = 15  # frames a track may miss and still continue
    min_frames: int = 10  # shorter tracks are dropped (too short to lift, usually false detections)
    min_joints: int = 4  # a detection needs this many joints with confidence > 0 to be tracked


@dataclass
class Track:
    track_id: int
    rows: np.ndarray  # (M,) rows of the Detections, increasing frame

    def frames(self, det: Detections) -> np.ndarray:
        return det.frame[self.rows]


def centres_and_scales(det: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2) bounding-box centres, (N,) diagonals and (N,) valid-joint counts."""
    ok = (det.conf > 0) & np.isfinite(det.kp2d).all(-1)
    pts = np.where(ok[..., None], det.kp2d, np.nan)
    with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
        sup.filter(RuntimeWarning)
        lo, hi = np.nanmin(pts, axis=1), np.nanmax(pts, axis=1)
    return (lo + hi) / 2, np.linalg.norm(hi - lo, axis=-1), ok.sum(-1)


def build_tracks(det: Detections, options: TrackingOptions = TrackingOptions()) -> list[Track]:
    """Tracks numbered in order of first appearance; those under ``min_frames`` detections are dropped."""
    centre, scale, count = centres_and_scales(det)
    usable = (count >= options.min_joints) & (scale > 0)
    members: list[list[int]] = []
    last: list[tuple[int, np.ndarray, float]] = []  # per track: (frame, centre, scale)
    for frame in np.unique(det.frame):
        rows = np.flatnonzero((det.frame == frame) & usable)
        alive = [t for t, (f, _, _) in enumerate(last) if 0 < frame - f <= options.max_gap + 1]
        candidates = []
        for r in rows:
            for t in alive:
                f, c, s = last[t]
                gap = frame - f
                dist = np.linalg.norm(centre[r] - c) / s
                ratio = max(scale[r], s) / min(scale[r], s)
                if dist <= options.max_jump + options.gap_growth * (gap - 1) and ratio <= options.max_scale_ratio:
                    candidates.append((dist + np.log(ratio) + 0.01 * (gap - 1), int(r), t))
        taken_rows: set[int] = set()
        taken_tracks: set[int] = set()
        for _, r, t in sorted(candidates):
            if r in taken_rows or t in taken_tracks:
                continue
            taken_rows.add(r)
            taken_tracks.add(t)
            members[t].append(r)
            last[t] = (int(frame), centre[r], float(scale[r]))
        for r in rows:
            if int(r) not in taken_rows:
                members.append([int(r)])
                last.append((int(frame), centre[r], float(scale[r])))
    kept = [np.array(m, dtype=np.int64) for m in members if len(m) >= options.min_frames]
    return [Track(i, rows) for i, rows in enumerate(kept)]


def select_tracks(det: Detections, tracks: list[Track], rule: str = "all") -> list[Track]:
    """Tracks chosen by ``rule``: ``all``, ``longest`` (most frames), ``largest`` (mean scale),
    ``central`` (closest on average to the image centre), ``first`` (appears first) or
    ``id:N`` (track N as numbered by :func:`build_tracks`)."""
    if rule == "all" or not tracks:
        return list(tracks)
    if rule.startswith("id:"):
        try:
            wanted = int(rule[3:])
        except ValueError:
            raise ValueError(f"person rule {rule!r}: expected id:N with an integer N") from None
        found = [t for t in tracks if t.track_id == wanted]
        if not found:
            raise ValueError(f"person rule {rule!r}: no track {wanted}; tracks are {[t.track_id for t in tracks]}")
        return found
    centre, scale, _ = centres_and_scales(det)
    image_centre = np.array([det.width, det.height]) / 2
    keys = {
        "longest": lambda t: -len(t.rows),
        "largest": lambda t: -float(np.nanmean(scale[t.rows])),
        "central": lambda t: float(np.nanmean(np.linalg.norm(centre[t.rows] - image_centre, axis=-1))),
        "first": lambda t: int(det.frame[t.rows[0]]),
    }
    if rule not in keys:
        raise ValueError(f"unknown person rule {rule!r}; known: {list(SELECTION_RULES)} or id:N")
    return [min(tracks, key=keys[rule])]


def dense_track(det: Detections, track: Track) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The track over every frame from its first to its last: frames (F,), kp2d (F, J, 2) with
    NaN and conf (F, J) 0 where the person was not detected."""
    frames = det.frame[track.rows]
    span = np.arange(frames[0], frames[-1] + 1)
    j = det.skeleton.num_joints
    kp = np.full((len(span), j, 2), np.nan, dtype=np.float32)
    conf = np.zeros((len(span), j), dtype=np.float32)
    kp[frames - span[0]] = det.kp2d[track.rows]
    conf[frames - span[0]] = det.conf[track.rows]
    return span, kp, conf
