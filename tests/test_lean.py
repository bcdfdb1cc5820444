"""The fused training sub-layers (dualpose.model.lean): same numbers as the plain modules, fewer
activations kept for the backward pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dualpose.model import DualPoseLifter, build_spec
from dualpose.model.blocks import DualStreamBlock, set_activation_checkpointing
from dualpose.model.info import saved_activation_bytes
from dualpose.model.lean import (lean_activations_enabled, norm_linear, norm_mlp, scaled_linear,
                                 set_lean_activations)


def _assert_close(got, expected, rtol=1e-4, msg=None):
    """Equal to fp32 rounding: elementwise within ``rtol`` of the tensor's largest magnitude (sums
    of many products cancel to near zero in places, where a purely relative test means nothing)."""
    scale = expected.detach().abs().max().clamp_min(1e-12)
    torch.testing.assert_close(got, expected, rtol=0, atol=float(rtol * scale), msg=msg)


def _layers(dim=6, hidden=10, dtype=torch.float32):
    torch.manual_seed(0)
    norm = nn.LayerNorm(dim).to(dtype)
    fc1, fc2 = nn.Linear(dim, hidden).to(dtype), nn.Linear(hidden, dim).to(dtype)
    with torch.no_grad():  # not the identity initialisation of LayerNorm
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    scale = nn.Parameter(torch.randn(dim, dtype=dtype))
    return norm, fc1, fc2, scale


def test_norm_mlp_passes_gradcheck_in_float64():
    norm, fc1, fc2, scale = _layers(dtype=torch.float64)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    inputs = (x, norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale)

    def fn(x, lw, lb, w1, b1, w2, b2, s):
        norm.weight, norm.bias = lw, lb  # gradcheck perturbs these very tensors
        return norm_mlp(x, norm, _Lin(w1, b1), _Lin(w2, b2), s)

    assert torch.autograd.gradcheck(fn, inputs)


class _Lin:
    def __init__(self, weight, bias=None):
        self.weight, self.bias = weight, bias


def test_norm_linear_and_scaled_linear_pass_gradcheck_in_float64():
    norm, fc1, _, scale = _layers(dtype=torch.float64)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def two_linears(x, lw, lb, w, b, w2):  # the graph mixers' U and V; the normalised tokens used too
        norm.weight, norm.bias = lw, lb
        xn, y, y2 = norm_linear(x, norm, _Lin(w, b), _Lin(w2))
        return xn * 0.7, y, y2

    assert torch.autograd.gradcheck(two_linears, (x, norm.weight, norm.bias, fc1.weight, fc1.bias, w2))

    def projection_only(x, lw, lb, w):  # the attention's qkv: no bias, xn unused
        norm.weight, norm.bias = lw, lb
        return norm_linear(x, norm, _Lin(w))[1]

    assert torch.autograd.gradcheck(projection_only, (x, norm.weight, norm.bias, fc1.weight))

    def second_output_unused(x, lw, lb, w, b, w2):  # gradients reach only some outputs
        norm.weight, norm.bias = lw, lb
        return norm_linear(x, norm, _Lin(w, b), _Lin(w2))[1]

    assert torch.autograd.gradcheck(second_output_unused, (x, norm.weight, norm.bias, fc1.weight, fc1.bias, w2))
    a = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    lin = nn.Linear(10, 6).to(torch.float64)
    assert torch.autograd.gradcheck(lambda a, w, b, s: scaled_linear(a, _Lin(w, b), s),
                                    (a, lin.weight, lin.bias, scale))


def test_norm_mlp_matches_the_plain_modules_in_float32():
    norm, fc1, fc2, scale = _layers(dim=32, hidden=128)
    x = torch.randn(4, 9, 17, 32, requires_grad=True)
    params = [x, norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, scale]
    plain = scale * fc2(F.gelu(fc1(norm(x))))
    fused = norm_mlp(x, norm, fc1, fc2, scale)
    _assert_close(fused, plain, rtol=1e-5)
    g = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, params, g)
    got = torch.autograd.grad(fused, params, g)
    for e, r in zip(expected, got):
        _assert_close(r, e)


def _block(drop_path=0.0):
    torch.manual_seed(4)
    block = DualStreamBlock(32, 4, 64, torch.rand(17, 17), 2, layer_scale_init=0.7, drop_path=drop_path)
    nn.init.normal_(block.fusion.weight, 0.0, 0.3)  # not the equal-average initialisation
    return block.train()


def _forward_and_grads(block, x, seed=5):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    out = block(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.parametrize("mode", ["lean", "full", "selective"])
@pytest.mark.parametrize("frames", [5, 27])
def test_block_with_fused_sub_layers_matches_the_plain_block(mode, frames):
    """Forward and every gradient, with stochastic depth, kept or recomputed."""
    block = _block(drop_path=0.3)
    x = torch.randn(3, frames, 17, 32)
    block.checkpoint = False
    out, grad_x, grads = _forward_and_grads(block, x)
    block.checkpoint = mode
    out2, grad_x2, grads2 = _forward_and_grads(block, x)
    _assert_close(out2, out, rtol=1e-5)
    _assert_close(grad_x2, grad_x)
    assert grads.keys() == grads2.keys()
    for name in grads:
        _assert_close(grads2[name], grads[name], msg=name)


def test_fused_sub_layers_keep_about_half_the_activations():
    """Known counts (C-wide tensors per token; this block: 4 heads, explicit attention over 27
    frames): 58.3 plain, 34.1 fused. (B at T = 243, SDPA over frames: 69.3 and 37.3,
    benchmarks/saved_activations.py.)"""
    block = _block()
    x = torch.randn(1, 27, 17, 32, requires_grad=True)
    unit = x.numel() * 4
    block.checkpoint = False
    plain = saved_activation_bytes(block, x) / unit
    block.checkpoint = "lean"
    fused = saved_activation_bytes(block, x) / unit
    assert 57.5 < plain < 59
    assert 33.5 < fused < 35
    block.checkpoint = "full"
    assert saved_activation_bytes(block, x) == 0  # a recomputed block keeps only its input


def test_inference_and_the_switch_take_the_plain_modules():
    block = _block()
    block.checkpoint = "lean"
    x = torch.randn(1, 5, 17, 32, requires_grad=True)

    def backward_nodes(out):
        names, stack, seen = set(), [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            names.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
        return names

    assert "_NormMLPBackward" in backward_nodes(block(x))
    block.eval()  # eval: plain modules even when gradients are recorded
    assert "_NormMLPBackward" not in backward_nodes(block(x))
    block.train()
    previous = set_lean_activations(False)
    try:
        assert previous is True and not lean_activations_enabled()
        assert "_NormMLPBackward" not in backward_nodes(block(x))
    finally:
        set_lean_activations(True)


def test_environment_variable_switches_the_fused_sub_layers_off():
    env = {**os.environ, "DUALPOSE_LEAN_ACTIVATIONS": "0"}
    code = "from dualpose.model.lean import lean_activations_enabled as e; print(e())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_whole_model_trains_the_same_with_and_without_fused_sub_layers():
    model = DualPoseLifter(build_spec("XS", {"depth": 2, "T": 9})).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 9, 17, model.spec.in_channels)

    def run(mode):
        set_activation_checkpointing(model, mode)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run(False)
    out2, grads2 = run("lean")
    set_activation_checkpointing(model, "auto")
    _assert_close(out2, out, rtol=1e-5)
    assert grads.keys() == grads2.keys()
    for name in grads:
        _assert_close(grads2[name], grads[name], msg=name)


def test_bf16_autocast_backward_is_close_and_keeps_parameter_dtypes():
    block = _block()
    x = torch.randn(2, 9, 17, 32)

    def run(mode):
        block.checkpoint = mode
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(xi)
        out.float().sum().backward()
        return xi.grad, {n: p.grad for n, p in block.named_parameters()}

    grad_x, grads = run(False)
    grad_x2, grads2 = run("lean")
    assert grad_x2.dtype == grad_x.dtype
    assert (grad_x2 - grad_x).norm() / grad_x.norm() < 2e-2  # bf16 rounding (~1 % measured)
    for name, g in grads.items():
        assert grads2[name].dtype == torch.float32, name
        assert torch.isfinite(grads2[name]).all(), name
        rel = (grads2[name] - g).norm() / g.norm().clamp_min(1e-6)
        assert rel < 5e-2, (name, float(rel))
