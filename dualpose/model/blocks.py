"""MetaFormer wrapper and the dual-stream (Transformer + GCN) block with adaptive fusion.

Activation checkpointing is a runtime switch (:func:`set_activation_checkpointing`), not part of
the saved config: a checkpointed block keeps only its input for the backward pass and recomputes
its activations there (same numbers, about one more forward pass of time, a fraction of the
memory).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

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
                 layer_scale_init: float, drop_path: float = 0.0, relative_frames: int = 0,
                 rotary_frames: int = 0) -> None:
        super().__init__()

        def wrap(mixer: nn.Module) -> MetaFormerBlock:
            return MetaFormerBlock(dim, mixer, hidden, layer_scale_init, drop_path)

        self.attn_spatial = wrap(AxisAttention(dim, heads, "spatial"))
        self.attn_temporal = wrap(AxisAttention(dim, heads, "temporal", relative_frames, rotary_frames))
        self.graph_spatial = wrap(SpatialGCN(dim, adjacency))
        self.graph_temporal = wrap(TemporalKNNGCN(dim, k_neighbors))
        self.fusion = nn.Linear(2 * dim, 2)
        self.checkpoint: bool | str = "auto"  # runtime switch (set_activation_checkpointing), not saved

    def init_fusion(self) -> None:
        nn.init.zeros_(self.fusion.weight)
        nn.init.constant_(self.fusion.bias, 0.5)

    def resolve_checkpoint(self, x: torch.Tensor, kept_bytes: int = 0) -> bool | str:
        """What this forward pass does with the block's activations: ``False`` (keep them),
        ``"full"`` or ``"selective"``. ``"auto"`` decides by :func:`should_checkpoint`, given the
        bytes of activations the blocks before it in the same pass already keep."""
        mode = self.checkpoint
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return False
        if mode == "auto":
            # under autocast most stored tensors are bf16/fp16: ~3 bytes a value on average
            bytes_per_value = 3 if x.is_cuda and torch.is_autocast_enabled("cuda") else 4
            return "full" if should_checkpoint(*x.shape, device=x.device, bytes_per_value=bytes_per_value,
                                               kept_bytes=kept_bytes) else False
        return "full" if mode is True else mode

    def forward(self, x: torch.Tensor, checkpoint_mode: bool | str | None = None) -> torch.Tensor:
        """``checkpoint_mode`` (from the backbone's plan for the whole pass) overrides
        :meth:`resolve_checkpoint`."""
        mode = self.resolve_checkpoint(x) if checkpoint_mode is None else checkpoint_mode
        if mode is False:
            return self._forward(x)
        if mode == "selective":
            return checkpoint(self._forward, x, use_reentrant=False, context_fn=_save_matmuls_context)
        return checkpoint(self._forward, x, use_reentrant=False)  # "full"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_temporal(self.attn_spatial(x))
        g = self.graph_temporal(self.graph_spatial(x))
        weights = self.fusion(torch.cat((a, g), dim=-1)).softmax(dim=-1)
        return a * weights[..., 0:1] + g * weights[..., 1:2]


# "auto" checkpoints a block (fully) when keeping its activations (about 85 C-wide tensors per
# token, an upper estimate: ~67 measured at B) would take what the pass keeps past a budget. On
# the CPU the budget is this share of the host's memory (the smaller of RAM and the cgroup limit):
# blocks keep their activations while they fit, later blocks of a large pass are recomputed
# (B at T=243, batch 2, on 24 GiB: 8 of 16 blocks kept). On a GPU: when storing them would take
# the memory in use above this share of the device's memory (the rest is for the backward pass).
ACTIVATIONS_PER_TOKEN_AND_CHANNEL = 85
AUTO_CHECKPOINT_CPU_SHARE = 0.125
AUTO_CHECKPOINT_GPU_SHARE = 0.7


def host_memory_bytes() -> int:
    """Memory this process may use: physical RAM, or the cgroup (v2 or v1) limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def cpu_checkpoint_budget() -> int:
    """Bytes of block activations a CPU training pass keeps before "auto" recomputes the rest."""
    return int(AUTO_CHECKPOINT_CPU_SHARE * host_memory_bytes())


# Selective checkpointing keeps the outputs of the expensive ops (matrix products, attention,
# the kNN selection) and recomputes only the cheap ones (LayerNorm, GELU, softmax, adds, copies).
_SAVED_OPS = {
    torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default, torch.ops.aten.topk.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _save_matmuls_context():
    return create_selective_checkpoint_contexts(_policy)


def block_activation_bytes(batch: int, frames: int, joints: int, dim: int, bytes_per_value: int = 4) -> int:
    """Estimated bytes a block keeps for the backward pass on an input (batch, frames, joints, dim)."""
    return batch * frames * joints * dim * ACTIVATIONS_PER_TOKEN_AND_CHANNEL * bytes_per_value


def should_checkpoint(batch: int, frames: int, joints: int, dim: int, device: torch.device | None = None,
                      bytes_per_value: int = 4, kept_bytes: int = 0) -> bool:
    """The "auto" rule for a block input of shape (batch, frames, joints, dim) on ``device``,
    when the blocks before it in the pass keep ``kept_bytes`` (CPU; a GPU counts its memory)."""
    block_bytes = block_activation_bytes(batch, frames, joints, dim, bytes_per_value)
    if device is None or device.type != "cuda":
        return kept_bytes + block_bytes > cpu_checkpoint_budget()
    total = torch.cuda.get_device_properties(device).total_memory
    return gpu_memory_would_overflow(torch.cuda.memory_allocated(device), block_bytes, total)


def gpu_memory_would_overflow(allocated: int, block_bytes: int, total: int,
                              share: float = AUTO_CHECKPOINT_GPU_SHARE) -> bool:
    return allocated + block_bytes > share * total


CHECKPOINT_MODES = (False, True, "full", "selective", "auto")


def set_activation_checkpointing(model: nn.Module, mode: bool | str) -> int:
    """Activation checkpointing of every :class:`DualStreamBlock` in ``model``: ``False``,
    ``True`` / ``"full"`` (keep only the block input), ``"selective"`` (keep the matmul and
    attention outputs, recompute the rest) or ``"auto"`` (the default: full where
    :func:`should_checkpoint`, else off); returns how many blocks were switched.

    Measured at B (T=243, batch 2, CPU; benchmarks/RESULTS-perf.md): full checkpointing of every
    block cuts the training peak memory by ~4x for ~20% of the step time; selective saves a fifth
    of the memory at no measurable cost; "auto" checkpoints the blocks past the memory budget."""
    if not any(mode is m if isinstance(m, bool) else mode == m for m in CHECKPOINT_MODES):
        raise ValueError(f"activation checkpointing must be one of {CHECKPOINT_MODES}, got {mode!r}")
    blocks = [m for m in model.modules() if isinstance(m, DualStreamBlock)]
    for block in blocks:
        block.checkpoint = mode
    return len(blocks)
