"""Whole-video prediction through windows (dualpose.eval.windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualpose.data.clips import resample_offsets
from dualpose.errors import DataFormatError
from dualpose.eval.windows import plan_windows, predict_sequences, predict_windows

T = 27
J = 17


def identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def position_in_window(batch: torch.Tensor) -> torch.Tensor:
    """Each output frame holds its position t in the window (B, T, 1)."""
    b, t = batch.shape[:2]
    return torch.arange(t, dtype=torch.float32).expand(b, t).unsqueeze(-1)


def sequences(lengths, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, J, channels)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("mode", ["average", "centre"])
@pytest.mark.parametrize("short", ["resample", "pad"])
def test_identity_predictor_returns_every_input_exactly(mode, short):
    # shorter than T, equal to T, longer, and lengths that are not a multiple of the stride
    seqs = sequences([1, 2, 5, T - 1, T, T + 1, 40, 100])
    out = predict_sequences(identity, seqs, T, stride=9, mode=mode, short=short, batch_size=5)
    assert isinstance(out, list) and len(out) == len(seqs)
    for got, want in zip(out, seqs):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))


def test_flat_array_with_video_runs_round_trips_and_leaves_gaps_nan():
    frames = sequences([60])[0]
    out = predict_sequences(identity, frames, T, stride=T, starts=[0, 20, 50], lengths=[15, 30, 8])
    covered = np.r_[0:15, 20:50, 50:58]
    np.testing.assert_array_equal(out[covered], frames[covered].astype(np.float64))
    assert np.isnan(out[np.r_[15:20, 58:60]]).all()
    # default: the whole array is one video
    np.testing.assert_array_equal(predict_sequences(identity, frames, T), frames.astype(np.float64))


def test_average_mode_windows_end_aligned_and_counts_overlaps():
    plan = plan_windows([0], [40], T, stride=9)
    assert plan.offset.tolist() == [0, 9, 13]  # 0, 9, then end-aligned at 40 - 27 = 13
    frames = np.zeros((40, J, 3), np.float32)
    sums, counts = predict_windows(position_in_window, frames, plan)
    expected = np.zeros(40)
    for start in (0, 9, 13):
        expected[start : start + T] += 1
    np.testing.assert_array_equal(counts, expected)
    assert counts[[0, 8, 9, 12, 13, 26, 27, 35, 36, 39]].tolist() == [1, 1, 2, 2, 3, 3, 2, 2, 1, 1]
    # frame 20 sits at positions 20, 11 and 7 of the three windows: their mean comes back
    out = predict_sequences(position_in_window, frames, T, stride=9)
    assert out[20, 0] == pytest.approx((20 + 11 + 7) / 3)
    assert out[39, 0] == T - 1


def test_short_videos_resample_like_the_clip_index_or_pad():
    plan = plan_windows([100], [10], T, short="resample")
    rows, weight = plan.indices(0, 1)
    np.testing.assert_array_equal(rows[0], 100 + resample_offsets(np.array([10]), T)[0])
    assert weight.all() and set(rows[0].tolist()) == set(range(100, 110))
    frames = np.zeros((10, J, 3), np.float32)
    resampled = predict_sequences(position_in_window, frames, T, short="resample")
    # frame 0 is read at the positions whose offset is 0, and their predictions are averaged
    positions_of_0 = np.flatnonzero(resample_offsets(np.array([10]), T)[0] == 0)
    assert resampled[0, 0] == pytest.approx(positions_of_0.mean())
    plan = plan_windows([100], [10], T, short="pad")
    rows, weight = plan.indices(0, 1)
    assert rows[0].tolist() == list(range(100, 110)) + [109] * (T - 10)
    assert weight[0].tolist() == [True] * 10 + [False] * (T - 10)
    padded = predict_sequences(position_in_window, frames, T, short="pad")
    np.testing.assert_array_equal(padded[:, 0], np.arange(10))  # padded copies are not averaged in


def test_windows_never_cross_video_boundaries():
    lengths = [30, 7, 50]
    seqs = [np.full((n, J, 3), float(v), np.float32) for v, n in enumerate(lengths)]

    def window_mean(batch: torch.Tensor) -> torch.Tensor:
        # every output frame holds the mean over its window: a window mixing videos would show it
        return batch.mean(dim=(1, 2, 3)).reshape(-1, 1, 1).expand(-1, batch.shape[1], 1)

    for mode in ("average", "centre"):
        out = predict_sequences(window_mean, seqs, T, stride=5, mode=mode, batch_size=3)
        for v, got in enumerate(out):
            np.testing.assert_array_equal(got, float(v))


def test_centre_mode_edge_pads_and_predicts_only_targets():
    plan = plan_windows([10], [6], 5, mode="centre")
    rows, weight = plan.indices(0, plan.num_windows)
    assert rows[0].tolist() == [10, 10, 10, 11, 12]  # frame 10 at the centre, edge-padded
    assert rows[-1].tolist() == [13, 14, 15, 15, 15]
    assert weight.sum(axis=1).tolist() == [1] * 6 and weight[:, 2].all()
    frames = sequences([20])[0]
    targets = np.zeros(20, bool)
    targets[[0, 7, 19]] = True
    out = predict_sequences(identity, frames, 9, mode="centre", targets=targets)
    np.testing.assert_array_equal(out[targets], frames[targets].astype(np.float64))
    assert np.isnan(out[~targets]).all()
    # per-video target masks for list input
    seqs = sequences([4, 6])
    out = predict_sequences(identity, seqs, 9, mode="centre", targets=[np.array([1, 0, 0, 1], bool), np.ones(6, bool)])
    assert np.isnan(out[0][1:3]).all() and np.array_equal(out[0][[0, 3]], seqs[0][[0, 3]].astype(np.float64))


def test_results_do_not_depend_on_the_batch_size():
    seqs = sequences([40, 13, 90])

    def context(batch: torch.Tensor) -> torch.Tensor:  # depends on the whole window
        return torch.cumsum(batch[..., :1], dim=1) / 10

    a = predict_sequences(context, seqs, T, stride=9, batch_size=1)
    b = predict_sequences(context, seqs, T, stride=9, batch_size=64)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12)


def test_predictor_may_return_numpy_and_progress_counts_windows():
    done = []
    out = predict_sequences(lambda b: b.numpy() * 2, sequences([40])[0], T, stride=9, batch_size=2,
                            progress=done.append)
    assert sum(done) == 3 and done == [2, 1]
    np.testing.assert_allclose(out, sequences([40])[0] * 2.0)


def test_bad_arguments_and_outputs_are_refused():
    frames = sequences([40])[0]
    with pytest.raises(ValueError, match=r"stride must be in \[1, T=27\]"):
        predict_sequences(identity, frames, T, stride=28)
    with pytest.raises(ValueError, match="stride"):
        predict_sequences(identity, frames, T, stride=0)
    with pytest.raises(DataFormatError) as exc:
        predict_sequences(identity, frames, T, starts=[0, 10], lengths=[20, 20])
    assert str(exc.value) == "<memory>: field 'starts/lengths': expected non-overlapping video runs"
    with pytest.raises(DataFormatError, match="runs inside the 40 rows"):
        predict_sequences(identity, frames, T, starts=[30], lengths=[20])
    with pytest.raises(DataFormatError) as exc:
        predict_sequences(lambda b: b[:, :-1], frames, T)
    assert str(exc.value) == (
        "<memory>: field 'predict output': expected shape (B, T, ...) with (B, T) = (2, 27), got shape (2, 26, 17, 3)"
    )
    with pytest.raises(ValueError, match="centre mode only"):
        predict_sequences(identity, frames, T, targets=np.ones(40, bool))


def test_reference_windows_do_not_overlap_and_drop_the_tail():
    """The references' Human3.6M test clips: non-overlapping T windows, tail frames unpredicted,
    videos shorter than T resampled."""
    plan = plan_windows([0, 100], [23, 4], window=5, stride=5, tails="drop")
    assert plan.offset.tolist() == [0, 5, 10, 15, 0]  # 4 whole windows of the 23 frames, then the short video
    assert plan.resampled.tolist() == [False] * 4 + [True]
    frames = np.arange(104, dtype=np.float64)[:, None, None] * np.ones((1, 2, 1))
    out = predict_sequences(lambda x: x, frames, 5, 5, starts=[0, 100], lengths=[23, 4], tails="drop")
    assert np.isnan(out[20:23]).all() and np.isfinite(out[:20]).all()  # frames 20-22: the dropped tail
    np.testing.assert_allclose(out[:20, 0, 0], np.arange(20))
    np.testing.assert_allclose(out[100:104, 0, 0], np.arange(100, 104))  # resampled and averaged back
    covered = predict_sequences(lambda x: x, frames, 5, 5, starts=[0, 100], lengths=[23, 4])
    assert np.isfinite(covered[:23]).all()
    with pytest.raises(ValueError, match="unknown tails policy"):
        plan_windows([0], [10], window=5, tails="trim")


@pytest.mark.parametrize("blend", ["uniform", "taper"])
def test_identity_predictor_is_exact_under_either_blend(blend):
    """Blend weights are normalised per frame: a predictor that returns its input comes back
    exactly, including videos shorter than T and ends covered by one window only."""
    seqs = sequences([2, T - 1, T, 40, 100])
    out = predict_sequences(identity, seqs, T, stride=9, blend=blend, batch_size=4)
    for got, want in zip(out, seqs):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_taper_weights_the_window_centre_and_removes_the_steps_of_uniform():
    """Each window predicts a constant (its own index): the uniform mean steps wherever a window
    starts or ends, the taper fades windows in and out, so the blended output changes by at most
    a small fraction of the gap between neighbouring windows from one frame to the next."""
    plan = plan_windows([0], [120], T, 9, blend="taper")
    w = plan.position_weights()
    assert w.shape == (T,) and w.min() > 0 and np.argmax(w) == T // 2
    np.testing.assert_allclose(w, w[::-1])  # symmetric
    np.testing.assert_allclose(plan_windows([0], [120], T, 9).position_weights(), np.ones(T))

    calls = iter(range(1000))

    def window_index(batch: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor([float(next(calls)) for _ in range(batch.shape[0])])
        return idx[:, None, None].expand(batch.shape[0], batch.shape[1], 1)

    frames = sequences([120], channels=1)
    uniform = predict_sequences(window_index, frames, T, stride=9, blend="uniform", batch_size=1)[0][:, 0]
    calls = iter(range(1000))
    taper = predict_sequences(window_index, frames, T, stride=9, blend="taper", batch_size=1)[0][:, 0]
    # windows every 9 frames differ by 1, so the smooth answer rises by 1/9 per frame. The uniform
    # mean of 3 windows stays flat, then jumps by 1 where one window leaves and the next enters;
    # the taper's largest step is under twice the smooth slope.
    du, dt = np.abs(np.diff(uniform)), np.abs(np.diff(taper))
    assert du[9:90].max() == pytest.approx(1.0)
    assert (du[9:90] < 1e-9).mean() > 0.8  # flat most of the time
    assert dt.max() < 0.2 and dt[18:90].min() > 0.05  # always moving, never jumping
    # both stay inside the range of the windows that cover a frame
    assert uniform.min() >= 0 and taper.max() <= plan.num_windows - 1


def test_taper_changes_nothing_without_overlap_and_is_refused_when_unknown():
    seqs = sequences([T * 3])
    a = predict_sequences(position_in_window, seqs, T, stride=T, blend="uniform")[0]
    b = predict_sequences(position_in_window, seqs, T, stride=T, blend="taper")[0]
    np.testing.assert_allclose(a, b)
    with pytest.raises(ValueError, match="unknown window blend 'hann'"):
        plan_windows([0], [40], T, 9, blend="hann")
