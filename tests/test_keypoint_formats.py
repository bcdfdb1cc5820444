"""Keypoint format conversion to Human3.6M-17 on hand-built poses."""

from __future__ import annotations

import numpy as np
import pytest

from dualpose.errors import DataFormatError
from dualpose.keypoint_formats import (
    FORMATS,
    HEAD_TOP_EXTRAPOLATION,
    JointRule,
    KeypointFormat,
    convert_keypoints,
    get_format,
)
from dualpose.skeleton import H36M_17

J = H36M_17.index

# A person facing the camera in a 1000x1000 image: their left side is on the image's right.
COCO_PX = {
    "nose": (500, 200), "l_eye": (510, 190), "r_eye": (490, 190), "l_ear": (520, 200), "r_ear": (480, 200),
    "l_shoulder": (560, 280), "r_shoulder": (440, 280), "l_elbow": (580, 380), "r_elbow": (420, 380),
    "l_wrist": (590, 470), "r_wrist": (410, 470), "l_hip": (540, 480), "r_hip": (460, 480),
    "l_knee": (545, 620), "r_knee": (455, 620), "l_ankle": (550, 760), "r_ankle": (450, 760),
}
COCO_ORDER = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
              "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")


def _array(order, table, dim=2):
    return np.array([table.get(n, (np.nan,) * dim) for n in order], dtype=np.float64)


def test_coco_order_matches_the_published_order():
    assert FORMATS["coco17"].joint_names == COCO_ORDER
    assert FORMATS["halpe26"].joint_names[:17] == COCO_ORDER
    assert FORMATS["halpe26"].joint_names[17:20] == ("head", "neck", "hip")


def test_coco_to_h36m_known_pose():
    out, conf = convert_keypoints(_array(COCO_ORDER, COCO_PX), None, "coco17")
    assert out.shape == (17, 2) and conf.shape == (17,)
    np.testing.assert_allclose(out[J("pelvis")], (500, 480))
    np.testing.assert_allclose(out[J("thorax")], (500, 280))
    np.testing.assert_allclose(out[J("spine")], (500, 380))
    np.testing.assert_allclose(out[J("neck_nose")], (500, 200))
    # mid-ears (500, 200) continued beyond by 0.7 of the 80 px shoulders-to-ears distance
    np.testing.assert_allclose(out[J("head_top")], (500, 200 - HEAD_TOP_EXTRAPOLATION * 80))
    assert out[J("head_top"), 1] < out[J("neck_nose"), 1] < out[J("thorax"), 1]
    # left/right: the person's left wrist is on the image's right
    np.testing.assert_allclose(out[J("l_wrist")], (590, 470))
    np.testing.assert_allclose(out[J("r_wrist")], (410, 470))
    np.testing.assert_allclose(out[J("l_knee")], (545, 620))
    np.testing.assert_allclose(out[J("r_ankle")], (450, 760))
    np.testing.assert_allclose(out[J("r_shoulder")], (440, 280))
    np.testing.assert_array_equal(conf, np.ones(17, dtype=np.float32))


def test_halpe_uses_its_own_head_neck_and_hip():
    halpe = dict(COCO_PX, head=(500, 130), neck=(500, 270), hip=(500, 470))
    out, _ = convert_keypoints(_array(FORMATS["halpe26"].joint_names, halpe), None, "halpe26")
    # the foot joints are NaN in this input, and unused: nothing converted is NaN
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[J("pelvis")], (500, 470))
    np.testing.assert_allclose(out[J("thorax")], (500, 270))
    np.testing.assert_allclose(out[J("spine")], (500, 370))
    np.testing.assert_allclose(out[J("head_top")], (500, 130))
    np.testing.assert_allclose(out[J("neck_nose")], (500, 200))
    np.testing.assert_allclose(out[J("l_hip")], (540, 480))


# BlazePose world landmarks (metres, y down) of a person facing the camera, by landmark index.
BLAZE_3D = {
    0: (0.0, -0.60, -0.05), 7: (0.07, -0.60, 0.05), 8: (-0.07, -0.60, 0.05),
    11: (0.18, -0.45, 0.0), 12: (-0.18, -0.45, 0.0), 13: (0.22, -0.20, 0.0), 14: (-0.22, -0.20, 0.0),
    15: (0.25, 0.05, -0.1), 16: (-0.25, 0.05, -0.1), 23: (0.10, 0.05, 0.0), 24: (-0.10, 0.05, 0.0),
    25: (0.11, 0.45, 0.02), 26: (-0.11, 0.45, 0.02), 27: (0.12, 0.85, 0.08), 28: (-0.12, 0.85, 0.08),
}


def test_blazepose_indices_and_synthesised_joints_3d():
    src = np.full((33, 3), np.nan)
    for i, p in BLAZE_3D.items():
        src[i] = p
    conf = np.where(np.isfinite(src).all(-1), 0.9, 0.0)
    conf[24] = 0.4  # right hip
    out, c = convert_keypoints(src, conf, "blazepose33")
    assert out.shape == (17, 3) and np.isfinite(out).all()
    expect = {
        "pelvis": (0.0, 0.05, 0.0), "r_hip": BLAZE_3D[24], "r_knee": BLAZE_3D[26], "r_ankle": BLAZE_3D[28],
        "l_hip": BLAZE_3D[23], "l_knee": BLAZE_3D[25], "l_ankle": BLAZE_3D[27],
        "thorax": (0.0, -0.45, 0.0), "spine": (0.0, -0.20, 0.0), "neck_nose": BLAZE_3D[0],
        "head_top": (0.0, -0.60, 0.05), "l_shoulder": BLAZE_3D[11], "l_elbow": BLAZE_3D[13],
        "l_wrist": BLAZE_3D[15], "r_shoulder": BLAZE_3D[12], "r_elbow": BLAZE_3D[14], "r_wrist": BLAZE_3D[16],
    }
    for name, value in expect.items():
        np.testing.assert_allclose(out[J(name)], value, atol=1e-12, err_msg=name)
    # confidence of a synthesised joint is the minimum of its sources
    assert c[J("r_hip")] == pytest.approx(0.4)
    assert c[J("pelvis")] == pytest.approx(0.4) and c[J("spine")] == pytest.approx(0.4)
    assert c[J("l_hip")] == pytest.approx(0.9) and c[J("thorax")] == pytest.approx(0.9)


def _h36m_pose() -> np.ndarray:
    """A standing H36M pose in camera mm (x right, y down)."""
    p = np.zeros((17, 3))
    table = {
        "pelvis": (0, 0, 5000), "r_hip": (-130, 0, 5000), "r_knee": (-140, 440, 5010), "r_ankle": (-145, 890, 5050),
        "l_hip": (130, 0, 5000), "l_knee": (140, 440, 4990), "l_ankle": (145, 890, 4950),
        "spine": (0, -230, 5010), "thorax": (0, -480, 5020), "neck_nose": (0, -600, 4990),
        "head_top": (0, -715, 5000), "l_shoulder": (150, -450, 5020), "l_elbow": (170, -170, 5000),
        "l_wrist": (180, 80, 4900), "r_shoulder": (-150, -450, 5020), "r_elbow": (-170, -170, 5040),
        "r_wrist": (-180, 80, 5100),
    }
    for name, v in table.items():
        p[J(name)] = v
    return p


MPI_ORDER = ("head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
             "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "pelvis", "spine", "head")
MPI_TO_H36M_NAME = {"neck": "thorax", "head": "neck_nose"}


def test_mpi_inf_3dhp_round_trip_and_root():
    h36m = _h36m_pose()
    mpi = np.stack([h36m[J(MPI_TO_H36M_NAME.get(n, n))] for n in MPI_ORDER])
    fmt = FORMATS["mpi_inf_3dhp17"]
    assert fmt.joint_names == MPI_ORDER
    assert fmt.root == 14 and fmt.joint_names[fmt.root] == "pelvis"
    out, _ = convert_keypoints(mpi, None, fmt)
    np.testing.assert_array_equal(out, h36m)


def test_h36m_identity_and_batched_shapes():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2, 5, 17, 3)).astype(np.float32)
    conf = rng.uniform(size=(2, 5, 17)).astype(np.float32)
    out, c = convert_keypoints(pts, conf, "h36m17")
    assert out.dtype == np.float32 and c.dtype == np.float32
    np.testing.assert_array_equal(out, pts)
    np.testing.assert_array_equal(c, conf)


@pytest.mark.parametrize("name", ["coco17", "halpe26", "blazepose33", "mpi_inf_3dhp17"])
def test_batched_equals_per_frame_and_commutes_with_similarity(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1000, size=(3, 4, fmt.num_joints, 2))
    conf = rng.uniform(size=(3, 4, fmt.num_joints))
    out, c = convert_keypoints(pts, conf, name)
    assert out.shape == (3, 4, 17, 2) and c.shape == (3, 4, 17)
    one, c_one = convert_keypoints(pts[1, 2], conf[1, 2], name)
    np.testing.assert_allclose(out[1, 2], one)
    np.testing.assert_allclose(c[1, 2], c_one)
    # affine rules: converting a scaled and shifted pose gives the scaled and shifted result
    moved, _ = convert_keypoints(2.5 * pts + np.array([10.0, -7.0]), conf, name)
    np.testing.assert_allclose(moved, 2.5 * out + np.array([10.0, -7.0]), rtol=1e-12, atol=1e-9)


def _mirror_permutation(names: tuple[str, ...]) -> np.ndarray:
    """Swap l_*/r_* (and mouth_left/mouth_right) by name."""
    def partner(n: str) -> str:
        for a, b in (("l_", "r_"), ("r_", "l_")):
            if n.startswith(a):
                return b + n[len(a):]
        for a, b in (("_left", "_right"), ("_right", "_left")):
            if n.endswith(a):
                return n[: -len(a)] + b
        return n
    pos = {n: i for i, n in enumerate(names)}
    return np.array([pos[partner(n)] for n in names])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_left_right_mirror_commutes_with_conversion(name):
    """Mirroring the image then converting equals converting then mirroring in H36M."""
    fmt = get_format(name)
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 1000, size=(6, fmt.num_joints, 2))
    mirrored = pts[:, _mirror_permutation(fmt.joint_names)] * np.array([-1.0, 1.0]) + np.array([1000.0, 0.0])
    a, _ = convert_keypoints(mirrored, None, fmt)
    b, _ = convert_keypoints(pts, None, fmt)
    b = b[:, H36M_17.flip_permutation] * np.array([-1.0, 1.0]) + np.array([1000.0, 0.0])
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_missing_source_gives_nan_with_zero_confidence_only_where_used():
    pts = _array(COCO_ORDER, COCO_PX)
    conf = np.full(17, 0.8)
    pts[COCO_ORDER.index("r_ear")] = np.nan
    conf[COCO_ORDER.index("r_ear")] = 0.0
    conf[COCO_ORDER.index("l_eye")] = 0.1  # unused by every rule
    out, c = convert_keypoints(pts, conf, "coco17")
    assert np.isnan(out[J("head_top")]).all() and c[J("head_top")] == 0.0
    others = [j for j in range(17) if j != J("head_top")]
    assert np.isfinite(out[others]).all()
    np.testing.assert_allclose(c[others], 0.8)
    # NaN coordinates force confidence 0 even if the detector reported one
    conf[COCO_ORDER.index("r_ear")] = 0.7
    _, c = convert_keypoints(pts, conf, "coco17")
    assert c[J("head_top")] == 0.0


def test_confidence_with_trailing_axis_is_accepted():
    pts = _array(COCO_ORDER, COCO_PX)[None]
    conf = np.full((1, 17, 1), 0.5)
    _, c = convert_keypoints(pts, conf, "coco17")
    assert c.shape == (1, 17)


def test_bad_shapes_raise_data_format_errors():
    with pytest.raises(DataFormatError, match=r"in.json: field 'keypoints': expected shape \(\.\.\., 17, 2 or 3\) "
                                              r"for format 'coco17', got shape \(4, 26, 2\)"):
        convert_keypoints(np.zeros((4, 26, 2)), None, "coco17", source="in.json")
    with pytest.raises(DataFormatError, match=r"field 'keypoints'.*got shape \(17, 4\)"):
        convert_keypoints(np.zeros((17, 4)), None, "coco17")
    with pytest.raises(DataFormatError, match=r"field 'confidence': expected shape \(4, 17\)"):
        convert_keypoints(np.zeros((4, 17, 2)), np.zeros((4, 16)), "coco17")
    with pytest.raises(KeyError, match="unknown keypoint format 'openpose25'"):
        convert_keypoints(np.zeros((25, 2)), None, "openpose25")


def test_format_definitions_are_checked():
    rules = {n: JointRule(((n, 1.0),), n) for n in H36M_17.joint_names}
    with pytest.raises(ValueError, match="no rule for target joints \\['head_top'\\]"):
        KeypointFormat("bad", H36M_17.joint_names, {k: v for k, v in rules.items() if k != "head_top"})
    with pytest.raises(ValueError, match="sum to 0.5"):
        KeypointFormat("bad", H36M_17.joint_names, dict(rules, pelvis=JointRule((("l_hip", 0.5),), "half")))
    with pytest.raises(ValueError, match="unknown joint 'hip'"):
        KeypointFormat("bad", H36M_17.joint_names, dict(rules, pelvis=JointRule((("hip", 1.0),), "hip")))
