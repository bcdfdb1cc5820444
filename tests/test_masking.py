"""Pretraining masks: equal count per frame, contiguous spans, reproducibility, ratios, storage."""

from __future__ import annotations

import numpy as np
import pytest

from dualpose.config import ClipConfig, MaskingConfig
from dualpose.data.clips import build_clip_index
from dualpose.data.masking import (
    build_masked_table,
    generate_masks,
    mask_bytes,
    pack_masks,
    read_masked_table,
    unpack_masks,
    write_masked_table,
)
from dualpose.data.schema import FrameColumns, to_arrow, read_keypoint_table, write_keypoint_table
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17

J = H36M_17.num_joints


def runs(mask_row: np.ndarray) -> list[int]:
    """Lengths of the maximal runs of True in a 1D boolean array."""
    padded = np.r_[False, mask_row, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


@pytest.mark.parametrize("p,span", [(0.7, 3), (0.6, 1), (0.8, 5), (0.65, 2), (1.0, 4)])
def test_same_count_in_every_frame_and_contiguous_spans(p, span):
    cfg = MaskingConfig(probability=p, span=span)
    masks = generate_masks(200, 27, J, cfg, np.arange(200), 0)
    assert masks.shape == (200, 27, J) and masks.dtype == bool
    count = masks.sum(-1)
    assert (count == count[:, :1]).all()
    assert count.min() > 0
    for sample in masks[:50]:
        k = int(sample[0].sum())
        blocks = -(-k // span)
        for frame in sample:
            lengths = runs(frame)
            assert sum(lengths) == k
            assert len(lengths) <= blocks  # masked joints come in at most ceil(K/M) pieces
            assert sum(length % span != 0 for length in lengths) <= 1  # one partial block at most
            if k >= span:
                assert max(lengths) >= span


def test_masks_are_reproducible_and_independent_of_order_and_batching():
    cfg = MaskingConfig()
    ids = np.array([11, 3, 7, 42, 5])
    all_at_once = generate_masks(5, 27, J, cfg, ids, 1)
    reversed_order = generate_masks(5, 27, J, cfg, ids[::-1], 1)[::-1]
    one_by_one = np.concatenate([generate_masks(1, 27, J, cfg, [i], 1) for i in ids])
    assert np.array_equal(all_at_once, reversed_order)
    assert np.array_equal(all_at_once, one_by_one)
    other_seed = generate_masks(5, 27, J, MaskingConfig(seed=1), ids, 1)
    assert not np.array_equal(all_at_once, other_seed)


def test_views_and_clips_get_different_masks():
    cfg = MaskingConfig()
    ids = np.arange(100)
    v0 = generate_masks(100, 27, J, cfg, ids, 0)
    v1 = generate_masks(100, 27, J, cfg, ids, 1)
    per_clip_equal = (v0 == v1).all(axis=(1, 2))
    assert not per_clip_equal.any()
    mixed = generate_masks(100, 27, J, cfg, ids, np.tile([0, 1], 50))
    assert np.array_equal(mixed[::2], v0[::2]) and np.array_equal(mixed[1::2], v1[1::2])
    assert not (v0[0] == v0[1]).all()


def test_effective_ratio_for_default_parameters_is_in_the_published_band():
    cfg = MaskingConfig()
    assert (cfg.probability, cfg.span, cfg.frame_ratio) == (0.7, 3, 0.0)
    T = ClipConfig().length
    masks = generate_masks(3000, T, J, cfg, np.arange(3000), 0)
    ratio = masks.mean()
    assert 0.35 <= ratio <= 0.50, ratio
    # frames of one sample share the count; samples differ
    per_sample = masks[:, 0].sum(-1)
    assert per_sample.min() < per_sample.max()


def test_span_one_never_overlaps_so_the_ratio_is_about_p():
    cfg = MaskingConfig(probability=0.7, span=1)
    ratio = generate_masks(2000, 27, J, cfg, np.arange(2000), 0).mean()
    assert abs(ratio - 0.65) < 0.03, ratio  # floor(0.7 * 17 + u) = 11 or 12; min over 27 frames


def test_zero_probability_masks_nothing():
    assert not generate_masks(10, 27, J, MaskingConfig(probability=0.0), np.arange(10), 0).any()


def test_frame_masking_masks_whole_frames_at_the_given_ratio():
    cfg = MaskingConfig(frame_ratio=0.2)
    T = 27
    masks = generate_masks(300, T, J, cfg, np.arange(300), 0)
    whole = masks.all(axis=-1)
    assert (whole.sum(-1) == round(0.2 * T)).all()  # 5 whole frames per sample
    count = masks.sum(-1)
    partial = np.where(whole, -1, count)
    k = partial.max(-1, keepdims=True)
    assert ((partial == k) | whole).all()  # the other frames share one count
    chosen = whole.mean(0)
    assert 0.12 < chosen.min() and chosen.max() < 0.3  # every frame position is chosen alike
    without = generate_masks(300, T, J, MaskingConfig(), np.arange(300), 0)
    assert np.array_equal(masks[~whole], without[~whole])  # frame masking leaves the rest as it was


def test_pack_unpack_round_trip_with_a_partial_last_byte():
    rng = np.random.default_rng(0)
    masks = rng.random((13, 27, J)) < 0.4
    assert 27 * J % 8 != 0
    packed = pack_masks(masks)
    assert packed.shape == (13, mask_bytes(27, J)) == (13, 58)
    assert np.array_equal(unpack_masks(packed, 27, J), masks)


def small_index(tmp_path, T=9):
    n = [30, 12, 5, 20]
    rng = np.random.default_rng(0)
    frames = FrameColumns(
        dataset="toy", split=np.repeat(["train", "train", "train", "test"], n), subject="S1", action="walk",
        video_id=np.repeat(["a", "b", "c", "d"], n), camera_id="c0", frame=np.concatenate([np.arange(k) for k in n]),
        fps=50.0, width=1000, height=1000,
        kp2d=rng.uniform(0, 1000, (sum(n), J, 2)).astype(np.float32), conf=np.ones((sum(n), J), np.float32),
    )
    path = tmp_path / "toy" / "train.parquet"
    write_keypoint_table(to_arrow(frames), path)
    return build_clip_index(read_keypoint_table(path), ClipConfig(length=T, min_length=2))


def test_masked_table_round_trip_and_lookup(tmp_path):
    index = small_index(tmp_path).select("train")
    cfg = MaskingConfig(views=3, frame_ratio=0.1)
    table = build_masked_table(index, cfg, J)
    assert table.num_rows == 3 * len(index)
    assert str(table.schema.field("mask").type) == f"fixed_size_binary[{mask_bytes(9, J)}]"
    path = write_masked_table(table, tmp_path / "masks" / "train.parquet")
    masked = read_masked_table(path, T=9, num_joints=J, cfg=cfg, index=index)
    assert len(masked) == 3 * len(index)
    expected = generate_masks(len(index), 9, J, cfg, index.clip_id, 2)
    assert np.array_equal(masked.for_clips(index.clip_id, 2), expected)
    rows = masked.rows_for(index.clip_id[::-1], 1)
    assert np.array_equal(masked.clip_id[rows], index.clip_id[::-1]) and (masked.view[rows] == 1).all()
    all_masks = masked.masks()
    assert np.allclose(masked.masked_ratio, all_masks.mean(axis=(1, 2)))
    assert np.array_equal(masked.masks(4)[0], all_masks[4])
    with pytest.raises(KeyError, match=r"no mask for clip \d+ view 3"):
        masked.for_clips(index.clip_id[:2], 3)
    with pytest.raises(KeyError, match="no mask for clip 99999 view 0"):
        masked.for_clips([99999], 0)


def test_masked_table_metadata_is_checked_on_load(tmp_path):
    full = small_index(tmp_path)
    index = full.select("train")
    cfg = MaskingConfig()
    path = write_masked_table(build_masked_table(index, cfg, J), tmp_path / "m.parquet")
    with pytest.raises(DataFormatError, match=r"metadata dualpose.masks.T': expected clips of T=27 frames, "
                                              r"got T=9; rebuild the masked inputs"):
        read_masked_table(path, T=27)
    with pytest.raises(DataFormatError, match=r"masks.J': expected 16 joints, got 17"):
        read_masked_table(path, num_joints=16)
    with pytest.raises(DataFormatError, match=r"config \(probability, span\)': expected "
                                              r"\{\"probability\": 0.6, \"span\": 2\}, got "
                                              r"\{\"probability\": 0.7, \"span\": 3\}"):
        read_masked_table(path, cfg=MaskingConfig(probability=0.6, span=2))
    with pytest.raises(DataFormatError, match=r"masks.clip_index'"):
        read_masked_table(path, index=full)
    with pytest.raises(DataFormatError, match=r"schema metadata dualpose.masks"):
        read_masked_table(tmp_path / "toy" / "train.parquet")


def test_every_epoch_draws_new_masks_from_the_recorded_plan(tmp_path):
    """Epoch 0 reads the materialised table; later epochs draw new streams of the same plan, so no
    clip sees one mask twice in a run, and a rerun sees the same masks."""
    index = small_index(tmp_path).select("train")
    cfg = MaskingConfig(views=2)
    path = write_masked_table(build_masked_table(index, cfg, J), tmp_path / "m.parquet")
    masked = read_masked_table(path, T=9, num_joints=J, cfg=cfg)
    ids = index.clip_id
    assert np.array_equal(masked.for_epoch(ids, 1, 0), masked.for_clips(ids, 1))
    seen = np.stack([masked.for_epoch(ids, v, e) for e in range(4) for v in range(2)], axis=1)  # (n, 8, T, J)
    flat = seen.reshape(len(ids), 8, -1)
    for clip in flat:
        assert len({m.tobytes() for m in clip}) == 8  # 4 epochs x 2 views: all different
    assert np.array_equal(masked.for_epoch(ids, 0, 3), generate_masks(len(ids), 9, J, cfg, ids, 3 * 2 + 0))
    assert np.array_equal(masked.for_epoch(ids, 1, 2), masked.for_epoch(ids, 1, 2))  # reproducible
    # the same count of masked joints in every frame, as the table's masks
    later = masked.for_epoch(ids, 0, 5)
    assert (later.sum(-1) == later.sum(-1)[:, :1]).all()
    with pytest.raises(ValueError, match=r"views must be in \[0, 2\)"):
        masked.for_epoch(ids, 2, 1)
