"""benchmarks/cpu_probes.py: the two probed levers compute what the plain model computes."""

import pytest
import torch

from tests.conftest import load_benchmark

probes = load_benchmark("cpu_probes")

from dualpose.model import DualPoseLifter, build_spec  # noqa: E402
from dualpose.model.config import TEMPORAL_POS_EMB  # noqa: E402

SMALL = {"depth": 2, "dim": 16, "heads": 2, "rep_dim": 8, "T": 9, "k_neighbors": 2}


def _perturbed_model(overrides: dict) -> DualPoseLifter:
    """A small model with every affine, layer scale and fusion weight moved off its initial value."""
    torch.manual_seed(0)
    model = DualPoseLifter(build_spec("XS", {**SMALL, **overrides}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("pos_emb", TEMPORAL_POS_EMB)
@pytest.mark.parametrize("frames", [9, 5])  # the design length and a shorter clip
def test_folded_blocks_compute_the_plain_model(pos_emb, frames):
    model = _perturbed_model({"temporal_pos_emb": pos_emb}).eval()
    x = torch.randn(3, frames, model.spec.num_joints, model.spec.in_channels)
    folded = probes.folded_model(model)
    with torch.no_grad():
        expected = model(x)
        got = folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, torch.zeros_like(got))
    assert all(isinstance(block.forward, probes.FoldedBlock) for block in folded.backbone.blocks)
    assert not any(isinstance(block.forward, probes.FoldedBlock) for block in model.backbone.blocks)


def test_folded_linear_maps_the_plain_normalisation_to_each_linear():
    torch.manual_seed(0)
    norm, first, second = torch.nn.LayerNorm(6), torch.nn.Linear(6, 4), torch.nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    weight, bias = probes.folded_linear(norm, [first, second])
    x = torch.randn(10, 6)
    plain = torch.nn.functional.layer_norm(x, (6,))
    with torch.no_grad():
        torch.testing.assert_close(plain @ weight.T + bias, torch.cat((first(norm(x)), second(norm(x))), dim=-1))


@pytest.mark.parametrize("batch", [2, 3])  # even and uneven halves
def test_thread_split_gives_the_whole_batch_gradients(batch):
    model = _perturbed_model({}).train()
    x = torch.randn(batch, 9, model.spec.num_joints, model.spec.in_channels)
    y = torch.randn(batch, 9, model.spec.num_joints, model.spec.out_channels)
    probes.mpjpe(model(x), y).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    threads = torch.get_num_threads()
    probes.split_training_pass(model, x, y, probes.mpjpe)
    assert torch.get_num_threads() == threads  # restored
    for p, g in zip(model.parameters(), whole):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_thread_split_reraises_a_worker_error():
    model = _perturbed_model({}).train()
    x = torch.randn(2, 9, model.spec.num_joints, model.spec.in_channels)
    wrong = torch.randn(2, 9, model.spec.num_joints, 7)  # no broadcast with 3 output channels
    with pytest.raises(RuntimeError):
        probes.split_training_pass(model, x, wrong, probes.mpjpe)


def test_folding_dispatches_fewer_operators_and_matrix_products():
    model = _perturbed_model({}).eval()
    x = torch.randn(1, 9, model.spec.num_joints, model.spec.in_channels)
    plain = probes.operators_of(model, x)
    folded = probes.operators_of(probes.folded_model(model), x)
    # per block: one LayerNorm and two products fewer on the shared input, one in the temporal
    # graph; the fusion's linear layer becomes two matrix-vector products
    assert folded["matrix_products"] == plain["matrix_products"] - 2 * model.spec.depth
    assert folded["operators"] < plain["operators"]
    assert plain["matrix_products"] > 0


def test_thread_split_inference_gives_the_whole_batch_outputs():
    model = _perturbed_model({}).eval()
    x = torch.randn(5, 9, model.spec.num_joints, model.spec.in_channels)
    with torch.no_grad():
        expected = model(x)
    got = probes.split_inference(model, x)
    assert not got.requires_grad  # the workers' own no-grad mode held
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
