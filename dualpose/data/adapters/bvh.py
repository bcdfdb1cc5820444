"""Biovision Hierarchy (BVH) motion capture, mapped to the 17 Human3.6M joints and filmed by virtual cameras.

Files: every entry of ``files`` is a .bvh file or a folder (all ``*.bvh`` in it, sorted); there
is no fixed file name (``REQUIRED_FILES`` is empty). Each file is one sequence named after its
stem; its subject is ``options.subject`` or, for CMU names like ``02_01``, the part before the
underscore; its action is ``options.actions[stem]``, else the ``files`` key for a single file,
else the stem.

Parsing follows the format: ``HIERARCHY`` with ``ROOT``/``JOINT``/``End Site`` blocks,
``OFFSET x y z`` and ``CHANNELS n ...`` in the order each joint declares (e.g. ``Zrotation
Xrotation Yrotation`` means R = Rz Rx Ry, angles in degrees); then ``MOTION``, ``Frames: N``,
``Frame Time: dt`` and N lines of channel values. Forward kinematics, vectorised over frames:
``G_j = G_parent R_j`` and ``p_j = p_parent + G_parent (offset_j + translation_j)``.

Joint mapping (both CMU conversions; detected from the joint names):

============  ==============================  ==============================
H36M joint    MotionBuilder style             3ds Max style
============  ==============================  ==============================
pelvis        mid(LeftUpLeg, RightUpLeg)      mid(LeftHip, RightHip)
hip/knee/ank  {L,R}UpLeg / Leg / Foot         {L,R}Hip / Knee / Ankle
spine         Spine                           Chest
thorax        Neck1 (top of the lower neck,   Neck (the same point)
              just above the shoulders)
neck_nose     Head (top of the upper neck)    Head
head_top      Head + (Head - Neck1): the      end site of Head
              export has a zero-length head
shoulder      {L,R}Arm                        {L,R}Shoulder
elbow         {L,R}ForeArm                    {L,R}Elbow
wrist         {L,R}Hand                       {L,R}Wrist
============  ==============================  ==============================

The pelvis is the hip midpoint, as in the CMU npz. Both exports keep two of the three back
segments of CMU's ASF skeletons, so their torso is ~10 cm shorter than the actor's; it is left
as recorded (H36M's spine, at the lower back segment's top, matches; shoulders and above sit
~7 cm low). Units: ``unit_scale`` metres per file unit (CMU: 0.056444); output in mm, y up as in
the file. The recorded floor is off by a few cm in CMU files, so ``floor_to_zero`` puts the feet's
lowest points (toe end sites; 1st percentile over frames, robust to glitches) at y = 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from pydantic import Field

from dualpose.data.adapters.base import TablePart
from dualpose.data.adapters.mocap_npz import MotionOptions, MotionSequence, motion_parts, select_sequences
from dualpose.data.synthetic_motion import rot_x, rot_y, rot_z
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17, Skeleton

REQUIRED_FILES: tuple[str, ...] = ()
CMU_UNIT_SCALE_M = 0.056444  # (1 / 0.45) * 2.54 / 100
CHANNEL_NAMES = ("Xposition", "Yposition", "Zposition", "Xrotation", "Yrotation", "Zrotation")
_ROTATIONS = {"X": rot_x, "Y": rot_y, "Z": rot_z}


class Options(MotionOptions):
    unit_scale: float = Field(CMU_UNIT_SCALE_M, gt=0)  # metres per BVH unit
    fps_override: float | None = Field(None, gt=0)  # true capture rate when the header's Frame Time is wrong
    target_fps: float | None = Field(None, gt=0)  # resample (channels interpolated, then FK: exact bones)
    drop_first_frame: bool = True  # CMU files start with a T-pose
    floor_to_zero: bool = True
    subject: str | None = None
    actions: dict[str, str] = Field(default_factory=dict)  # file stem -> action


# ---------------------------------------------------------------------------- parsing
@dataclass
class BvhJoint:
    name: str  # end sites are named "<parent>/End"
    parent: int  # -1 for the root
    offset: np.ndarray  # (3,)
    channels: tuple[str, ...]
    line: int


@dataclass
class BvhMotion:
    path: Path
    joints: list[BvhJoint]
    frame_time: float
    values: np.ndarray  # (F, total channels)

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    def channel_slices(self) -> list[slice]:
        out, start = [], 0
        for j in self.joints:
            out.append(slice(start, start + len(j.channels)))
            start += len(j.channels)
        return out


def _floats(path: Path, line_no: int, keyword: str, tokens: list[str], count: int, raw: str) -> np.ndarray:
    if len(tokens) != count:
        raise DataFormatError(path, f"line {line_no}: {keyword}", f"{count} numbers", repr(raw.strip()))
    try:
        return np.array([float(t) for t in tokens])
    except ValueError:
        raise DataFormatError(path, f"line {line_no}: {keyword}", f"{count} numbers", repr(raw.strip())) from None


def _parse_hierarchy(path: Path, lines: list[str]) -> tuple[list[BvhJoint], int]:
    """Joints in file order (parents first) and the index of the line after the hierarchy."""
    joints: list[BvhJoint] = []
    stack: list[int] = []
    pending: tuple[str, int] | None = None
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].strip() != "HIERARCHY":
        got = repr(lines[i][:40]) if i < len(lines) else "an empty file"
        raise DataFormatError(path, f"line {i + 1}", "'HIERARCHY' as the first word", got)
    i += 1
    while i < len(lines):
        raw = lines[i]
        tokens = raw.split()
        i += 1
        if not tokens:
            continue
        key = tokens[0]
        if key in ("ROOT", "JOINT"):
            if len(tokens) != 2:
                raise DataFormatError(path, f"line {i}: {key}", f"'{key} <name>'", repr(raw.strip()))
            if (key == "ROOT") != (not stack and not joints):
                raise DataFormatError(path, f"line {i}: {key}", "one ROOT first, then JOINTs inside it", key)
            pending = (tokens[1], i)
        elif key == "End" and tokens[1:] == ["Site"]:
            if not stack:
                raise DataFormatError(path, f"line {i}: End Site", "an End Site inside a joint", "none open")
            pending = (f"{joints[stack[-1]].name}/End", i)
        elif key == "{":
            if pending is None:
                raise DataFormatError(path, f"line {i}: {{", "'{' after ROOT, JOINT or End Site", "a stray '{'")
            parent = stack[-1] if stack else -1
            joints.append(BvhJoint(pending[0], parent, np.full(3, np.nan), (), pending[1]))
            stack.append(len(joints) - 1)
            pending = None
        elif key == "}":
            if not stack:
                raise DataFormatError(path, f"line {i}: }}", "a '}' closing an open joint", "none open")
            joint = joints[stack.pop()]
            if np.isnan(joint.offset).any():
                raise DataFormatError(path, f"line {joint.line}: {joint.name}", "an OFFSET line", "none")
            if not stack:
                break  # the root's block is closed
        elif key == "OFFSET":
            if not stack:
                raise DataFormatError(path, f"line {i}: OFFSET", "OFFSET inside a joint's braces", "outside")
            joints[stack[-1]].offset = _floats(path, i, "OFFSET", tokens[1:], 3, raw)
        elif key == "CHANNELS":
            if not stack or joints[stack[-1]].name.endswith("/End"):
                raise DataFormatError(path, f"line {i}: CHANNELS", "CHANNELS inside a ROOT or JOINT", "elsewhere")
            try:
                n = int(tokens[1])
            except (IndexError, ValueError):
                raise DataFormatError(path, f"line {i}: CHANNELS", "'CHANNELS <n> <names>'",
                                      repr(raw.strip())) from None
            names = tuple(tokens[2:])
            if len(names) != n or any(c not in CHANNEL_NAMES for c in names):
                raise DataFormatError(path, f"line {i}: CHANNELS", f"{n} channel names from {CHANNEL_NAMES}",
                                      repr(raw.strip()))
            joints[stack[-1]].channels = names
        else:
            raise DataFormatError(path, f"line {i}", "ROOT, JOINT, End Site, OFFSET, CHANNELS, { or }", repr(key))
    if stack or not joints:
        open_name = joints[stack[-1]].name if stack else "ROOT"
        raise DataFormatError(path, "HIERARCHY", f"a complete hierarchy (closing '}}' of {open_name!r})",
                              "the end of the file (truncated?)")
    return joints, i


def _header_value(path: Path, lines: list[str], i: int, label: str) -> tuple[str, int]:
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines):
        raise DataFormatError(path, f"line {i + 1}: {label}", f"'{label} <value>'", "the end of the file (truncated?)")
    m = re.fullmatch(rf"\s*{re.escape(label)}\s*(\S+)\s*", lines[i])
    if not m:
        raise DataFormatError(path, f"line {i + 1}: {label}", f"'{label} <value>'", repr(lines[i].strip()[:60]))
    return m.group(1), i + 1


def parse_bvh(path: str | Path) -> BvhMotion:
    """Read a BVH file; malformed input raises :class:`DataFormatError` naming the line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, "<file>", "a readable text BVH file", str(exc)) from exc
    lines = text.splitlines()
    joints, i = _parse_hierarchy(path, lines)
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].strip() != "MOTION":
        got = repr(lines[i].strip()[:40]) if i < len(lines) else "the end of the file (truncated?)"
        raise DataFormatError(path, f"line {i + 1}: MOTION", "'MOTION' after the hierarchy", got)
    frames_raw, i = _header_value(path, lines, i + 1, "Frames:")
    time_raw, i = _header_value(path, lines, i, "Frame Time:")
    try:
        n_frames = int(frames_raw)
        frame_time = float(time_raw)
    except ValueError:
        raise DataFormatError(path, "Frames / Frame Time", "an integer frame count and a frame time in seconds",
                              f"{frames_raw!r}, {time_raw!r}") from None
    if n_frames < 1 or not np.isfinite(frame_time) or frame_time <= 0:
        raise DataFormatError(path, "Frames / Frame Time", "at least one frame and a positive frame time",
                              f"{n_frames}, {frame_time}")
    n_channels = sum(len(j.channels) for j in joints)
    data_lines = lines[i:]
    tokens = " ".join(data_lines).split()
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        values = None
    if values is None or values.size != n_frames * n_channels or not np.isfinite(values).all():
        _raise_motion_error(path, data_lines, i, n_frames, n_channels)
    return BvhMotion(path=path, joints=joints, frame_time=frame_time, values=values.reshape(n_frames, n_channels))


def _raise_motion_error(path: Path, data_lines: list[str], first_line: int, n_frames: int,
                        n_channels: int) -> NoReturn:
    """Find the first bad frame line (error path only) and raise."""
    frame = 0
    for k, raw in enumerate(data_lines):
        tokens = raw.split()
        if not tokens:
            continue
        line_no = first_line + k + 1
        field = f"line {line_no}: MOTION frame {frame}"
        if frame >= n_frames:
            raise DataFormatError(path, field, f"{n_frames} frames as declared by 'Frames:'", "more frame lines")
        if len(tokens) != n_channels:
            raise DataFormatError(path, field, f"{n_channels} channel values (the hierarchy's CHANNELS)",
                                  f"{len(tokens)} values")
        try:
            bad = [t for t in tokens if not np.isfinite(float(t))]
        except ValueError:
            bad = [t for t in tokens if not _is_number(t)]
        if bad:
            raise DataFormatError(path, field, "finite numbers", repr(bad[0]))
        frame += 1
    raise DataFormatError(path, "MOTION", f"{n_frames} frames as declared by 'Frames:'",
                          f"{frame} frames (truncated?)")


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------- kinematics
def _unwrapped(values: np.ndarray, motion: BvhMotion) -> np.ndarray:
    """Channel values with rotation channels unwrapped (no 360-degree jumps), for interpolation."""
    out = values.copy()
    for joint, sl in zip(motion.joints, motion.channel_slices()):
        for k, ch in enumerate(joint.channels):
            if ch.endswith("rotation"):
                col = sl.start + k
                out[:, col] = np.degrees(np.unwrap(np.radians(values[:, col])))
    return out


def resample_channels(motion: BvhMotion, source_fps: float, target_fps: float) -> np.ndarray:
    """Channel values at ``target_fps`` (every k-th frame for integer ratios, else linear interpolation)."""
    values = motion.values
    ratio = source_fps / target_fps
    if abs(ratio - round(ratio)) < 1e-6 and round(ratio) >= 1:
        return values[:: int(round(ratio))]
    n_out = int(np.floor((len(values) - 1) / ratio)) + 1
    pos = np.arange(n_out) * ratio
    i0 = np.minimum(np.floor(pos).astype(int), len(values) - 1)
    i1 = np.minimum(i0 + 1, len(values) - 1)
    w = (pos - i0)[:, None]
    unwrapped = _unwrapped(values, motion)
    return (1 - w) * unwrapped[i0] + w * unwrapped[i1]


def forward_kinematics(motion: BvhMotion, values: np.ndarray | None = None) -> np.ndarray:
    """Positions (F, joints incl. end sites, 3) in file units."""
    values = motion.values if values is None else values
    n = len(values)
    glob = np.empty((n, len(motion.joints), 3, 3))
    pos = np.empty((n, len(motion.joints), 3))
    for j, (joint, sl) in enumerate(zip(motion.joints, motion.channel_slices())):
        rot = np.broadcast_to(np.eye(3), (n, 3, 3))
        trans = np.zeros((n, 3))
        for k, ch in enumerate(joint.channels):
            col = values[:, sl.start + k]
            axis = "XYZ".index(ch[0])
            if ch.endswith("position"):
                trans[:, axis] = col
            else:
                rot = rot @ _ROTATIONS[ch[0]](np.radians(col))
        local = joint.offset + trans
        if joint.parent < 0:
            glob[:, j] = rot
            pos[:, j] = local
        else:
            glob[:, j] = glob[:, joint.parent] @ rot
            pos[:, j] = pos[:, joint.parent] + np.einsum("fij,fj->fi", glob[:, joint.parent], local)
    return pos


# ---------------------------------------------------------------------------- H36M mapping
# Each H36M joint is an affine combination of BVH joints: {bvh name: weight}.
def _side_map(up_leg: str, leg: str, foot: str, arm: str, fore: str, hand: str) -> dict[str, dict[str, float]]:
    out = {}
    for h36m_side, bvh_side in (("l", "Left"), ("r", "Right")):
        for h36m, bvh in (("hip", up_leg), ("knee", leg), ("ankle", foot), ("shoulder", arm), ("elbow", fore),
                          ("wrist", hand)):
            out[f"{h36m_side}_{h36m}"] = {f"{bvh_side}{bvh}": 1.0}
    return out


JOINT_MAPS: dict[str, dict[str, dict[str, float]]] = {
    "motionbuilder": {
        "pelvis": {"LeftUpLeg": 0.5, "RightUpLeg": 0.5},
        "spine": {"Spine": 1.0},
        "thorax": {"Neck1": 1.0},
        "neck_nose": {"Head": 1.0},
        "head_top": {"Head": 2.0, "Neck1": -1.0},
        **_side_map("UpLeg", "Leg", "Foot", "Arm", "ForeArm", "Hand"),
    },
    "3dsmax": {
        "pelvis": {"LeftHip": 0.5, "RightHip": 0.5},
        "spine": {"Chest": 1.0},
        "thorax": {"Neck": 1.0},
        "neck_nose": {"Head": 1.0},
        "head_top": {"Head/End": 1.0},
        **_side_map("Hip", "Knee", "Ankle", "Shoulder", "Elbow", "Wrist"),
    },
}


def mapping_matrix(motion: BvhMotion, skeleton: Skeleton = H36M_17) -> tuple[str, np.ndarray]:
    """(style, W) with W (J_skeleton, J_bvh) such that ``skeleton_pose = W @ bvh_pose``."""
    index = {n: k for k, n in enumerate(motion.names)}
    for style, mapping in JOINT_MAPS.items():
        if set(mapping) != set(skeleton.joint_names):
            continue
        if all(name in index for rule in mapping.values() for name in rule):
            w = np.zeros((skeleton.num_joints, len(index)))
            for joint, rule in mapping.items():
                for name, weight in rule.items():
                    w[skeleton.index(joint), index[name]] = weight
            return style, w
    names = [n for n in motion.names if not n.endswith("/End")]
    raise DataFormatError(motion.path, "HIERARCHY joint names",
                          "CMU MotionBuilder-style (Hips, LeftUpLeg, LeftLeg, LeftFoot, Spine, Spine1, Neck1, Head, "
                          "LeftArm, LeftForeArm, LeftHand, ...) or 3ds Max-style (Hips, LeftHip, LeftKnee, LeftAnkle, "
                          "Chest, Chest2, Head + End Site, LeftShoulder, LeftElbow, LeftWrist, ...) names",
                          f"{names[:12]}{' ...' if len(names) > 12 else ''}")


def foot_end_sites(motion: BvhMotion) -> list[int]:
    """End sites below the ankles (toes): the lowest points of the feet."""
    names = motion.names
    return [k for k, n in enumerate(names) if n.endswith("/End") and ("Toe" in n or "Foot" in n)]


def read_bvh_sequence(path: str | Path, options: Options, skeleton: Skeleton = H36M_17,
                      name: str | None = None, action: str | None = None) -> MotionSequence:
    """Parse one file into a world-frame (F, J, 3) mm sequence on ``skeleton``."""
    motion = parse_bvh(path)
    _, w = mapping_matrix(motion, skeleton)
    fps = options.fps_override or 1.0 / motion.frame_time
    values = motion.values[1:] if options.drop_first_frame and len(motion.values) > 1 else motion.values
    motion_view = BvhMotion(motion.path, motion.joints, motion.frame_time, values)
    if options.target_fps is not None and abs(options.target_fps - fps) > 1e-9:
        values = resample_channels(motion_view, fps, options.target_fps)
        fps = options.target_fps
    full = forward_kinematics(motion, values) * (options.unit_scale * 1000.0)  # mm
    positions = np.einsum("kj,fjc->fkc", w, full)
    if options.floor_to_zero:
        toes = foot_end_sites(motion)
        if not toes:
            raise DataFormatError(path, "HIERARCHY", "toe End Sites to find the floor (or floor_to_zero: false)",
                                  "none")
        positions[..., 1] -= np.percentile(full[:, toes, 1].min(axis=1), 1.0)
    stem = Path(path).stem
    subject = options.subject or (stem.split("_")[0] if "_" in stem else stem)
    return MotionSequence(name=name or stem, subject=subject, action=action or stem, positions=positions,
                          fps=float(fps))


def bvh_files(files: dict[str, Path]) -> list[tuple[str, Path, bool]]:
    """(logical name, path, came from a folder) for every .bvh file, in a stable order."""
    out = []
    for key in sorted(files):
        path = Path(files[key])
        if path.is_dir():
            found = sorted(path.glob("*.bvh"))
            if not found:
                raise DataFormatError(path, "<folder>", "at least one *.bvh file", "none")
            out.extend((key, p, True) for p in found)
        elif path.is_file():
            out.append((key, path, False))
        else:
            raise DataFormatError(path, f"files.{key}", "an existing .bvh file or a folder of them", "nothing there")
    return out


def convert(files: dict[str, Path], options: Options, dataset: str,
            skeleton: Skeleton = H36M_17) -> Iterator[TablePart]:
    if not files:
        raise DataFormatError(None, "files", "at least one .bvh file or folder (files: {name: path})", "none")
    sequences = []
    seen: dict[str, Path] = {}
    for key, path, from_folder in bvh_files(files):
        stem = path.stem
        if stem in seen:
            raise DataFormatError(path, "<file name>", "unique file stems (each names a sequence)",
                                  f"{stem!r} also at {seen[stem]}")
        seen[stem] = path
        action = options.actions.get(stem) or (stem if from_folder else key)
        sequences.append(read_bvh_sequence(path, options, skeleton, name=stem, action=action))
    sequences = select_sequences(sequences, options.sequences, "bvh files")
    yield from motion_parts(sequences, options, dataset, skeleton)
