"""Clip index: windows, resampling, coverage, splits without leakage, storage and staleness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualpose.config import ClipConfig, SplitConfig
from dualpose.data.clips import (
    SPLITS,
    ClipIndex,
    TableRef,
    build_clip_index,
    frame_coverage,
    resample_offsets,
    video_stem,
)
from dualpose.data.schema import FrameColumns, read_keypoint_table, write_keypoint_table
from dualpose.errors import ConfigError, DataFormatError
from dualpose.skeleton import H36M_17


def make_frames(videos: list[dict], seed: int = 0) -> FrameColumns:
    """videos: dicts with video_id, n and optional split, subject, action, camera_id, dataset."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("dataset", "split", "subject", "action", "video_id", "camera_id")}
    frame = []
    for v in videos:
        n = v["n"]
        for k, default in (("dataset", "toy"), ("split", "train"), ("subject", "S1"), ("action", "walk"),
                           ("camera_id", "c0")):
            cols[k] += [v.get(k, default)] * n
        cols["video_id"] += [v["video_id"]] * n
        frame.append(np.arange(n))
    n_all = sum(v["n"] for v in videos)
    J = H36M_17.num_joints
    return FrameColumns(
        **{k: np.array(x) for k, x in cols.items()},
        frame=np.concatenate(frame),
        fps=50.0, width=1000, height=1000,
        kp2d=rng.uniform(0, 1000, (n_all, J, 2)).astype(np.float32),
        conf=np.ones((n_all, J), np.float32),
    )


def write_read(tmp_path: Path, videos: list[dict], name: str = "toy/train.parquet"):
    path = tmp_path / name
    write_keypoint_table(make_frames(videos), path)
    return read_keypoint_table(path), path


def video_rows(tables, video_id: str) -> tuple[int, int]:
    """(first row, frames) of a video in the table, found independently of the clip code."""
    rows = np.flatnonzero(tables.strings("video_id") == video_id)
    assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
    return int(rows[0]), int(rows.size)


# -- windows --------------------------------------------------------------------------------
def test_clip_counts_and_window_starts_match_hand_computation(tmp_path):
    videos = [
        dict(video_id="a", n=20),  # train, stride 3: 0 3 6 9 then end-aligned 11
        dict(video_id="b", n=9),  # exactly T: one clip
        dict(video_id="c", n=5),  # short: one resampled clip of L=5
        dict(video_id="d", n=2),  # shorter than min_length: dropped
        dict(video_id="e", n=30, split="test", subject="S9"),  # stride 9: 0 9 18 then 21
        dict(video_id="f", n=27, split="test", subject="S9"),  # 0 9 18, no extra window
    ]
    tables, _ = write_read(tmp_path, videos)
    cfg = ClipConfig(length=9, min_length=3)
    assert (cfg.stride("train"), cfg.stride("test")) == (3, 9)
    index = build_clip_index(tables, cfg)
    expected = {"a": [0, 3, 6, 9, 11], "b": [0], "c": [0], "d": [], "e": [0, 9, 18, 21], "f": [0, 9, 18]}
    vids = index.video_ids()
    for vid, offsets in expected.items():
        first, n = video_rows(tables, vid)
        mine = vids == vid
        assert (index.start[mine] - first).tolist() == offsets, vid
        assert index.length[mine].tolist() == [min(n, 9)] * len(offsets), vid
    assert len(index) == 14
    assert index.counts() == {"train": 7, "validation": 0, "test": 7}
    assert np.array_equal(index.clip_id, np.arange(14))
    assert index.strides == {"train": 3, "validation": 9, "test": 9}


def test_every_frame_covered_last_window_end_aligned_and_no_clip_crosses_a_video(tmp_path):
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 120, size=25)
    videos = [dict(video_id=f"v{i:02d}", n=int(n), split="test" if i % 4 == 0 else "train")
              for i, n in enumerate(lengths)]
    tables, _ = write_read(tmp_path, videos)
    cfg = ClipConfig(length=27, min_length=5)
    index = build_clip_index(tables, cfg)
    rows = index.frame_rows()
    assert rows.shape == (len(index), 27) and rows.dtype == np.int64
    video_codes = tables.codes["video_id"]
    # every frame of a clip belongs to the clip's video
    assert (video_codes[rows] == index.video[:, None]).all()
    coverage = frame_coverage(index, tables.num_frames)
    for vid in tables.categories["video_id"]:
        first, n = video_rows(tables, vid)
        cov = coverage[first:first + n]
        mine = index.video_ids() == vid
        if n < 5:
            assert not mine.any() and (cov == 0).all()
            continue
        assert (cov >= 1).all(), vid
        ends = index.start[mine] + index.length[mine]
        assert ends.max() == first + n  # last window ends at the video's end
        assert index.start[mine].min() == first
    # the index's frames are exactly the rows the coverage says
    assert np.array_equal(np.unique(rows), np.flatnonzero(coverage))


def test_frame_coverage_counts_overlapping_windows(tmp_path):
    tables, _ = write_read(tmp_path, [dict(video_id="a", n=11)])
    index = build_clip_index(tables, ClipConfig(length=6, train_stride=2))  # starts 0 2 4 5
    assert (index.start.tolist()) == [0, 2, 4, 5]
    assert frame_coverage(index, 11).tolist() == [1, 1, 2, 2, 3, 4, 3, 3, 2, 2, 1]
    assert np.array_equal(frame_coverage(index, 11, repeats=True), frame_coverage(index, 11))


def test_short_video_is_resampled_with_exact_indices(tmp_path):
    tables, _ = write_read(tmp_path, [dict(video_id="a", n=30), dict(video_id="s", n=4)])
    index = build_clip_index(tables, ClipConfig(length=7, min_length=2))
    short = np.flatnonzero(index.video_ids() == "s")
    assert short.size == 1 and index.length[short[0]] == 4
    first, _ = video_rows(tables, "s")
    rows = index.frame_rows(short[0])
    # round(linspace(0, 3, 7)) = round(0, .5, 1, 1.5, 2, 2.5, 3), ties to even
    assert (rows - first).tolist() == [[0, 0, 1, 2, 2, 2, 3]]
    assert tables.frame[rows[0]].tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert np.array_equal(tables.kp2d[rows], tables.kp2d[first + np.array([[0, 0, 1, 2, 2, 2, 3]])])
    # every source frame used once per clip for clips, repeats counted when asked
    assert frame_coverage(index, tables.num_frames)[first:first + 4].tolist() == [1, 1, 1, 1]
    assert frame_coverage(index, tables.num_frames, repeats=True)[first:first + 4].tolist() == [2, 1, 3, 1]


def test_resample_offsets_known_values():
    assert resample_offsets(np.array([5, 5, 9, 1]), 9).tolist() == [
        [0, 0, 1, 2, 2, 2, 3, 4, 4],  # i/2, ties to even
        [0, 0, 1, 2, 2, 2, 3, 4, 4],
        list(range(9)),  # L == T: identity
        [0] * 9,
    ]
    assert resample_offsets(np.array([5]), 7).tolist() == [[0, 1, 1, 2, 3, 3, 4]]  # i*2/3, no ties
    assert resample_offsets(np.array([3]), 1).tolist() == [[0]]


def test_gather_keypoints_with_one_fancy_index(tmp_path):
    tables, _ = write_read(tmp_path, [dict(video_id="a", n=50), dict(video_id="b", n=31)])
    index = build_clip_index(tables, ClipConfig(length=10))
    batch = tables.kp2d[index.frame_rows(np.array([0, 3, len(index) - 1]))]
    assert batch.shape == (3, 10, H36M_17.num_joints, 2)
    last = len(index) - 1
    s = int(index.start[last])
    assert np.array_equal(batch[2], tables.kp2d[s:s + 10])


# -- splits ---------------------------------------------------------------------------------
def subject_videos() -> list[dict]:
    videos = []
    for subject, split in (("S1", "train"), ("S5", "train"), ("S6", "train"), ("S9", "test")):
        for act in ("walk", "eat"):
            for cam in ("54138969", "55011271"):
                videos.append(dict(video_id=f"{subject}_{act}_{cam}", n=40, subject=subject, action=act,
                                   camera_id=cam, split=split))
    return videos


def test_split_by_validation_subject(tmp_path):
    tables, _ = write_read(tmp_path, subject_videos())
    cfg = ClipConfig(length=10, splits=SplitConfig(validation_subjects=["S6"]))
    index = build_clip_index(tables, cfg)
    subject = tables.strings("subject")[index.start]
    split = index.split_names()
    assert set(split[subject == "S6"]) == {"validation"}
    assert set(split[subject == "S9"]) == {"test"}
    assert set(split[np.isin(subject, ["S1", "S5"])]) == {"train"}
    # validation and test use the test stride T: 0 10 20 30 per 40-frame video; train T//3 = 3
    assert index.select("validation").start.size == 4 * 4
    assert index.select("train").start.size == 8 * 11
    sel = index.select(["validation", "test"])
    assert set(sel.split_names()) == {"validation", "test"}
    assert np.array_equal(sel.clip_id, index.clip_id[np.isin(split, ["validation", "test"])])


def test_split_settings_errors(tmp_path):
    tables, _ = write_read(tmp_path, subject_videos())
    with pytest.raises(ConfigError, match=r"\['S7'\] not among the training subjects \['S1', 'S5', 'S6'\]"):
        build_clip_index(tables, ClipConfig(splits=SplitConfig(validation_subjects=["S7"])))
    with pytest.raises(ConfigError, match="not both"):
        build_clip_index(tables, ClipConfig(splits=SplitConfig(validation_subjects=["S1"],
                                                               validation_fraction=0.2)))


def recording_videos() -> tuple[list[dict], dict[str, str]]:
    """Multi-camera recordings in three naming styles; returns videos and video -> true recording."""
    videos, truth = [], {}
    cams = ("54138969", "55011271", "58860488", "60457274")
    for s in (1, 5, 6):
        for act in (2, 3):
            for sub in (1, 2):
                rec = f"h36m-S{s}-{act}-{sub}"
                for c, cam in enumerate(cams):  # MotionBERT pickle style: camera serial not in the id
                    vid = f"s_{s:02d}_act_{act:02d}_subact_{sub:02d}_ca_{c + 1:02d}"
                    videos.append(dict(video_id=vid, n=30, subject=f"S{s}", action=f"act{act}", camera_id=cam))
                    truth[vid] = rec
                for cam in cams:  # VideoPose3D style: subject/action/camera
                    vid = f"S{s}/Act {act}.{sub}/{cam}"
                    videos.append(dict(video_id=vid, n=25, subject=f"S{s}", action=f"Act {act}", camera_id=cam,
                                       dataset="vp3d"))
                    truth[vid] = "vp3d-" + rec
        for seq in (1, 2):  # 3DHP style: "S1 Seq2 cam4" with camera "4"
            for cam in (0, 1, 2, 4, 8):
                vid = f"S{s} Seq{seq} cam{cam}"
                videos.append(dict(video_id=vid, n=20, subject=f"S{s}", action=f"Seq{seq}", camera_id=str(cam),
                                   dataset="3dhp"))
                truth[vid] = f"3dhp-S{s}-{seq}"
    return videos, truth


def test_video_stem_removes_only_the_camera():
    assert video_stem("s_09_act_05_subact_02_ca_01", "54138969") == "s_09_act_05_subact_02"
    assert video_stem("s_09_act_05_subact_02_ca_01", "1") == "s_09_act_05_subact_02"
    assert video_stem("s_09_act_05_subact_02_ca_01", "ca_01") == "s_09_act_05_subact_02"
    assert video_stem("S1/Walking 1/54138969", "54138969") == "S1/Walking 1"
    assert video_stem("S1 Seq10 cam1", "1") == "S1 Seq10"
    assert video_stem("walking/walking_1", "virtual_0") == "walking/walking_1"
    assert video_stem("overview_3", "x") == "overview_3"


@pytest.mark.parametrize("fraction,seed", [(0.25, 0), (0.25, 1), (0.5, 7)])
def test_split_by_fraction_keeps_every_recording_in_one_split(tmp_path, fraction, seed):
    videos, truth = recording_videos()
    tables, _ = write_read(tmp_path, videos)
    cfg = ClipConfig(length=10, splits=SplitConfig(validation_fraction=fraction, seed=seed))
    index = build_clip_index(tables, cfg)
    rec = np.array([truth[v] for v in index.video_ids()])
    split = index.split_names()
    recordings = sorted(set(truth.values()))
    splits_of = {r: set(split[rec == r]) for r in recordings}
    assert all(len(s) == 1 for s in splits_of.values()), "a recording leaks across splits"
    n_val = sum(s == {"validation"} for s in splits_of.values())
    assert n_val == round(fraction * len(recordings))
    again = build_clip_index(tables, cfg)
    assert np.array_equal(again.split, index.split)


def test_split_by_fraction_depends_on_the_seed(tmp_path):
    videos, _ = recording_videos()
    tables, _ = write_read(tmp_path, videos)
    splits = [build_clip_index(tables, ClipConfig(splits=SplitConfig(validation_fraction=0.3, seed=s))).split
              for s in (0, 1, 2)]
    assert not (np.array_equal(splits[0], splits[1]) and np.array_equal(splits[1], splits[2]))


def test_unknown_source_split_is_refused(tmp_path):
    tables, _ = write_read(tmp_path, [dict(video_id="a", n=30, split="dev")])
    with pytest.raises(DataFormatError, match=r"field 'split': expected train or test, got 'dev'"):
        build_clip_index(tables, ClipConfig())


# -- storage --------------------------------------------------------------------------------
def test_save_load_round_trip_and_stale_index(tmp_path):
    videos = [dict(video_id="a", n=40), dict(video_id="b", n=7), dict(video_id="t", n=33, split="test")]
    tables, table_path = write_read(tmp_path, videos)
    cfg = ClipConfig(length=9, min_length=3)
    index = build_clip_index(tables, cfg, table_id=[table_path])
    assert index.tables == (TableRef("toy/train.parquet", 80),)
    path = index.save(tmp_path / "clips" / "index.parquet")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    loaded = ClipIndex.load(path, tables=tables, table_files=[table_path], clip_cfg=cfg)
    for name in ("clip_id", "split", "video", "start", "length"):
        assert np.array_equal(getattr(loaded, name), getattr(index, name)), name
    assert (loaded.T, loaded.strides, loaded.video_names) == (index.T, index.strides, index.video_names)
    assert np.array_equal(loaded.frame_rows(), index.frame_rows())
    assert loaded.fingerprint == index.fingerprint

    # the table changes: one more frame in video "b"
    videos[1]["n"] = 8
    write_keypoint_table(make_frames(videos), table_path)
    new_tables = read_keypoint_table(table_path)
    with pytest.raises(DataFormatError, match=r"toy/train.parquet \(81 rows\).*got \[toy/train.parquet "
                                              r"\(80 rows\)\]; the clip index is stale"):
        ClipIndex.load(path, table_files=[table_path])
    with pytest.raises(DataFormatError, match=r"num_rows': expected 81 rows .*got 80; the clip index is stale"):
        ClipIndex.load(path, tables=new_tables)
    # same row count, other layout: detected by the digest
    videos[1]["n"], videos[0]["n"] = 6, 41  # still 80 rows
    write_keypoint_table(make_frames(videos), table_path)
    with pytest.raises(DataFormatError, match=r"layout_digest.*the clip index is stale"):
        ClipIndex.load(path, tables=read_keypoint_table(table_path))
    with pytest.raises(DataFormatError, match=r"config \(T, strides\)"):
        ClipIndex.load(path, clip_cfg=ClipConfig(length=10, min_length=3))


def test_table_id_must_match_the_arrays(tmp_path):
    tables, _ = write_read(tmp_path, [dict(video_id="a", n=40)])
    with pytest.raises(DataFormatError, match=r"field 'table_id': expected tables totalling 40 rows"):
        build_clip_index(tables, ClipConfig(), table_id=[TableRef("toy/train.parquet", 39)])


def test_load_refuses_a_file_that_is_not_a_clip_index(tmp_path):
    _, table_path = write_read(tmp_path, [dict(video_id="a", n=40)])
    with pytest.raises(DataFormatError, match=r"schema metadata dualpose.clips': expected a DualPose clip index"):
        ClipIndex.load(table_path)


def test_splits_constant():
    assert SPLITS == ("train", "validation", "test")
