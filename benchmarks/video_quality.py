"""Plausibility of `dualpose infer` output on real video and on CMU motion rendered through the same path.

Measures, for any weights (issue 9, point 4):

- bone-length coefficient of variation (std / mean of each bone over a track's frames; the mean
  over the 16 bones, and the worst bone), target < 5 %;
- backward-knee frames: fraction of frames where a knee bends forward by more than 10 degrees
  (signed flexion, dualpose.data.plausibility), target < 5 %;
- depth spread: per frame, the std over joints of root-relative depth (mm), averaged; on CMU the
  ratio to the ground truth's, target within 30 %;
- facing direction: body forward = (left hip - right hip) x (thorax - pelvis). On CMU: the
  angle to the ground truth's forward in the horizontal plane (median, and the fraction > 90
  degrees = facing the wrong way). On video: the fraction of walking frames whose forward points
  the way the pelvis moves across the image (a person walking side-on faces where they go);
- jitter: mean joint acceleration (mm/frame^2).

Every measure is given twice: for the 3D as lifted ("raw") and with the per-track bone lengths
fixed (`dualpose infer`'s default, dualpose/video/bones.py). Fixing the lengths makes the bone CV
~0 by construction; what matters is that the other measures and P1 do not get worse. On CMU the
variants of the bone step (chain / least-squares fit, symmetric or not) are compared by P1 and by
the error of the estimated lengths against the ground truth's.

CMU: the test sequences (the mocap_npz adapter's split: seed 0, 20 % per action) are filmed by a
virtual camera (5 m away, 1.2 m high, a seeded azimuth, 1280x720, f = 1000 px, 2 px Gaussian
2D noise), written as H36M-17 detections and lifted by the same functions as `dualpose infer`
(tracking, lifting with flip TTA, stature scale from the true stature).

Sports2D demo video (BSD-3-Clause, inside the sports2d 0.8.34 wheel, fetched here with
`pip download`): MediaPipe BlazePose (model_complexity=1) runs in its own environment
(--mediapipe-python; MediaPipe needs protobuf < 5), its 2D goes through `dualpose infer`'s
path, and MediaPipe's own world landmarks on the same frames are measured the same way.

    python benchmarks/video_quality.py --weights NAME_OR_FOLDER --mediapipe-python /path/to/mp-env/bin/python

Writes benchmarks/RESULTS-video-quality.md (--out) with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualpose.camera import Camera  # noqa: E402
from dualpose.data.adapters.mocap_npz import split_by_sequence  # noqa: E402
from dualpose.data.plausibility import signed_knee_flexion  # noqa: E402
from dualpose.skeleton import H36M_17 as SK  # noqa: E402
from dualpose.video.bones import BoneOptions, constrain_track  # noqa: E402
from dualpose.video.detectors import Detections, load_keypoint_file, run_mediapipe_worker  # noqa: E402
from dualpose.video.lift import Lifter  # noqa: E402
from dualpose.video.metric import stature_scale  # noqa: E402
from dualpose.video.smoothing import one_euro  # noqa: E402
from dualpose.video.pipeline import InferOptions, Timer, lift_detections  # noqa: E402
from dualpose.video.tracking import build_tracks, dense_track  # noqa: E402
from dualpose.weights import resolve_weights  # noqa: E402
from dualpose.infer import CHAIN_TO_STATURE, stature_chain  # noqa: E402

SPORTS2D = "sports2d==0.8.34"
DEMO_IN_WHEEL = "Sports2D/Demo/demo.mp4"
KNEE_LIMIT_DEG = 10.0
WALK_SPEED_PX_S = 60.0  # pelvis speed across the image above which a frame counts as walking
VARIANTS = {"chain, per side": BoneOptions("chain", symmetric=False),
            "chain, symmetric (default)": BoneOptions("chain"),
            "fit, per side": BoneOptions("fit", symmetric=False), "fit, symmetric": BoneOptions("fit")}


# ------------------------------------------------------------------------------------- measures
def bone_cv(poses: np.ndarray) -> tuple[float, float]:
    lengths = SK.bone_lengths(poses[np.isfinite(poses).all(axis=(1, 2))])
    cv = lengths.std(0) / np.maximum(lengths.mean(0), 1e-9)
    return float(cv.mean()), float(cv.max())


def backward_knee_fraction(poses: np.ndarray) -> float:
    j = SK.index
    ok = np.isfinite(poses).all(axis=(1, 2))
    p = poses[ok]
    worst = np.minimum(
        signed_knee_flexion(p, j("l_hip"), j("l_knee"), j("l_ankle"), j("l_hip"), j("r_hip")),
        signed_knee_flexion(p, j("r_hip"), j("r_knee"), j("r_ankle"), j("l_hip"), j("r_hip")))
    return float((worst < -KNEE_LIMIT_DEG).mean()) if len(p) else float("nan")


def depth_spread(poses_cam: np.ndarray) -> float:
    ok = np.isfinite(poses_cam).all(axis=(1, 2))
    rel = poses_cam[ok] - poses_cam[ok, :1]
    return float(np.mean(np.std(rel[..., 2], axis=1))) if ok.any() else float("nan")


def forward(poses_cam: np.ndarray) -> np.ndarray:
    j = SK.index
    left = poses_cam[:, j("l_hip")] - poses_cam[:, j("r_hip")]
    up = poses_cam[:, j("thorax")] - poses_cam[:, j("pelvis")]
    f = np.cross(left, up)
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-9)


def horizontal_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between forward vectors in the camera's x-z plane (the floor, for a level camera)."""
    ang = np.arctan2(a[:, 0], a[:, 2]) - np.arctan2(b[:, 0], b[:, 2])
    return np.degrees(np.abs((ang + np.pi) % (2 * np.pi) - np.pi))


def jitter(poses: np.ndarray) -> float:
    acc = np.diff(poses, 2, axis=0)
    return float(np.nanmean(np.linalg.norm(acc, axis=-1)))


def facing_travel_agreement(poses_cam: np.ndarray, pelvis_px: np.ndarray, fps: float) -> tuple[float, int]:
    vx = np.gradient(pelvis_px[:, 0]) * fps
    walking = np.isfinite(vx) & (np.abs(vx) > WALK_SPEED_PX_S)
    fx = forward(poses_cam)[:, 0]
    ok = walking & np.isfinite(fx)
    return (float((np.sign(fx[ok]) == np.sign(vx[ok])).mean()) if ok.any() else float("nan")), int(ok.sum())


def p1(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.nanmean(np.linalg.norm(pred - gt, axis=-1)))


def measures(poses_cam: np.ndarray) -> dict[str, float]:
    cv_mean, cv_max = bone_cv(poses_cam)
    return {"bone_cv_mean": cv_mean, "bone_cv_max": cv_max, "backward_knee": backward_knee_fraction(poses_cam),
            "depth_spread_mm": depth_spread(poses_cam), "jitter_mm": jitter(poses_cam)}


# ------------------------------------------------------------------------------------------ CMU
def variant_measures(pred: np.ndarray, raw: np.ndarray | None, gt: np.ndarray, gt_len: np.ndarray,
                     lengths: np.ndarray | None = None) -> dict[str, float]:
    """P1, error of the (estimated, else median) bone lengths, distance moved from ``raw``, facing, knees."""
    lengths = np.median(SK.bone_lengths(pred), 0) if lengths is None else lengths
    return {"mpjpe_mm": p1(pred, gt), "length_err_mm": float(np.mean(np.abs(lengths - gt_len))),
            "moved_mm": p1(pred, raw) if raw is not None else float("nan"),
            "facing_err_median_deg": float(np.median(horizontal_angle_deg(forward(pred), forward(gt)))),
            "backward_knee": backward_knee_fraction(pred)}


def cmu_rendered(lifter: Lifter, cmu: Path, max_sequences: int, seed: int,
                 test_subjects: list[str] | None = None) -> list[dict]:
    with np.load(cmu, allow_pickle=False) as z:
        pos, starts, lengths = z["positions"] * 1000.0, z["seq_starts"], z["seq_lengths"]
        names, actions, fps = z["seq_names"].astype(str), z["actions"].astype(str), float(z["fps"])
        subjects = z["subjects"].astype(str) if "subjects" in z.files else None
    if test_subjects:  # the split of profiles/cmu.yaml: whole subjects held out
        if subjects is None:
            raise SystemExit(f"{cmu} has no 'subjects' key: --test-subjects needs cmu_extra_train.npz")
        test = np.flatnonzero(split_by_sequence(names, actions, 0.2, None, 0, subjects, test_subjects))
    else:
        test = np.flatnonzero(split_by_sequence(names, actions, 0.2, None, 0))
    test = test[:: max(1, len(test) // max_sequences)][:max_sequences] if max_sequences else test[:0]
    rng = np.random.default_rng(seed)
    rows = []
    for s in test:
        world = pos[starts[s]:starts[s] + lengths[s]]
        centre = world[:, 0].mean(0)
        az = rng.uniform(0, 2 * np.pi)
        eye = centre + np.array([5000 * np.cos(az), 0.0, 5000 * np.sin(az)])
        eye[1] = 1200.0
        cam = Camera.look_at(eye, np.array([centre[0], 1000.0, centre[2]]), fx=1000.0, width=1280, height=720)
        gt = cam.world_to_camera(world)
        px = cam.project(gt) + rng.normal(0, 2.0, gt.shape[:2] + (2,))
        det = Detections(np.arange(len(px)), px.astype(np.float32), np.full(px.shape[:2], 0.9, np.float32),
                         np.ones(len(px), np.float32), 1280, 720, fps, len(px), source=names[s])
        stature = float(np.median(stature_chain(world, SK))) / CHAIN_TO_STATURE
        opts = InferOptions(stature_mm=stature, focal_px=1000.0, person="longest")
        res = lift_detections(det, lifter, opts, Timer())
        if not res.tracks:
            continue
        t = res.tracks[0]
        gt_rel = (gt - gt[:, :1])[t.frame]
        g = measures(gt_rel)
        row = {"sequence": names[s], "frames": len(t.frame), "gt_depth_spread_mm": g["depth_spread_mm"],
               "gt_backward_knee": g["backward_knee"]}
        for label, pred in (("raw", t.raw["poses_3d_mm"]), ("fixed", t.poses_3d_mm)):
            ang = horizontal_angle_deg(forward(pred), forward(gt_rel))
            row[label] = {"mpjpe_mm": p1(pred, gt_rel), **measures(pred),
                          "facing_err_median_deg": float(np.median(ang)), "facing_wrong": float((ang > 90).mean())}
        gt_len = np.median(SK.bone_lengths(gt_rel), 0)
        raw = t.raw["poses_3d_mm"]
        own = t.raw["poses_3d"] * stature_scale(t.raw["poses_3d"][t.valid], SK, stature)  # what --bones raw gives
        row["variants"] = {"raw, own stature scale (--bones raw)": variant_measures(own, None, gt_rel, gt_len),
                           "raw, default's scale": variant_measures(raw, raw, gt_rel, gt_len)}
        for name, opt in VARIANTS.items():
            fixed, est = constrain_track(raw, SK, t.conf2d, t.valid, opt)
            row["variants"][name] = variant_measures(fixed, raw, gt_rel, gt_len, est)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- Sports2D
def sports2d_video(workdir: Path) -> Path:
    video = workdir / "demo.mp4"
    if video.is_file():
        return video
    wheels = workdir / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SPORTS2D, "-d", str(wheels), "-q"],
                   check=True)
    wheel = next(wheels.glob("sports2d-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        video.write_bytes(zf.read(DEMO_IN_WHEEL))
    return video


def sports2d(lifter: Lifter, mp_python: str, workdir: Path) -> tuple[list[dict], dict]:
    video = sports2d_video(workdir)
    landmarks = workdir / "demo_blazepose33.json"
    if not landmarks.is_file():
        run_mediapipe_worker(mp_python, video, landmarks)
    timing = json.loads(landmarks.read_text()).get("timing", {})
    det = load_keypoint_file(landmarks, "blazepose33")
    opts = InferOptions(smooth=True)
    res = lift_detections(det, lifter, opts, Timer())
    tracks = {t.track_id: t for t in build_tracks(det)}
    rows = []
    for t in res.tracks:
        frames, _, _ = dense_track(det, tracks[t.track_id])
        rows_idx = tracks[t.track_id].rows
        mp_world = np.full((len(frames), 17, 3), np.nan)
        mp_world[det.frame[rows_idx] - frames[0]] = det.extra["world"][rows_idx] * 1000.0
        pelvis = t.kp2d[:, 0]
        smooth_only = one_euro(t.poses_3d_mm, det.fps, opts.smooth_min_cutoff_hz, opts.smooth_beta)
        for label, poses in (("DualPose raw", t.raw["poses_3d_mm"]), ("DualPose fixed bones", t.poses_3d_mm),
                             ("DualPose fixed bones, --smooth", t.smoothed["poses_3d_mm"]),
                             ("(fixed, smoothed, lengths not imposed again)", smooth_only),
                             ("MediaPipe world", mp_world)):
            poses = np.where(t.valid[:, None, None], poses, np.nan)
            agree, walking = facing_travel_agreement(poses, pelvis, det.fps)
            rows.append({"track": t.track_id, "frames": f"{frames[0]}-{frames[-1]}", "method": label,
                         **measures(poses), "facing_travel": agree, "walking_frames": walking})
    return rows, timing


# --------------------------------------------------------------------------------------- report
def pct(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def num(x: float, d: int = 1) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def write_report(out: Path, command: str, weights: str, cmu_rows: list[dict], s2d_rows: list[dict],
                 load: str, timing: dict, note: str = "") -> None:
    lines = ["# Video quality: plausibility of `dualpose infer` output", "",
             f"Produced by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; weights `{weights}`.",
             f"Machine load (1/5/15 min) when started: {load}.", "",
             "Targets (issue 9): bone-length CV < 5 %, backward-knee frames < 5 %, depth spread within 30 % of "
             "the ground truth's on CMU, facing direction right; DualPose better than MediaPipe's world "
             "landmarks on bone constancy and knees.", "",
             "Two DualPose outputs are measured: **raw** (as lifted) and **fixed bones** (the default of "
             "`dualpose infer`: one length per bone per track, the confidence-weighted median over the track, "
             "imposed on every frame along the predicted bone directions; dualpose/video/bones.py). The "
             "fixed-bones CV is ~0 by construction (frames without a detection are left as lifted and not "
             "measured), so it says nothing about the lifter; the raw CV is the lifter's own consistency. "
             "What the step must show is that P1, knees, depth, facing and jitter do not get worse.", ""]
    if note:
        lines += [note, ""]
    if cmu_rows:
        lines += ["## CMU test sequences rendered through the same path", "",
                  "Each cell: raw (as lifted) / fixed bone lengths (the default of `dualpose infer`). "
                  "Bone CV: mean over the 16 bones (max in the summary). The ground truth's backward-knee "
                  "fraction is in brackets; depth ratio = predicted / ground-truth depth spread.", "",
                  "| sequence | frames | P1 (mm) | bone CV | backward knee (GT) | depth ratio | "
                  "facing error median | facing wrong | jitter (mm/frame²) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

        def pair(r: dict, key: str, fmt) -> str:
            return f"{fmt(r['raw'][key])} / {fmt(r['fixed'][key])}"

        for r in cmu_rows:
            ratio = {k: r[k]["depth_spread_mm"] / r["gt_depth_spread_mm"] for k in ("raw", "fixed")}
            lines.append(f"| {r['sequence']} | {r['frames']} | {pair(r, 'mpjpe_mm', num)} | "
                         f"{pair(r, 'bone_cv_mean', pct)} | {pair(r, 'backward_knee', pct)} "
                         f"({pct(r['gt_backward_knee'])}) | {num(ratio['raw'], 2)} / {num(ratio['fixed'], 2)} | "
                         f"{pair(r, 'facing_err_median_deg', num)}° | {pair(r, 'facing_wrong', pct)} | "
                         f"{pair(r, 'jitter_mm', lambda x: num(x, 2))} |")
        w = np.array([r["frames"] for r in cmu_rows], float)
        avg = {label: {k: float(np.average([r[label][k] for r in cmu_rows], weights=w)) for k in
                       ("mpjpe_mm", "bone_cv_mean", "bone_cv_max", "backward_knee", "facing_wrong",
                        "facing_err_median_deg", "jitter_mm")} for label in ("raw", "fixed")}
        ratio = {label: float(np.average([r[label]["depth_spread_mm"] / r["gt_depth_spread_mm"] for r in cmu_rows],
                                         weights=w)) for label in ("raw", "fixed")}
        a = {"raw": avg["raw"], "fixed": avg["fixed"]}
        lines += [f"| **all ({int(w.sum())} frames, frame-weighted)** | | {pair(a, 'mpjpe_mm', num)} | "
                  f"{pair(a, 'bone_cv_mean', pct)} (max {pair(a, 'bone_cv_max', pct)}) | "
                  f"{pair(a, 'backward_knee', pct)} | {num(ratio['raw'], 2)} / {num(ratio['fixed'], 2)} | "
                  f"{pair(a, 'facing_err_median_deg', num)}° | {pair(a, 'facing_wrong', pct)} | "
                  f"{pair(a, 'jitter_mm', lambda x: num(x, 2))} |", ""]
        lines += ["### Bone step variants on the same CMU predictions", "",
                  "P1 of the raw prediction with each variant of `dualpose.video.bones` applied; length error: "
                  "mean over bones of |estimated length - ground truth's median length| (for raw: the median "
                  "of the raw lengths); moved: mean joint distance from the raw prediction. The same stature scale "
                  "for all rows but the first (the default's, computed on the fixed-bones body), so only the bone "
                  "step differs; the first row is `--bones raw`, whose scale comes from the raw body.", "",
                  "| variant | P1 (mm) | length error (mm) | moved (mm) | facing error median | backward knee |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name in cmu_rows[0]["variants"]:
            v = {k: float(np.average([r["variants"][name][k] for r in cmu_rows], weights=w))
                 for k in ("mpjpe_mm", "length_err_mm", "moved_mm", "facing_err_median_deg", "backward_knee")}
            lines.append(f"| {name} | {num(v['mpjpe_mm'])} | {num(v['length_err_mm'])} | {num(v['moved_mm'])} | "
                         f"{num(v['facing_err_median_deg'])}° | {pct(v['backward_knee'])} |")
        lines.append("")
    if s2d_rows:
        lines += ["## Sports2D demo video (MediaPipe BlazePose 2D, per track)", "",
                  "Tracks are `dualpose infer`'s (identity switches split). Facing vs travel: fraction of frames "
                  "where the pelvis crosses the image faster than "
                  f"{WALK_SPEED_PX_S:g} px/s and the body's forward points the same way. `--smooth`: One-Euro "
                  "with the default parameters, then the track's lengths imposed again (the row in brackets "
                  "shows what smoothing alone does to them).", "",
                  "| track | frames | method | bone CV mean / max | backward knee | depth spread (mm) | "
                  "facing vs travel (frames) | jitter (mm/frame²) |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in s2d_rows:
            lines.append(f"| {r['track']} | {r['frames']} | {r['method']} | {pct(r['bone_cv_mean'])} / "
                         f"{pct(r['bone_cv_max'])} | {pct(r['backward_knee'])} | {num(r['depth_spread_mm'])} | "
                         f"{pct(r['facing_travel'])} ({r['walking_frames']}) | {num(r['jitter_mm'], 2)} |")
        if timing:
            lines += ["", f"MediaPipe worker: {timing.get('frames')} frames, "
                      f"decode {num(timing.get('decode_s'), 2)} s, "
                      f"detector {num(timing.get('detector_s'), 2)} s."]
        lines.append("")
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="weights folder or name (default: the packaged default)")
    ap.add_argument("--cmu", default=str(ROOT.parent / "shared" / "data" / "cmu" / "cmu_train.npz"))
    ap.add_argument("--max-sequences", type=int, default=6, help="CMU test sequences to render (0: skip CMU)")
    ap.add_argument("--test-subjects", nargs="*", default=None,
                    help="hold out these subjects (profiles/cmu.yaml: 06 09 14 of cmu_extra_train.npz)")
    ap.add_argument("--mediapipe-python", default=os.environ.get("DUALPOSE_MEDIAPIPE_PYTHON"),
                    help="python of an environment with mediapipe 0.10.21 (skips Sports2D when absent)")
    ap.add_argument("--workdir", default="/tmp/dualpose-video-quality")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS-video-quality.md"))
    ap.add_argument("--note", default="", help="a paragraph for the results file (e.g. how the weights were made)")
    args = ap.parse_args()
    argv = sys.argv[1:]
    if "--note" in argv:  # the note goes into the file as a paragraph, not into the command line
        i = argv.index("--note")
        argv = argv[:i] + ['--note "..."'] + argv[i + 2:]
    command = "python benchmarks/video_quality.py " + " ".join(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    folder = resolve_weights(args.weights)
    lifter = Lifter.from_weights(folder, name=args.weights or folder.name)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cmu_rows = []
    if args.max_sequences and Path(args.cmu).is_file():
        cmu_rows = cmu_rendered(lifter, Path(args.cmu), args.max_sequences, seed=0, test_subjects=args.test_subjects)
    elif args.max_sequences:
        print(f"CMU data not found at {args.cmu}: skipping the CMU part", file=sys.stderr)
    s2d_rows, timing = [], {}
    if args.mediapipe_python:
        s2d_rows, timing = sports2d(lifter, args.mediapipe_python, workdir)
    else:
        print("no --mediapipe-python: skipping the Sports2D part", file=sys.stderr)
    dump = workdir / "video_quality_rows.json"
    dump.write_text(json.dumps({"cmu": cmu_rows, "sports2d": s2d_rows, "timing": timing}, indent=1))
    write_report(Path(args.out), command, str(args.weights or folder.name), cmu_rows, s2d_rows, load, timing,
                 args.note)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
