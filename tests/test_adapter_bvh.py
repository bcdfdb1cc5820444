"""BVH parser, forward kinematics, H36M mapping and the ``bvh`` adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualpose.data.adapters import get_adapter
from dualpose.data.adapters.bvh import (
    Options,
    forward_kinematics,
    mapping_matrix,
    parse_bvh,
    read_bvh_sequence,
)
from dualpose.data.plausibility import check_motion
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17 as SK

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu"
BVH_DIR = CMU / "bvh"
adapter = get_adapter("bvh")
BONE = {SK.joint_names[c]: k for k, (_, c) in enumerate(SK.bones)}

CHAIN = """HIERARCHY
ROOT Hips
{
\tOFFSET 0.0 0.0 0.0
\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
\tJOINT Knee
\t{
\t\tOFFSET 0.0 -10.0 0.0
\t\tCHANNELS 3 %s
\t\tEnd Site
\t\t{
\t\t\tOFFSET 0.0 -5.0 0.0
\t\t}
\t}
}
MOTION
Frames: 2
Frame Time: 0.01
1 2 3 90 0 0 %s
0 0 0 0 0 0 0 0 0
"""


def chain(tmp_path: Path, order: str = "Zrotation Xrotation Yrotation", knee: str = "0 90 0",
          text: str | None = None, newline: str = "\r\n") -> Path:
    path = tmp_path / "chain.bvh"
    body = text if text is not None else CHAIN % (order, knee)
    path.write_bytes(body.replace("\n", newline).encode())
    return path


def require_cmu() -> None:
    if not BVH_DIR.exists():
        pytest.skip("reason: CMU data folder ../shared/data/cmu absent")


# ---------------------------------------------------------------------------- parsing and FK
def test_two_joint_chain_known_positions(tmp_path):
    motion = parse_bvh(chain(tmp_path))
    assert motion.names == ["Hips", "Knee", "Knee/End"]
    assert motion.joints[1].channels == ("Zrotation", "Xrotation", "Yrotation")
    assert motion.frame_time == pytest.approx(0.01) and motion.values.shape == (2, 9)
    pos = forward_kinematics(motion)
    # frame 0: root at (1, 2, 3) turned 90 deg about z, so the knee bone points along +x; the
    # knee turned 90 deg about x sends the shank along -z
    assert pos[0] == pytest.approx(np.array([[1, 2, 3], [11, 2, 3], [11, 2, -2]], dtype=float))
    assert pos[1] == pytest.approx(np.array([[0, 0, 0], [0, -10, 0], [0, -15, 0]], dtype=float))


@pytest.mark.parametrize(
    ("order", "values", "end"),
    [
        ("Xrotation Yrotation Zrotation", "90 90 0", [11, 2, -2]),  # R = Rx Ry: Ry leaves the y axis alone
        ("Yrotation Xrotation Zrotation", "90 90 0", [11, -3, 3]),  # R = Ry Rx: Rx sends -y to -z, Ry to -x
    ],
)
def test_channel_order_is_the_declared_one(tmp_path, order, values, end):
    pos = forward_kinematics(parse_bvh(chain(tmp_path, order, values)))
    assert pos[0, 2] == pytest.approx(np.array(end, dtype=float))


def test_line_endings_do_not_matter(tmp_path):
    a = parse_bvh(chain(tmp_path, newline="\n")).values
    b = parse_bvh(chain(tmp_path, newline="\r\n")).values
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("edit", "field", "expected"),
    [
        (lambda t: t[: t.index("0 0 0 0 0 0 0 0 0") + 8], "line 20: MOTION frame 1", "9 channel values"),
        (lambda t: t[: t.index("0 0 0 0 0 0 0 0 0")], "MOTION", "2 frames as declared by 'Frames:', got 1 frames"),
        (lambda t: t[: t.index("End Site")], "HIERARCHY", "a complete hierarchy (closing '}' of 'Knee')"),
        (lambda t: t.replace("OFFSET 0.0 -10.0 0.0", "OFFSET 0.0 -1O.0 0.0"), "line 8: OFFSET", "3 numbers"),
        (lambda t: t.replace("1 2 3 90", "1 2 x 90"), "line 19: MOTION frame 0", "finite numbers, got 'x'"),
        (lambda t: t.replace("Zrotation Xrotation Yrotation\n\t\tEnd", "Zrotation Xrotation Wrotation\n\t\tEnd"),
         "line 9: CHANNELS", "3 channel names"),
        (lambda t: t.replace("MOTION\n", ""), "line 16: MOTION", "'MOTION' after the hierarchy"),
        (lambda t: t.replace("Frames: 2", "Frames: two"), "Frames / Frame Time", "an integer frame count"),
        (lambda t: t.replace("Frame Time: 0.01", "Frame Time 0.01"), "line 18: Frame Time:", "'Frame Time: <value>'"),
        (lambda t: t.replace("HIERARCHY", "HIERARCHIE"), "line 1", "'HIERARCHY' as the first word"),
        (lambda t: t + "0 0 0 0 0 0 0 0 0\n", "line 21: MOTION frame 2", "2 frames as declared"),
    ],
)
def test_broken_files_name_the_line_and_field(tmp_path, edit, field, expected):
    path = chain(tmp_path, text=edit(CHAIN % ("Zrotation Xrotation Yrotation", "0 90 0")), newline="\n")
    with pytest.raises(DataFormatError) as info:
        parse_bvh(path)
    assert info.value.path == str(path)
    assert info.value.field == field
    assert expected in str(info.value)


# ---------------------------------------------------------------------------- H36M mapping
STYLE_NAMES = {
    "motionbuilder": {"hip": "UpLeg", "knee": "Leg", "ankle": "Foot", "toe": "ToeBase", "collar": "Shoulder",
                      "arm": "Arm", "fore": "ForeArm", "hand": "Hand", "back": ("LowerBack", "Spine", "Spine1"),
                      "neck": ("Neck", "Neck1", "Head"), "head_end": 0.0},
    "3dsmax": {"hip": "Hip", "knee": "Knee", "ankle": "Ankle", "toe": "Toe", "collar": "Collar",
               "arm": "Shoulder", "fore": "Elbow", "hand": "Wrist", "back": ("lowerback", "Chest", "Chest2"),
               "neck": ("lowerneck", "Neck", "Head"), "head_end": 1.5},
}


def cmu_like(style: str) -> str:
    """A small hierarchy with the joint names of one CMU export style (units as in CMU); two frames of zeros."""
    n = STYLE_NAMES[style]

    def chain_of(names_offsets, end_offset):
        node = ("End Site", end_offset, [])
        for name, offset in reversed(names_offsets):
            node = (f"JOINT {name}", offset, [node])
        return node

    def leg(side, x):
        return chain_of([(f"{side[0]}HipJoint", (0, 0, 0)), (f"{side}{n['hip']}", (x, -1, 0)),
                         (f"{side}{n['knee']}", (0, -7, 0)), (f"{side}{n['ankle']}", (0, -7, 0)),
                         (f"{side}{n['toe']}", (0, -1, 2))], (0, 0, 1))

    def arm(side, x):
        return chain_of([(f"{side}{n['collar']}", (0, 0, 0)), (f"{side}{n['arm']}", (x, 1, 0)),
                         (f"{side}{n['fore']}", (0, -5, 0)), (f"{side}{n['hand']}", (0, -4, 0))], (0, -1, 0))

    neck = chain_of([(n["neck"][0], (0, 0, 0)), (n["neck"][1], (0, 1.8, 0)), (n["neck"][2], (0, 1.7, 0))],
                    (0, n["head_end"], 0))
    chest = (f"JOINT {n['back'][2]}", (0, 2, 0), [neck, arm("Left", 3.0), arm("Right", -3.0)])
    back = (f"JOINT {n['back'][0]}", (0, 0, 0), [(f"JOINT {n['back'][1]}", (0, 2, 0), [chest])])
    root = ("ROOT Hips", (0, 0, 0), [leg("Left", 1.3), leg("Right", -1.3), back])

    lines, channels = ["HIERARCHY"], [0]

    def emit(node, depth):
        keyword, offset, children = node
        tab = "\t" * depth
        lines.extend([f"{tab}{keyword}", f"{tab}{{", f"{tab}\tOFFSET {offset[0]} {offset[1]} {offset[2]}"])
        if keyword != "End Site":
            position = "Xposition Yposition Zposition " if depth == 0 else ""
            lines.append(f"{tab}\tCHANNELS {6 if depth == 0 else 3} {position}Zrotation Yrotation Xrotation")
            channels[0] += 6 if depth == 0 else 3
        for child in children:
            emit(child, depth + 1)
        lines.append(f"{tab}}}")

    emit(root, 0)
    values = np.zeros(channels[0])
    values[1] = 17.0  # root height
    frame = " ".join(f"{v:g}" for v in values)
    return "\n".join(lines + ["MOTION", "Frames: 2", "Frame Time: 0.008333", frame, frame]) + "\n"


@pytest.mark.parametrize("style", ["motionbuilder", "3dsmax"])
def test_both_cmu_naming_styles_map_to_h36m(tmp_path, style):
    path = tmp_path / f"{style}.bvh"
    path.write_text(cmu_like(style))
    motion = parse_bvh(path)
    found, w = mapping_matrix(motion)
    assert found == style
    pos = np.einsum("kj,fjc->fkc", w, forward_kinematics(motion))[0]
    hips_y = 17.0 - 1.0
    assert pos[SK.index("pelvis")] == pytest.approx([0.0, hips_y, 0.0])
    assert pos[SK.index("l_hip")] == pytest.approx([1.3, hips_y, 0.0])
    assert pos[SK.index("r_ankle")] == pytest.approx([-1.3, hips_y - 14.0, 0.0])
    assert pos[SK.index("spine")] == pytest.approx([0.0, 19.0, 0.0])
    assert pos[SK.index("thorax")] == pytest.approx([0.0, 22.8, 0.0])  # top of the lower neck
    assert pos[SK.index("neck_nose")] == pytest.approx([0.0, 24.5, 0.0])
    head_top = 24.5 + (1.7 if style == "motionbuilder" else 1.5)  # extrapolated / the end site
    assert pos[SK.index("head_top")] == pytest.approx([0.0, head_top, 0.0])
    assert pos[SK.index("l_shoulder")] == pytest.approx([3.0, 22.0, 0.0])
    assert pos[SK.index("r_wrist")] == pytest.approx([-3.0, 13.0, 0.0])


def test_unknown_joint_names_are_reported(tmp_path):
    path = chain(tmp_path)
    with pytest.raises(DataFormatError, match=r"field 'HIERARCHY joint names'.*got \['Hips', 'Knee'\]"):
        mapping_matrix(parse_bvh(path))


def test_frame_rate_options(tmp_path):
    path = tmp_path / "mb.bvh"
    text = cmu_like("motionbuilder")
    head, frame = text.rsplit("\n", 2)[0].rsplit("\n", 1)
    values = np.array(frame.split(), dtype=float)
    rows = []
    for k in range(121):  # 1 T-pose frame + 120 frames at 120 fps; the root walks along z
        v = values.copy()
        v[2] = 0.5 * k
        v[4] = 20.0 * np.sin(k / 10)  # hips turning about y: resampled rotations must keep bones rigid
        rows.append(" ".join(f"{x:g}" for x in v))
    path.write_text(head.replace("Frames: 2", "Frames: 121") + "\n" + "\n".join(rows) + "\n")
    plain = read_bvh_sequence(path, Options())
    assert plain.positions.shape[0] == 120 and plain.fps == pytest.approx(120.0, rel=1e-3)
    assert plain.positions[0, 0, 2] == pytest.approx(0.5 * 56.444)  # the T-pose frame was dropped; mm
    kept = read_bvh_sequence(path, Options(drop_first_frame=False))
    assert kept.positions.shape[0] == 121
    slow = read_bvh_sequence(path, Options(fps_override=60.0))
    assert slow.fps == 60.0 and slow.positions.shape[0] == 120
    third = read_bvh_sequence(path, Options(fps_override=120.0, target_fps=40.0))
    assert third.fps == 40.0 and np.array_equal(third.positions, plain.positions[::3])
    odd = read_bvh_sequence(path, Options(fps_override=120.0, target_fps=50.0))
    assert odd.positions.shape[0] == int(np.floor(119 / 2.4)) + 1
    assert odd.positions[1, 0, 2] == pytest.approx((1 + 2.4) * 0.5 * 56.444)  # interpolated root
    lengths = SK.bone_lengths(odd.positions)
    assert np.allclose(lengths, lengths[0])


# ---------------------------------------------------------------------------- real CMU files
@pytest.mark.parametrize(("name", "style"), [("02_01", "motionbuilder"), ("131_03", "3dsmax")])
def test_cmu_files_parse_with_human_bone_lengths(name, style):
    require_cmu()
    path = BVH_DIR / f"{name}.bvh"
    motion = parse_bvh(path)
    assert mapping_matrix(motion)[0] == style
    seq = read_bvh_sequence(path, Options(target_fps=30.0))
    bones = SK.bone_lengths(seq.positions).mean(axis=0) / 1000.0  # metres
    for thigh in ("r_knee", "l_knee"):
        assert 0.37 < bones[BONE[thigh]] < 0.46
    for shank in ("r_ankle", "l_ankle"):
        assert 0.36 < bones[BONE[shank]] < 0.46
    for upper_arm in ("r_elbow", "l_elbow"):
        assert 0.22 < bones[BONE[upper_arm]] < 0.32
    report = check_motion(seq.positions, seq.fps)
    assert report.passed, str(report)


def test_bvh_walk_matches_the_npz_conversion_of_the_same_take():
    """CMU 02_01 at 30 fps is walking/walking_1 of cmu_train.npz (converted independently)."""
    require_cmu()
    bvh = read_bvh_sequence(BVH_DIR / "02_01.bvh", Options(drop_first_frame=False, target_fps=30.0)).positions
    d = np.load(CMU / "cmu_train.npz", allow_pickle=False)
    i = list(d["seq_names"]).index("walking/walking_1")
    npz = d["positions"][d["seq_starts"][i]:d["seq_starts"][i] + d["seq_lengths"][i]] * 1000.0
    n = min(len(bvh), len(npz))
    legs = [SK.index(j) for j in ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle")]
    rel_bvh = bvh[:n, legs] - bvh[:n, :1]
    rel_npz = npz[:n, legs] - npz[:n, :1]
    assert np.linalg.norm(rel_bvh - rel_npz, axis=-1).mean() < 30.0


def test_plausibility_catches_the_glitch_in_cmu_05_06():
    """The right thigh of 05_06 flips for a few frames (source data); the checks must notice."""
    require_cmu()
    seq = read_bvh_sequence(BVH_DIR / "05_06.bvh", Options())
    check = check_motion(seq.positions, seq.fps).checks["smoothness"]
    assert not check.passed and "r_knee" in check.detail


def test_adapter_converts_a_folder(tmp_path):
    require_cmu()
    options = adapter.Options(target_fps=30.0, cameras=1, test_sequences=["131_02"])
    parts = {p.name: p.frames for p in adapter.convert({"cmu": BVH_DIR}, options, "bvh", SK)}
    assert set(parts["test"].video_id) == {"131_131_02.cam0"}
    assert set(parts["train"].subject) == {"02", "05", "131"}
    assert set(parts["train"].action) == {"02_01", "05_06", "131_01", "131_03"}
    assert (parts["train"].fps == 30.0).all()
    assert adapter.REQUIRED_FILES == ()


def test_adapter_single_file_action_and_errors(tmp_path):
    path = tmp_path / "walk_take.bvh"
    path.write_text(cmu_like("3dsmax"))
    options = adapter.Options(cameras=1, test_fraction=0.0, subject="me")
    parts = list(adapter.convert({"walking": path}, options, "bvh", SK))
    train = parts[0].frames
    assert set(train.action) == {"walking"} and set(train.subject) == {"me"}
    assert set(train.video_id) == {"me_walk_take.cam0"}
    with pytest.raises(DataFormatError, match="an existing .bvh file or a folder"):
        list(adapter.convert({"x": tmp_path / "absent.bvh"}, adapter.Options(), "bvh", SK))
    with pytest.raises(DataFormatError, match="at least one .bvh"):
        list(adapter.convert({}, adapter.Options(), "bvh", SK))
