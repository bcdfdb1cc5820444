"""ONNX export with dynamic batch and length; onnxruntime agrees with PyTorch."""

from __future__ import annotations

import pytest
import torch

from dualpose.model import DualPoseLifter, build_spec
from dualpose.model.export import check_onnx, export_onnx

pytest.importorskip("onnxruntime", reason="onnxruntime is a dev dependency (pip install -e .[dev])")
torch.set_num_threads(1)  # small ops: threads only add overhead (and spin on a busy machine)


@pytest.fixture(scope="module")
def xs_model():
    # seeded: the kNN graph picks neighbours by similarity, and a near-tie resolved differently by
    # onnxruntime and PyTorch (possible for some random weights) would change the output
    torch.manual_seed(0)
    model = DualPoseLifter(build_spec("XS"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # layer scales at 1e-5 would make every block invisible in the output
        for name, p in model.named_parameters():
            if name.endswith(("ls1", "ls2")):
                p.fill_(0.5)
            elif name.endswith("fusion.weight"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.train()  # export must switch to eval itself and restore the mode


def test_xs_onnx_matches_pytorch_at_other_batch_and_length(xs_model, tmp_path):
    path = export_onnx(xs_model, tmp_path / "xs.onnx")
    assert xs_model.training
    for batch, frames in ((1, 27), (3, 64), (5, 10)):
        x = torch.randn(batch, frames, 17, 3, generator=torch.Generator().manual_seed(frames))
        assert check_onnx(xs_model, path, x) < 1e-4
    import onnx

    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "frames", 17, 3]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_relative_frame_bias_exports_and_runs_other_lengths(tmp_path):
    """The relative bias is indexed by offsets computed from the input's length, so the exported
    graph stays dynamic in frames, including lengths past the design T (offsets clipped)."""
    model = DualPoseLifter(build_spec("XS", {"depth": 2, "dim": 16, "heads": 2, "T": 9,
                                             "temporal_pos_emb": "relative"}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ls1", "ls2")):
                p.fill_(0.5)
            elif name.endswith("rel_bias"):
                p.copy_(torch.randn(p.shape, generator=gen))
    path = export_onnx(model, tmp_path / "rel.onnx")
    for batch, frames in ((1, 9), (2, 20), (1, 5)):
        x = torch.randn(batch, frames, 17, 3, generator=torch.Generator().manual_seed(frames))
        assert check_onnx(model, path, x) < 1e-4


def test_rotary_frame_embedding_exports_and_runs_other_lengths(tmp_path):
    """The rotation angles are computed from the input's length, so the exported graph stays
    dynamic in frames."""
    torch.manual_seed(0)
    model = DualPoseLifter(build_spec("XS", {"depth": 2, "dim": 16, "heads": 2, "T": 9,
                                             "temporal_pos_emb": "rotary"}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ls1", "ls2")):
                p.fill_(0.5)
    path = export_onnx(model, tmp_path / "rotary.onnx")
    for batch, frames in ((1, 9), (2, 20), (1, 5)):
        x = torch.randn(batch, frames, 17, 3, generator=torch.Generator().manual_seed(frames))
        assert check_onnx(model, path, x) < 1e-4
