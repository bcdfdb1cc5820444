"""Clips: a columnar index of T-frame windows over keypoint tables (no file per clip).

A clip is a window of one video: ``(start row, source length L)`` in the concatenated keypoint
table plus the clip length ``T``. :meth:`ClipIndex.frame_rows` turns clips into an ``(n, T)``
array of row indices, so a data set gathers ``kp2d[rows]`` with one numpy fancy-index.

Windows (per video of N frames, stride s of the clip's split, see ``ClipConfig.stride``):

- ``N >= T``: starts ``min(k * s, N - T)`` for ``k = 0 .. ceil((N - T) / s)``: regular steps,
  and the last window aligned to the video's end so that every frame is covered.
- ``min_length <= N < T``: one clip of source length ``L = N``, resampled to T frames with
  frame offsets ``round(i * (L - 1) / (T - 1))``, i.e. ``np.round(np.linspace(0, L-1, T))``
  evaluated exactly in integers (ties to even, as ``np.round``). Every source frame is used.
- ``N < min_length``: dropped.

Splits. Rows whose table split is ``test`` form the test split. Rows whose split is ``train``
are divided into ``train`` / ``validation``:

- by subject, when ``SplitConfig.validation_subjects`` names any;
- otherwise by a seeded fraction of *recordings*. A recording is every camera's video of one
  motion: its key is ``(dataset, subject, action, stem)`` where ``stem`` is the video id with its
  camera removed (see :func:`video_stem`). The ``round(fraction * recordings)`` recordings (at
  least one, never all) with the smallest ``blake2b(seed, key)`` go to validation; the choice of
  one recording does not depend on the order of the table, and adding a recording changes
  membership of others only at the margin. A motion seen from several cameras is never split
  between train and validation.

Validation and test clips use the test stride (``ClipConfig.stride``).

Saved as Parquet with metadata (T, strides, the tables' names and row counts, a digest of the
video layout) so that an index built from other tables is refused on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualpose.config import ClipConfig
from dualpose.data.schema import KeypointArrays
from dualpose.errors import ConfigError, DataFormatError
from dualpose.io.atomic import atomic_path

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
FORMAT_VERSION = 1
_META = "dualpose.clips"

_SEP = r"[\s_\-./:]"
_LABEL = r"(?:ca|cam|camera|view)"
# left behind once the camera id itself is removed: "<sep>cam" or bare separators
_CAMERA_LEFTOVER = re.compile(rf"(?:(?:^|{_SEP}+){_LABEL})?{_SEP}*$", re.IGNORECASE)
# a trailing named camera label with its number, when the camera id is not in the video id
_CAMERA_LABEL = re.compile(rf"(?:^|{_SEP}+){_LABEL}{_SEP}*\d+{_SEP}*$", re.IGNORECASE)


@dataclass(frozen=True)
class TableRef:
    """One keypoint table an index was built from: a short name and its row count."""

    name: str
    num_rows: int


def table_refs(paths: Sequence[str | os.PathLike | TableRef]) -> tuple[TableRef, ...]:
    """Names (``<dataset folder>/<file>``) and row counts of tables, from Parquet footers only."""
    refs = []
    for p in paths:
        if isinstance(p, TableRef):
            refs.append(p)
            continue
        try:
            rows = pq.read_metadata(str(p)).num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataFormatError(p, "<file>", "a readable Parquet keypoint table", str(exc)) from exc
        refs.append(TableRef("/".join(Path(p).parts[-2:]), int(rows)))
    return tuple(refs)


def video_stem(video_id: str, camera_id: str) -> str:
    """The video id without its camera: what all cameras' videos of one recording share.

    Rule: remove the last occurrence of ``camera_id`` that stands as its own token (after the
    start, a separator or a camera label; before a separator or the end; digits may carry
    leading zeros), then strip what is left of a camera label (``ca``/``cam``/``camera``/``view``) and
    separators: ``S1 Seq1 cam0`` with camera ``0`` -> ``S1 Seq1``. When the camera id is absent from
    the video id, strip a trailing camera label with its number:
    ``s_09_act_05_subact_02_ca_01`` with camera ``54138969`` -> ``s_09_act_05_subact_02``.
    Other numbers (sequence, sub-action) are kept. Adapters should name videos so that this rule
    recovers the recording (``<recording><sep><camera id>`` always works).
    """
    stem = video_id
    cam = camera_id.strip()
    found = False
    if cam:
        number = "0*" if cam.isdigit() else ""  # camera 1 also matches "ca_01"
        token = re.compile(rf"(?:^|{_SEP}|{_LABEL}{_SEP}*)(?P<id>{number}{re.escape(cam)})(?={_SEP}|$)",
                           re.IGNORECASE)
        matches = list(token.finditer(stem))
        if matches:
            m = matches[-1]
            stem, found = stem[: m.start("id")] + stem[m.end("id"):], True
    return (_CAMERA_LEFTOVER if found else _CAMERA_LABEL).sub("", stem, count=1)


def _layout_digest(video_names: Sequence[str], run_videos: np.ndarray, run_lengths: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([video_names[i] for i in run_videos.tolist()]).encode())
    h.update(np.ascontiguousarray(run_lengths, dtype="<i8").tobytes())
    return h.hexdigest()[:32]


def _stable_unit(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True, eq=False)
class ClipIndex:
    """Columnar clip index. Positions ``0 .. len-1`` address clips of *this* (maybe selected)
    index; ``clip_id`` is the clip's id in the full index (stable, used to seed masks)."""

    clip_id: np.ndarray  # (n,) int64
    split: np.ndarray  # (n,) int8 code into SPLITS
    video: np.ndarray  # (n,) int32 code into video_names
    start: np.ndarray  # (n,) int64 first source row in the concatenated table
    length: np.ndarray  # (n,) int64 source frames L (T, or fewer when resampled)
    T: int
    video_names: tuple[str, ...]
    strides: dict[str, int]
    num_rows: int  # rows of the concatenated tables
    layout_digest: str
    tables: tuple[TableRef, ...] = ()
    settings: dict = field(default_factory=dict)  # min_length and split settings used

    def __len__(self) -> int:
        return int(self.clip_id.shape[0])

    # -- selection ---------------------------------------------------------------------------
    def take(self, positions: np.ndarray) -> "ClipIndex":
        """Subset by positions or a boolean mask, keeping ids and metadata."""
        return replace(
            self,
            clip_id=self.clip_id[positions],
            split=self.split[positions],
            video=self.video[positions],
            start=self.start[positions],
            length=self.length[positions],
        )

    def select(self, split: str | Sequence[str]) -> "ClipIndex":
        names = [split] if isinstance(split, str) else list(split)
        unknown = [s for s in names if s not in SPLIT_CODE]
        if unknown:
            raise KeyError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")
        return self.take(np.isin(self.split, [SPLIT_CODE[s] for s in names]))

    def counts(self) -> dict[str, int]:
        """Clips per split."""
        c = np.bincount(self.split.astype(np.int64), minlength=len(SPLITS))
        return {name: int(c[i]) for i, name in enumerate(SPLITS)}

    def split_names(self) -> np.ndarray:
        return np.asarray(SPLITS, dtype=object)[self.split]

    def video_ids(self) -> np.ndarray:
        return np.asarray(self.video_names, dtype=object)[self.video]

    # -- gathering ---------------------------------------------------------------------------
    def frame_offsets(self, clips: int | slice | np.ndarray | None = None) -> np.ndarray:
        """(n, T) int64 frame offsets within each clip's source window (resampling included)."""
        length = self.length[self._positions(clips)]
        return resample_offsets(length, self.T)

    def frame_rows(self, clips: int | slice | np.ndarray | None = None) -> np.ndarray:
        """(n, T) int64 row indices into the table arrays for clips at these positions."""
        pos = self._positions(clips)
        return self.start[pos, None] + resample_offsets(self.length[pos], self.T)

    def _positions(self, clips) -> np.ndarray:
        if clips is None:
            return np.arange(len(self))
        if isinstance(clips, slice):
            return np.arange(len(self))[clips]
        pos = np.atleast_1d(np.asarray(clips))
        if pos.dtype.kind not in "iu":
            raise TypeError(f"clip positions must be integers, got dtype {pos.dtype}")
        return pos.astype(np.int64, copy=False)

    # -- checks ------------------------------------------------------------------------------
    def check_tables(self, tables: KeypointArrays | None = None,
                     table_files: Sequence[str | os.PathLike | TableRef] | None = None,
                     path: str | os.PathLike | None = None) -> None:
        """Raise :class:`DataFormatError` when the index was built from other tables."""
        where = path if path is not None else "<clip index>"
        hint = "; the clip index is stale: rebuild it from the current tables"
        if table_files is not None:
            refs = table_refs(table_files)
            if refs != self.tables:
                raise DataFormatError(
                    where, f"metadata {_META}.tables",
                    "an index built from " + _describe_refs(refs),
                    _describe_refs(self.tables) + hint,
                )
        if tables is not None:
            if tables.num_frames != self.num_rows:
                raise DataFormatError(where, f"metadata {_META}.num_rows",
                                      f"{tables.num_frames} rows (the tables given)",
                                      f"{self.num_rows}{hint}")
            starts, lengths = tables.video_runs()
            digest = _layout_digest(tables.categories["video_id"], tables.codes["video_id"][starts], lengths)
            if digest != self.layout_digest:
                raise DataFormatError(where, f"metadata {_META}.layout_digest",
                                      f"the video layout of the tables given ({digest})",
                                      f"{self.layout_digest}{hint}")

    def check_config(self, clip_cfg: ClipConfig, path: str | os.PathLike | None = None) -> None:
        """Raise :class:`DataFormatError` when the index was built with other clip settings."""
        expected = _settings(clip_cfg)
        got = {"T": self.T, "strides": self.strides, **self.settings}
        if expected != got:
            diff = sorted(k for k in expected if expected[k] != got.get(k))
            raise DataFormatError(
                path if path is not None else "<clip index>", f"metadata {_META}.config ({', '.join(diff)})",
                json.dumps({k: expected[k] for k in diff}),
                json.dumps({k: got.get(k) for k in diff}) + "; rebuild the clip index with the current clips settings",
            )

    @property
    def fingerprint(self) -> str:
        """Digest of the clips and their tables: masks built for this index record it."""
        h = hashlib.sha256()
        h.update(json.dumps({"T": self.T, "layout": self.layout_digest, "n": len(self)}).encode())
        for a in (self.clip_id, self.video, self.start, self.length):
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.hexdigest()[:32]

    # -- storage -----------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        video_id = pa.DictionaryArray.from_arrays(pa.array(self.video.astype(np.int32)),
                                                  pa.array(list(self.video_names), pa.string()))
        split = pa.DictionaryArray.from_arrays(pa.array(self.split.astype(np.int32)),
                                               pa.array(list(SPLITS), pa.string()))
        meta = {
            "version": FORMAT_VERSION,
            "T": self.T,
            "strides": self.strides,
            "num_rows": self.num_rows,
            "layout_digest": self.layout_digest,
            "tables": [[r.name, r.num_rows] for r in self.tables],
            "video_names": list(self.video_names),
            "settings": self.settings,
        }
        return pa.table(
            {
                "clip_id": pa.array(self.clip_id.astype(np.int64)),
                "split": split,
                "video_id": video_id,
                "video": pa.array(self.video.astype(np.int32)),
                "start": pa.array(self.start.astype(np.int64)),
                "length": pa.array(self.length.astype(np.int64)),
            }
        ).replace_schema_metadata({_META.encode(): json.dumps(meta).encode()})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(self.to_arrow(), tmp, compression="zstd")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, tables: KeypointArrays | None = None,
             table_files: Sequence[str | os.PathLike | TableRef] | None = None,
             clip_cfg: ClipConfig | None = None) -> "ClipIndex":
        """Read an index; with ``tables``/``table_files``/``clip_cfg`` also check it is current."""
        try:
            t = pq.read_table(str(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataFormatError(path, "<file>", "a readable Parquet clip index", str(exc)) from exc
        raw = (t.schema.metadata or {}).get(_META.encode())
        if raw is None:
            raise DataFormatError(path, f"schema metadata {_META}", "a DualPose clip index", "no such metadata")
        meta = json.loads(raw)
        if meta.get("version") != FORMAT_VERSION:
            raise DataFormatError(path, f"metadata {_META}.version", str(FORMAT_VERSION), str(meta.get("version")))
        missing = {"clip_id", "split", "video", "start", "length"} - set(t.column_names)
        if missing:
            raise DataFormatError(path, ", ".join(sorted(missing)), "the columns of a clip index", "missing")
        split_col = t.column("split")
        if pa.types.is_dictionary(split_col.type):
            split_col = split_col.cast(pa.string())
        split_str = np.asarray(split_col.to_numpy(zero_copy_only=False), dtype=object)
        split = np.full(split_str.shape, -1, np.int8)
        for name, code in SPLIT_CODE.items():
            split[split_str == name] = code
        if (split < 0).any():
            raise DataFormatError(path, "split", f"one of {list(SPLITS)}", repr(split_str[np.argmax(split < 0)]))
        index = cls(
            clip_id=t.column("clip_id").to_numpy().astype(np.int64),
            split=split,
            video=t.column("video").to_numpy().astype(np.int32),
            start=t.column("start").to_numpy().astype(np.int64),
            length=t.column("length").to_numpy().astype(np.int64),
            T=int(meta["T"]),
            video_names=tuple(meta["video_names"]),
            strides={k: int(v) for k, v in meta["strides"].items()},
            num_rows=int(meta["num_rows"]),
            layout_digest=str(meta["layout_digest"]),
            tables=tuple(TableRef(str(n), int(r)) for n, r in meta["tables"]),
            settings=dict(meta.get("settings", {})),
        )
        if table_files is not None or tables is not None:
            index.check_tables(tables, table_files, path=path)
        if clip_cfg is not None:
            index.check_config(clip_cfg, path=path)
        return index


def _describe_refs(refs: Sequence[TableRef]) -> str:
    return "[" + ", ".join(f"{r.name} ({r.num_rows} rows)" for r in refs) + "]"


def _settings(clip_cfg: ClipConfig) -> dict:
    s = clip_cfg.splits
    return {
        "T": clip_cfg.length,
        "strides": {name: clip_cfg.stride(name) for name in SPLITS},
        "min_length": clip_cfg.min_length,
        "validation_subjects": sorted(s.validation_subjects),
        "validation_fraction": s.validation_fraction,
        "split_seed": s.seed,
    }


def resample_offsets(length: np.ndarray, T: int) -> np.ndarray:
    """(n, T) offsets ``round(i * (L - 1) / (T - 1))`` per source length L (ties to even), exact.

    For ``L == T`` this is ``arange(T)``; for ``L < T`` frames repeat and every one of the L
    source frames is used.
    """
    L = np.asarray(length, dtype=np.int64).reshape(-1, 1)
    i = np.arange(T, dtype=np.int64)[None, :]
    if T == 1:
        return np.zeros((L.shape[0], 1), np.int64)
    d = T - 1
    q, r = np.divmod(i * (L - 1), d)
    up = (2 * r > d) | ((2 * r == d) & (q % 2 == 1))
    return q + up


def assign_video_splits(tables: KeypointArrays, clip_cfg: ClipConfig,
                        run_starts: np.ndarray, run_lengths: np.ndarray) -> np.ndarray:
    """Split code (into SPLITS) of every video run. See the module docstring for the rule."""
    source = tables.codes["split"][run_starts]
    split_names = tables.categories["split"]
    for name in ("split", "subject", "action", "dataset", "camera_id"):
        codes = tables.codes[name]
        bad = codes != np.repeat(codes[run_starts], run_lengths)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataFormatError("<keypoint table>", name, "one value per video",
                                  f"two values in video {tables.strings('video_id')[row]!r}")
    known = {"train", "test"}
    odd = sorted({split_names[c] for c in np.unique(source).tolist()} - known)
    if odd:
        raise DataFormatError("<keypoint table>", "split", "train or test", ", ".join(map(repr, odd)))
    is_test = np.isin(source, [i for i, n in enumerate(split_names) if n == "test"])
    out = np.where(is_test, SPLIT_CODE["test"], SPLIT_CODE["train"]).astype(np.int8)
    train_runs = np.flatnonzero(~is_test)
    cfg = clip_cfg.splits
    if cfg.validation_subjects and cfg.validation_fraction > 0:
        raise ConfigError("clips.splits: name validation_subjects or set validation_fraction, not both")
    if cfg.validation_subjects:
        subjects = tables.categories["subject"]
        subj = tables.codes["subject"][run_starts[train_runs]]
        present = {subjects[c] for c in np.unique(subj).tolist()}
        missing = sorted(set(cfg.validation_subjects) - present)
        if missing:
            raise ConfigError(f"clips.splits.validation_subjects: {missing} not among the training "
                              f"subjects {sorted(present)}")
        wanted = [i for i, s in enumerate(subjects) if s in set(cfg.validation_subjects)]
        out[train_runs[np.isin(subj, wanted)]] = SPLIT_CODE["validation"]
    elif cfg.validation_fraction > 0 and train_runs.size:
        keys = recording_keys(tables, run_starts[train_runs])
        uniq, inverse = np.unique(keys, return_inverse=True)
        n_rec = uniq.size
        if n_rec >= 2:
            k = min(max(1, int(round(cfg.validation_fraction * n_rec))), n_rec - 1)
            rank = np.array([_stable_unit(cfg.seed, key) for key in uniq.tolist()], dtype=np.uint64)
            chosen = np.zeros(n_rec, bool)
            chosen[np.argsort(rank, kind="stable")[:k]] = True
            out[train_runs[chosen[inverse]]] = SPLIT_CODE["validation"]
    return out


def recording_keys(tables: KeypointArrays, run_starts: np.ndarray) -> np.ndarray:
    """Recording key ``dataset|subject|action|stem`` of the videos starting at these rows."""
    cat = tables.categories
    c = {n: tables.codes[n][run_starts] for n in ("dataset", "subject", "action", "video_id", "camera_id")}
    stems: dict[tuple[int, int], str] = {}
    for v, cam in set(zip(c["video_id"].tolist(), c["camera_id"].tolist())):
        stems[(v, cam)] = video_stem(cat["video_id"][v], cat["camera_id"][cam])
    keys = [
        "\x1f".join((cat["dataset"][d], cat["subject"][s], cat["action"][a], stems[(v, cam)]))
        for d, s, a, v, cam in zip(c["dataset"].tolist(), c["subject"].tolist(), c["action"].tolist(),
                                   c["video_id"].tolist(), c["camera_id"].tolist())
    ]
    return np.asarray(keys, dtype=object)


def build_clip_index(tables: KeypointArrays, clip_cfg: ClipConfig,
                     table_id: Sequence[str | os.PathLike | TableRef] | None = None) -> ClipIndex:
    """Windows of every video (see the module docstring), as a :class:`ClipIndex`.

    ``table_id``: the table files (or :class:`TableRef`) ``tables`` was read from, in order; they
    are recorded so that loading the index against other tables fails.
    """
    T = clip_cfg.length
    refs = table_refs(table_id) if table_id is not None else ()
    if refs and sum(r.num_rows for r in refs) != tables.num_frames:
        raise DataFormatError("<keypoint tables>", "table_id",
                              f"tables totalling {tables.num_frames} rows (the arrays given)",
                              _describe_refs(refs))
    run_starts, run_lengths = tables.video_runs()
    run_split = assign_video_splits(tables, clip_cfg, run_starts, run_lengths)
    stride = np.array([clip_cfg.stride(name) for name in SPLITS], np.int64)[run_split]

    keep = run_lengths >= clip_cfg.min_length
    extra = np.maximum(run_lengths - T, 0)  # room to slide
    n_clips = np.where(keep, -(-extra // stride) + 1, 0)  # ceil(extra / stride) + 1
    run_of_clip = np.repeat(np.arange(run_starts.size), n_clips)
    first_clip = np.cumsum(n_clips) - n_clips
    k = np.arange(run_of_clip.size, dtype=np.int64) - first_clip[run_of_clip]
    offset = np.minimum(k * stride[run_of_clip], extra[run_of_clip])

    video_codes = tables.codes["video_id"]
    return ClipIndex(
        clip_id=np.arange(run_of_clip.size, dtype=np.int64),
        split=run_split[run_of_clip].astype(np.int8),
        video=video_codes[run_starts[run_of_clip]].astype(np.int32),
        start=(run_starts[run_of_clip] + offset).astype(np.int64),
        length=np.minimum(run_lengths[run_of_clip], T).astype(np.int64),
        T=T,
        video_names=tuple(tables.categories["video_id"]),
        strides={name: clip_cfg.stride(name) for name in SPLITS},
        num_rows=tables.num_frames,
        layout_digest=_layout_digest(tables.categories["video_id"], video_codes[run_starts], run_lengths),
        tables=refs,
        settings={k: v for k, v in _settings(clip_cfg).items() if k not in ("T", "strides")},
    )


def frame_coverage(index: ClipIndex, num_rows: int, *, repeats: bool = False) -> np.ndarray:
    """(num_rows,) int64: how many clips cover each row.

    With ``repeats=True``, count occurrences instead (a resampled clip uses some rows several
    times): the divisor for averaging predictions scattered with ``np.add.at(sum, frame_rows, p)``.
    """
    if not repeats:
        ends = index.start + index.length
        delta = np.bincount(index.start, minlength=num_rows + 1) - np.bincount(ends, minlength=num_rows + 1)
        return np.cumsum(delta[:num_rows]).astype(np.int64)
    counts = np.zeros(num_rows, np.int64)
    chunk = max(1, (1 << 22) // max(index.T, 1))
    for lo in range(0, len(index), chunk):
        counts += np.bincount(index.frame_rows(slice(lo, lo + chunk)).ravel(), minlength=num_rows)
    return counts
