"""`dualpose predict`: detector JSON in, root-relative 3D out, through the training codec."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dualpose.cli import app
from dualpose.infer import CHAIN_TO_STATURE, lift_keypoints_file, stature_chain
from dualpose.keypoint_formats import FORMATS
from dualpose.model.backbone import DualPoseLifter
from dualpose.model.config import build_spec
from dualpose.model.weights import save_weights
from dualpose.skeleton import H36M_17
from tests.fixtures_formats import write_coco_json

W, H = 640, 480


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    spec = build_spec("XS", {"depth": 2, "dim": 16, "T": 9})
    model = DualPoseLifter(spec)
    with torch.no_grad():  # a random but non-degenerate head
        model.head.weight.normal_(0, 0.5)
    save_weights(model, spec, tmp_path / "w")
    return tmp_path / "w"


def _coco(frames=20, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform([200, 100], [440, 400], (17, 2))
    xy = base + rng.normal(0, 3, (frames, 17, 2))
    return np.concatenate([xy, np.full((frames, 17, 1), 0.9)], axis=-1)


def test_lifting_a_coco_file(tmp_path, weights):
    kps = _coco()
    path = write_coco_json(tmp_path / "a.json", kps)
    out = lift_keypoints_file(path, weights, "coco17", W, H, 30.0, subject_height_mm=1800.0)
    assert out["poses_3d"].shape == (20, 17, 3) and np.isfinite(out["poses_3d"]).all()
    assert np.abs(out["poses_3d"][:, 0]).max() == 0  # root-relative
    assert np.median(stature_chain(out["poses_3d_mm"], H36M_17)) == pytest.approx(1800 * CHAIN_TO_STATURE, rel=1e-4)

    # mirroring the image mirrors the 3D output exactly (flip test-time augmentation is equivariant)
    coco = FORMATS["coco17"]
    swap = np.arange(17)
    for i, name in enumerate(coco.joint_names):
        if name.startswith(("l_", "r_")):
            swap[i] = coco.joint_names.index(("r_" if name.startswith("l_") else "l_") + name[2:])
    mirrored = kps[:, swap].copy()
    mirrored[..., 0] = W - mirrored[..., 0]
    out_m = lift_keypoints_file(write_coco_json(tmp_path / "m.json", mirrored), weights, "coco17", W, H, 30.0)
    expected = out["poses_3d"][:, H36M_17.flip_permutation] * np.array([-1, 1, 1], np.float32)
    np.testing.assert_allclose(out_m["poses_3d"], expected, atol=2e-5)


def test_predict_command(tmp_path, weights):
    path = write_coco_json(tmp_path / "a.json", _coco(12))
    out = tmp_path / "pred.npz"
    result = CliRunner().invoke(app, ["predict", str(path), "--weights", str(weights), "--width", str(W),
                                      "--height", str(H), "--fps", "25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "12 frames" in result.output
    with np.load(out) as data:
        assert data["poses_3d_mm"].shape == (12, 17, 3)
    no_size = CliRunner().invoke(app, ["predict", str(path), "--weights", str(weights)])
    assert no_size.exit_code == 2 and "a.json: field 'width': expected a width" in no_size.output
    no_weights = CliRunner().invoke(app, ["predict", str(path), "--weights", str(tmp_path / "nope"),
                                          "--width", "640", "--height", "480"])
    assert no_weights.exit_code == 2 and "nope" in no_weights.output
