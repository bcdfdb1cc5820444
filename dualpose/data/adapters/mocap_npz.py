"""3D motion capture as joint positions in one .npz, filmed by virtual cameras.

File ``motion`` (the format of ``../shared/data/cmu/cmu_train.npz``; loaded with
``allow_pickle=False``):

=============  ==========================  ===============================================
key            type                        meaning
=============  ==========================  ===============================================
positions      float [N, J, 3]             world positions, ``unit_to_mm`` mm per unit (metres by
                                           default), y up, floor at y = 0
seq_starts     int [S]                     first row of each sequence
seq_lengths    int [S]                     frames of each sequence (rows start .. start+length)
seq_names      str [S]                     unique names, e.g. ``walking/walking_1``
actions        str [S]                     action label of each sequence
fps            number                      frames per second
joint_names    str [J]                     the skeleton's joints (any order; mapped by name)
joint_parents  int [J]                     parent index per joint, -1 for the root
=============  ==========================  ===============================================

Optional ``subjects`` (str [S]) names each sequence's subject (default ``options.subject``), which
``test_subjects`` uses to split by subject. Other keys (provenance) are ignored. Several files may
be given (``files: {motion: a.npz, extra: b.npz}``): their sequences are pooled. Sequences are assigned to the ``test`` part whole (no
frame of a test sequence is trained on): explicitly by name, or a seeded fraction per action.
Each sequence becomes ``cameras`` videos; see :mod:`dualpose.data.virtual_capture`.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from dualpose.data.adapters.base import TablePart
from dualpose.data.virtual_capture import CaptureOptions, capture_motion, concat_frames
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17, Skeleton

log = logging.getLogger(__name__)

REQUIRED_FILES: tuple[str, ...] = ("motion",)  # further files (any name) are more motion npz files
OPTIONAL_KEYS = ("subjects",)  # per-sequence subject; default: options.subject for every sequence
REQUIRED_KEYS = ("positions", "seq_starts", "seq_lengths", "seq_names", "actions", "fps", "joint_names",
                 "joint_parents")


class MotionOptions(CaptureOptions):
    """Options shared by the adapters that film 3D motion sequences (``mocap_npz``, ``bvh``)."""

    seed: int = 0
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # of each action's sequences, when none are named
    test_sequences: list[str] | None = None  # explicit test sequence names (overrides test_fraction)
    test_subjects: list[str] | None = None  # every sequence of these subjects is test (split by subject)
    sequences: list[str] | None = None  # keep only these sequences (names or actions); default all
    # Reject takes in which any joint moves faster than this between two frames (m/s): mocap
    # joint flips jump 20-40 m/s for a frame, while real motion (sprints, kicks) stays below ~17.
    max_joint_speed_ms: float | None = Field(None, gt=0)


class Options(MotionOptions):
    subject: str = "cmu"
    unit_to_mm: float = Field(1000.0, gt=0)  # millimetres per unit of ``positions``


@dataclass
class MotionSequence:
    """One sequence of world-frame 3D joints: (F, J, 3) mm, y up, floor at y = 0."""

    name: str
    subject: str
    action: str
    positions: np.ndarray
    fps: float


# ---------------------------------------------------------------------------- shared by motion adapters
def select_sequences(sequences: list[MotionSequence], keep: Sequence[str] | None, source: str) -> list[MotionSequence]:
    """Sequences whose name or action is in ``keep`` (all when ``keep`` is None)."""
    if keep is None:
        return sequences
    keep_set = set(keep)
    chosen = [s for s in sequences if s.name in keep_set or s.action in keep_set]
    known = {s.name for s in sequences} | {s.action for s in sequences}
    missing = sorted(keep_set - known)
    if missing:
        raise ValueError(f"{source}: options.sequences {missing} match no sequence name or action")
    return chosen


def reject_fast_joints(sequences: list[MotionSequence], max_speed_ms: float | None) -> tuple[list[MotionSequence], list[str]]:
    """Drop sequences with a joint faster than ``max_speed_ms`` between consecutive frames (a
    tracking flip); returns the kept sequences and the names of the rejected ones."""
    if max_speed_ms is None:
        return sequences, []
    kept, rejected = [], []
    for seq in sequences:
        steps = np.linalg.norm(np.diff(seq.positions, axis=0), axis=-1) if len(seq.positions) > 1 else np.zeros(1)
        speed = float(steps.max()) * seq.fps / 1000.0  # positions are mm
        if speed > max_speed_ms:
            rejected.append(seq.name)
        else:
            kept.append(seq)
    return kept, rejected


def split_by_sequence(names: Sequence[str], actions: Sequence[str], test_fraction: float,
                      test_sequences: Sequence[str] | None, seed: int,
                      subjects: Sequence[str] | None = None, test_subjects: Sequence[str] | None = None) -> np.ndarray:
    """Boolean (S,): True for test sequences.

    Named test subjects win, then named sequences; otherwise ``round(test_fraction * n)``
    sequences of each action with at least two sequences are drawn (seeded), and at least one
    overall when the fraction is > 0.
    """
    names = list(names)
    if test_subjects is not None:
        subjects_arr = np.asarray(list(subjects) if subjects is not None else [], dtype=object)
        unknown = sorted(set(test_subjects) - set(subjects_arr.tolist()))
        if unknown:
            raise ValueError(f"test_subjects {unknown} are not among the subjects {sorted(set(subjects_arr.tolist()))}")
        return np.isin(subjects_arr, list(test_subjects))
    if test_sequences is not None:
        unknown = sorted(set(test_sequences) - set(names))
        if unknown:
            raise ValueError(f"test_sequences {unknown} are not among the sequences {names}")
        return np.isin(names, list(test_sequences))
    is_test = np.zeros(len(names), dtype=bool)
    if test_fraction <= 0 or len(names) < 2:
        return is_test
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17]))
    actions_arr = np.asarray(actions)
    for action in sorted(set(actions)):
        members = np.flatnonzero(actions_arr == action)
        if len(members) < 2:
            continue
        k = int(round(test_fraction * len(members)))
        is_test[rng.permutation(members)[:k]] = True
    if not is_test.any():
        is_test[rng.integers(len(names))] = True
    return is_test


def motion_parts(sequences: Sequence[MotionSequence], options: MotionOptions, dataset: str,
                 skeleton: Skeleton) -> Iterator[TablePart]:
    """Film every sequence and yield the ``train`` and ``test`` parts."""
    sequences, rejected = reject_fast_joints(list(sequences), options.max_joint_speed_ms)
    is_test = split_by_sequence([s.name for s in sequences], [s.action for s in sequences],
                                options.test_fraction, options.test_sequences, options.seed,
                                [s.subject for s in sequences], options.test_subjects)
    notes = {"rejected_sequences": len(rejected), "rejected_names": rejected,
             "max_joint_speed_ms": options.max_joint_speed_ms} if options.max_joint_speed_ms else {}
    if rejected:
        log.warning("%s: rejected %d sequence(s) with a joint faster than %g m/s (tracking flips): %s",
                    dataset, len(rejected), options.max_joint_speed_ms, ", ".join(rejected))
    parts: dict[str, list] = {"train": [], "test": []}
    for seq, test in zip(sequences, is_test):
        split = "test" if test else "train"
        stream = [options.seed, zlib.crc32(f"{seq.subject}/{seq.name}".encode()), 0xCA3]  # stable per sequence
        parts[split].append(capture_motion(
            seq.positions, seq.fps, options, np.random.SeedSequence(stream),
            dataset=dataset, split=split, subject=seq.subject, action=seq.action,
            sequence=seq.name.replace("/", "-"), skeleton=skeleton,
        ))
    for name in ("train", "test"):
        yield TablePart(name=name, frames=concat_frames(parts[name], skeleton), notes=notes)


# ---------------------------------------------------------------------------- reading the npz
def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataFormatError(path, "<file>", "an existing .npz file")
    if not zipfile.is_zipfile(path):
        raise DataFormatError(path, "<file>", "a readable .npz (zip) archive", "another kind of file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise DataFormatError(path, missing[0], "a key of the motion npz format "
                                      f"(required: {', '.join(REQUIRED_KEYS)})", "missing")
            return {k: npz[k] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if k in npz.files}
    except DataFormatError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise DataFormatError(path, "<arrays>", "plain numeric/string arrays (no pickled objects)", str(exc)) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFormatError(path, "<file>", "a readable .npz (zip) archive", str(exc)) from exc


def _check_kind(path: Path, key: str, value: np.ndarray, kinds: str, what: str) -> None:
    if value.dtype.kind not in kinds:
        raise DataFormatError(path, key, what, f"dtype {value.dtype}")


def read_motion_npz(path: Path, skeleton: Skeleton = H36M_17, subject: str = "cmu",
                    unit_to_mm: float = 1000.0) -> list[MotionSequence]:
    """Validate and read every sequence (joints reordered to ``skeleton`` by name)."""
    path = Path(path)
    d = _load(path)
    pos, starts, lengths = d["positions"], d["seq_starts"], d["seq_lengths"]
    names, actions, fps = d["seq_names"], d["actions"], d["fps"]
    joint_names, parents = d["joint_names"], d["joint_parents"]

    subjects = d.get("subjects")
    _check_kind(path, "joint_names", joint_names, "U", "an array of joint name strings")
    if joint_names.ndim != 1:
        raise DataFormatError(path, "joint_names", "shape (J,)", f"shape {joint_names.shape}")
    j = len(joint_names)
    missing = [n for n in skeleton.joint_names if n not in set(joint_names.tolist())]
    if missing or len(set(joint_names.tolist())) != j:
        raise DataFormatError(path, "joint_names", f"unique names including every {skeleton.name} joint "
                              f"{list(skeleton.joint_names)}", f"missing {missing}" if missing else "duplicates")
    _check_kind(path, "joint_parents", parents, "iu", "integer parent indices")
    if parents.shape != (j,):
        raise DataFormatError(path, "joint_parents", f"shape ({j},) like joint_names", f"shape {parents.shape}")
    order = np.array([joint_names.tolist().index(n) for n in skeleton.joint_names])
    file_names = joint_names.tolist()
    for child, parent in enumerate(skeleton.parents):
        p = int(parents[order[child]])
        got_parent = file_names[p] if 0 <= p < j else None
        want_parent = skeleton.joint_names[parent] if parent >= 0 else None
        if got_parent != want_parent:
            raise DataFormatError(path, "joint_parents", f"the {skeleton.name} tree: parent of "
                                  f"{skeleton.joint_names[child]!r} is {want_parent!r}", repr(got_parent))

    _check_kind(path, "positions", pos, "f", "a float array")
    if pos.ndim != 3 or pos.shape[1:] != (j, 3):
        raise DataFormatError(path, "positions", f"shape (N, {j}, 3)", f"shape {pos.shape}")
    if not np.isfinite(pos).all():
        row = int(np.argwhere(~np.isfinite(pos).all(axis=(1, 2)))[0, 0])
        raise DataFormatError(path, "positions", "finite values", f"NaN/inf at row {row}")
    for key, arr in (("seq_starts", starts), ("seq_lengths", lengths)):
        _check_kind(path, key, arr, "iu", "an integer array")
        if arr.ndim != 1:
            raise DataFormatError(path, key, "shape (S,)", f"shape {arr.shape}")
    s = len(starts)
    for key, arr in (("seq_lengths", lengths), ("seq_names", names), ("actions", actions)):
        if arr.shape != (s,):
            raise DataFormatError(path, key, f"shape ({s},) like seq_starts", f"shape {arr.shape}")
    for key, arr in (("seq_names", names), ("actions", actions)):
        _check_kind(path, key, arr, "U", "an array of strings")
    if len(set(names.tolist())) != s:
        raise DataFormatError(path, "seq_names", "unique sequence names", "duplicates")
    if subjects is None:
        subjects = np.full(s, subject)
    else:
        _check_kind(path, "subjects", subjects, "U", "an array of subject strings")
        if subjects.shape != (s,):
            raise DataFormatError(path, "subjects", f"shape ({s},) like seq_starts", f"shape {subjects.shape}")
    ends = starts.astype(np.int64) + lengths
    bad = (starts < 0) | (lengths < 1) | (ends > len(pos))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(path, "seq_starts/seq_lengths", f"0 <= start, length >= 1, start + length <= "
                              f"{len(pos)} (rows of positions)", f"start {starts[i]}, length {lengths[i]} "
                              f"for sequence {names[i]!r}")
    if fps.shape != () or fps.dtype.kind not in "iuf" or not np.isfinite(fps) or fps <= 0:
        raise DataFormatError(path, "fps", "one positive number", f"{fps!r}")

    positions = pos[:, order].astype(np.float64) * unit_to_mm
    return [
        MotionSequence(name=str(n), subject=str(subj), action=str(a),
                       positions=positions[int(b):int(b) + int(length)], fps=float(fps))
        for n, a, b, length, subj in zip(names, actions, starts, lengths, subjects)
    ]


def convert(files: dict[str, Path], options: Options, dataset: str,
            skeleton: Skeleton = H36M_17) -> Iterator[TablePart]:
    """Every file of ``files`` is a motion npz (``motion`` first, then the others by name);
    sequence names must be unique across them."""
    sequences: list[MotionSequence] = []
    for key in sorted(files, key=lambda k: (k != "motion", k)):
        path = Path(files[key])
        found = read_motion_npz(path, skeleton, options.subject, options.unit_to_mm)
        clash = sorted({s.name for s in found} & {s.name for s in sequences})
        if clash:
            raise DataFormatError(path, "seq_names", "names not used by the data set's other motion files",
                                  f"{len(clash)} repeated, e.g. {clash[0]!r}")
        sequences.extend(found)
    sequences = select_sequences(sequences, options.sequences, ", ".join(str(files[k]) for k in sorted(files)))
    yield from motion_parts(sequences, options, dataset, skeleton)
