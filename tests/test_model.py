"""The dual-stream backbone and lifter: shapes, T-agnosticism, masking, graphs, attention, numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualpose.config import load_params
from dualpose.errors import ConfigError
from dualpose.model import DualPoseBackbone, DualPoseLifter, build_spec, spec_from_params
from dualpose.model.attention import AxisAttention
from dualpose.model.config import VARIANTS
from dualpose.model.gcn import SpatialGCN, TemporalKNNGCN, normalized_adjacency
from dualpose.skeleton import H36M_17, Skeleton

torch.set_num_threads(1)  # small ops: threads only add overhead (and spin on a busy machine)

TINY = {"depth": 2, "dim": 16, "heads": 2, "rep_dim": 8}


def settle(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every block matter: freshly initialised layer scales (1e-5) hide the blocks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ls1", "ls2")):
                p.fill_(0.5)
            elif name.endswith("fusion.weight"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def poses(b: int, t: int, j: int = 17, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, j, 3, generator=torch.Generator().manual_seed(seed))


# --- spec ---------------------------------------------------------------------------------------

def test_variants_and_overrides():
    assert {k: (v["depth"], v["dim"], v["T"]) for k, v in VARIANTS.items()} == {
        "XS": (12, 64, 27), "S": (26, 64, 81), "B": (16, 128, 243), "L": (26, 128, 243)}
    spec = build_spec("B", {"depth": 3, "drop_path": 0.1})
    assert (spec.depth, spec.dim, spec.T, spec.num_joints, spec.heads, spec.k_neighbors) == (3, 128, 243, 17, 8, 2)
    assert spec.hidden_dim == 512


def test_spec_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown model variant 'M'; known: \['XS', 'S', 'B', 'L'\]"):
        build_spec("M")
    with pytest.raises(ConfigError, match=r"unknown keys \['detph'\]"):
        build_spec("XS", {"detph": 3})
    with pytest.raises(ConfigError, match=r"\['num_joints'\] come from the skeleton"):
        build_spec("XS", {"num_joints": 16})
    with pytest.raises(ConfigError, match=r"dim \(60\) must be divisible by heads \(8\)"):
        build_spec("XS", {"dim": 60})
    with pytest.raises(ConfigError, match="temporal_pos_emb must be one of"):
        build_spec("XS", {"temporal_pos_emb": "alibi"})


def test_spec_from_params_and_custom_skeleton():
    params = load_params(None, ["model.variant=S", "model.overrides={depth: 2, dim: 32}", "pretrain.top_k_blocks=2"])
    spec = spec_from_params(params)
    assert (spec.depth, spec.dim, spec.T, spec.num_joints) == (2, 32, 81, 17)
    # a five-joint chain: nothing in the model assumes 17 joints
    chain = Skeleton("chain5", tuple(f"j{i}" for i in range(5)), (-1, 0, 1, 2, 3), ((1, 2),))
    spec5 = build_spec("XS", TINY, chain)
    assert spec5.num_joints == 5 and spec5.skeleton == "chain5"
    out = DualPoseLifter(spec5, chain)(poses(2, 6, j=5))
    assert out.shape == (2, 6, 5, 3)
    with pytest.raises(ValueError, match="has 17 joints but the model spec expects 5"):
        DualPoseLifter(spec5, H36M_17)


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_variants_on_tiny_inputs(variant):
    spec = build_spec(variant)
    model = DualPoseLifter(spec).eval()
    x = poses(2, 5)
    with torch.no_grad():
        assert model(x).shape == (2, 5, 17, 3)
        assert model.representation(x).shape == (2, 5, 17, 512)
        feats, blocks = model.backbone.forward_features(model.backbone.embed(x), return_blocks=True)
    assert feats.shape == (2, 5, 17, spec.dim)
    assert len(blocks) == spec.depth and all(b.shape == (2, 5, 17, spec.dim) for b in blocks)


# --- T-agnostic -------------------------------------------------------------------------------------

def test_same_weights_run_on_any_length():
    spec243 = build_spec("XS", {**TINY, "T": 243})
    spec27 = build_spec("XS", {**TINY, "T": 27})
    model = settle(DualPoseLifter(spec243))
    for frames in (100, 300, 3):
        assert model(poses(1, frames)).shape == (1, frames, 17, 3)
    # without a frame signal no tensor's shape depends on T: a T=27 model takes the T=243 weights
    # as they are (the learned table and the relative bias are the tensors sized by the design T)
    spec243 = build_spec("XS", {**TINY, "T": 243, "temporal_pos_emb": "none"})
    spec27 = build_spec("XS", {**TINY, "T": 27, "temporal_pos_emb": "none"})
    model = settle(DualPoseLifter(spec243))
    other = DualPoseLifter(spec27).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    x = poses(2, 100)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_no_statistics_across_samples():
    """No batch statistics (the reference's BatchNorm): a sample's output ignores its batch."""
    model = settle(DualPoseLifter(build_spec("XS", TINY)))
    x = poses(4, 12)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic_and_training_step_reaches_every_parameter():
    model = settle(DualPoseLifter(build_spec("XS", {**TINY, "drop_path": 0.2})))
    x = poses(2, 9)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    model(x).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_bf16_autocast_forward_is_finite_and_close():
    model = settle(DualPoseLifter(build_spec("XS", TINY)))
    x = poses(2, 16)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.shape == full.shape and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max() + 0.05


# --- masking and per-block outputs ------------------------------------------------------------------

@pytest.mark.parametrize("pos_emb", ["relative", "learned"])
def test_mask_token_replaces_only_masked_tokens(pos_emb):
    spec = build_spec("XS", {**TINY, "temporal_pos_emb": pos_emb})
    backbone = DualPoseBackbone(spec, with_mask_token=True).eval()
    x = poses(2, 6)
    tokens = backbone.embed(x)
    mask = torch.zeros(2, 6, 17, dtype=torch.bool)
    mask[0, 1, [2, 3, 4]] = True
    mask[1, 5, 0] = True
    filled = backbone.insert_mask_token(tokens, mask)
    assert torch.equal(filled[~mask], tokens[~mask])
    # mask token + the position embedding of its joint and its frame (if the spec has a frame table)
    expected = (backbone.mask_token + backbone.positions(6, x.device))[0].expand(6, 17, -1)
    torch.testing.assert_close(filled[0, 1, [2, 3, 4]], expected[1, [2, 3, 4]])
    torch.testing.assert_close(filled[1, 5, 0], expected[5, 0])
    assert not torch.allclose(filled[mask], tokens[mask])
    with torch.no_grad():
        masked_feats = backbone.forward_features(tokens, mask=mask)
        assert torch.equal(masked_feats, backbone.forward_features(filled))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(2, 6, 17\)"):
        backbone.insert_mask_token(tokens, mask.float())
    with pytest.raises(ValueError, match="no mask token"):
        DualPoseBackbone(spec).insert_mask_token(tokens, mask)


def test_per_block_outputs_end_in_the_final_norm():
    spec = build_spec("XS", {**TINY, "depth": 3})
    backbone = settle(DualPoseBackbone(spec))
    x = poses(1, 7)
    with torch.no_grad():
        feats, blocks = backbone.forward_features(backbone.embed(x), return_blocks=True)
        manual = backbone.embed(x)
        for i, block in enumerate(backbone.blocks):
            manual = block(manual)
            torch.testing.assert_close(blocks[i], manual)
        torch.testing.assert_close(feats, backbone.norm(blocks[-1]))
        torch.testing.assert_close(backbone(x), feats)


def test_sinusoidal_temporal_embedding_is_optional_and_order_aware():
    x = poses(1, 8)
    spec = build_spec("XS", {**TINY, "temporal_pos_emb": "sinusoidal"})
    backbone = DualPoseBackbone(spec)
    plain = DualPoseBackbone(build_spec("XS", {**TINY, "temporal_pos_emb": "none"}))
    plain.load_state_dict(backbone.state_dict())  # the fixed embedding adds no parameter
    diff = backbone.embed(x) - plain.embed(x)  # (1, T, J, C): the same for every joint
    torch.testing.assert_close(diff[0, :, 0], diff[0, :, 5])
    # scaled like the learned embeddings (std 0.02), not ~35x larger than the tokens
    torch.testing.assert_close(diff[0, 0, 0, : spec.dim // 2], torch.zeros(spec.dim // 2))  # sin(0)
    torch.testing.assert_close(diff[0, 0, 0, spec.dim // 2:], torch.full((spec.dim // 2,), 0.02))  # cos(0)


def _permutation_gap(spec) -> float:
    """Max |f(x[perm]) - f(x)[perm]| over frames for a backbone with settled layer scales and a
    trained (non-zero) frame table."""
    torch.manual_seed(0)
    backbone = settle(DualPoseBackbone(spec)).eval()
    if backbone.temporal_pos_embed is not None:
        with torch.no_grad():
            backbone.temporal_pos_embed.normal_(0.0, 0.05)
    x = poses(2, spec.T)
    perm = torch.randperm(spec.T)
    with torch.no_grad():
        return float((backbone(x[:, perm]) - backbone(x)[:, perm]).abs().max())


def test_backbone_without_frame_embedding_sees_a_set_and_with_it_sees_order():
    """Without a temporal position signal the backbone is permutation-equivariant over frames
    (the reference's defect); a trained frame table breaks that (the relative bias: below)."""
    assert _permutation_gap(build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "none"})) < 1e-5
    assert _permutation_gap(build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "learned"})) > 1e-2


def test_default_frame_signal_is_the_relative_bias():
    """XS (short clips: the explicit attention kernel on CPU) carries the relative frame bias by
    default, and once trained it sees frame order; the long-clip variants carry the frame table
    (a logit bias would push SDPA onto its slow path)."""
    default = build_spec("XS", {**TINY, "T": 9})
    assert default.temporal_pos_emb == "relative"
    assert {v: build_spec(v).temporal_pos_emb for v in ("XS", "S", "B", "L")} == {
        "XS": "relative", "S": "learned", "B": "learned", "L": "learned"}
    assert build_spec("B", {"temporal_pos_emb": "relative"}).temporal_pos_emb == "relative"  # still a choice
    torch.manual_seed(0)
    backbone = _with_random_relative_bias(settle(DualPoseBackbone(default))).eval()
    x, perm = poses(2, 9), torch.randperm(9)
    with torch.no_grad():
        assert float((backbone(x[:, perm]) - backbone(x)[:, perm]).abs().max()) > 1e-2


def _with_random_relative_bias(backbone: DualPoseBackbone, seed: int = 1) -> DualPoseBackbone:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # as after training
        for block in backbone.blocks:
            bias = block.attn_temporal.mixer.rel_bias
            bias.copy_(torch.randn(bias.shape, generator=gen))
    return backbone


def test_relative_frame_bias_sees_order_and_starts_order_blind():
    """The relative bias (one logit offset per head and frame offset) is zero at initialisation,
    so the untrained backbone is still permutation-equivariant; once non-zero it is not, and it
    only lives on the temporal attention (a relative backbone has no frame table)."""
    spec = build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "relative"})
    torch.manual_seed(0)
    backbone = settle(DualPoseBackbone(spec))
    assert backbone.temporal_pos_embed is None
    biases = [b.attn_temporal.mixer.rel_bias for b in backbone.blocks]
    assert all(b.shape == (spec.heads, 2 * spec.T - 1) and not b.any() for b in biases)
    assert all(b.attn_spatial.mixer.rel_bias is None for b in backbone.blocks)
    x, perm = poses(2, 9), torch.randperm(9)
    with torch.no_grad():
        assert float((backbone(x[:, perm]) - backbone(x)[:, perm]).abs().max()) < 1e-5
        _with_random_relative_bias(backbone)
        assert float((backbone(x[:, perm]) - backbone(x)[:, perm]).abs().max()) > 1e-2
        # a shift of the whole clip's content changes nothing but the ends: offsets, not positions
        assert backbone(poses(1, 30)).shape == (1, 30, spec.num_joints, spec.dim)


def test_relative_frame_bias_values_and_clipping():
    attn = AxisAttention(8, 2, "temporal", relative_frames=4)  # offsets -3..3
    with torch.no_grad():
        attn.rel_bias.copy_(torch.arange(14.0).view(2, 7))
    bias = attn.position_bias(6, torch.device("cpu"))
    assert bias.shape == (2, 6, 6)
    assert bias[0, 0, 0] == 3 and bias[0, 2, 0] == 5 and bias[0, 0, 2] == 1  # offset i - j
    assert bias[0, 5, 0] == 6 and bias[0, 0, 5] == 0  # offsets beyond +-3 are clipped
    assert bias[1, 1, 1] == 10
    with pytest.raises(ValueError, match="only defined over frames"):
        AxisAttention(8, 2, "spatial", relative_frames=4)


def test_rotary_frame_embedding_sees_order_without_parameters():
    """The rotary embedding adds no parameter (its state dict is the order-blind backbone's). At
    initialisation q and k are tiny (std 0.02 weights), the logits near zero and the backbone
    nearly order-blind; with q and k at a trained scale it sees frame order. Any clip length
    runs, and only the temporal attention rotates."""
    spec = build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "rotary"})
    torch.manual_seed(0)
    backbone = settle(DualPoseBackbone(spec)).eval()
    plain = DualPoseBackbone(build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "none"}))
    assert backbone.state_dict().keys() == plain.state_dict().keys()
    assert backbone.temporal_pos_embed is None
    assert all(b.attn_temporal.mixer.rotary_base == 9 and not b.attn_spatial.mixer.rotary_base
               for b in backbone.blocks)  # the design T is the base
    x, perm = poses(2, 9), torch.randperm(9)
    with torch.no_grad():
        assert float((backbone(x[:, perm]) - backbone(x)[:, perm]).abs().max()) < 1e-3
        for block in backbone.blocks:  # as after training: q and k large enough to steer attention
            block.attn_temporal.mixer.qkv.weight.mul_(25.0)
        assert float((backbone(x[:, perm]) - backbone(x)[:, perm]).abs().max()) > 1e-2
        assert backbone(poses(1, 30)).shape == (1, 30, spec.num_joints, spec.dim)


def test_rotary_logits_depend_on_the_frame_offset_only():
    """q_t . k_s after rotation is a function of t - s: shifting both frames leaves it unchanged,
    and the rotation keeps each vector's norm; frame 0 is not rotated."""
    from dualpose.model.attention import rotary_angles, rotate

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 12, 8, generator=gen), torch.randn(2, 3, 12, 8, generator=gen)
    cos, sin = rotary_angles(40, 8, base=27.0)
    assert cos.shape == sin.shape == (40, 4)
    # frequencies base**(-2i/d): 1, 27**-0.25, 27**-0.5, 27**-0.75 radians per frame
    torch.testing.assert_close(torch.atan2(sin[1], cos[1]), 27.0 ** (-torch.arange(0, 8, 2) / 8))

    def logits(start):
        c, s = cos[start:start + 12], sin[start:start + 12]
        return rotate(q, c, s) @ rotate(k, c, s).transpose(-1, -2)

    torch.testing.assert_close(logits(0), logits(17), rtol=1e-4, atol=1e-4)
    assert (logits(0) - q @ k.transpose(-1, -2)).abs().max() > 1e-2  # but the offset matters
    rotated = rotate(q, cos[:12], sin[:12])
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rotated[..., 0, :], q[..., 0, :])


def test_rotary_frame_embedding_rejects_odd_head_sizes_and_other_axes():
    with pytest.raises(ConfigError, match="'rotary' needs an even head size, got dim 24 / heads 8 = 3"):
        build_spec("XS", {"dim": 24, "heads": 8, "temporal_pos_emb": "rotary"})
    with pytest.raises(ValueError, match="only defined over frames"):
        AxisAttention(8, 2, "spatial", rotary_frames=9)
    with pytest.raises(ValueError, match="choose one frame signal"):
        AxisAttention(8, 2, "temporal", relative_frames=4, rotary_frames=4)


def _attention_on_both_kernels(attn: AxisAttention, x: torch.Tensor, grad_of: torch.Tensor) -> None:
    """Explicit and SDPA kernels give ``attn`` the same output and the same gradient of ``grad_of``."""
    from dualpose.model.attention import set_attention_kernel

    results = []
    for kernel in ("explicit", "sdpa"):
        previous = set_attention_kernel(kernel)
        try:
            attn.zero_grad()
            out = attn(x)
            out.pow(2).sum().backward()
            results.append((out.detach(), grad_of.grad.clone()))
        finally:
            set_attention_kernel(previous)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-4)
    assert results[0][1].abs().max() > 0


@pytest.mark.parametrize("frames", [5, 27, 40])
def test_rotary_frame_embedding_same_with_both_attention_kernels(frames):
    torch.manual_seed(0)
    attn = AxisAttention(16, 2, "temporal", rotary_frames=27)
    _attention_on_both_kernels(attn, torch.randn(2, frames, 3, 16), attn.qkv.weight)


@pytest.mark.parametrize("frames", [5, 9, 40])
def test_relative_frame_bias_same_with_both_attention_kernels(frames):
    """SDPA (float mask) and the explicit kernel give the same output and bias gradient."""
    torch.manual_seed(0)
    attn = AxisAttention(16, 2, "temporal", relative_frames=9)
    with torch.no_grad():
        attn.rel_bias.normal_()
    _attention_on_both_kernels(attn, torch.randn(2, frames, 3, 16), attn.rel_bias)


def test_frame_table_starts_at_zero_and_learns():
    """At initialisation the frame table is zero (the network starts as the order-blind reference),
    and the first step's gradient reaches it, so order is learned where it pays."""
    spec = build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "learned"})
    model = DualPoseLifter(spec)
    table = model.backbone.temporal_pos_embed
    assert torch.equal(table, torch.zeros_like(table))
    settle(model).train()
    x = poses(2, 9)
    loss = (model(x) - x.flip(1)).pow(2).mean()  # a target that depends on frame order
    loss.backward()
    assert table.grad is not None and table.grad.abs().max() > 0


def test_learned_frame_embedding_resamples_for_any_length():
    spec = build_spec("XS", {**TINY, "T": 9, "temporal_pos_emb": "learned"})
    backbone = DualPoseBackbone(spec)
    table = backbone.temporal_pos_embed
    with torch.no_grad():
        table.normal_()  # as after training
    assert table.shape == (9, spec.dim)
    torch.testing.assert_close(backbone.frame_embedding(9, torch.device("cpu")), table)
    longer = backbone.frame_embedding(17, torch.device("cpu"))  # every second row is a table row
    torch.testing.assert_close(longer[::2], table)
    torch.testing.assert_close(longer[1], (table[0] + table[1]) / 2)
    shorter = backbone.frame_embedding(5, torch.device("cpu"))
    torch.testing.assert_close(shorter, table[::2])
    with torch.no_grad():  # the same weights run on other lengths
        assert backbone(poses(1, 30)).shape == (1, 30, spec.num_joints, spec.dim)


# --- fusion, graphs, attention ------------------------------------------------------------------------

def test_fusion_starts_as_equal_average():
    backbone = settle(DualPoseBackbone(build_spec("XS", TINY)))
    block = backbone.blocks[0]
    block.init_fusion()
    x = backbone.embed(poses(1, 5))
    with torch.no_grad():
        a = block.attn_temporal(block.attn_spatial(x))
        g = block.graph_temporal(block.graph_spatial(x))
        torch.testing.assert_close(block(x), 0.5 * (a + g))
    assert torch.equal(block.fusion.weight, torch.zeros(2, 32)) and torch.equal(block.fusion.bias, torch.full((2,), 0.5))


def test_normalized_adjacency_known_values():
    chain = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(normalized_adjacency(chain), torch.tensor([[0, s, 0], [s, 0, s], [0, s, 0]]))
    a, b = 1 / 2, 1 / math.sqrt(6)
    torch.testing.assert_close(normalized_adjacency(chain, self_loops=True),
                               torch.tensor([[a, b, 0], [b, 1 / 3, b], [0, b, a]]))
    lonely = np.zeros((2, 2), dtype=np.float32)
    assert torch.equal(normalized_adjacency(lonely), torch.zeros(2, 2))


def test_spatial_gcn_matches_dense_formula():
    adj = normalized_adjacency(H36M_17.adjacency())
    gcn = SpatialGCN(8, adj)
    x = torch.randn(2, 3, 17, 8)
    with torch.no_grad():
        expected = F.relu(x + gcn.norm(torch.einsum("ij,btjc->btic", adj, gcn.V(x)) + gcn.U(x)))
        torch.testing.assert_close(gcn(x), expected)


def test_temporal_knn_gcn_matches_brute_force():
    gcn = TemporalKNNGCN(6, k=2)
    x = torch.randn(2, 7, 3, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        v = gcn.V(x)
        aggregate = torch.zeros_like(x)
        for b in range(2):
            for j in range(3):
                sim = x[b, :, j] @ x[b, :, j].T
                for t in range(7):
                    order = [int(i) for i in torch.argsort(sim[t], descending=True) if int(i) != t]
                    aggregate[b, t, j] = v[b, order[:2], j].mean(0)
        expected = F.relu(x + gcn.norm(aggregate + gcn.U(x)))
        torch.testing.assert_close(gcn(x), expected)
        # a frame never picks itself, even when its own similarity is the largest
        short = torch.randn(1, 2, 3, 6)
        v2 = gcn.V(short)
        expected_short = F.relu(short + gcn.norm(v2.flip(1) + gcn.U(short)))  # each frame's one neighbour
        torch.testing.assert_close(gcn(short), expected_short)
        single = torch.randn(1, 1, 3, 6)
        torch.testing.assert_close(gcn(single), F.relu(single + gcn.norm(gcn.U(single))))


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_attention_matches_explicit_softmax(axis):
    heads, c = 4, 16
    attn = AxisAttention(c, heads, axis)
    x = torch.randn(2, 5, 17, c)
    with torch.no_grad():
        q, k, v = attn.qkv(x).chunk(3, dim=-1)
        if axis == "temporal":
            q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        split = lambda z: z.reshape(*z.shape[:-1], heads, c // heads).transpose(-2, -3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)  # (B, outer, H, L, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        out = (weights @ v).transpose(-2, -3).reshape(*x.shape[:1], -1, q.shape[-2], c)
        if axis == "temporal":
            out = out.transpose(1, 2)
        torch.testing.assert_close(attn(x), attn.proj(out), rtol=1e-5, atol=1e-6)
    assert attn.qkv.bias is None


# --- torch.compile ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_torch_compile_matches_eager_on_xs():
    """XS as built: the whole model traces as one graph, and inductor (regional) matches eager."""
    torch._dynamo.reset()
    model = settle(DualPoseLifter(build_spec("XS")))
    x = poses(2, 6)
    with torch.no_grad():
        eager = model(x)
        whole = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(whole(x), eager, rtol=1e-5, atol=1e-6)
        model.backbone.compile_blocks(fullgraph=True)  # inductor, one compiled graph for all blocks
        torch.testing.assert_close(model(x), eager, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("pos_emb", ["learned", "relative"])
def test_compile_for_inference_matches_eager_and_keeps_the_module(pos_emb):
    """Inductor with frozen weights gives eager's output (fp32 rounding), leaves the eager module
    usable and unchanged, and bakes the weights in at its first call (a later change is not seen)."""
    from dualpose.model.compiled import compile_for_inference

    torch._dynamo.reset()
    model = settle(DualPoseLifter(build_spec("XS", {"depth": 2, "dim": 16, "T": 9, "temporal_pos_emb": pos_emb})))
    model.train()
    x = poses(2, 9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = compile_for_inference(model)
    assert not model.training
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(fast(x), eager, rtol=1e-4, atol=1e-5)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        model.head.bias.add_(1.0)
        torch.testing.assert_close(model(x), eager + 1.0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(x), eager, rtol=1e-4, atol=1e-5)  # frozen constants
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()
    torch._dynamo.reset()
