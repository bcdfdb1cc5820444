"""Protocol metrics on hand-computed cases (dualpose.eval.metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dualpose.errors import DataFormatError
from dualpose.eval import metrics as m
from dualpose.skeleton import H36M_17

J = H36M_17.num_joints
CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu"


def random_poses(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=300.0, size=(n, J, 3))


def random_rotations(n: int, seed: int = 1) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, 3, 3)))
    return q * np.sign(np.linalg.det(q))[:, None, None]  # proper rotations, det +1


def similarity(poses: np.ndarray, seed: int = 2) -> np.ndarray:
    """Rotate, scale and translate every frame differently."""
    rng = np.random.default_rng(seed)
    n = poses.shape[0]
    rot = random_rotations(n, seed)
    scale = rng.uniform(0.5, 3.0, size=(n, 1, 1))
    shift = rng.normal(scale=500.0, size=(n, 1, 3))
    return scale * np.einsum("nij,nkj->nki", rot, poses) + shift


# --------------------------------------------------------------------------- positional errors


def test_mpjpe_of_a_known_offset_is_its_length():
    gt = random_poses(4)
    err = m.mpjpe(gt + np.array([3.0, 4.0, 0.0]), gt)
    assert err.shape == (4, J)
    np.testing.assert_allclose(err, 5.0)


def test_root_relative_puts_the_root_at_the_origin_and_keeps_offsets():
    poses = random_poses(3)
    rel = m.root_relative(poses, root=0)
    np.testing.assert_allclose(rel[:, 0], 0.0)
    np.testing.assert_allclose(rel[:, 5] - rel[:, 2], poses[:, 5] - poses[:, 2])


def test_shape_mismatch_names_the_field():
    with pytest.raises(DataFormatError) as exc:
        m.mpjpe(np.zeros((2, 16, 3)), np.zeros((2, 17, 3)))
    assert str(exc.value) == "<memory>: field 'pred': expected the shape of gt (2, 17, 3), got shape (2, 16, 3)"


def test_p_mpjpe_is_zero_for_a_rotated_scaled_translated_copy():
    gt = random_poses(200)
    pred = similarity(gt)
    assert m.mpjpe(pred, gt).mean() > 100.0
    assert m.p_mpjpe(pred, gt).max() < 1e-8


def test_p_mpjpe_does_not_align_a_mirror_image():
    gt = random_poses(50)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    # an orthogonal Procrustes that may reflect would map the mirror image onto gt exactly ...
    g0 = gt - gt.mean(1, keepdims=True)
    p0 = mirrored - mirrored.mean(1, keepdims=True)
    u, _, vt = np.linalg.svd(np.einsum("nji,njk->nik", g0, p0))
    with_reflection = np.einsum("njk,nkl->njl", p0, np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2))
    assert np.abs(with_reflection - g0).max() < 1e-8
    # ... ours only rotates, so the mirrored (non-planar) pose keeps a large error
    assert m.p_mpjpe(mirrored, gt).mean() > 50.0
    assert m.p_mpjpe(similarity(mirrored), gt).mean() > 50.0


def test_procrustes_is_optimal_and_batched_over_leading_axes():
    rng = np.random.default_rng(3)
    gt = random_poses(30)
    pred = gt + rng.normal(scale=80.0, size=gt.shape)
    aligned = m.procrustes_align(pred, gt)
    # the identity is one candidate similarity: the optimum is never worse (in squared error)
    assert (((aligned - gt) ** 2).sum(axis=(1, 2)) <= ((pred - gt) ** 2).sum(axis=(1, 2)) + 1e-9).all()
    # nor is a slightly perturbed similarity of the optimum
    rot = random_rotations(1, seed=9)[0]
    small = np.eye(3) + 0.05 * (rot - np.eye(3))
    u, _, vt = np.linalg.svd(small)
    near = (aligned - aligned.mean(1, keepdims=True)) @ (u @ vt) * 1.01 + gt.mean(1, keepdims=True)
    assert (((aligned - gt) ** 2).sum(axis=(1, 2)) <= ((near - gt) ** 2).sum(axis=(1, 2))).all()
    np.testing.assert_allclose(m.procrustes_align(pred.reshape(5, 6, J, 3), gt.reshape(5, 6, J, 3)),
                               aligned.reshape(5, 6, J, 3))


def test_procrustes_of_a_constant_prediction_is_the_gt_centroid():
    gt = random_poses(2)
    aligned = m.procrustes_align(np.zeros_like(gt), gt)
    np.testing.assert_allclose(aligned, np.broadcast_to(gt.mean(1, keepdims=True), gt.shape))


def test_n_mpjpe_removes_a_known_scale_and_only_scale():
    gt = random_poses(10)
    assert m.n_mpjpe(2.5 * gt, gt).max() < 1e-9
    np.testing.assert_allclose(m.scale_align(0.4 * gt, gt), gt)
    # hand case: scale = <p, g> / <p, p> = 1, so errors stay (0, 1)
    gt1 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pred1 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(m.n_mpjpe(pred1, gt1), [0.0, 1.0])
    # a rotation is not removed
    assert m.n_mpjpe(similarity(gt) - similarity(gt).mean(1, keepdims=True), gt).mean() > 10.0


# --------------------------------------------------------------------------- temporal errors


def test_mpjve_is_zero_for_a_constant_offset_per_video_and_never_crosses_videos():
    gt = random_poses(20)
    codes = np.repeat([7, 3], 10)
    pred = gt + np.where(codes[:, None, None] == 7, 10.0, -40.0)  # a different offset per video
    vel = m.velocity_errors(pred, gt, codes)
    assert np.isnan(vel[[0, 10]]).all()  # first frame of each video has no velocity
    np.testing.assert_allclose(vel[np.r_[1:10, 11:20]], 0.0, atol=1e-9)
    assert m.mpjve(pred, gt, codes) == pytest.approx(0.0, abs=1e-9)
    # treated as one video, the jump between the offsets counts: (-50, -50, -50) mm at frame 10
    np.testing.assert_allclose(m.velocity_errors(pred, gt)[10], 50.0 * np.sqrt(3.0))


def test_mpjve_and_acceleration_error_of_known_drifts():
    gt = random_poses(12)
    t = np.arange(12, dtype=float)[:, None, None]
    linear = gt + t * np.array([0.0, 2.0, 0.0])  # 2 mm/frame faster
    assert m.mpjve(linear, gt) == pytest.approx(2.0)
    assert m.mpjve(linear, gt, fps=50.0) == pytest.approx(100.0)  # mm/s
    assert m.acceleration_error(linear, gt) == pytest.approx(0.0, abs=1e-9)
    quadratic = gt + 0.5 * 3.0 * t**2 * np.array([1.0, 0.0, 0.0])  # 3 mm/frame^2
    assert m.acceleration_error(quadratic, gt) == pytest.approx(3.0)
    assert m.acceleration_error(quadratic, gt, fps=10.0) == pytest.approx(300.0)  # mm/s^2
    acc = m.acceleration_errors(quadratic, gt)
    assert np.isnan(acc[[0, 11]]).all() and np.isfinite(acc[1:11]).all()


def test_invalid_frames_break_temporal_differences():
    gt = random_poses(6)
    pred = gt + np.arange(6, dtype=float)[:, None, None]  # sqrt(3) mm/frame along (1, 1, 1)
    valid = np.array([True, True, False, True, True, True])
    vel = m.velocity_errors(pred, gt, valid=valid)
    assert np.isnan(vel[[0, 2, 3]]).all()  # frame 2 is invalid: no 1->2 and no 2->3 difference
    np.testing.assert_allclose(vel[[1, 4, 5]], np.sqrt(3.0))
    acc = m.acceleration_errors(pred, gt, valid=valid)
    assert np.isfinite(acc[:, 0]).tolist() == [False, False, False, False, True, False]


# --------------------------------------------------------------------------- PCK / AUC


def test_auc_thresholds_are_0_to_150_step_5_inclusive():
    t = m.auc_thresholds()
    assert t.size == 31 and t[0] == 0.0 and t[-1] == 150.0 and np.all(np.diff(t) == 5.0)
    with pytest.raises(ValueError, match="not a multiple"):
        m.auc_thresholds(150.0, 7.0)


def test_pck_and_auc_on_hand_built_errors():
    errors = np.full((4, J), 100.0)
    assert m.pck(errors) == 1.0
    # PCK(t) is 1 for the thresholds above 100 (105 .. 150: 10 of the 31), else 0
    assert m.auc(errors) == pytest.approx(10 / 31)
    # strict rule: an error equal to the threshold is not correct
    assert m.pck(np.full((2, J), 150.0)) == 0.0
    # zero errors are correct at every threshold but 0
    assert m.auc(np.zeros((2, J))) == pytest.approx(30 / 31)
    mixed = np.zeros((2, J))
    mixed[0, :5] = 200.0  # 5 of 34 joint-samples wrong at every threshold
    assert m.pck(mixed) == pytest.approx(29 / 34)


def test_pck_counts_valid_frames_only_and_the_chosen_joints():
    errors = np.full((3, J), 20.0)
    errors[1] = 1000.0
    valid = np.array([True, False, True])
    assert m.pck(errors, valid=valid) == 1.0
    assert m.pck(errors) == pytest.approx(2 / 3)
    assert m.auc(errors, valid=valid) == pytest.approx(26 / 31)  # thresholds 25 .. 150
    # the 14-joint variant leaves out pelvis, spine and the H36M neck/nose (3DHP "head")
    errors14 = np.zeros((2, J))
    for name in m.MPI_3DHP_14_EXCLUDED:
        errors14[:, H36M_17.index(name)] = 500.0
    joints14 = m.pck_joints(H36M_17, "mpi14")
    assert joints14.size == 14
    assert m.pck(errors14, joints=joints14) == 1.0
    assert m.pck(errors14, joints=m.pck_joints(H36M_17, "all")) == pytest.approx(14 / 17)


# --------------------------------------------------------------------------- H36M protocol


def test_per_action_averaging_differs_from_frame_averaging():
    errors = np.array([10.0, 10.0, 10.0, 30.0])
    actions = np.array(["Walking", "Walking", "Walking", "Sitting"])
    result = m.aggregate_by_action(errors, actions)
    assert result.mean == pytest.approx(20.0)  # (10 + 30) / 2, not the frame mean 15
    assert errors.mean() == pytest.approx(15.0)
    assert result.per_action == {"Sitting": 30.0, "Walking": 10.0}
    assert result.counts == {"Sitting": 1, "Walking": 3}
    # (N, J) errors are averaged over joints first; NaN frames are skipped
    per_joint = np.stack([errors, errors + 2.0], axis=1)
    per_joint[0, 0] = np.nan
    again = m.aggregate_by_action(per_joint, actions)
    assert again.per_action == {"Sitting": 31.0, "Walking": 11.0} and again.counts["Walking"] == 2


def test_strip_subaction_merges_takes_of_an_action():
    labels = np.array(["Greeting", "Greeting 1", "SittingDown 2", "Waiting-1", "Photo"])
    assert m.strip_subaction(labels).tolist() == ["Greeting", "Greeting", "SittingDown", "Waiting", "Photo"]


@pytest.mark.parametrize(
    ("video_id", "excluded"),
    [
        ("s_09_act_05_subact_02_ca_01", True),
        ("s_09_act_05_subact_02_ca_04", True),
        ("s_09_act_10_subact_02_ca_02", True),
        ("s_09_act_13_subact_01_ca_03", True),
        ("s_09_act_05_subact_01_ca_01", False),
        ("s_09_act_13_subact_02_ca_01", False),
        ("s_11_act_05_subact_02_ca_01", False),
        ("s_19_act_05_subact_02_ca_01", False),
        ("S9/Greeting/54138969", True),
        ("S9_Greeting.55011271", True),
        ("S9 Greeting 60457274", True),
        ("S9/Greeting 1/54138969", False),
        ("S9/Greeting 2", False),
        ("S9/SittingDown 1/58860488", True),
        ("S9/SittingDown/58860488", False),
        ("S9/SittingDown 10", False),
        ("S9/Waiting 1/54138969", True),
        ("S9/Waiting/54138969", False),
        ("S11/Waiting 1/54138969", False),
        ("S19/Waiting 1/54138969", False),
        ("S9/Waiting-1", True),
        ("S9/Greeting-2", True),
        ("S9/Greeting-1", False),
        # the ids the h36m_videopose adapter writes: "<subject>_<npz action key>.<camera>"
        ("S9_Greeting.54138969", True),
        ("S9_Greeting 1.54138969", False),
        ("S9_SittingDown 1.60457274", True),
        ("S9_SittingDown.60457274", False),
        ("S9_Waiting 1.55011271", True),
        ("S11_Waiting 1.55011271", False),
    ],
)
def test_exclusion_patterns_match_both_id_styles(video_id, excluded):
    assert m.excluded_video_mask(np.array([video_id])).tolist() == [excluded]


def test_exclusion_mask_is_per_frame_and_accepts_custom_patterns():
    ids = np.array(["s_09_act_05_subact_02_ca_01"] * 3 + ["s_09_act_02_subact_01_ca_01"] * 2)
    assert m.excluded_video_mask(ids).tolist() == [True, True, True, False, False]
    assert m.excluded_video_mask(ids, [r"_act_02_"]).tolist() == [False, False, False, True, True]
    assert not m.excluded_video_mask(ids, []).any()


# --------------------------------------------------------------------------- compute_all


def _two_video_case():
    gt = random_poses(10, seed=5)
    codes = np.array(["s_09_act_05_subact_02_ca_01"] * 4 + ["s_11_act_02_subact_01_ca_01"] * 6)
    actions = np.array(["Greeting"] * 4 + ["Directions"] * 3 + ["Eating"] * 3)
    pred = gt + np.where(np.arange(10)[:, None, None] < 7, 10.0, 20.0) * np.array([1.0, 0.0, 0.0])
    pred[:, 0] = gt[:, 0]  # the root is right, so the offset survives root alignment
    return pred, gt, codes, actions


def test_compute_all_averages_per_action_and_stays_inside_videos():
    pred, gt, codes, actions = _two_video_case()
    out = m.compute_all(pred, gt, actions=actions, video_codes=codes, fps=50.0)
    json.dumps(out, allow_nan=False)  # strict JSON
    # per-joint error: 0 at the root, 10 or 20 elsewhere: (16/17) * offset per frame
    scale = (J - 1) / J
    assert out["per_action"]["Directions"]["mpjpe_mm"] == pytest.approx(10 * scale)
    assert out["per_action"]["Eating"]["mpjpe_mm"] == pytest.approx(20 * scale)
    assert out["per_action"]["Greeting"]["mpjpe_mm"] == pytest.approx(10 * scale)
    assert out["mpjpe_mm"] == pytest.approx(40 / 3 * scale)  # mean over the 3 actions
    assert out["mpjpe_frame_mean_mm"] == pytest.approx(13 * scale)  # mean over the 10 frames
    assert out["p_mpjpe_mm"] <= out["mpjpe_mm"]
    # the offset jumps once inside video 2 (frame 6 -> 7): one velocity of 10 mm for 16 joints
    velocities = (10 - 1) - 1  # frames with a velocity: 3 in video 1, 5 in video 2
    assert out["num_velocity_frames"] == velocities
    assert out["mpjve_frame_mean_mm_per_frame"] == pytest.approx(10 * scale / velocities)
    assert out["mpjve_mm_per_s"] == pytest.approx(out["mpjve_mm_per_frame"] * 50.0)
    assert out["per_action"]["Greeting"]["mpjve_mm_per_frame"] == pytest.approx(0.0)
    assert out["num_videos"] == 2 and out["num_actions"] == 3 and out["num_frames"] == 10
    assert out["pck_percent"] == 100.0 and out["per_joint"]["pelvis"]["mpjpe_mm"] == 0.0
    assert out["protocol"]["averaging"] == "per_action"


def test_compute_all_excludes_videos_and_invalid_frames():
    pred, gt, codes, actions = _two_video_case()
    valid = np.ones(10, bool)
    valid[9] = False
    out = m.compute_all(pred, gt, actions=actions, video_codes=codes, valid=valid,
                        exclude_patterns=m.H36M_EXCLUDED_VIDEO_PATTERNS)
    assert out["num_frames"] == 5 and out["num_frames_excluded"] == 4 and out["num_frames_invalid"] == 1
    assert sorted(out["per_action"]) == ["Directions", "Eating"]
    assert out["per_action"]["Eating"]["num_frames"] == 2
    with pytest.raises(DataFormatError, match="video_codes"):
        m.compute_all(pred, gt, exclude_patterns=m.H36M_EXCLUDED_VIDEO_PATTERNS)


def test_compute_all_without_actions_averages_frames_and_reports_pck():
    gt = random_poses(4)
    pred = gt.copy()
    pred[:2, 1:] += np.array([0.0, 0.0, 102.0])  # 102 mm on every non-root joint of 2 frames
    out = m.compute_all(pred, gt)
    assert out["protocol"]["averaging"] == "per_frame" and out["per_action"] == {}
    assert out["mpjpe_mm"] == out["mpjpe_frame_mean_mm"] == pytest.approx(51 * (J - 1) / J)
    assert out["pck_percent"] == 100.0
    # zero errors are correct at 30 of the 31 thresholds; 102 mm errors at 10 (105 .. 150)
    share_100 = 2 * (J - 1) / (4 * J)
    assert out["auc_percent"] == pytest.approx(100 * ((1 - share_100) * 30 / 31 + share_100 * 10 / 31))
    assert out["accel_error_mm_per_frame2"] is not None and "mpjve_mm_per_s" not in out


def test_compute_all_checks_the_skeleton():
    with pytest.raises(DataFormatError) as exc:
        m.compute_all(np.zeros((3, 16, 3)), np.zeros((3, 16, 3)))
    assert str(exc.value) == "<memory>: field 'gt': expected 17 joints of skeleton 'h36m17', got 16 joints"


def test_real_motion_p2_removes_similarities_but_not_mirroring():
    if not CMU.exists():
        pytest.skip("real-data check needs the CMU data; reason: CMU data folder ../shared/data/cmu absent")
    with np.load(CMU / "cmu_train.npz", allow_pickle=False) as data:
        gt = m.root_relative(data["positions"][:2000].astype(np.float64) * 1000.0)
    pred = similarity(gt, seed=4)
    assert m.mpjpe(pred, gt).mean() > 100.0
    assert m.p_mpjpe(pred, gt).max() < 1e-6
    # swapping left and right (what a flip-test bug does) is not something P2 can hide
    swapped = gt[:, H36M_17.flip_permutation]
    assert m.p_mpjpe(swapped, gt).mean() > 20.0
