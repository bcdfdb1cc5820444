"""MetaFormer wrapper and the dual-stream (Transformer + GCN) block with adaptive fusion."""

from __future__ import annotations

import torch
from torch import nn

from dualpose.model.attention import AxisAttention
from dualpose.model.gcn import SpatialGCN, TemporalKNNGCN


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MetaFormerBlock(nn.Module):
    """Pre-norm residual pair: ``x + ls1 * mixer(LN(x))`` then ``x + ls2 * MLP(LN(x))``."""

    def __init__(self, dim: int, mixer: nn.Module, hidden: int, layer_scale_init: float,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden)
        self.ls1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.ls2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.ls1 * self.mixer(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.ls2 * self.mlp(self.norm2(x)), self.drop_path, self.training)


class DualStreamBlock(nn.Module):
    """Transformer stream (spatial then temporal attention) and GCN stream (skeleton graph then
    temporal kNN graph) on the same input, fused per token by softmax weights from
    ``Linear(2C -> 2)``, initialised to an equal average (weights 0, bias 0.5)."""

    def __init__(self, dim: int, heads: int, hidden: int, adjacency: torch.Tensor, k_neighbors: int,
                 layer_scale_init: float, drop_path: float = 0.0) -> None:
        super().__init__()

        def wrap(mixer: nn.Module) -> MetaFormerBlock:
            return MetaFormerBlock(dim, mixer, hidden, layer_scale_init, drop_path)

        self.attn_spatial = wrap(AxisAttention(dim, heads, "spatial"))
        self.attn_temporal = wrap(AxisAttention(dim, heads, "temporal"))
        self.graph_spatial = wrap(SpatialGCN(dim, adjacency))
        self.graph_temporal = wrap(TemporalKNNGCN(dim, k_neighbors))
        self.fusion = nn.Linear(2 * dim, 2)

    def init_fusion(self) -> None:
        nn.init.zeros_(self.fusion.weight)
        nn.init.constant_(self.fusion.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_temporal(self.attn_spatial(x))
        g = self.graph_temporal(self.graph_spatial(x))
        weights = self.fusion(torch.cat((a, g), dim=-1)).softmax(dim=-1)
        return a * weights[..., 0:1] + g * weights[..., 1:2]
