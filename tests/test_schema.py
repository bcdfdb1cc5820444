import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from dualpose.data.schema import FrameColumns, read_keypoint_table, write_keypoint_table
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17


def frames(n=12, videos=("b", "a"), with_3d=True, seed=0):
    rng = np.random.default_rng(seed)
    per = n // len(videos)
    vid = np.repeat(np.array(videos), per)
    frame = np.tile(np.arange(per)[::-1], len(videos))  # deliberately unsorted
    kp3d = rng.normal(size=(n, 17, 3)).astype(np.float32) * 300 + [0, 0, 5000] if with_3d else None
    return FrameColumns(dataset="toy", split="train", subject="S1", action="walk", video_id=vid,
                        camera_id="c0", frame=frame, fps=50, width=1000, height=1002,
                        kp2d=rng.uniform(0, 1000, (n, 17, 2)), conf=rng.uniform(0, 1, (n, 17)),
                        kp3d=kp3d, factor_2_5d=None if kp3d is None else kp3d[:, 0, 2] / 1145.0,
                        cam_intrinsics=np.arange(9, dtype=np.float32))


def test_round_trip_sorted_by_video_and_frame(tmp_path):
    f = frames()
    path = write_keypoint_table(f, tmp_path / "t.parquet")
    a = read_keypoint_table(path)
    assert a.kp2d.shape == (12, 17, 2) and a.kp2d.dtype == np.float32 and a.kp2d.flags.c_contiguous
    assert a.categories["video_id"] == ["a", "b"]
    starts, lengths = a.video_runs()
    assert starts.tolist() == [0, 6] and lengths.tolist() == [6, 6]
    assert a.frame[:6].tolist() == list(range(6))
    # the row of video "a", frame 0 is the last row of "a" in the input (frames were reversed)
    np.testing.assert_array_equal(a.kp2d[0], np.asarray(f.kp2d, np.float32)[11])
    assert a.height[0] == 1002 and a.has_3d.all()
    np.testing.assert_array_equal(a.cam_intrinsics[3], np.arange(9))
    meta = pq.read_schema(path).metadata
    assert meta[b"dualpose.skeleton"] == b"h36m17"
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    df = pl.read_parquet(path)
    assert df.schema["kp3d"] == pl.Array(pl.Float32, (17, 3))


def test_2d_only_tables_have_nan_3d(tmp_path):
    a = read_keypoint_table(write_keypoint_table(frames(with_3d=False), tmp_path / "t.parquet"))
    assert np.isnan(a.kp3d).all() and np.isnan(a.factor_2_5d).all() and not a.has_3d.any()


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(kp2d=np.zeros((12, 16, 2))), "kp2d"),
        (dict(conf=np.full((12, 17), 1.5)), "conf"),
        (dict(fps=0), "fps"),
        (dict(video_id=np.array(["a"] * 12), frame=np.zeros(12, int)), "frame"),
    ],
)
def test_bad_columns_name_the_field_and_write_nothing(tmp_path, change, field):
    f = frames()
    for k, v in change.items():
        setattr(f, k, v)
    target = tmp_path / "t.parquet"
    with pytest.raises(DataFormatError, match=f"toy.parquet: field '{field}'"):
        write_keypoint_table(f, target, source="toy.parquet")
    assert list(tmp_path.iterdir()) == []


def test_nan_2d_needs_zero_confidence(tmp_path):
    f = frames()
    f.kp2d = np.asarray(f.kp2d).copy()
    f.kp2d[3, 5] = np.nan
    with pytest.raises(DataFormatError, match="field 'kp2d'"):
        write_keypoint_table(f, tmp_path / "t.parquet")
    f.conf = np.asarray(f.conf).copy()
    f.conf[3, 5] = 0.0
    a = read_keypoint_table(write_keypoint_table(f, tmp_path / "t.parquet"))
    assert np.isnan(a.kp2d).sum() == 2


def test_several_tables_concatenate(tmp_path):
    p1 = write_keypoint_table(frames(videos=("a", "b")), tmp_path / "1.parquet")
    p2 = write_keypoint_table(frames(videos=("c", "d"), seed=1), tmp_path / "2.parquet")
    a = read_keypoint_table([p1, p2])
    assert a.num_frames == 24
    assert a.strings("video_id")[[0, 6, 12, 18]].tolist() == ["a", "b", "c", "d"]
    assert len(a.video_runs()[0]) == 4


def test_not_a_table(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1garbage")
    with pytest.raises(DataFormatError, match="x.parquet"):
        read_keypoint_table(p)
    assert H36M_17.num_joints == 17
