"""Multi-head self-attention over joints (spatial) or frames (temporal) of a (B, T, J, C) grid.

Two kernels compute the same ``softmax(q k^T / sqrt(d)) v``:

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on GPU; on CPU a flash kernel that keeps no L x L matrix for the backward pass);
- ``"explicit"``: two matmuls and a softmax. On CPU it is faster for short sequences (the 17
  joints, XS's 27 frames), where SDPA's per-call overhead dominates.

``"auto"`` (the default) picks per call: explicit on CPU for sequences of at most
:data:`EXPLICIT_MAX_LENGTH` tokens, SDPA otherwise (every GPU call, long CPU sequences, where the
L x L matrices would also dominate training memory). The environment variable
``DUALPOSE_ATTENTION`` (``auto``/``sdpa``/``explicit``) or :func:`set_attention_kernel` overrides
the choice; it is a runtime switch, not part of the saved model config.

Temporal attention can carry a learned relative position bias (``temporal_pos_emb: relative``):
one scalar per head and frame offset ``i - j``, added to the logits (T5 / Swin style). Offsets
beyond the design length are clipped to its largest, so any clip length runs; the table starts
at zero, so an untrained model is still order-blind and learns order where it pays.

Or it can carry a rotary frame embedding (``temporal_pos_emb: rotary``, RoFormer): q and k of
frame t are rotated by angles ``t * base**(-2i/d)``, so their product depends on the frame offset
only. The base is the design clip length T (not RoFormer's 10,000, made for thousands of tokens):
wavelengths then run from ~6 frames to ~2 pi T at any head size d. No parameter, any clip length,
and no logit bias: SDPA keeps its fast kernels (a bias sends it to the slow math path on the CPU,
which cost B 30 % of its training speed).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dualpose.model.lean import norm_linear, scaled_linear

Axis = Literal["spatial", "temporal"]
KERNELS = ("auto", "sdpa", "explicit")
EXPLICIT_MAX_LENGTH = 32  # CPU: explicit matmul-softmax up to this many tokens per sequence


def _kernel_from_env() -> str:
    name = os.environ.get("DUALPOSE_ATTENTION", "auto").strip().lower() or "auto"
    if name not in KERNELS:
        raise ValueError(f"environment variable DUALPOSE_ATTENTION must be one of {KERNELS}, got {name!r}")
    return name


_kernel = _kernel_from_env()


def set_attention_kernel(name: str) -> str:
    """Select the attention kernel for every :class:`AxisAttention`; returns the previous one."""
    global _kernel
    if name not in KERNELS:
        raise ValueError(f"attention kernel must be one of {KERNELS}, got {name!r}")
    previous, _kernel = _kernel, name
    return previous


def attention_kernel() -> str:
    return _kernel


def choose_kernel(device: torch.device, length: int) -> str:
    """The kernel used for sequences of ``length`` tokens on ``device`` (never ``"auto"``)."""
    if _kernel != "auto":
        return _kernel
    if device.type == "cpu" and length <= EXPLICIT_MAX_LENGTH:
        return "explicit"
    return "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` for (..., H, L, d) tensors with the named kernel;
    ``bias`` (H, L, L), if given, is added to the logits of every sequence."""
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
    *batch, length, d = q.shape
    q3, k3, v3 = (t.reshape(-1, length, d) for t in (q, k, v))
    # the 1/sqrt(d) scale rides in the product (baddbmm's alpha; beta=0 ignores the input)
    scores = torch.baddbmm(q3.new_empty(()), q3, k3.transpose(1, 2), beta=0.0, alpha=d ** -0.5)
    if bias is not None:
        heads = bias.shape[0]
        scores = (scores.view(-1, heads, length, length) + bias.to(scores.dtype)).view(-1, length, length)
    return torch.bmm(scores.softmax(dim=-1), v3).view(*batch, length, d)


def rotary_angles(length: int, head_dim: int, base: float,
                  device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (L, d/2) in fp32, of the angles ``t * base**(-2i/d)`` for frame t (even d)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the (first half, second half) channel pairs of (..., L, d) by the tables' angles."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def relative_offsets(length: int, max_offset: int, device: torch.device | None = None) -> torch.Tensor:
    """(L, L) indices ``clip(i - j, -max_offset, max_offset) + max_offset`` into a bias table."""
    pos = torch.arange(length, device=device)
    return (pos[:, None] - pos[None, :]).clamp(-max_offset, max_offset) + max_offset


class AxisAttention(nn.Module):
    """Attention among the J joints of each frame ("spatial") or the T frames of each joint
    ("temporal"); no qkv bias (one fused ``qkv`` projection).

    The axis change is folded into the head split and merge: one permute-copy brings q, k and v
    to (sequences, heads, L, d), and one brings the result back to (B, T, J, C) for ``proj``.
    """

    def __init__(self, dim: int, heads: int, axis: Axis, relative_frames: int = 0,
                 rotary_frames: int = 0) -> None:
        """``relative_frames`` > 0 (temporal only): a learned relative position bias for offsets
        up to ``relative_frames - 1`` frames (the design clip length), zero at initialisation.
        ``rotary_frames`` > 0 (temporal only): rotate q and k by their frame index, with the
        design clip length as the base of the angle frequencies (no parameter)."""
        super().__init__()
        if axis not in ("spatial", "temporal"):
            raise ValueError(f"axis must be 'spatial' or 'temporal', got {axis!r}")
        if (relative_frames or rotary_frames) and axis != "temporal":
            raise ValueError("a relative position bias or rotary embedding is only defined over frames "
                             "(axis 'temporal')")
        if relative_frames and rotary_frames:
            raise ValueError("choose one frame signal: a relative position bias or a rotary embedding")
        if rotary_frames and (dim // heads) % 2:
            raise ValueError(f"rotary frame embedding needs an even head size, got dim {dim} / heads {heads}")
        self.heads = heads
        self.axis = axis
        self.rotary_base = float(rotary_frames)  # 0: no rotary embedding
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.max_offset = max(relative_frames - 1, 0)
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * self.max_offset + 1)) if relative_frames else None

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        """The (H, L, L) logit bias for a sequence of ``length`` frames, or None."""
        if self.rel_bias is None:
            return None
        return self.rel_bias[:, relative_offsets(length, self.max_offset, device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend_heads(self.qkv(x)))

    def lean_forward(self, x: torch.Tensor, norm: nn.LayerNorm, scale: torch.Tensor) -> torch.Tensor:
        """``scale * self(norm(x))`` for a training pass, keeping neither ``norm(x)`` nor the
        output for the backward pass (:mod:`dualpose.model.lean`)."""
        _, qkv = norm_linear(x, norm, self.qkv)
        return scaled_linear(self.attend_heads(qkv), self.proj, scale)

    def attend_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention along the axis from the fused (B, T, J, 3C) projection; heads merged back to
        (B, T, J, C), before ``proj``."""
        b, t, j, c3 = qkv.shape
        c = c3 // 3
        h = self.heads
        d = c // h
        qkv = qkv.view(b, t, j, 3, h, d)
        if self.axis == "temporal":  # sequences (B, J) over frames
            outer, length = j, t
            qkv = qkv.permute(3, 0, 2, 4, 1, 5)  # (3, B, J, H, T, d)
        else:  # sequences (B, T) over joints
            outer, length = t, j
            qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, T, H, J, d)
        q, k, v = qkv.reshape(3, b * outer, h, length, d).unbind(0)
        if self.rotary_base:
            cos, sin = rotary_angles(length, d, self.rotary_base, qkv.device)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        bias = self.position_bias(length, qkv.device) if self.axis == "temporal" else None
        out = attend(q, k, v, choose_kernel(qkv.device, length), bias).view(b, outer, h, length, d)
        if self.axis == "temporal":
            out = out.permute(0, 3, 1, 2, 4)  # (B, T, J, H, d)
        else:
            out = out.permute(0, 1, 3, 2, 4)  # (B, T, J, H, d)
        return out.reshape(b, t, j, c)
