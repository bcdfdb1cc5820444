"""Graph-convolution mixers of the GCN stream (paper-notes section 2).

Both use the update ``relu(x + LayerNorm(A_hat @ V(x) + U(x)))``. The reference normalises with
BatchNorm over the node axis, which for the temporal graph is the frame axis (tied to one T,
train/eval statistics differ, ONNX export breaks); LayerNorm over channels depends on nothing
but the token itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualpose.model.lean import norm_linear


def normalized_adjacency(adjacency: np.ndarray, self_loops: bool = False) -> torch.Tensor:
    """Symmetric normalisation ``D^-1/2 A D^-1/2`` (with ``A + I`` when ``self_loops``).

    Nodes without edges keep a zero row instead of dividing by zero.
    """
    adj = np.asarray(adjacency, dtype=np.float64)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {adj.shape}")
    if self_loops:
        adj = adj + np.eye(adj.shape[0])
    degree = adj.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return torch.from_numpy((inv_sqrt[:, None] * adj * inv_sqrt[None, :]).astype(np.float32))


class _GraphMixer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.U = nn.Linear(dim, dim)
        self.V = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        for lin in (self.U, self.V):  # He initialisation: a ReLU follows (as the reference)
            nn.init.normal_(lin.weight, 0.0, (2.0 / dim) ** 0.5)
            nn.init.zeros_(lin.bias)

    def aggregate(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The graph average of ``v = V(x)`` (both (B, T, J, C))."""
        raise NotImplementedError

    def _update(self, x: torch.Tensor, aggregate: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.norm(aggregate + u))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, J, C)
        return self._update(x, self.aggregate(x, self.V(x)), self.U(x))

    def lean_forward(self, x: torch.Tensor, norm: nn.LayerNorm, scale: torch.Tensor) -> torch.Tensor:
        """``scale * self(norm(x))`` for a training pass: ``norm(x)`` is recomputed in the backward
        pass instead of kept (:mod:`dualpose.model.lean`)."""
        xn, u, v = norm_linear(x, norm, self.U, self.V)
        return scale * self._update(xn, self.aggregate(xn, v), u)


class SpatialGCN(_GraphMixer):
    """Fixed skeleton graph per frame: ``A_hat`` is a (J, J) buffer rebuilt from the skeleton
    (not saved in state dicts)."""

    def __init__(self, dim: int, adjacency: torch.Tensor) -> None:
        super().__init__(dim)
        self.register_buffer("adjacency", adjacency.clone(), persistent=False)

    def aggregate(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.adjacency.to(v.dtype), v)  # (J, J) @ (B, T, J, C)


class TemporalKNNGCN(_GraphMixer):
    """Per joint, a k-nearest-neighbour graph over frames by feature dot product, rebuilt on
    every call.

    A frame's own similarity is excluded (the self connection is ``U(x)``), so each token
    averages ``V`` of exactly k other frames: the normalisation ``D^-1/2 A D^-1/2`` of a graph
    whose every node has k neighbours. Built with one batched matmul and ``topk`` (no loops);
    sequences shorter than k + 1 frames use every other frame.

    The neighbours' ``V`` rows are gathered in the (B, T, J, C) layout with one ``index_select``
    on the flattened tokens (``fast_gather``, the default): no transpose of ``V`` and a row-wise
    backward (``index_add``). ``fast_gather = False`` is the plain path (transpose to
    (B, J, T, C) and ``gather`` with a channel-expanded index); both give the same numbers. The
    ONNX tracer always takes the plain path (the fast path's row offsets would be traced as
    constants of one batch and length).
    The (B, J, T, T) similarity is kept: at T = 243 it is 0.24 MB per sample and joint, small
    beside the block's activations, and ``topk`` needs it whole.
    """

    def __init__(self, dim: int, k: int) -> None:
        super().__init__(dim)
        self.k = k
        self.fast_gather = True

    def neighbours(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (B, J, T, k) of each token's k most similar other frames of the same joint."""
        t = x.shape[1]
        xt = x.transpose(1, 2)  # (B, J, T, C)
        with torch.no_grad():  # the graph is a selection, not differentiable (as the reference)
            similarity = torch.matmul(xt, xt.transpose(-1, -2))  # (B, J, T, T)
            frames = torch.arange(t, device=x.device)
            self_pairs = frames[:, None] == frames[None, :]
            similarity = similarity.masked_fill(self_pairs, float("-inf"))
            return similarity.topk(k, dim=-1).indices

    def aggregate(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, t, j, _ = x.shape
        c = v.shape[-1]
        k = self.k
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and t <= k:
            k = t - 1
        if k == 0:
            return torch.zeros_like(v)
        neighbours = self.neighbours(x, k)  # (B, J, T, k)
        if not self.fast_gather or torch.jit.is_tracing():  # ONNX tracing: its row offsets would be constants
            vt = v.transpose(1, 2)  # (B, J, T, C)
            index = neighbours.reshape(b, j, t * k, 1).expand(b, j, t * k, c)
            aggregate = torch.gather(vt, 2, index).reshape(b, j, t, k, c).mean(dim=3)
            return aggregate.transpose(1, 2)
        with torch.no_grad():  # flat row of token (b, frame, joint) in v.reshape(B*T*J, C)
            base = torch.arange(b, device=x.device).view(b, 1, 1, 1) * (t * j) \
                + torch.arange(j, device=x.device).view(1, j, 1, 1)
            rows = (base + neighbours * j).permute(0, 2, 1, 3).reshape(-1)  # (B, T, J, k) order
        gathered = v.reshape(b * t * j, c).index_select(0, rows)
        return gathered.view(b, t, j, k, c).mean(dim=3)
