"""Training losses (torch), on normalised root-relative poses (..., T, J, 3)."""

from __future__ import annotations

import torch

from dualpose.config import LossWeights


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error (Euclidean), averaged over everything."""
    return torch.linalg.vector_norm(pred - target, dim=-1).mean()


def n_mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MPJPE after the least-squares scale that best fits pred to target, per frame."""
    dims = (-2, -1)
    scale = (pred * target).sum(dims, keepdim=True) / (pred * pred).sum(dims, keepdim=True).clamp_min(1e-8)
    return mpjpe(scale * pred, target)


def velocity_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L2 of the difference of first-order frame differences (frames on axis -3)."""
    if pred.shape[-3] < 2:
        return pred.new_zeros(())
    return torch.linalg.vector_norm(torch.diff(pred, dim=-3) - torch.diff(target, dim=-3), dim=-1).mean()


def lifting_loss(pred: torch.Tensor, target: torch.Tensor, weights: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of MPJPE, N-MPJPE and velocity error; also returns the parts for logging."""
    parts = {
        "mpjpe": mpjpe(pred, target),
        "n_mpjpe": n_mpjpe(pred, target),
        "velocity": velocity_error(pred, target),
    }
    total = weights.mpjpe * parts["mpjpe"] + weights.n_mpjpe * parts["n_mpjpe"] + weights.velocity * parts["velocity"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
