"""Multi-head self-attention over joints (spatial) or frames (temporal) of a (B, T, J, C) grid."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Axis = Literal["spatial", "temporal"]


class AxisAttention(nn.Module):
    """Attention among the J joints of each frame ("spatial") or the T frames of each joint
    ("temporal"); no qkv bias; computed with ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, axis: Axis) -> None:
        super().__init__()
        if axis not in ("spatial", "temporal"):
            raise ValueError(f"axis must be 'spatial' or 'temporal', got {axis!r}")
        self.heads = heads
        self.axis = axis
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, j, c = x.shape
        qkv = self.qkv(x)  # (B, T, J, 3C)
        if self.axis == "temporal":
            qkv = qkv.transpose(1, 2)  # (B, J, T, 3C): sequences run over frames
        outer, length = qkv.shape[1], qkv.shape[2]
        qkv = qkv.reshape(b * outer, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B*outer, H, L, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, outer, length, c)
        if self.axis == "temporal":
            out = out.transpose(1, 2)
        return self.proj(out)
