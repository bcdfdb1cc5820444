"""Horizontal flip and flip test-time augmentation on torch tensors (paper-notes section 4).

A flip negates x (channel 0) and swaps left and right joints with the skeleton's
``flip_permutation``; it is its own inverse, for 2D inputs (x, y, conf) and 3D outputs alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dualpose.skeleton import Skeleton


def flip_poses(poses: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """Mirror poses (..., J, C): negate channel 0 (x), swap left/right joints."""
    if poses.shape[-2] != skeleton.num_joints:
        raise ValueError(f"poses have {poses.shape[-2]} joints, skeleton {skeleton.name!r} has "
                         f"{skeleton.num_joints}")
    perm = torch.as_tensor(skeleton.flip_permutation, device=poses.device)
    flipped = poses.index_select(-2, perm)
    sign = torch.ones(poses.shape[-1], dtype=poses.dtype, device=poses.device)
    sign[0] = -1
    return flipped * sign


def flip_tta(model: Callable[[torch.Tensor], torch.Tensor], poses2d: torch.Tensor,
             skeleton: Skeleton) -> torch.Tensor:
    """Average of ``model(x)`` and the flipped-back ``model(flip(x))``.

    Both views run as one batch of 2B so that the model is called once.
    """
    b = poses2d.shape[0]
    both = model(torch.cat((poses2d, flip_poses(poses2d, skeleton)), dim=0))
    return 0.5 * (both[:b] + flip_poses(both[b:], skeleton))
