"""Flip test-time augmentation on torch tensors."""

from __future__ import annotations

import pytest
import torch

from dualpose.model import DualPoseLifter, build_spec, flip_poses, flip_tta
from dualpose.skeleton import H36M_17


def test_flip_negates_x_and_swaps_sides():
    poses = torch.arange(17 * 3, dtype=torch.float32).reshape(1, 17, 3)
    flipped = flip_poses(poses, H36M_17)
    # left hip (4) <-> right hip (1); pelvis (0) stays; only x changes sign
    torch.testing.assert_close(flipped[0, 1], torch.tensor([-12.0, 13.0, 14.0]))
    torch.testing.assert_close(flipped[0, 4], torch.tensor([-3.0, 4.0, 5.0]))
    torch.testing.assert_close(flipped[0, 0], torch.tensor([-0.0, 1.0, 2.0]))
    torch.testing.assert_close(flipped[0, 16], torch.tensor([-39.0, 40.0, 41.0]))  # r_wrist <- l_wrist (13)
    x = torch.randn(2, 5, 17, 3)
    assert torch.equal(flip_poses(flip_poses(x, H36M_17), H36M_17), x)
    with pytest.raises(ValueError, match="poses have 16 joints, skeleton 'h36m17' has 17"):
        flip_poses(torch.zeros(1, 16, 3), H36M_17)


def test_flip_tta_of_an_equivariant_model_is_exact():
    def lift(x2d: torch.Tensor) -> torch.Tensor:  # flip-equivariant: 3D = (x, y, x^2 + y^2)
        return torch.cat((x2d[..., :2], x2d[..., :1] ** 2 + x2d[..., 1:2] ** 2), dim=-1)

    x = torch.randn(3, 4, 17, 3)
    assert torch.equal(flip_tta(lift, x, H36M_17), lift(x))


def test_flip_tta_averages_out_a_left_right_bias():
    calls = []

    def biased(x2d: torch.Tensor) -> torch.Tensor:  # shifts everything to the right by 1
        calls.append(x2d.shape[0])
        return x2d + torch.tensor([1.0, 0.0, 0.0])

    x = torch.randn(2, 4, 17, 3)
    torch.testing.assert_close(flip_tta(biased, x, H36M_17), x)
    assert calls == [4]  # one call on both views


def test_flip_tta_on_the_lifter():
    model = DualPoseLifter(build_spec("XS", {"depth": 1, "dim": 16, "heads": 2})).eval()
    x = torch.randn(2, 6, 17, 3)
    with torch.no_grad():
        expected = 0.5 * (model(x) + flip_poses(model(flip_poses(x, H36M_17)), H36M_17))
        torch.testing.assert_close(flip_tta(model, x, H36M_17), expected)
