"""Shared helpers of the adversarial suite: a workspace with earlier artefacts and an outside folder.

Every bad input is generated here, in pytest's tmp dirs (nothing is committed). A refused case
must: exit 2 (CLI) with exactly one ``error:`` line on stderr and no traceback, name the file and
the field, leave everything outside the storage root unchanged, and keep earlier artefacts intact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import tiny_params_dict

SENTINELS = {  # earlier artefacts under the storage root, and a file outside it
    "artifacts/models/pretrain/model.safetensors": b"earlier pretrained weights",
    "artifacts/models/finetune/best/model.safetensors": b"earlier finetuned weights",
    "artifacts/eval/synthetic/metrics.json": b'{"p1": 1.0}',
    "outside/keep.txt": b"must never change",
}


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or "dir" (folders) of everything below ``folder``."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = "link:" + str(path.readlink())
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@dataclass
class Workspace:
    dir: Path  # the whole tmp dir: params.yaml, artifacts/ (storage root), outside/
    params: Path

    @property
    def root(self) -> Path:
        return self.dir / "artifacts"

    def params_dict(self) -> dict:
        return yaml.safe_load(self.params.read_text())

    def write_params(self, data: dict | None = None, text: str | None = None) -> Path:
        self.params.write_text(text if text is not None else yaml.safe_dump(data))
        return self.params

    def snapshot(self) -> dict[str, str]:
        return snapshot(self.dir)

    def sentinels_intact(self) -> None:
        for rel, content in SENTINELS.items():
            assert (self.dir / rel).read_bytes() == content, f"{rel} changed"


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    work = tmp_path / "ws"
    work.mkdir()
    params = tiny_params_dict(work)
    params["storage"]["root"] = "artifacts"
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for rel, content in SENTINELS.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(content)
    monkeypatch.chdir(work)
    return Workspace(work, path)


def invoke(*args: str, env: dict | None = None):
    from dualpose.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=True)


def assert_refused(result, *needles: str) -> str:
    """Exit 2, one ``error:`` line naming every needle, no traceback; returns the line."""
    stderr = result.stderr
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output!r} {result.exception!r}"
    assert "Traceback" not in result.output
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_unchanged(ws: Workspace, before: dict[str, str], allowed: tuple[str, ...] = ()) -> None:
    """Nothing changed but paths under ``allowed`` prefixes (relative to the workspace)."""
    after = ws.snapshot()
    diff = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    diff = {k for k in diff if not any(k == a or k.startswith(a.rstrip("/") + "/") for a in allowed)}
    assert not diff, f"changed: {sorted(diff)[:10]}"
    ws.sentinels_intact()


# -- small valid inputs that the tests then break -----------------------------------------------
W, H = 640, 480


def coco_keypoints(frames: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform([200, 100], [440, 400], (17, 2))
    xy = base + rng.normal(0, 3, (frames, 17, 2))
    return np.concatenate([xy, np.full((frames, 17, 1), 0.9)], axis=-1)


def coco_doc(kps: np.ndarray | None = None, frame_ids: list | None = None) -> dict:
    kps = coco_keypoints() if kps is None else kps
    frame_ids = list(range(len(kps))) if frame_ids is None else frame_ids
    return {"width": W, "height": H, "fps": 30,
            "annotations": [{"image_id": f, "keypoints": k.reshape(-1).tolist(), "score": 0.9}
                            for f, k in zip(frame_ids, kps)]}


def write_json_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_json(path: Path, doc) -> Path:
    return write_json_text(path, json.dumps(doc))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A 1-block lifter saved as DualPose weights (random but non-degenerate)."""
    import torch

    from dualpose.model.backbone import DualPoseLifter
    from dualpose.model.config import build_spec
    from dualpose.model.weights import save_weights

    torch.manual_seed(0)
    spec = build_spec("XS", {"depth": 1, "dim": 16, "T": 9})
    model = DualPoseLifter(spec)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("weights") / "w"
    save_weights(model, spec, folder)
    return folder
