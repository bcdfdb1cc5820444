"""Every fast path of the model gives the numbers of its plain path (fp32 tolerance), forward and
gradients, at several sequence lengths including ones other than the design T."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dualpose.model import DualPoseLifter, build_spec
from dualpose.model import attention as attention_mod
from dualpose.model.attention import AxisAttention, attend, choose_kernel, set_attention_kernel
from dualpose.model.blocks import (DualStreamBlock, block_activation_bytes, plan_blocks, plan_pass,
                                   set_activation_checkpointing)
from dualpose.model.gcn import TemporalKNNGCN
from dualpose.model.lean import set_lean_activations


@pytest.fixture(autouse=True)
def _one_thread_and_auto_kernel():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = set_attention_kernel("auto")
    yield
    set_attention_kernel(previous)
    torch.set_num_threads(threads)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _forward_and_grads(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    module.zero_grad(set_to_none=True)
    xin = x.clone().requires_grad_(True)
    out = module(xin)
    # a loss that weights every output differently, so that no gradient is trivially symmetric
    weights = torch.linspace(-1.0, 2.0, out.numel()).view_as(out)
    (out * weights).sum().backward()
    grads = {n.removeprefix("module."): p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), xin.grad.detach(), grads


def _assert_same(plain: tuple, fast: tuple) -> None:
    out0, gx0, g0 = plain
    out1, gx1, g1 = fast
    _close(out1, out0)
    _close(gx1, gx0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        scale = float(g0[name].abs().max()) + 1e-12
        assert float((g1[name] - g0[name]).abs().max()) <= 1e-4 * scale + 1e-7, name


def _reference_axis_attention(module: AxisAttention, x: torch.Tensor) -> torch.Tensor:
    """The module as at commit f5dad27: transpose to the sequence axis, SDPA, transpose back."""
    b, t, j, c = x.shape
    qkv = module.qkv(x)
    if module.axis == "temporal":
        qkv = qkv.transpose(1, 2)
    outer, length = qkv.shape[1], qkv.shape[2]
    qkv = qkv.reshape(b * outer, length, 3, module.heads, c // module.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, outer, length, c)
    if module.axis == "temporal":
        out = out.transpose(1, 2)
    return module.proj(out)


class _Reference(torch.nn.Module):
    def __init__(self, module: AxisAttention) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _reference_axis_attention(self.module, x)


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("frames", [5, 27, 40, 81])
@pytest.mark.parametrize("kernel", ["explicit", "sdpa", "auto"])
def test_attention_kernels_match_the_f5dad27_module(axis, frames, kernel):
    torch.manual_seed(0)
    module = AxisAttention(32, 4, axis)
    x = torch.randn(2, frames, 17, 32)
    plain = _forward_and_grads(_Reference(module), x)
    set_attention_kernel(kernel)
    fast = _forward_and_grads(module, x)
    _assert_same(plain, fast)


def test_explicit_attention_equals_sdpa_on_raw_tensors():
    torch.manual_seed(1)
    q, k, v = (torch.randn(6, 8, 27, 8, requires_grad=True) for _ in range(3))
    out_e = attend(q, k, v, "explicit")
    grads_e = torch.autograd.grad(out_e.pow(2).sum(), (q, k, v))
    out_s = attend(q, k, v, "sdpa")
    grads_s = torch.autograd.grad(out_s.pow(2).sum(), (q, k, v))
    _close(out_e, out_s)
    for a, b in zip(grads_e, grads_s):
        _close(a, b)


def test_kernel_choice_by_device_and_length():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_kernel(cpu, 17) == "explicit"
    assert choose_kernel(cpu, attention_mod.EXPLICIT_MAX_LENGTH) == "explicit"
    assert choose_kernel(cpu, attention_mod.EXPLICIT_MAX_LENGTH + 1) == "sdpa"
    assert choose_kernel(cpu, 243) == "sdpa"
    assert choose_kernel(cuda, 17) == "sdpa"  # GPUs always take SDPA (flash / memory-efficient)
    set_attention_kernel("sdpa")
    assert choose_kernel(cpu, 17) == "sdpa"
    set_attention_kernel("explicit")
    assert choose_kernel(cuda, 243) == "explicit"


def test_kernel_switch_rejects_unknown_names(monkeypatch):
    with pytest.raises(ValueError, match="attention kernel must be one of"):
        set_attention_kernel("flash")
    monkeypatch.setenv("DUALPOSE_ATTENTION", "fastest")
    with pytest.raises(ValueError, match="DUALPOSE_ATTENTION must be one of"):
        attention_mod._kernel_from_env()
    monkeypatch.setenv("DUALPOSE_ATTENTION", "SDPA")
    assert attention_mod._kernel_from_env() == "sdpa"


@pytest.mark.parametrize("frames", [2, 3, 9, 27, 50])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_knn_index_select_gather_matches_plain_gather(frames, k):
    torch.manual_seed(2)
    module = TemporalKNNGCN(16, k)
    x = torch.randn(2, frames, 5, 16)
    module.fast_gather = False
    plain = _forward_and_grads(module, x)
    module.fast_gather = True
    fast = _forward_and_grads(module, x)
    _assert_same(plain, fast)


def test_knn_aggregate_is_the_mean_of_the_chosen_neighbours():
    """The fast gather picks V of exactly the neighbour frames of the same joint and sample."""
    torch.manual_seed(3)
    module = TemporalKNNGCN(8, 2)
    x = torch.randn(2, 7, 3, 8)
    neighbours = module.neighbours(x, 2)  # (B, J, T, k)
    v = module.V(x)
    captured = {}
    module.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("agg_plus_u", inp[0]))
    module(x)
    expected = torch.empty_like(v)
    for b in range(2):
        for j in range(3):
            for t in range(7):
                expected[b, t, j] = v[b, neighbours[b, j, t], j].mean(dim=0)
    _close(captured["agg_plus_u"] - module.U(x), expected)
    assert not (neighbours == torch.arange(7).view(1, 1, 7, 1)).any()  # never a frame itself


def _block(dim: int = 32, drop_path: float = 0.0) -> DualStreamBlock:
    torch.manual_seed(4)
    adjacency = torch.rand(17, 17)
    block = DualStreamBlock(dim, 4, 2 * dim, adjacency, 2, layer_scale_init=0.7, drop_path=drop_path)
    torch.nn.init.normal_(block.fusion.weight, 0.0, 0.3)  # not the equal-average initialisation
    return block


@pytest.mark.parametrize("frames", [6, 33])
@pytest.mark.parametrize("mode", [True, "selective"])
def test_checkpointed_block_gives_the_same_forward_and_gradients(frames, mode):
    block = _block(drop_path=0.3).train()  # stochastic depth: the recomputation must redraw the same
    x = torch.randn(4, frames, 17, 32)
    block.checkpoint = False
    torch.manual_seed(5)
    plain = _forward_and_grads(block, x)
    block.checkpoint = mode
    torch.manual_seed(5)
    fast = _forward_and_grads(block, x)
    _assert_same(plain, fast)


def test_checkpointing_switch_and_auto_rule():
    model = DualPoseLifter(build_spec("XS", {"depth": 3}))
    assert set_activation_checkpointing(model, True) == 3
    assert all(b.checkpoint is True for b in model.backbone.blocks)
    set_activation_checkpointing(model, "selective")
    assert all(b.checkpoint == "selective" for b in model.backbone.blocks)
    with pytest.raises(ValueError, match="activation checkpointing must be one of"):
        set_activation_checkpointing(model, "sometimes")



def test_auto_plan_keeps_plain_then_lean_then_recomputes():
    # all fit with the plain modules: all plain
    assert plan_blocks(4, 10, 5, 40) == [False] * 4
    # not with the plain ones, with the fused ones: as many plain as the rest leaves room for
    assert plan_blocks(4, 10, 5, 30) == [False, False, "lean", "lean"]
    assert plan_blocks(4, 10, 5, 20) == ["lean"] * 4
    # not even with the fused ones: the blocks past the budget are recomputed
    assert plan_blocks(4, 10, 5, 12) == ["lean", "lean", "full", "full"]
    assert plan_blocks(4, 10, 5, 0) == ["full"] * 4
    assert plan_blocks(4, 10, 5, -7) == ["full"] * 4
    # fused sub-layers switched off: plain or recomputed (the earlier rule)
    assert plan_blocks(4, 10, 5, 25, lean=False) == [False, False, "full", "full"]


def test_cpu_auto_plan_for_b_on_a_24_gib_host(monkeypatch):
    from dualpose.model import blocks as blocks_mod

    gib = 2**30
    monkeypatch.setattr(blocks_mod, "host_memory_bytes", lambda: 24 * gib)  # budget 3 GiB (1/8)
    lean = block_activation_bytes(2, 243, 17, 128)  # B at T=243, batch 2, fused sub-layers (default)
    assert lean == block_activation_bytes(2, 243, 17, 128, lean=True)
    assert 0.17 * gib < lean < 0.19 * gib  # ~190 MB
    plain = block_activation_bytes(2, 243, 17, 128, lean=False)
    assert 0.3 * gib < plain < 0.4 * gib  # ~360 MB
    x = torch.empty(2, 243, 17, 128)
    assert plan_pass(["auto"] * 16, x) == [False] + ["lean"] * 15  # nothing recomputed
    assert plan_pass(["auto"] * 4, x) == [False] * 4
    assert plan_pass(["auto"] * 26, x) == ["lean"] * 16 + ["full"] * 10  # L's depth
    # what the blocks before keep, and fixed modes, come off the budget
    assert plan_pass(["auto"], x, kept_bytes=3 * gib) == ["full"]
    assert plan_pass([False] * 8 + ["auto"] * 8, x) == [False] * 8 + ["lean"] + ["full"] * 7
    assert plan_pass([True, "selective", "lean", False], x) == ["full", "selective", "lean", False]
    set_lean_activations(False)
    try:  # the plain modules only: 8 of 16 blocks of B fit (the earlier rule)
        assert plan_pass(["auto"] * 16, x) == [False] * 8 + ["full"] * 8
        assert block_activation_bytes(2, 243, 17, 128) == plain
        assert plan_pass(["lean"], x) == [False]
    finally:
        set_lean_activations(True)
    monkeypatch.setattr(blocks_mod, "host_memory_bytes", lambda: 8 * gib)  # a smaller machine: 1 GiB
    assert plan_pass(["auto"] * 16, x) == ["lean"] * 5 + ["full"] * 11
    # XS at batch 4 fits anywhere with the plain modules
    assert plan_pass(["auto"] * 12, torch.empty(4, 27, 17, 64)) == [False] * 12


def test_host_memory_is_positive_and_at_most_physical():
    import os

    from dualpose.model.blocks import host_memory_bytes

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < host_memory_bytes() <= physical


def test_backbone_plans_checkpointing_for_the_whole_pass(monkeypatch):
    """In one training pass the first blocks keep their activations until the budget is spent;
    the rest are recomputed in the backward pass (counted by forward calls of each block)."""
    from dualpose.model import blocks as blocks_mod

    model = DualPoseLifter(build_spec("XS", {"depth": 4, "dim": 16, "heads": 2})).train()
    x = torch.randn(2, 9, 17, 3)
    per_block = block_activation_bytes(2, 9, 17, 16)  # with the fused sub-layers
    monkeypatch.setattr(blocks_mod, "cpu_checkpoint_budget", lambda: int(2.5 * per_block))
    calls = [0] * 4
    for i, block in enumerate(model.backbone.blocks):
        block.attn_spatial.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    model(x).sum().backward()
    assert calls == [1, 1, 2, 2]  # two blocks fit in 2.5 blocks' budget; the last two are recomputed
    calls[:] = [0] * 4
    with torch.no_grad():
        model(x)
    assert calls == [1, 1, 1, 1]


def test_gpu_budget_is_a_share_of_the_card_less_what_is_in_use(monkeypatch):
    from dualpose.model import blocks as blocks_mod

    gib = 2**30

    class Props:
        total_memory = 80 * gib

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 20 * gib)
    assert blocks_mod.activation_budget(torch.device("cuda", 0)) == int(0.7 * 80 * gib) - 20 * gib
    monkeypatch.setattr(blocks_mod, "host_memory_bytes", lambda: 16 * gib)
    assert blocks_mod.activation_budget(torch.device("cpu")) == 2 * gib


def test_runtime_switches_leave_the_state_dict_unchanged():
    block = _block()
    keys = set(block.state_dict())
    block.checkpoint = True
    block.graph_temporal.mixer.fast_gather = False
    assert set(block.state_dict()) == keys
    assert not any("checkpoint" in k or "fast" in k for k in keys)
    assert {"attn_spatial.mixer.qkv.weight", "attn_temporal.mixer.proj.bias", "fusion.weight",
            "graph_temporal.mixer.V.weight"} <= keys


def _set_paths(model: torch.nn.Module, fast: bool) -> None:
    set_attention_kernel("auto" if fast else "sdpa")
    set_activation_checkpointing(model, "selective" if fast else False)
    for module in model.modules():
        if isinstance(module, TemporalKNNGCN):
            module.fast_gather = fast


@pytest.mark.parametrize("frames", [9, 27, 40])
def test_whole_model_fast_paths_match_plain_paths(frames):
    """XS-width model (2 blocks, layer scale raised so that every mixer matters) at the design
    T = 27 and at other lengths: all fast paths at once against all plain ones."""
    torch.manual_seed(6)
    model = DualPoseLifter(build_spec("XS", {"depth": 2, "layer_scale_init": 0.5})).train()
    for block in model.backbone.blocks:
        torch.nn.init.normal_(block.fusion.weight, 0.0, 0.3)
    x = torch.randn(2, frames, 17, 3)
    _set_paths(model, fast=False)
    plain = _forward_and_grads(model, x)
    _set_paths(model, fast=True)
    fast = _forward_and_grads(model, x)
    _assert_same(plain, fast)
    model.eval()
    with torch.no_grad():
        out_fast = model(x)
        _set_paths(model, fast=False)
        _close(out_fast, model(x))


def _forward_calls(block: DualStreamBlock, x: torch.Tensor, backward: bool = True) -> int:
    """How often the block's first mixer runs for one forward (+ backward): 2 when checkpointed."""
    calls = []
    handle = block.attn_spatial.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = block(x.clone().requires_grad_(True))
        if backward:
            out.sum().backward()
    finally:
        handle.remove()
    return len(calls)


def test_auto_checkpointing_recomputes_only_large_blocks(monkeypatch):
    from dualpose.model import blocks as blocks_mod

    block = _block().train()
    x = torch.randn(2, 8, 17, 32)
    assert block.checkpoint == "auto"
    assert _forward_calls(block, x) == 1  # small: not checkpointed
    monkeypatch.setattr(blocks_mod, "cpu_checkpoint_budget", lambda: 0)
    assert _forward_calls(block, x) == 2  # "large": recomputed in the backward pass
    for mode in (True, "full", "selective"):
        block.checkpoint = mode
        assert _forward_calls(block, x) == 2, mode
    block.checkpoint = False
    assert _forward_calls(block, x) == 1
    block.checkpoint = True
    block.eval()
    with torch.no_grad():
        assert _forward_calls(block, x, backward=False) == 1  # inference never checkpoints
