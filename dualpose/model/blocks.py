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
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from dualpose.model.attention import AxisAttention
from dualpose.model.gcn import SpatialGCN, TemporalKNNGCN
from dualpose.model.lean import lean_activations_enabled, norm_mlp, use_lean


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

    def forward(self, x: torch.Tensor, lean: bool = False) -> torch.Tensor:
        """``lean``: take the fused training sub-layers (:mod:`dualpose.model.lean`) where they
        apply (a training pass that records gradients): same numbers, fewer activations kept."""
        if lean and use_lean(self, x):
            x = x + drop_path(self.mixer.lean_forward(x, self.norm1, self.ls1), self.drop_path, self.training)
            mlp = norm_mlp(x, self.norm2, self.mlp.fc1, self.mlp.fc2, self.ls2)
            return x + drop_path(mlp, self.drop_path, self.training)
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
        """What this forward pass does with the block's activations: ``False`` (keep them, plain
        modules), ``"lean"`` (keep them, fused sub-layers), ``"full"`` or ``"selective"``.
        ``"auto"`` decides by :func:`plan_pass` for this block alone, given the bytes of
        activations the blocks before it in the same pass already keep."""
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return False
        return plan_pass([self.checkpoint], x, kept_bytes)[0]

    def forward(self, x: torch.Tensor, checkpoint_mode: bool | str | None = None) -> torch.Tensor:
        """``checkpoint_mode`` (from the backbone's plan for the whole pass) overrides
        :meth:`resolve_checkpoint`. A recomputed block runs the fused sub-layers too (the
        recomputation's own activations are the peak of its backward pass)."""
        mode = self.resolve_checkpoint(x) if checkpoint_mode is None else checkpoint_mode
        lean = mode is not False  # use_lean() still honours the process-wide switch
        if mode is False or mode == "lean":
            return self._forward(x, lean)
        if mode == "selective":
            return checkpoint(self._forward, x, lean, use_reentrant=False, context_fn=_save_matmuls_context)
        return checkpoint(self._forward, x, lean, use_reentrant=False)  # "full"

    def _forward(self, x: torch.Tensor, lean: bool = False) -> torch.Tensor:
        a = self.attn_temporal(self.attn_spatial(x, lean), lean)
        g = self.graph_temporal(self.graph_spatial(x, lean), lean)
        if lean and use_lean(self, x):  # the fusion's halves on a and g, which are kept anyway: no concatenation kept
            c = a.shape[-1]
            w = self.fusion.weight
            logits = F.linear(a, w[:, :c]) + F.linear(g, w[:, c:], self.fusion.bias)
        else:
            logits = self.fusion(torch.cat((a, g), dim=-1))
        weights = logits.softmax(dim=-1)
        return a * weights[..., 0:1] + g * weights[..., 1:2]


# "auto" plans each training pass against a memory budget for the activations its blocks keep.
# A block keeps about 85 C-wide tensors per token with the plain modules (an upper estimate: 70.3
# measured at B, block input not counted; benchmarks/saved_activations.py) and about 45 with the
# fused training sub-layers of dualpose.model.lean (38.2 measured). Every block keeps its
# activations with the plain modules while all of them fit (they are faster on small shapes:
# XS training ~10 % on 2 CPU cores); if not, as many as fit keep theirs with the plain modules
# and the rest with the fused sub-layers (no slower at B); if even those do not all fit, the
# blocks past the budget are recomputed (full checkpointing). On the CPU the budget is a share
# of the host's memory (the smaller of RAM and the cgroup limit): B at T=243, batch 2, on 24 GiB:
# 1 block plain, 15 fused, none recomputed. On a GPU it is a share of the device's memory minus
# what is in use when the pass starts (the rest is for the backward pass).
ACTIVATIONS_PER_TOKEN_AND_CHANNEL = 85  # plain modules
LEAN_ACTIVATIONS_PER_TOKEN_AND_CHANNEL = 45  # fused training sub-layers (the default)
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


def block_activation_bytes(batch: int, frames: int, joints: int, dim: int, bytes_per_value: int = 4,
                           lean: bool | None = None) -> int:
    """Estimated bytes a block keeps for the backward pass on an input (batch, frames, joints, dim),
    with the fused training sub-layers (``lean``; default: whether they are switched on)."""
    lean = lean_activations_enabled() if lean is None else lean
    per_value = LEAN_ACTIVATIONS_PER_TOKEN_AND_CHANNEL if lean else ACTIVATIONS_PER_TOKEN_AND_CHANNEL
    return batch * frames * joints * dim * per_value * bytes_per_value


def activation_budget(device: torch.device | None = None) -> int:
    """Bytes of block activations a training pass on ``device`` may keep before "auto" recomputes."""
    if device is None or device.type != "cuda":
        return cpu_checkpoint_budget()
    total = torch.cuda.get_device_properties(device).total_memory
    return int(AUTO_CHECKPOINT_GPU_SHARE * total) - torch.cuda.memory_allocated(device)


def plan_blocks(count: int, plain_bytes: int, lean_bytes: int, budget: int,
                lean: bool = True) -> list[bool | str]:
    """The "auto" rule: per block of a pass, ``False`` (plain modules, activations kept),
    ``"lean"`` (fused sub-layers, kept) or ``"full"`` (recomputed), for ``count`` blocks that keep
    ``plain_bytes`` / ``lean_bytes`` each, within ``budget`` bytes. ``lean=False``: plain or full."""
    if count * plain_bytes <= budget:
        return [False] * count
    if lean and lean_bytes < plain_bytes:
        if count * lean_bytes <= budget:
            n_plain = (budget - count * lean_bytes) // (plain_bytes - lean_bytes)
            return [False] * n_plain + ["lean"] * (count - n_plain)
        kept, mode = max(budget, 0) // lean_bytes, "lean"
    else:
        kept, mode = max(budget, 0) // plain_bytes, False
    kept = min(count, kept)
    return [mode] * kept + ["full"] * (count - kept)


def plan_pass(modes: list[bool | str], x: torch.Tensor, kept_bytes: int = 0) -> list[bool | str]:
    """Each block's mode for one training pass on ``x`` (B, T, J, C), from the blocks' switches
    ``modes``: fixed modes stay (``True`` is ``"full"``; ``"lean"`` is ``False`` while the fused
    sub-layers are switched off); the "auto" blocks share what the budget leaves after
    ``kept_bytes`` and the blocks that keep their activations by a fixed mode."""
    lean_on = lean_activations_enabled()
    fixed = []
    for mode in modes:
        if mode == "auto":
            fixed.append(None)
        elif mode is True:
            fixed.append("full")
        elif mode == "lean" and not lean_on:
            fixed.append(False)
        else:
            fixed.append(mode)
    if all(m is not None for m in fixed):
        return fixed
    # under autocast most stored tensors are bf16/fp16: ~3 bytes a value on average
    bytes_per_value = 3 if x.is_cuda and torch.is_autocast_enabled("cuda") else x.element_size()
    plain = block_activation_bytes(*x.shape, bytes_per_value=bytes_per_value, lean=False)
    lean = block_activation_bytes(*x.shape, bytes_per_value=bytes_per_value, lean=True)
    budget = activation_budget(x.device) - kept_bytes \
        - sum(plain if m is False else lean if m == "lean" else 0 for m in fixed)
    auto = iter(plan_blocks(sum(m is None for m in fixed), plain, lean, budget, lean_on))
    return [next(auto) if m is None else m for m in fixed]


CHECKPOINT_MODES = (False, True, "full", "selective", "lean", "auto")


def set_activation_checkpointing(model: nn.Module, mode: bool | str) -> int:
    """Activation checkpointing of every :class:`DualStreamBlock` in ``model``: ``False`` (keep
    every activation, plain modules), ``"lean"`` (keep them with the fused training sub-layers of
    :mod:`dualpose.model.lean`: ~45 % less, same numbers), ``True`` / ``"full"`` (keep only the
    block input), ``"selective"`` (keep the matmul and attention outputs, recompute the rest) or
    ``"auto"`` (the default: :func:`plan_blocks` against :func:`activation_budget`); returns how
    many blocks were switched.

    Measured at B (T=243, batch 2, CPU; benchmarks/RESULTS-perf.md): the fused sub-layers keep
    all 16 blocks' activations in the memory the plain modules needed for 8, at no loss of
    speed; full checkpointing cuts the training peak memory by ~2x more for ~30 % of the step
    time."""
    if not any(mode is m if isinstance(m, bool) else mode == m for m in CHECKPOINT_MODES):
        raise ValueError(f"activation checkpointing must be one of {CHECKPOINT_MODES}, got {mode!r}")
    blocks = [m for m in model.modules() if isinstance(m, DualStreamBlock)]
    for block in blocks:
        block.checkpoint = mode
    return len(blocks)
