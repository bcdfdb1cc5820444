"""Contextualised representation learning (paper-notes section 3): data2vec on 2D pose sequences.

The student sees the masked sequence (masked (frame, joint) tokens replaced by a learned mask
token after the embedding); the EMA teacher sees the full sequence. Targets are the average of
the teacher's last K block outputs, each normalised without parameters; the loss is the mean
squared error on masked tokens, scaled by 1/sqrt(C). What a block contributes is its residual
feed-forward output before layer scale and the last residual connection, as data2vec
(:func:`block_targets`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualpose.train.ema import EMATeacher


# Relative epsilon of the centred normalisations ("joint", "trajectory"): a channel whose centred
# signal carries less than about 0.1% of its power is damped rather than blown up to unit variance.
CENTRED_EPS = 1e-3
TARGET_NORMS = ("instance", "joint", "trajectory", "layer")


def _centred_and_scaled(x: torch.Tensor, centre_dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` (B, T, J, C) centred over ``centre_dims``, then each (sample, channel) scaled to unit
    mean square over its T x J tokens, with an epsilon relative to the raw power (scale-free: the
    FFN outputs are ~5e-3 and a crushed signal must still show as a collapse)."""
    centred = x - x.mean(dim=centre_dims, keepdim=True)
    var = centred.pow(2).mean(dim=(1, 2), keepdim=True)  # per (sample, channel)
    power = x.pow(2).mean(dim=(1, 2), keepdim=True)
    return centred * torch.rsqrt(var + CENTRED_EPS * power + 1e-20)


def normalise_block_output(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Parameter-free normalisation of one block output (B, T, J, C).

    ``instance``: per sample and channel over all T x J tokens (data2vec's instance norm with the
    T x J grid as the sequence); ``joint``: each joint and channel centred over the batch's clips
    and frames, then scaled per sample and channel; ``trajectory``: per sample, joint and channel
    over the T frames (each joint's trajectory is the sequence, as a speech signal is in data2vec);
    ``layer``: per token over channels. None depends on the clip length being fixed.

    Why ``joint``: under ``instance`` the joint's identity (its position embedding) is most of a
    target (R^2 0.95-0.99 from the joint and frame alone on CMU), which a masked token's student
    predicts without any context. What a joint *is* is the same in every clip, so centring each
    joint over the whole batch removes it, and keeps what differs between clips: where the joint is
    in this clip's pose and how it moves, which a masked token can only get from its context.
    ``trajectory`` centres per clip instead, which also removes the clip's mean pose (measured
    worse than scratch; ``docs/method-choices.md``). The centred signal is scaled to unit mean square
    per sample and channel with an epsilon relative to the block output's own power
    (:data:`CENTRED_EPS`), so the target does not depend on the features' absolute scale, and a
    teacher whose features stop varying still shows as a collapse. ``joint`` depends on the batch
    (as batch norm does): each process centres over its own micro-batch of clips.
    """
    x = x.float()
    if kind == "joint":
        return _centred_and_scaled(x, (0, 1))  # per (joint, channel) over the batch's clips and frames
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    b, t, j, c = x.shape
    if kind == "trajectory":
        return _centred_and_scaled(x, (1,))  # per (sample, joint, channel) over frames
    if kind != "instance":
        raise ValueError(f"unknown target normalisation {kind!r}: expected one of {TARGET_NORMS}")
    flat = x.reshape(b, t * j, c).transpose(1, 2)  # (B, C, T*J)
    return F.instance_norm(flat).transpose(1, 2).reshape(b, t, j, c)


def block_targets(blocks: list[torch.Tensor], top_k: int, kind: str,
                  ffn: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """What each of the last ``top_k`` blocks contributes as a target (before normalisation).

    ``ffn``: the block's feed-forward output before layer scale and the last residual connection
    (data2vec's target), both streams fused with the block's own fusion weights; ``ffn`` holds them
    for every block (see :class:`FFNTap`). ``output``: the post-residual block output, which under
    layer scale 1e-5 is ~99% the token's own input (masked 2D reconstruction, kept as an ablation).
    """
    if kind == "output":
        return blocks[-top_k:]
    if kind != "ffn":
        raise ValueError(f"unknown CRL target {kind!r}: expected 'ffn' or 'output'")
    if ffn is None or len(ffn) != len(blocks):
        raise ValueError("the 'ffn' target needs the FFN outputs of every block (FFNTap)")
    return ffn[-top_k:]


class FFNTap:
    """Forward hooks that record each block's fused pre-residual FFN output during a forward pass.

    A dual-stream block ends each stream with a MetaFormer FFN (``x + ls2 * mlp(LN(x))``) and fuses
    the streams per token with softmax weights ``w``; the tapped target is
    ``w_a * mlp_a(.) + w_g * mlp_g(.)``: what the block computes, before layer scale shrinks it
    and before the residual stream (which carries the token's own input) is added.
    """

    def __init__(self, backbone: nn.Module):
        self._ffn: dict[int, dict[str, torch.Tensor]] = {}
        self.handles = []
        for i, block in enumerate(backbone.blocks):
            self.handles.append(block.attn_temporal.mlp.register_forward_hook(self._keep(i, "a")))
            self.handles.append(block.graph_temporal.mlp.register_forward_hook(self._keep(i, "g")))
            self.handles.append(block.fusion.register_forward_hook(self._keep(i, "w")))

    def _keep(self, i: int, key: str):
        def hook(module, inputs, output):
            self._ffn.setdefault(i, {})[key] = output
        return hook

    def collect(self) -> list[torch.Tensor]:
        """The fused FFN outputs of the last forward, in block order; clears the record."""
        out = []
        for i in sorted(self._ffn):
            rec = self._ffn[i]
            w = rec["w"].softmax(dim=-1)
            out.append(rec["a"] * w[..., 0:1] + rec["g"] * w[..., 1:2])
        self._ffn.clear()
        return out


class CRLModel(nn.Module):
    """Student backbone + regression head, and its EMA teacher."""

    def __init__(self, backbone: nn.Module, top_k: int, target_norm: str = "instance", target: str = "ffn"):
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
        self.target = target
        self._tap = FFNTap(self.teacher.module) if target == "ffn" else None
        self.dim = dim

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised targets (B, T, J, C) and the raw (unnormalised) variance of the top-K outputs.

        The raw variance across tokens is the collapse monitor: normalisation would hide a
        representation that has become constant.
        """
        if self.target_norm == "joint" and x.shape[0] < 2:
            raise ValueError(f"pretrain.target_norm 'joint' centres each joint over a batch of clips, but this "
                             f"process got {x.shape[0]} clip per micro-batch: raise pretrain.batch_size (per "
                             "process it is batch_size / processes / grad_accum)")
        teacher = self.teacher.module
        blocks = teacher.forward_features(teacher.embed(x), return_blocks=True)[1]
        ffn = self._tap.collect() if self._tap is not None else None
        top = block_targets(blocks, self.top_k, self.target, ffn)
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
