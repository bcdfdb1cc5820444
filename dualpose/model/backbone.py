"""The dual-stream backbone and the lifting model built on it (paper-notes section 2).

Tensor layout everywhere: (B, T, J, C) = batch, frames, joints, channels. Nothing depends on T:
the same weights run on any sequence length (at least 2 frames for a temporal graph).

Pretraining uses the backbone's pieces directly::

    backbone = DualPoseBackbone(spec, with_mask_token=True)
    tokens = backbone.embed(x2d)                                     # (B, T, J, C)
    feats, blocks = backbone.forward_features(tokens, mask=mask, return_blocks=True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualpose.model.blocks import DualStreamBlock, plan_pass
from dualpose.model.config import ModelSpec
from dualpose.model.gcn import normalized_adjacency
from dualpose.skeleton import Skeleton, get_skeleton


def resolve_skeleton(spec: ModelSpec, skeleton: Skeleton | None) -> Skeleton:
    skel = skeleton if skeleton is not None else get_skeleton(spec.skeleton)
    if skel.num_joints != spec.num_joints:
        raise ValueError(f"skeleton {skel.name!r} has {skel.num_joints} joints but the model spec "
                         f"expects {spec.num_joints}")
    return skel


POS_EMB_STD = 0.02  # scale of every position embedding at initialisation (as the spatial one)


def sinusoidal_embedding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sine/cosine frame embedding (length, dim), defined for any length, unit amplitude."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / max(half, 1)))
    angles = position * freq[None, :]
    emb = torch.cat((angles.sin(), angles.cos()), dim=-1)
    if emb.shape[-1] < dim:
        emb = torch.cat((emb, torch.zeros(length, dim - emb.shape[-1], device=device)), dim=-1)
    return emb


class DualPoseBackbone(nn.Module):
    """Joint embedding + spatial position embedding, N dual-stream blocks, final LayerNorm.

    ``with_mask_token`` adds the learned mask token (size C) used by pretraining; the lifting
    model leaves it out so that no parameter goes unused during finetuning.
    """

    def __init__(self, spec: ModelSpec, skeleton: Skeleton | None = None, *, with_mask_token: bool = False) -> None:
        super().__init__()
        skel = resolve_skeleton(spec, skeleton)
        self.spec = spec
        c = spec.dim
        self.joints_embed = nn.Linear(spec.in_channels, c)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_joints, c))
        # learned frame embedding for the design length T, resampled for any other length
        self.temporal_pos_embed = (nn.Parameter(torch.zeros(spec.T, c)) if spec.temporal_pos_emb == "learned"
                                   else None)
        adjacency = normalized_adjacency(skel.adjacency(), self_loops=spec.graph_self_loops)
        rates = [spec.drop_path * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        relative_frames = spec.T if spec.temporal_pos_emb == "relative" else 0
        rotary_frames = spec.T if spec.temporal_pos_emb == "rotary" else 0
        self.blocks = nn.ModuleList(
            DualStreamBlock(c, spec.heads, spec.hidden_dim, adjacency, spec.k_neighbors,
                            spec.layer_scale_init, rate, relative_frames, rotary_frames)
            for rate in rates
        )
        self.norm = nn.LayerNorm(c)
        self.mask_token = nn.Parameter(torch.zeros(c)) if with_mask_token else None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=POS_EMB_STD)
        # The frame table starts at zero: the network starts as the reference (order-blind) and
        # learns order where it pays. A random table at the joint table's scale (0.02) is as large
        # as the embedded 2D input itself and cost 44 mm P1 on the CMU benchmark's short budget.
        if self.temporal_pos_embed is not None:
            nn.init.zeros_(self.temporal_pos_embed)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith((".U", ".V")):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            block.init_fusion()

    def frame_embedding(self, frames: int, device: torch.device) -> torch.Tensor | None:
        """Temporal position embedding (frames, C), or None when the spec has none.

        The learned table is kept as is at the design length and linearly resampled (ends
        aligned) for any other length, so a clip's first and last frames always get the
        table's first and last rows and the same weights run on any T.
        """
        kind = self.spec.temporal_pos_emb
        if kind == "learned":
            table = self.temporal_pos_embed
            if frames == table.shape[0] and not torch.jit.is_tracing():
                return table
            if table.shape[0] == 1:
                return table.expand(frames, -1)
            return F.interpolate(table.T[None], size=frames, mode="linear", align_corners=True)[0].T
        if kind == "sinusoidal":
            return POS_EMB_STD * sinusoidal_embedding(frames, self.spec.dim, device)
        return None

    def positions(self, frames: int, device: torch.device) -> torch.Tensor:
        """Position embedding broadcastable to (B, T, J, C): joint identity plus frame order."""
        pos = self.pos_embed[:, None]  # (1, 1, J, C)
        temporal = self.frame_embedding(frames, device)
        if temporal is not None:
            pos = pos + temporal[None, :, None, :]
        return pos

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J, in_channels) -> tokens (B, T, J, C), position embedding included."""
        return self.joints_embed(x) + self.positions(x.shape[1], x.device)

    def insert_mask_token(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace the tokens where ``mask`` (B, T, J bool) is true by ``mask_token`` plus the
        position embedding (so a masked token still knows which joint it stands for)."""
        if self.mask_token is None:
            raise ValueError("this backbone has no mask token: build it with with_mask_token=True")
        if mask.shape != tokens.shape[:3] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(tokens.shape[:3])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        filler = self.mask_token.to(tokens.dtype) + self.positions(tokens.shape[1], tokens.device)
        return torch.where(mask[..., None], filler, tokens)

    def forward_features(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                         return_blocks: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks and final norm on embedded tokens.

        Returns the normalised features (B, T, J, C); with ``return_blocks`` also the list of
        the ``depth`` raw block outputs (before the final norm), in block order.
        """
        x = tokens if mask is None else self.insert_mask_token(tokens, mask)
        outputs: list[torch.Tensor] = []
        for block, mode in zip(self.blocks, self.activation_plan(x)):
            x = block(x, mode)
            if return_blocks:
                outputs.append(x)
        features = self.norm(x)
        return (features, outputs) if return_blocks else features

    def activation_plan(self, x: torch.Tensor) -> list[bool | str]:
        """Per block, what a pass on tokens ``x`` keeps for the backward pass (``False``,
        ``"lean"``, ``"full"`` or ``"selective"``; :func:`dualpose.model.blocks.plan_pass`)."""
        if not (self.training and torch.is_grad_enabled() and x.requires_grad):
            return [False] * len(self.blocks)
        return plan_pass([block.checkpoint for block in self.blocks], x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(self.embed(x), mask=mask)  # type: ignore[return-value]

    def compile_blocks(self, **compile_kwargs) -> None:
        """Regional compilation: ``torch.compile`` each block in place. All blocks share one
        compiled graph, so a cold start costs one block's compilation instead of the whole
        model's (about 7x faster for XS on CPU); ``torch.compile(model)`` works too."""
        for block in self.blocks:
            block.compile(**compile_kwargs)


class DualPoseLifter(nn.Module):
    """2D poses (B, T, J, in_channels) -> root-relative 3D poses (B, T, J, out_channels).

    Backbone (its final LayerNorm included), then the motion representation
    ``tanh(Linear(C -> rep_dim))`` and ``Linear(rep_dim -> out_channels)``.
    """

    def __init__(self, spec: ModelSpec, skeleton: Skeleton | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = DualPoseBackbone(spec, skeleton)
        self.rep = nn.Linear(spec.dim, spec.rep_dim)
        self.head = nn.Linear(spec.rep_dim, spec.out_channels)
        for lin in (self.rep, self.head):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.rep(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.representation(x))


def build_model(spec: ModelSpec, skeleton: Skeleton | None = None) -> DualPoseLifter:
    return DualPoseLifter(spec, skeleton)
