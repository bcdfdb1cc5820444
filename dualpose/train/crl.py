"""Contextualised representation learning (paper-notes section 3): data2vec on 2D pose sequences.

The student sees the masked sequence (masked (frame, joint) tokens replaced by a learned mask
token after the embedding); the EMA teacher sees the full sequence. Targets are the average of
the teacher's last K block outputs, each normalised without parameters; the loss is the mean
squared error on masked tokens, scaled by 1/sqrt(C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualpose.train.ema import EMATeacher


def normalise_block_output(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Parameter-free normalisation of one block output (B, T, J, C).

    ``instance``: per sample and channel over all T x J tokens; ``layer``: per token over channels.
    Neither depends on the clip length being fixed.
    """
    x = x.float()
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    b, t, j, c = x.shape
    flat = x.reshape(b, t * j, c).transpose(1, 2)  # (B, C, T*J)
    return F.instance_norm(flat).transpose(1, 2).reshape(b, t, j, c)


class CRLModel(nn.Module):
    """Student backbone + regression head, and its EMA teacher."""

    def __init__(self, backbone: nn.Module, top_k: int, target_norm: str = "instance"):
        super().__init__()
        depth = len(backbone.blocks)
        if not 1 <= top_k <= depth:
            raise ValueError(f"pretrain.top_k_blocks must be in [1, {depth}] for a {depth}-block model, got {top_k}")
        self.student = backbone
        dim = backbone.spec.dim
        self.regression_head = nn.Linear(dim, dim)
        self.teacher = EMATeacher(backbone)
        self.top_k = top_k
        self.target_norm = target_norm
        self.dim = dim

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised targets (B, T, J, C) and the raw (unnormalised) variance of the top-K outputs.

        The raw variance across tokens is the collapse monitor: normalisation would hide a
        representation that has become constant.
        """
        teacher = self.teacher.module
        blocks = teacher.forward_features(teacher.embed(x), return_blocks=True)[1]
        top = blocks[-self.top_k:]
        layers = [normalise_block_output(h, self.target_norm) for h in top]
        raw = torch.stack([h.float() for h in top]).mean(0)
        raw_var = raw.reshape(-1, self.dim).var(dim=0).mean()
        return torch.stack(layers).mean(0), raw_var

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """x: (B, T, J, 3) normalised 2D; mask: (B, T, J) bool, True = masked."""
        features = self.student.forward_features(self.student.embed(x), mask=mask)
        if isinstance(features, tuple):
            features = features[0]
        prediction = self.regression_head(features).float()
        target, raw_var = self.targets(x)
        masked = mask.bool()
        if not bool(masked.any()):
            raise ValueError("CRL batch has no masked token: check masking.probability / masking.span")
        per_token = ((prediction - target) ** 2).sum(-1)[masked]
        loss = per_token.mean() / math.sqrt(self.dim)
        with torch.no_grad():
            target_var = target.reshape(-1, self.dim).var(dim=0).mean()
            pred_var = prediction.detach().reshape(-1, self.dim).var(dim=0).mean()
        return loss, {"target_var": float(raw_var), "norm_target_var": float(target_var), "pred_var": float(pred_var),
                      "masked_ratio": float(masked.float().mean())}
