"""Fused training sub-layers that keep fewer activations for the backward pass.

A plain pre-norm MLP branch ``ls * fc2(gelu(fc1(LayerNorm(x))))`` keeps, per token, the
LayerNorm input (C values), its output (C, for fc1's weight gradient), the GELU input (4C), the
GELU output (4C, for fc2's weight gradient) and the branch output (C, for the layer scale's
gradient): 11C. The functions here keep what cannot be recomputed cheaply and rebuild the rest in
the backward pass from the same inputs with the same kernels:

- :func:`norm_mlp`: keeps x and the fc1 output (5C); LayerNorm and GELU are recomputed, and the
  layer scale's gradient comes from fc2's weight-gradient product (``sum_k G_ik W_ik + b_i g_i``
  with ``G = grad^T gelu(h)``) instead of the stored output.
- :func:`norm_linear`: LayerNorm + Linear layers on its output (the attention's qkv, the graph
  mixers' U and V) keeping x instead of the normalised tokens; also returns the normalised tokens
  for mixers that need them in the forward pass (the graph update's residual).
- :func:`scaled_linear`: ``ls * Linear(a)`` (the attention's output projection) without keeping
  its output.

At B (T = 243) a dual-stream block keeps 70.3 C-wide tensors per token with the plain modules and
38.2 with these, its input not counted (``benchmarks/saved_activations.py``). The backward pass recomputes 8 LayerNorms
and 4 GELUs per block (elementwise work, no extra matrix product). Gradients equal the plain
modules' to fp32 rounding (``tests/test_lean.py``). They are used only by a training pass that
records gradients, eagerly: inference, ONNX export and ``torch.compile`` (whose partitioner
chooses its own recomputation) take the plain modules. Runtime switch:
:func:`set_lean_activations` or ``DUALPOSE_LEAN_ACTIVATIONS=0``.

Under autocast the products run in the autocast dtype as in the plain modules (the backward pass
casts to the dtype the forward pass computed in); LayerNorm and GELU follow autocast's rules.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_enabled = os.environ.get("DUALPOSE_LEAN_ACTIVATIONS", "1") != "0"


def set_lean_activations(enabled: bool) -> bool:
    """Switch the fused training sub-layers on or off (process-wide); returns the previous value."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def lean_activations_enabled() -> bool:
    return _enabled


def use_lean(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module``'s forward pass on ``x`` should take the fused sub-layers."""
    return (_enabled and module.training and torch.is_grad_enabled() and x.requires_grad
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products on ``x``'s device run in here (autocast's, or ``x``'s own)."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _layer_norm_stats(x, weight, bias, eps):
    """(normalised x, mean, rstd) with the same kernel as ``F.layer_norm`` in the forward pass."""
    return torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _layer_norm_backward(grad_xn, x, mean, rstd, weight, bias):
    return torch.ops.aten.native_layer_norm_backward(grad_xn, x, [x.shape[-1]], mean, rstd, weight, bias,
                                                     [True, weight is not None, bias is not None])


def _weight_grad(inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad^T @ inputs`` over the flattened tokens, computed as autograd's Linear does
    (``(inputs^T @ grad)^T``: 10-20 % faster than the other operand order on tall operands)."""
    return (_flat(inputs).t() @ _flat(grad)).t()


def _scaled_linear_backward(grad_out, a, weight, bias, scale, dtype):
    """Gradients of ``scale * (a W^T + b)`` without its output: the scale's gradient is
    ``sum_k G_ik W_ik + b_i g_i`` with ``G = grad^T a`` (the weight gradient before the scale).
    Returns (grad_a flattened to tokens, grad_weight, grad_bias, grad_scale)."""
    g = _flat(grad_out)
    g_sum = g.sum(0, dtype=torch.float32)
    product = _weight_grad(a, g.to(dtype))
    grad_weight = (scale[:, None] * product.to(weight.dtype)).to(weight.dtype)
    grad_bias = (scale * g_sum).to(bias.dtype)
    grad_scale = ((product.to(torch.float32) * weight.to(torch.float32)).sum(1)
                  + bias.to(torch.float32) * g_sum).to(scale.dtype)
    grad_a = (g * scale.to(g.dtype)).to(dtype) @ weight.to(dtype)
    return grad_a, grad_weight, grad_bias, grad_scale


class _NormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, *linears):
        ctx.set_materialize_grads(False)
        xn = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
        dtype = _compute_dtype(x)
        xc = xn.to(dtype)
        weights, biases = linears[0::2], linears[1::2]
        ys = [F.linear(xc, w.to(dtype), None if b is None else b.to(dtype)) for w, b in zip(weights, biases)]
        ctx.save_for_backward(x, ln_weight, ln_bias, *weights)
        ctx.eps, ctx.dtype, ctx.has_bias = eps, dtype, [b is not None for b in biases]
        return (xn, *ys)

    @staticmethod
    def backward(ctx, grad_xn, *grad_ys):
        x, ln_weight, ln_bias, *weights = ctx.saved_tensors
        dtype = ctx.dtype
        xn, mean, rstd = _layer_norm_stats(x, ln_weight, ln_bias, ctx.eps)
        xc = xn.to(dtype)
        total = grad_xn
        linear_grads: list[torch.Tensor | None] = []
        for weight, has_bias, grad_y in zip(weights, ctx.has_bias, grad_ys):
            if grad_y is None:
                linear_grads += [None, None]
                continue
            g = grad_y.to(dtype)
            linear_grads.append(_weight_grad(xc, g).to(weight.dtype))
            linear_grads.append(_flat(g).sum(0).to(weight.dtype) if has_bias else None)
            through = (g @ weight.to(dtype)).to(xn.dtype)
            total = through if total is None else total + through
        if total is None:
            return (None, None, None, None, *linear_grads)
        grad_x, grad_ln_w, grad_ln_b = _layer_norm_backward(total, x, mean, rstd, ln_weight, ln_bias)
        return (grad_x, grad_ln_w, grad_ln_b, None, *linear_grads)


class _NormMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, w1, b1, w2, b2, scale):
        xn = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
        dtype = _compute_dtype(x)
        h = F.linear(xn.to(dtype), w1.to(dtype), b1.to(dtype))
        z = F.linear(F.gelu(h), w2.to(dtype), b2.to(dtype))
        ctx.save_for_backward(x, h, ln_weight, ln_bias, w1, w2, b2, scale)
        ctx.eps, ctx.dtype = eps, dtype
        return z * scale  # promoted as in the plain modules (fp32 under autocast)

    @staticmethod
    def backward(ctx, grad_out):
        x, h, ln_weight, ln_bias, w1, w2, b2, scale = ctx.saved_tensors
        dtype = ctx.dtype
        grad_a, grad_w2, grad_b2, grad_scale = _scaled_linear_backward(
            grad_out, F.gelu(h).to(dtype), w2, b2, scale, dtype)  # gelu(h) recomputed, not kept
        grad_h = torch.ops.aten.gelu_backward(grad_a.view(h.shape).to(h.dtype), h)
        xn, mean, rstd = _layer_norm_stats(x, ln_weight, ln_bias, ctx.eps)
        gh = _flat(grad_h).to(dtype)
        grad_w1 = _weight_grad(xn.to(dtype), gh).to(w1.dtype)
        grad_b1 = gh.sum(0).to(w1.dtype)
        grad_xn = (gh @ w1.to(dtype)).view(x.shape).to(xn.dtype)
        grad_x, grad_ln_w, grad_ln_b = _layer_norm_backward(grad_xn, x, mean, rstd, ln_weight, ln_bias)
        return grad_x, grad_ln_w, grad_ln_b, None, grad_w1, grad_b1, grad_w2, grad_b2, grad_scale


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, weight, bias, scale):
        dtype = _compute_dtype(a)
        z = F.linear(a.to(dtype), weight.to(dtype), bias.to(dtype))
        ctx.save_for_backward(a, weight, bias, scale)
        ctx.dtype = dtype
        return z * scale  # promoted as in the plain modules (fp32 under autocast)

    @staticmethod
    def backward(ctx, grad_out):
        a, weight, bias, scale = ctx.saved_tensors
        grad_a, grad_weight, grad_bias, grad_scale = _scaled_linear_backward(
            grad_out, a.to(ctx.dtype), weight, bias, scale, ctx.dtype)
        return grad_a.view(a.shape).to(a.dtype), grad_weight, grad_bias, grad_scale


def norm_linear(x: torch.Tensor, norm: torch.nn.LayerNorm, *linears: nn.Linear) -> tuple[torch.Tensor, ...]:
    """``(norm(x), linear_1(norm(x)), ...)``, keeping only ``x`` for the backward pass."""
    params = [t for lin in linears for t in (lin.weight, lin.bias)]
    return _NormLinear.apply(x, norm.weight, norm.bias, norm.eps, *params)


def norm_mlp(x: torch.Tensor, norm: torch.nn.LayerNorm, fc1: torch.nn.Linear, fc2: torch.nn.Linear,
             scale: torch.Tensor) -> torch.Tensor:
    """``scale * fc2(gelu(fc1(norm(x))))``, keeping only ``x`` and fc1's output."""
    return _NormMLP.apply(x, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, fc2.weight,
                          fc2.bias, scale)


def scaled_linear(a: torch.Tensor, linear: torch.nn.Linear, scale: torch.Tensor) -> torch.Tensor:
    """``scale * linear(a)``, keeping ``a`` but not the output."""
    return _ScaledLinear.apply(a, linear.weight, linear.bias, scale)
