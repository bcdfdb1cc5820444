"""CRL: parameter-free target normalisation, masked-token loss, EMA teacher, collapse monitor."""

import math

import numpy as np
import pytest
import torch

from dualpose.config import load_params
from dualpose.data.prepare import prepare_dataset
from dualpose.layout import Layout
from dualpose.model.backbone import DualPoseBackbone
from dualpose.model.config import build_spec
from dualpose.stages import build_clips, build_masks
from dualpose.train import pretrain as pretrain_module
from dualpose.train.crl import CENTRED_EPS, CRLModel, block_targets, normalise_block_output


def test_normalisations_are_parameter_free_and_length_agnostic():
    x = torch.randn(2, 5, 17, 8) * 3 + 7
    inst = normalise_block_output(x, "instance")
    flat = inst.reshape(2, -1, 8)
    torch.testing.assert_close(flat.mean(1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)
    layer = normalise_block_output(x, "layer")
    torch.testing.assert_close(layer.mean(-1), torch.zeros(2, 5, 17), atol=1e-5, rtol=0)
    assert normalise_block_output(torch.randn(1, 300, 17, 8), "instance").shape == (1, 300, 17, 8)
    assert normalise_block_output(torch.full((1, 4, 17, 8), 2.0), "instance").abs().max() == 0  # collapsed


def test_joint_normalisation_removes_what_a_joint_is_and_keeps_each_clips_pose():
    """Each joint is centred over the batch's clips and frames: a per-joint constant shared by every
    clip (the joint's identity) leaves the target unchanged, while what differs between clips (each
    clip's mean pose, which the per-clip ``trajectory`` centring removes) stays in it."""
    gen = torch.Generator().manual_seed(0)
    motion = torch.randn(4, 9, 17, 8, generator=gen)
    identity = 3 * torch.randn(1, 1, 17, 8, generator=gen)  # the same for every clip
    pose = torch.randn(4, 1, 17, 8, generator=gen)  # static within a clip, different across clips
    joint = normalise_block_output(motion + pose + identity, "joint")
    torch.testing.assert_close(joint, normalise_block_output(motion + pose, "joint"), atol=0.02, rtol=0)
    pooled = joint.pow(2).mean(dim=(1, 2))  # unit mean square per (clip, channel), up to the epsilon
    assert float(pooled.min()) > 0.95 and float(pooled.max()) <= 1.0
    # the clip's own pose survives: its per-joint mean over frames is most of the static part
    static = normalise_block_output(pose.expand(4, 9, 17, 8) + identity, "joint")
    assert float(static.pow(2).mean()) > 0.95
    assert float(normalise_block_output(pose.expand(4, 9, 17, 8) + identity, "trajectory").abs().max()) < 1e-4
    # known values: two clips whose joint 4, channel 2 is constant 1 and 3: centred -1 and +1
    x = torch.zeros(2, 3, 17, 8)
    x[0, :, 4, 2], x[1, :, 4, 2] = 1.0, 3.0
    var, power = torch.tensor([1 / 17, 1 / 17]), torch.tensor([1 / 17, 9 / 17])
    expected = torch.tensor([-1.0, 1.0]) / torch.sqrt(var + CENTRED_EPS * power)
    torch.testing.assert_close(normalise_block_output(x, "joint")[:, 0, 4, 2], expected)
    torch.testing.assert_close(normalise_block_output(x * 1e-3, "joint"), normalise_block_output(x, "joint"))


def test_trajectory_normalisation_removes_what_a_joint_is_and_keeps_how_it_moves():
    """Each joint's trajectory is centred over frames and each channel scaled by the clip's pooled
    spread: a per-joint constant (the joint's identity) barely changes the target (only through
    the relative epsilon), whereas the all-token instance norm keeps it as most of the target."""
    gen = torch.Generator().manual_seed(0)
    motion = torch.randn(2, 9, 17, 8, generator=gen)
    identity = 3 * torch.randn(1, 1, 17, 8, generator=gen)  # a large per-joint offset
    traj = normalise_block_output(motion + identity, "trajectory")
    torch.testing.assert_close(traj.mean(1), torch.zeros(2, 17, 8), atol=1e-5, rtol=0)
    pooled = traj.pow(2).mean(dim=(1, 2))  # unit spread per channel, up to the relative epsilon
    assert float(pooled.min()) > 0.98 and float(pooled.max()) <= 1.0
    torch.testing.assert_close(traj, normalise_block_output(motion, "trajectory"), atol=0.02, rtol=0)
    # known values: one joint's channel over 3 frames, every other value zero
    x = torch.zeros(1, 3, 17, 8)
    x[0, :, 4, 2] = torch.tensor([1.0, 2.0, 3.0])
    var, power = 2 / 51, 14 / 51  # over the 3 x 17 tokens of channel 2
    expected = torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(var + CENTRED_EPS * power)
    torch.testing.assert_close(normalise_block_output(x, "trajectory")[0, :, 4, 2], expected)
    # scale-free: the same target for features 1000x smaller (the FFN outputs are ~5e-3)
    torch.testing.assert_close(normalise_block_output(x * 1e-3, "trajectory"), normalise_block_output(x, "trajectory"))
    # a teacher whose features stop moving gives (near) zero targets: the collapse monitor sees it
    static = normalise_block_output(identity.expand(2, 9, 17, 8) + 1e-4 * motion, "trajectory")
    assert float(static.pow(2).mean()) < 0.01
    inst = normalise_block_output(motion + identity, "instance")
    per_joint_mean = inst.mean(1, keepdim=True).expand_as(inst)
    assert float(per_joint_mean.pow(2).mean() / inst.pow(2).mean()) > 0.85  # identity dominates
    with pytest.raises(ValueError, match="unknown target normalisation 'batch'"):
        normalise_block_output(motion, "batch")


def _crl(top_k=2, target_norm="instance"):
    torch.manual_seed(0)
    spec = build_spec("XS", {"depth": 3, "dim": 16})
    return CRLModel(DualPoseBackbone(spec, with_mask_token=True), top_k=top_k, target_norm=target_norm)


def test_loss_is_masked_mse_over_sqrt_c_and_teacher_sees_the_full_input():
    crl = _crl()
    x = torch.randn(2, 6, 17, 3)
    mask = torch.zeros(2, 6, 17, dtype=torch.bool)
    mask[:, :, 4:8] = True
    loss, logs = crl(x, mask)
    target, _ = crl.targets(x)
    features = crl.student.forward_features(crl.student.embed(x), mask=mask)
    pred = crl.regression_head(features)
    expected = ((pred - target) ** 2).sum(-1)[mask].mean() / math.sqrt(16)
    torch.testing.assert_close(loss, expected)
    assert logs["masked_ratio"] == pytest.approx(4 / 17)
    # the teacher's targets do not depend on the mask; unmasked predictions do not enter the loss
    other = torch.zeros_like(mask)
    other[:, :, 4:8] = True
    loss.backward()
    grads = crl.regression_head.weight.grad.clone()
    assert grads.abs().sum() > 0
    assert all(p.grad is None for p in crl.teacher.parameters())
    with pytest.raises(ValueError, match="top_k_blocks must be in"):
        CRLModel(DualPoseBackbone(build_spec("XS", {"depth": 2, "dim": 16}), with_mask_token=True), top_k=3)
    with pytest.raises(ValueError, match="no masked token"):
        crl(x, torch.zeros_like(mask))


def test_joint_targets_need_a_batch_of_clips():
    """``joint`` centres each joint over the batch: two clips are enough, one is refused loudly
    (it would silently become the per-clip ``trajectory`` normalisation)."""
    crl = _crl(target_norm="joint")
    x = torch.randn(2, 6, 17, 3)
    mask = torch.zeros(2, 6, 17, dtype=torch.bool)
    mask[:, :, 4:8] = True
    loss, _ = crl(x, mask)
    assert torch.isfinite(loss)
    target, _ = crl.targets(x)
    torch.testing.assert_close(target, crl.targets(x.flip(0))[0].flip(0))  # the clips' order does not matter
    with pytest.raises(ValueError, match="target_norm 'joint' centres each joint over a batch of clips.*got 1 clip"):
        crl(x[:1], mask[:1])


def test_targets_are_the_top_blocks_pre_residual_ffn_outputs():
    """data2vec's target: each of the last K blocks' feed-forward output before layer scale and the
    residual connection (fused by the block's weights), not the residual stream, which is dominated
    by the token's own input."""
    crl = _crl(top_k=2)
    assert crl.target == "ffn"
    x = torch.randn(2, 6, 17, 3)
    teacher = crl.teacher.module
    with torch.no_grad():
        embedded = teacher.embed(x)
        h, expected_ffn = embedded, []
        for block in teacher.blocks:  # recompute each block's fused FFN output by hand
            a = block.attn_spatial(h)
            a_in = a + block.attn_temporal.ls1 * block.attn_temporal.mixer(block.attn_temporal.norm1(a))
            g = block.graph_spatial(h)
            g_in = g + block.graph_temporal.ls1 * block.graph_temporal.mixer(block.graph_temporal.norm1(g))
            ffn_a = block.attn_temporal.mlp(block.attn_temporal.norm2(a_in))
            ffn_g = block.graph_temporal.mlp(block.graph_temporal.norm2(g_in))
            a_out = a_in + block.attn_temporal.ls2 * ffn_a
            g_out = g_in + block.graph_temporal.ls2 * ffn_g
            w = block.fusion(torch.cat((a_out, g_out), -1)).softmax(-1)
            expected_ffn.append(ffn_a * w[..., :1] + ffn_g * w[..., 1:])
            h = block(h)
    target, _ = crl.targets(x)
    expected = torch.stack([normalise_block_output(f, "instance") for f in expected_ffn[-2:]]).mean(0)
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)
    # under layer scale 1e-5 the block outputs are almost the embedding; the FFN targets are not
    with torch.no_grad():
        _, blocks = teacher.forward_features(embedded, return_blocks=True)
    out_target = torch.stack([normalise_block_output(b, "instance") for b in blocks[-2:]]).mean(0)
    emb = normalise_block_output(embedded, "instance")
    assert torch.nn.functional.cosine_similarity(out_target.flatten(), emb.flatten(), dim=0) > 0.99
    assert torch.nn.functional.cosine_similarity(target.flatten(), emb.flatten(), dim=0) < 0.5
    for f in expected_ffn:  # not shrunk by layer scale (1e-5): the norm's eps does not crush it
        assert normalise_block_output(f, "instance").reshape(-1, 16).var(0).mean() > 0.3
    assert block_targets(blocks, 2, "output")[1] is blocks[-1]
    with pytest.raises(ValueError, match="unknown CRL target 'stream'"):
        block_targets(blocks, 2, "stream")


def test_teacher_tracks_student_by_ema():
    crl = _crl()
    with torch.no_grad():
        for p in crl.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in crl.teacher.parameters()]
    crl.teacher.update(crl.student, 0.99)
    for b, t, s in zip(before, crl.teacher.parameters(), crl.student.parameters()):
        torch.testing.assert_close(t, 0.99 * b + 0.01 * s)


def test_a_collapsing_run_stops_loudly(tiny_params_path, monkeypatch):
    params = load_params(tiny_params_path)
    layout = Layout.from_root(params.storage.root)
    prepare_dataset(params, "synthetic", layout, tiny_params_path.parent)
    build_clips(params, layout, "synthetic")
    build_masks(params, layout, "synthetic")
    params.pretrain.epochs = 3

    def collapsed_targets(self, x):  # a teacher whose outputs no longer depend on the input
        b, t, j = x.shape[:3]
        return torch.zeros(b, t, j, self.dim), torch.tensor(0.0)

    monkeypatch.setattr(CRLModel, "targets", collapsed_targets)
    with pytest.raises(pretrain_module.CollapseError, match="pretraining collapsed: normalised target variance 0"):
        pretrain_module.run_pretraining(params, layout)
    assert not (layout.model("pretrain") / "model.safetensors").exists()


def test_pretraining_draws_each_epochs_masks_from_a_new_stream(tiny_params_path, monkeypatch):
    """Every (clip, view) is seen once per epoch, with that epoch's masks: no clip sees the same
    mask twice in a run (epoch e uses streams e * views + view of the recorded plan)."""
    from dualpose.data.masking import MaskedInputs

    params = load_params(tiny_params_path)
    layout = Layout.from_root(params.storage.root)
    prepare_dataset(params, "synthetic", layout, tiny_params_path.parent)
    build_clips(params, layout, "synthetic")
    build_masks(params, layout, "synthetic")
    params.pretrain.epochs = 2
    seen: list[tuple[int, int, int]] = []
    original = MaskedInputs.for_epoch

    def recording(self, clip_ids, view, epoch):
        views = np.broadcast_to(np.asarray(view), np.asarray(clip_ids).shape)
        seen.extend((int(c), int(v), int(epoch)) for c, v in zip(clip_ids, views))
        return original(self, clip_ids, view, epoch)

    monkeypatch.setattr(MaskedInputs, "for_epoch", recording)
    pretrain_module.run_pretraining(params, layout)
    assert {e for _, _, e in seen} == {0, 1}
    # within an epoch each (clip, view) is drawn at most once, so each mask stream is used once
    assert len(seen) == len(set(seen))
    streams = {(c, e * params.masking.views + v) for c, v, e in seen}
    assert len(streams) == len(seen)


def test_config_offers_exactly_the_implemented_target_norms():
    """params.yaml's pretrain.target_norm choices and the normalisations crl.py implements agree."""
    from typing import get_args

    from dualpose.config import PretrainConfig
    from dualpose.train.crl import TARGET_NORMS

    assert set(get_args(PretrainConfig.model_fields["target_norm"].annotation)) == set(TARGET_NORMS)
    for kind in TARGET_NORMS:
        assert normalise_block_output(torch.randn(2, 3, 17, 4), kind).shape == (2, 3, 17, 4)
