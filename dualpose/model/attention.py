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
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for (..., L, d) tensors with the named kernel."""
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    *batch, length, d = q.shape
    q3, k3, v3 = (t.reshape(-1, length, d) for t in (q, k, v))
    # the 1/sqrt(d) scale rides in the product (baddbmm's alpha; beta=0 ignores the input)
    scores = torch.baddbmm(q3.new_empty(()), q3, k3.transpose(1, 2), beta=0.0, alpha=d ** -0.5)
    return torch.bmm(scores.softmax(dim=-1), v3).view(*batch, length, d)


class AxisAttention(nn.Module):
    """Attention among the J joints of each frame ("spatial") or the T frames of each joint
    ("temporal"); no qkv bias (one fused ``qkv`` projection).

    The axis change is folded into the head split and merge: one permute-copy brings q, k and v
    to (sequences, heads, L, d), and one brings the result back to (B, T, J, C) for ``proj``.
    """

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
        h = self.heads
        d = c // h
        qkv = self.qkv(x).view(b, t, j, 3, h, d)
        if self.axis == "temporal":  # sequences (B, J) over frames
            outer, length = j, t
            qkv = qkv.permute(3, 0, 2, 4, 1, 5)  # (3, B, J, H, T, d)
        else:  # sequences (B, T) over joints
            outer, length = t, j
            qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, T, H, J, d)
        q, k, v = qkv.reshape(3, b * outer, h, length, d).unbind(0)
        out = attend(q, k, v, choose_kernel(x.device, length)).view(b, outer, h, length, d)
        if self.axis == "temporal":
            out = out.permute(0, 3, 1, 2, 4)  # (B, T, J, H, d)
        else:
            out = out.permute(0, 1, 3, 2, 4)  # (B, T, J, H, d)
        return self.proj(out.reshape(b, t, j, c))
