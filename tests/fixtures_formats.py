"""Write small files in the real layouts of the licensed data sets and of common 2D detectors.

The real files cannot be used here, so the adapters are tested on files written exactly the way
their producers write them (MotionBERT's pickle, VideoPose3D's and P-STMO's npz through
``np.savez_compressed``, detector JSON). Geometry is computed with implementations written here,
independently of the library (quaternion rotation by cross products, the Human3.6M projection
formula in VideoPose3D's vector form), so the tests compare two implementations.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dualpose.data.h36m_cameras import CAMERA_IDS, EXTRINSICS, INTRINSICS

# ------------------------------------------------------------------------------ synthetic poses
# A standing Human3.6M-17 pose in the Human3.6M world frame (metres, z up), skeleton order.
H36M_STANDING_M = np.array([
    [0.00, 0.00, 0.92], [-0.13, 0.00, 0.92], [-0.13, 0.02, 0.48], [-0.13, 0.00, 0.06],
    [0.13, 0.00, 0.92], [0.13, 0.02, 0.48], [0.13, 0.00, 0.06], [0.00, 0.00, 1.15],
    [0.00, 0.00, 1.40], [0.00, 0.05, 1.52], [0.00, 0.00, 1.72], [0.17, 0.00, 1.40],
    [0.20, 0.00, 1.12], [0.22, 0.05, 0.88], [-0.17, 0.00, 1.40], [-0.20, 0.00, 1.12],
    [-0.22, 0.05, 0.88],
])
KEEP_32_TO_17 = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]
ACTIONS = {2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing",
           8: "Purchases", 9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting",
           14: "Walking", 15: "WalkDog", 16: "WalkTogether"}


def moving_pose_17(frames: int, seed: int, offset_m: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(frames, 17, 3) world metres: the standing pose walking, turning and swinging its arms."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None]
    angle = 0.05 * t + rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    pose = np.broadcast_to(H36M_STANDING_M, (frames, 17, 3)).copy()
    pose[:, [13, 16], 1] += 0.2 * np.sin(0.3 * t)  # wrists swing
    x, y = pose[..., 0].copy(), pose[..., 1].copy()
    pose[..., 0] = c * x - s * y + offset_m[0] + 0.01 * t
    pose[..., 1] = s * x + c * y + offset_m[1]
    return pose + rng.normal(0, 0.005, pose.shape)


def expand_to_32(pose17: np.ndarray, seed: int) -> np.ndarray:
    """(F, 32, 3): the 17 joints at their mocap indices, the 15 others near the pelvis."""
    rng = np.random.default_rng(seed)
    out = pose17[:, :1] + rng.normal(0, 0.05, (pose17.shape[0], 32, 3))
    out[:, KEEP_32_TO_17] = pose17
    return out


# -------------------------------------------------------------------- reference H36M geometry
def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternion q (w, x, y, z): v + 2 (w u x v + u x (u x v))."""
    u = np.broadcast_to(q[1:], v.shape)
    uv = np.cross(u, v)
    return v + 2 * (q[0] * uv + np.cross(u, uv))


def reference_world_to_camera(points_mm: np.ndarray, subject: str, camera_id: str) -> np.ndarray:
    ext = EXTRINSICS[subject][camera_id]
    q = np.asarray(ext.orientation)
    q_inv = q * np.array([1, -1, -1, -1])
    return qrot(q_inv, points_mm - np.asarray(ext.translation))


def reference_camera_to_world(points_cam: np.ndarray, subject: str, camera_id: str) -> np.ndarray:
    ext = EXTRINSICS[subject][camera_id]
    return qrot(np.asarray(ext.orientation), points_cam) + np.asarray(ext.translation)


def reference_project(points_cam: np.ndarray, camera_id: str) -> np.ndarray:
    """VideoPose3D's vector form of Human3.6M's projection (without its clamp)."""
    intr = INTRINSICS[camera_id]
    f, c = np.asarray(intr.focal_length), np.asarray(intr.center)
    k, p = np.asarray(intr.radial), np.asarray(intr.tangential)
    xx = points_cam[..., :2] / points_cam[..., 2:]
    r2 = np.sum(xx**2, axis=-1, keepdims=True)
    radial = 1 + np.sum(k * np.concatenate([r2, r2**2, r2**3], axis=-1), axis=-1, keepdims=True)
    tan = np.sum(p * xx, axis=-1, keepdims=True)
    return f * (xx * (radial + tan) + p * r2) + c


# ---------------------------------------------------------------------- MotionBERT H36M pickle
def h36m_pickle_data(videos: dict[str, list[tuple[int, int, int, int]]], frames: int | Callable[[int], int] = 9,
                     *, strings: str = "array", confidence_3d: bool = False, seed: int = 0) -> dict:
    """The MotionBERT dict: ``videos[split]`` = [(subject, act, subact, cam), ...] in file order."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, vids in videos.items():
        cols: dict[str, list] = {k: [] for k in ("joint_2d", "confidence", "joint3d_image", "joints_2.5d_image",
                                                  "2.5d_factor", "camera_name", "action", "source", "c3d_frame")}
        for v, (subject, act, subact, cam) in enumerate(vids):
            n = frames(v) if callable(frames) else frames
            source = f"s_{subject:02d}_act_{act:02d}_subact_{subact:02d}_ca_{cam:02d}"
            factor = rng.uniform(3.5, 6.0, n).astype(np.float32)
            j2d = (rng.uniform(300, 700, (n, 17, 2))).astype(np.float32)
            j3d = np.concatenate([j2d, rng.uniform(-60, 60, (n, 17, 1))], axis=-1).astype(np.float32)
            cols["joint_2d"].append(j2d)
            cols["confidence"].append(rng.uniform(0, 1, (n, 17)).astype(np.float32))
            cols["joint3d_image"].append(j3d)
            cols["joints_2.5d_image"].append(j3d * factor[:, None, None])
            cols["2.5d_factor"].append(factor)
            cols["camera_name"] += [CAMERA_IDS[cam - 1]] * n
            cols["action"] += [ACTIONS[act]] * n
            cols["source"] += [source] * n
            cols["c3d_frame"].append(np.arange(n) * 2)
        split_data = {}
        for key, parts in cols.items():
            if key in ("camera_name", "action", "source"):
                split_data[key] = np.array(parts) if strings == "array" else list(parts)
            else:
                split_data[key] = np.concatenate(parts)
        if confidence_3d:
            split_data["confidence"] = split_data["confidence"][..., None]
        out[split] = split_data
    return out


SMALL_H36M_VIDEOS = {
    "train": [(1, 2, 1, 1), (1, 2, 1, 2), (1, 14, 2, 1), (5, 3, 1, 4), (5, 3, 2, 3)],
    "test": [(9, 2, 1, 1), (9, 5, 2, 2), (11, 16, 1, 4)],
}


def write_h36m_pickle(path: str | os.PathLike, data: dict | None = None, protocol: int = 4, **kwargs) -> dict:
    data = data if data is not None else h36m_pickle_data(SMALL_H36M_VIDEOS, **kwargs)
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=protocol)
    return data


# ------------------------------------------------------------------ VideoPose3D H36M npz pair
def videopose_data(subjects: dict[str, list[str]], frames: int = 12, extra_2d_frames: int = 0,
                   seed: int = 0) -> tuple[dict, dict]:
    """(positions_3d, positions_2d): 3D world metres (F, 32, 3); 2D = reference projection, 4 cameras."""
    pos3d: dict = {}
    pos2d: dict = {}
    for si, (subject, actions) in enumerate(subjects.items()):
        pos3d[subject], pos2d[subject] = {}, {}
        for ai, action in enumerate(actions):
            s = seed + 100 * si + ai
            world17 = moving_pose_17(frames + extra_2d_frames, s)
            pos3d[subject][action] = expand_to_32(world17, s)[:frames].astype(np.float32)
            cams = []
            for cam in CAMERA_IDS:
                cam_mm = reference_world_to_camera(world17 * 1000.0, subject, cam)
                cams.append(reference_project(cam_mm, cam).astype(np.float32))
            pos2d[subject][action] = cams
    return pos3d, pos2d


VIDEOPOSE_METADATA = {"layout_name": "h36m", "num_joints": 17,
                      "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]}


def write_videopose_npz(folder: str | os.PathLike, positions_3d: dict, positions_2d: dict | None,
                        metadata: dict | None = None) -> dict[str, Path]:
    """Write data_3d_h36m.npz (+ data_2d_h36m_cpn_ft_h36m_dbb.npz) as VideoPose3D's scripts do."""
    folder = Path(folder)
    files = {"data_3d": folder / "data_3d_h36m.npz"}
    np.savez_compressed(files["data_3d"], positions_3d=positions_3d)
    if positions_2d is not None:
        files["data_2d"] = folder / "data_2d_h36m_cpn_ft_h36m_dbb.npz"
        np.savez_compressed(files["data_2d"], positions_2d=positions_2d,
                            metadata=metadata if metadata is not None else VIDEOPOSE_METADATA)
    return files


# --------------------------------------------------------------------------- MPI-INF-3DHP npz
# 3DHP-17 joint order (P-STMO / MotionAGFormer) as indices into the H36M-17 skeleton order.
H36M_INDEX_OF_3DHP = [10, 8, 14, 15, 16, 11, 12, 13, 1, 2, 3, 4, 5, 6, 0, 7, 9]
FOCAL_3DHP = 1500.0


def pose_3dhp_camera(frames: int, seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(data_2d (F, 17, 2) px, data_3d (F, 17, 3) camera mm) in the 3DHP joint order."""
    world = moving_pose_17(frames, seed)
    cam = np.stack([world[..., 0], -(world[..., 2] - 1.0), world[..., 1] + 4.0], axis=-1) * 1000.0  # y down, z fwd
    cam = cam[:, H36M_INDEX_OF_3DHP]
    uv = FOCAL_3DHP * cam[..., :2] / cam[..., 2:] + np.array(size) / 2
    return uv, cam


def threedhp_train_data(sequences: dict[str, int], cams: tuple[str, ...] = ("0", "2"), frames: int = 10) -> dict:
    """{"S1 Seq1": [{cam: {"data_2d", "data_3d"}}, fps]} with float64 arrays as scipy.io writes them."""
    data = {}
    for i, (key, fps) in enumerate(sequences.items()):
        cams_dict = {}
        for c in cams:
            uv, xyz = pose_3dhp_camera(frames, 10 * i + int(c), (2048, 2048))
            cams_dict[c] = {"data_2d": uv, "data_3d": xyz}
        data[key] = [cams_dict, fps]
    return data


def threedhp_test_data(sequences: tuple[str, ...] = ("TS1", "TS5"), frames: int = 11) -> dict:
    data = {}
    for i, seq in enumerate(sequences):
        size = (1920, 1080) if seq in ("TS5", "TS6") else (2048, 2048)
        uv, xyz = pose_3dhp_camera(frames, 50 + i, size)
        valid = np.ones(frames)
        valid[[0, frames - 1]] = 0
        data[seq] = {"data_2d": uv.astype(np.float32), "data_3d": xyz.astype(np.float32), "valid": valid}
    return data


def write_3dhp_npz(path: str | os.PathLike, data: dict) -> Path:
    np.savez_compressed(path, data=data)
    return Path(path)


# ----------------------------------------------------------------------------- detector JSON
def detections_coco(frames: int, joints: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """(frames, joints, 3) x, y px and confidence."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.2, 0.8, (frames, joints, 2)) * np.array(size)
    c = rng.uniform(0.3, 1.0, (frames, joints, 1))
    return np.concatenate([xy, c], axis=-1)


def write_coco_json(path: str | os.PathLike, kps: np.ndarray, frame_ids: list | None = None,
                    extra_people: dict[int, float] | None = None, meta: dict | None = None) -> Path:
    """COCO results style. ``extra_people`` {frame: score} adds a weaker second person there."""
    frame_ids = list(range(kps.shape[0])) if frame_ids is None else frame_ids
    records = []
    for i, fid in enumerate(frame_ids):
        records.append({"image_id": fid, "category_id": 1, "keypoints": kps[i].reshape(-1).tolist(),
                        "score": 0.9})
        if extra_people and i in extra_people:
            records.append({"image_id": fid, "category_id": 1, "keypoints": (kps[i] + 50).reshape(-1).tolist(),
                            "score": extra_people[i]})
    doc = records if meta is None else {**meta, "annotations": records}
    Path(path).write_text(json.dumps(doc))
    return Path(path)


def write_blazepose_json(path: str | os.PathLike, landmarks: np.ndarray, meta: dict | None = None,
                         empty_frames: tuple[int, ...] = ()) -> Path:
    """MediaPipe-style landmarks: normalised x, y, z and visibility, one entry per frame."""
    frames = []
    for i, lm in enumerate(landmarks):
        marks = [] if i in empty_frames else [
            {"x": float(x), "y": float(y), "z": 0.0, "visibility": float(v)} for x, y, v in lm]
        frames.append({"frame": i, "landmarks": marks})
    doc = frames if meta is None else {**meta, "frames": frames}
    Path(path).write_text(json.dumps(doc))
    return Path(path)


# ------------------------------------------------------------------------------ hostile files
class RunsCode:
    """Pickles to a call of os.system: what a malicious pickle does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_code_pickle(path: str | os.PathLike, marker: str | os.PathLike) -> Path:
    """A pickle whose loading would create ``marker`` through os.system, inside a real-looking dict."""
    data = {"train": {"joint_2d": np.zeros((2, 17, 2), np.float32), "payload": RunsCode(f"touch '{marker}'")}}
    Path(path).write_bytes(pickle.dumps(data, protocol=4))
    return Path(path)


# ------------------------------------------------------------------------------ running adapters
def convert_to_tables(adapter, files: dict, options: dict, out_dir: str | os.PathLike,
                      dataset: str = "test_data") -> dict[str, Path]:
    """Run an adapter and write each part as it is yielded (as dualpose.data.prepare does)."""
    from dualpose.data.schema import to_arrow, write_keypoint_table
    from dualpose.skeleton import H36M_17

    out_dir = Path(out_dir)
    written = {}
    opts = adapter.Options.model_validate(options)
    for part in adapter.convert({k: Path(v) for k, v in files.items()}, opts, dataset, H36M_17):
        table = to_arrow(part.frames, H36M_17, source=f"{dataset}/{part.name}")
        written[part.name] = write_keypoint_table(table, out_dir / f"{part.name}.parquet", H36M_17)
    return written
