"""A synthetic scene for the sample keypoints file, the tests and the demos (no real data).

Two people from :mod:`dualpose.data.synthetic_motion` (one walking, one jumping) seen by one
virtual camera, as COCO-17 keypoints: the 12 limb joints are the skeleton's own; nose, eyes and
ears are placed on the head (between the skeleton's neck/nose and head-top joints, offset along
the shoulders' left-right axis). The packaged file ``samples/two_people_coco17.json`` is
``write_sample_keypoints`` with the defaults (regenerate: ``python -m dualpose.video.sample``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualpose.camera import Camera
from dualpose.data.synthetic_motion import generate_motion, make_subjects
from dualpose.io.atomic import atomic_path
from dualpose.keypoint_formats import COCO17_JOINT_NAMES
from dualpose.skeleton import H36M_17

SAMPLE_FILE = Path(__file__).resolve().parent / "samples" / "two_people_coco17.json"
FACE_LATERAL_MM = {"eye": 32.0, "ear": 75.0}  # half the distance between the eyes / ears


@dataclass
class Scene:
    world_mm: list[np.ndarray]  # per person (F, 17, 3), y up
    camera: Camera
    fps: float

    def project(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per person: H36M-17 pixels (F, 17, 2) and COCO-17 pixels (F, 17, 2)."""
        h36m = [self.camera.project_world(w) for w in self.world_mm]
        coco = [self.camera.project_world(h36m_to_coco17_3d(w)) for w in self.world_mm]
        return h36m, coco


def h36m_to_coco17_3d(poses: np.ndarray) -> np.ndarray:
    """(F, 17, 3) H36M joints (y up) -> (F, 17, 3) COCO-17 points, face points synthesised."""
    j = H36M_17.index
    left = poses[:, j("l_shoulder")] - poses[:, j("r_shoulder")]
    left /= np.maximum(np.linalg.norm(left, axis=-1, keepdims=True), 1e-9)
    nose, top = poses[:, j("neck_nose")], poses[:, j("head_top")]
    face = {"nose": nose}
    for side, sign in (("l", 1.0), ("r", -1.0)):
        face[f"{side}_eye"] = nose + 0.35 * (top - nose) + sign * FACE_LATERAL_MM["eye"] * left
        face[f"{side}_ear"] = nose + 0.25 * (top - nose) + sign * FACE_LATERAL_MM["ear"] * left
    return np.stack([face[n] if n in face else poses[:, j(n)] for n in COCO17_JOINT_NAMES], axis=1)


def make_scene(seconds: float = 4.0, fps: float = 30.0, seed: int = 0, width: int = 640,
               height: int = 360) -> Scene:
    """Person 0 walks across, person 1 jumps on the spot to the right; camera 6 m away at 1.5 m."""
    bodies = make_subjects(2, seed)
    walk = generate_motion(bodies[0], "walk", seconds, fps, [seed, 1])
    jump = generate_motion(bodies[1], "jump", seconds, fps, [seed, 2])
    walk = walk - walk[:1, :1] * np.array([1.0, 0.0, 1.0]) + np.array([-1200.0, 0.0, 0.0])
    jump = jump - jump[:1, :1] * np.array([1.0, 0.0, 1.0]) + np.array([1300.0, 0.0, 500.0])
    cam = Camera.look_at(np.array([0.0, 1500.0, -6000.0]), np.array([0.0, 900.0, 0.0]), fx=0.9 * width,
                         width=width, height=height)
    return Scene([walk, jump], cam, fps)


def coco_records(coco_px: list[np.ndarray], conf: float = 0.9) -> list[dict]:
    records = []
    for f in range(len(coco_px[0])):
        for p, pts in enumerate(coco_px):
            kp = np.concatenate([pts[f], np.full((len(pts[f]), 1), conf)], -1)
            records.append({"frame": f, "person": p, "score": round(conf - 0.05 * p, 3),
                            "keypoints": np.round(kp, 2).reshape(-1).tolist()})
    return records


def write_sample_keypoints(path: str | Path = SAMPLE_FILE, **scene_kwargs) -> Path:
    scene = make_scene(**scene_kwargs)
    _, coco = scene.project()
    doc = {"description": "synthetic motion (dualpose.video.sample): person 0 walks, person 1 jumps; COCO-17",
           "width": scene.camera.width, "height": scene.camera.height, "fps": scene.fps,
           "annotations": coco_records(coco)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(doc, separators=(",", ":")))
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_sample_keypoints())
