"""PoseCodec: exact inverses, known values, invariances, numpy/torch agreement, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dualpose.camera import Camera, depth_factor
from dualpose.codec import PoseCodec
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17

CODEC = PoseCodec()
J = H36M_17.num_joints


def _frames(n=6, seed=0):
    rng = np.random.default_rng(seed)
    width = np.array([1000, 1000, 1920, 2048, 1000, 1000])[:n]
    height = np.array([1002, 1000, 1080, 2048, 1002, 1000])[:n]
    kp2d = rng.uniform(0, 1, size=(n, J, 2)) * np.stack([width, height], -1)[:, None, :]
    kp3d = rng.normal(0, 400, size=(n, J, 3)) + np.array([100.0, -200.0, 4500.0])
    factor = kp3d[:, 0, 2] / rng.uniform(1000, 1500, size=n)
    return kp2d, width, height, kp3d, factor


def test_2d_known_values_on_a_1000x1002_image():
    px = np.array([[250.0, 751.0], [500.0, 501.0], [0.0, 0.0], [1000.0, 1002.0]])
    kp = np.zeros((J, 2))
    kp[:4] = px
    n = CODEC.normalize_2d(kp, 1000, 1002)
    # u' = 2u/w - 1, v' = 2v/w - h/w: the centre is (0, 0), x spans [-1, 1], y spans [-h/w, h/w]
    np.testing.assert_allclose(n[:4], [[-0.5, 0.5], [0.0, 0.0], [-1.0, -1.002], [1.0, 1.002]], atol=1e-12)


def test_2d_round_trip_per_frame_sizes():
    kp2d, width, height, *_ = _frames()
    n = CODEC.normalize_2d(kp2d, width, height)
    assert n.shape == kp2d.shape and n.dtype == np.float64
    np.testing.assert_allclose(CODEC.denormalize_2d(n, width, height), kp2d, rtol=0, atol=1e-4)
    # float32 data stays float32 and still round-trips to well under a pixel
    n32 = CODEC.normalize_2d(kp2d.astype(np.float32), width, height)
    assert n32.dtype == np.float32
    np.testing.assert_allclose(CODEC.denormalize_2d(n32, width, height), kp2d, rtol=0, atol=1e-3)


def test_per_frame_parameters_align_with_leading_axes():
    kp2d, width, height, *_ = _frames()
    clips = np.stack([kp2d, kp2d[::-1]])  # (2, 6, J, 2)
    widths = np.stack([width, width[::-1]])
    heights = np.stack([height, height[::-1]])
    n = CODEC.normalize_2d(clips, widths, heights)  # (B, T) parameters
    np.testing.assert_allclose(n[0], CODEC.normalize_2d(kp2d, width, height))
    np.testing.assert_allclose(n[1], CODEC.normalize_2d(kp2d[::-1], width[::-1], height[::-1]))
    n_b = CODEC.normalize_2d(clips, np.array([1000, 2048]), np.array([1002, 2048]))  # (B,) parameters
    np.testing.assert_allclose(n_b[1], CODEC.normalize_2d(clips[1], 2048, 2048))
    with pytest.raises(DataFormatError, match=r"field 'width': expected a scalar or one value per frame, "
                                              r"shape a prefix of \(2, 6\), got shape \(6,\)"):
        CODEC.normalize_2d(clips, width, 1000)


def test_encode_input_masks_missing_joints():
    kp2d, width, height, *_ = _frames()
    conf = np.full((6, J), 0.75, dtype=np.float32)
    kp2d[0, 3] = np.nan
    conf[0, 3] = 0.0
    conf[1, 5] = 0.0  # finite but confidence 0
    kp2d[2, 7] = np.nan  # NaN with a (bogus) confidence
    x = CODEC.encode_input(kp2d, conf, width, height)
    assert x.shape == (6, J, 3) and x.dtype == np.float32 and np.isfinite(x).all()
    for f, j in ((0, 3), (1, 5), (2, 7)):
        np.testing.assert_array_equal(x[f, j], [0.0, 0.0, 0.0])
    n = CODEC.normalize_2d(kp2d, width, height)
    np.testing.assert_allclose(x[3, :, :2], n[3], rtol=1e-6)
    np.testing.assert_allclose(x[3, :, 2], 0.75)
    # without confidences every finite joint counts as seen
    x1 = CODEC.encode_input(kp2d, None, width, height)
    assert (x1[..., 2] == 1.0).sum() == 6 * J - 2
    with pytest.raises(DataFormatError, match=r"field 'conf': expected shape \(6, 17\), got shape \(6, 16\)"):
        CODEC.encode_input(kp2d, conf[:, :16], width, height)


def test_3d_known_value_and_root_is_zero():
    kp3d = np.zeros((J, 3))
    kp3d[:] = (0.0, 0.0, 5000.0)
    kp3d[4] = (100.0, -50.0, 5200.0)  # 100 mm right, 50 mm up, 200 mm deeper than the root
    t = CODEC.encode_target(kp3d, 5.0, 1000)  # 5 mm/px, 1000 px wide: 2 * d / 5000
    np.testing.assert_allclose(t[4], [0.04, -0.02, 0.08])
    np.testing.assert_array_equal(t[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(CODEC.decode_target(t, 5.0, 1000)[4], [100.0, -50.0, 200.0])


def test_3d_round_trip_and_translation_invariance():
    _, width, _, kp3d, factor = _frames()
    t = CODEC.encode_target(kp3d, factor, width)
    mm = CODEC.decode_target(t, factor, width)
    np.testing.assert_allclose(mm, kp3d - kp3d[:, :1], rtol=0, atol=1e-4)
    assert (mm[:, H36M_17.root] == 0).all()
    shifted = kp3d + np.array([[-350.0, 80.0, 900.0]])[:, None, :]
    np.testing.assert_allclose(CODEC.encode_target(shifted, factor, width), t, atol=1e-12)


def test_decode_zeroes_the_root_instead_of_subtracting_it():
    pred = np.full((J, 3), 0.01)
    mm = CODEC.decode_target(pred, 4.0, 1000)
    np.testing.assert_array_equal(mm[0], 0.0)
    np.testing.assert_allclose(mm[1:], 20.0)  # 0.01 * 4 * 1000 / 2


def test_target_matches_motionbert_joint3d_image_normalisation():
    """kp3d = joint3d_image * factor gives MotionBERT's screen normalisation, root-relative."""
    rng = np.random.default_rng(7)
    w, h = np.array([1000, 1000, 1000]), np.array([1002, 1000, 1002])
    img = np.concatenate([rng.uniform(0, 1000, (3, J, 2)), rng.normal(0, 80, (3, J, 1))], -1)
    factor = rng.uniform(3.5, 6.0, 3)
    mb = img.copy()
    mb[..., :2] = mb[..., :2] / w[:, None, None] * 2 - np.stack([np.ones(3), h / w], -1)[:, None, :]
    mb[..., 2:] = mb[..., 2:] / w[:, None, None] * 2
    mb = mb - mb[:, :1]
    np.testing.assert_allclose(CODEC.encode_target(img * factor[:, None, None], factor, w), mb, atol=1e-12)


def test_3d_target_agrees_with_2d_input_for_joints_at_root_depth():
    """With a pinhole camera and factor = Z_root / f, target x/y equal the 2D input's offsets."""
    cam = Camera(fx=1100.0, fy=1100.0, cx=500.0, cy=501.0, width=1000, height=1002)
    kp3d = np.zeros((J, 3))
    kp3d[:, :2] = np.random.default_rng(8).normal(0, 300, (J, 2))
    kp3d[:, 2] = 4200.0
    kp2d = cam.project(kp3d)
    factor = depth_factor(kp3d[None], cam.focal)[0]
    t = CODEC.encode_target(kp3d, factor, cam.width)
    n = CODEC.normalize_2d(kp2d, cam.width, cam.height)
    np.testing.assert_allclose(t[:, :2], n - n[:1], atol=1e-12)


def test_flip_swaps_sides_negates_x_and_is_an_involution():
    kp2d, width, height, kp3d, factor = _frames()
    x = CODEC.encode_input(kp2d, np.linspace(0.1, 1, J)[None].repeat(6, 0), width, height)
    f = CODEC.flip_2d(x)
    li, ri = H36M_17.index("l_wrist"), H36M_17.index("r_wrist")
    np.testing.assert_array_equal(f[:, li, 0], -x[:, ri, 0])
    np.testing.assert_array_equal(f[:, li, 1:], x[:, ri, 1:])  # y and confidence follow the swap
    np.testing.assert_array_equal(CODEC.flip_2d(f), x)
    t = CODEC.encode_target(kp3d, factor, width)
    np.testing.assert_array_equal(CODEC.flip_3d(CODEC.flip_3d(t)), t)
    # flipping normalised 2D equals mirroring the pixels about the image centre, u -> w - u
    mirrored = kp2d[:, H36M_17.flip_permutation].copy()
    mirrored[..., 0] = width[:, None] - mirrored[..., 0]
    np.testing.assert_allclose(CODEC.flip_2d(CODEC.normalize_2d(kp2d, width, height)),
                               CODEC.normalize_2d(mirrored, width, height), atol=1e-12)


def test_torch_and_numpy_agree_and_kinds_are_kept():
    kp2d, width, height, kp3d, factor = _frames()
    conf = np.random.default_rng(9).uniform(size=(6, J)).astype(np.float32)
    conf[0, 0] = 0
    t_kp2d, t_kp3d = torch.from_numpy(kp2d), torch.from_numpy(kp3d)
    for name, np_out, t_out in [
        ("normalize_2d", CODEC.normalize_2d(kp2d, width, height),
         CODEC.normalize_2d(t_kp2d, torch.from_numpy(width), height)),
        ("encode_input", CODEC.encode_input(kp2d, conf, width, height),
         CODEC.encode_input(t_kp2d, torch.from_numpy(conf), width, height)),
        ("encode_target", CODEC.encode_target(kp3d, factor, width),
         CODEC.encode_target(t_kp3d, torch.from_numpy(factor), torch.from_numpy(width))),
        ("flip", CODEC.flip(kp3d), CODEC.flip(t_kp3d)),
    ]:
        assert isinstance(t_out, torch.Tensor) and isinstance(np_out, np.ndarray), name
        assert t_out.dtype == (torch.float32 if name == "encode_input" else torch.float64), name
        np.testing.assert_allclose(t_out.numpy(), np_out, rtol=1e-6, atol=1e-7, err_msg=name)
    pred = torch.from_numpy(CODEC.encode_target(kp3d, factor, width)).float().requires_grad_()
    mm = CODEC.decode_target(pred, torch.from_numpy(factor).float(), torch.from_numpy(width).float())
    assert mm.dtype == torch.float32
    np.testing.assert_allclose(mm.detach().numpy(), kp3d - kp3d[:, :1], atol=5e-3)
    mm.sum().backward()  # differentiable, with no gradient to the discarded root
    assert (pred.grad[:, 0] == 0).all() and (pred.grad[:, 1:] > 0).all()
    # the caller's tensor is never modified
    before = t_kp2d.clone()
    CODEC.encode_input(t_kp2d, None, 1000, 1000)
    assert torch.equal(before, t_kp2d)


def test_metadata_round_trip_through_json():
    meta = json.loads(json.dumps(CODEC.to_dict()))
    codec = PoseCodec.from_dict(meta)
    assert codec.skeleton is H36M_17
    assert PoseCodec.from_metadata(meta).to_dict() == CODEC.to_dict()
    with pytest.raises(DataFormatError, match=r"ckpt.json: field 'codec.version': expected 1, got 2"):
        PoseCodec.from_dict(dict(meta, version=2), source="ckpt.json")
    with pytest.raises(DataFormatError, match=r"field 'codec.skeleton': expected a known skeleton name, got 'coco'"):
        PoseCodec.from_dict(dict(meta, skeleton="coco"))
    with pytest.raises(DataFormatError, match=r"field 'codec.joint_names'"):
        PoseCodec.from_dict(dict(meta, joint_names=meta["joint_names"][::-1]))


def test_shape_errors_name_the_field():
    with pytest.raises(DataFormatError, match=r"field 'kp2d': expected shape \(\.\.\., 17, 2\), got shape \(4, 16, 2\)"):
        CODEC.normalize_2d(np.zeros((4, 16, 2)), 1000, 1000)
    with pytest.raises(DataFormatError, match=r"field 'kp3d': expected shape \(\.\.\., 17, 3\), got shape \(4, 17, 2\)"):
        CODEC.encode_target(np.zeros((4, 17, 2)), 5.0, 1000)
