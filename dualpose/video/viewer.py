"""A self-contained interactive 3D viewer: one HTML file, data and JavaScript inline, no network.

A hand-written canvas orbit viewer (~100 lines of JavaScript): drag to orbit, wheel to zoom,
space or the button to play/pause, the slider to scrub. It shows every track's world-frame
skeleton (mm, y up) over a floor grid. When the first frame is drawn the page sets
``document.body.dataset.ready = "1"`` (tests wait for it).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from dualpose.io.atomic import atomic_path
from dualpose.video.outputs import InferenceResult
from dualpose.video.render import LEFT, RIGHT, TRACK_COLOURS

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{margin:0;background:#18181c;color:#ddd;font:14px sans-serif}
#bar{position:fixed;left:0;right:0;bottom:0;padding:8px;background:#222a;display:flex;gap:8px;align-items:center}
#slider{flex:1} canvas{display:block}
</style></head><body>
<canvas id="view"></canvas>
<div id="bar"><button id="play">pause</button><input id="slider" type="range" min="0" value="0"><span id="label"></span></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const cv = document.getElementById("view"), ctx = cv.getContext("2d");
const slider = document.getElementById("slider"), label = document.getElementById("label");
const playBtn = document.getElementById("play");
let az = 0.6, el = 0.3, zoom = 1, frame = 0, playing = true, last = null;
slider.max = D.num_frames - 1;
let lo = [1e9, 1e9, 1e9], hi = [-1e9, -1e9, -1e9];
for (const t of D.tracks) for (let i = 0; i < t.world.length; i += 3) for (let k = 0; k < 3; k++) {
  const v = t.world[i + k]; if (v === null) continue; lo[k] = Math.min(lo[k], v); hi[k] = Math.max(hi[k], v); }
const centre = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2];
const extent = Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2], 1000);
function resize() { cv.width = innerWidth; cv.height = innerHeight; draw(); }
function project(p) {
  const x = p[0] - centre[0], y = p[1] - centre[1], z = p[2] - centre[2];
  const ca = Math.cos(az), sa = Math.sin(az), ce = Math.cos(el), se = Math.sin(el);
  const x1 = ca * x + sa * z, z1 = -sa * x + ca * z;
  const y2 = ce * y - se * z1;
  const s = zoom * 0.8 * Math.min(cv.width, cv.height) / extent;
  return [cv.width / 2 + x1 * s, cv.height / 2 - y2 * s];
}
function line(a, b, colour, width) {
  const p = project(a), q = project(b);
  ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(q[0], q[1]); ctx.stroke();
}
function draw() {
  ctx.fillStyle = "#18181c"; ctx.fillRect(0, 0, cv.width, cv.height);
  const step = 500, g0 = [Math.floor(lo[0] / step) * step, Math.floor(lo[2] / step) * step];
  for (let x = g0[0]; x <= hi[0] + step; x += step) line([x, 0, g0[1]], [x, 0, hi[2] + step], "#464650", 1);
  for (let z = g0[1]; z <= hi[2] + step; z += step) line([g0[0], 0, z], [hi[0] + step, 0, z], "#464650", 1);
  for (const t of D.tracks) {
    const k = frame - t.first_frame; if (k < 0 || k >= t.frames) continue;
    const J = D.joint_names.length, base = k * J * 3, P = [];
    for (let j = 0; j < J; j++) P.push([t.world[base + 3 * j], t.world[base + 3 * j + 1], t.world[base + 3 * j + 2]]);
    D.bones.forEach(([a, b], i) => { if (P[a][0] !== null && P[b][0] !== null) line(P[a], P[b], D.bone_colours[i] || t.colour, 4); });
  }
  label.textContent = "frame " + frame + " / " + (D.num_frames - 1) + "  (" + (frame / D.fps).toFixed(2) + " s)";
  slider.value = frame; document.body.dataset.frame = frame; document.body.dataset.ready = "1";
}
function tick(ts) {
  if (playing && last !== null && ts - last >= 1000 / D.fps) { frame = (frame + 1) % D.num_frames; last = ts; draw(); }
  if (last === null) last = ts; requestAnimationFrame(tick);
}
let drag = null;
cv.addEventListener("mousedown", e => { drag = [e.clientX, e.clientY]; });
addEventListener("mouseup", () => { drag = null; });
addEventListener("mousemove", e => { if (!drag) return; az += (e.clientX - drag[0]) * 0.01;
  el = Math.max(-1.5, Math.min(1.5, el + (e.clientY - drag[1]) * 0.01)); drag = [e.clientX, e.clientY]; draw(); });
cv.addEventListener("wheel", e => { e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.001); draw(); }, {passive: false});
slider.addEventListener("input", () => { frame = +slider.value; draw(); });
function toggle() { playing = !playing; playBtn.textContent = playing ? "pause" : "play"; }
playBtn.addEventListener("click", toggle);
addEventListener("keydown", e => { if (e.code === "Space") { e.preventDefault(); toggle(); } });
addEventListener("resize", resize);
if (new URLSearchParams(location.search).has("paused")) toggle();
resize(); requestAnimationFrame(tick);
</script></body></html>
"""


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def viewer_data(result: InferenceResult, smoothed: bool = True) -> dict:
    sk = result.skeleton
    left, right = set(sk.left_joints), set(sk.right_joints)
    tracks = []
    first = min((int(t.frame[0]) for t in result.tracks), default=0)
    last = max((int(t.frame[-1]) for t in result.tracks), default=0)
    for i, t in enumerate(result.tracks):
        world = t.smoothed.get("world_mm", t.world_mm) if smoothed else t.world_mm
        flat = np.round(world.reshape(-1)).astype(np.float64)
        tracks.append({"id": t.track_id, "first_frame": int(t.frame[0]) - first, "frames": int(len(t.frame)),
                       "colour": _hex(TRACK_COLOURS[i % len(TRACK_COLOURS)]),
                       "world": [None if not np.isfinite(v) else int(v) for v in flat]})
    return {"joint_names": list(sk.joint_names), "bones": [list(b) for b in sk.bones],
            "bone_colours": [_hex(LEFT) if c in left else _hex(RIGHT) if c in right else None for _, c in sk.bones],
            "fps": result.fps, "num_frames": last - first + 1, "first_frame": first, "tracks": tracks}


def write_viewer(result: InferenceResult, path: Path, title: str = "DualPose 3D", smoothed: bool = True) -> Path:
    data = json.dumps(viewer_data(result, smoothed), separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    with atomic_path(path, suffix=".html") as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path
