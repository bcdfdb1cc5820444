"""Weights: safetensors + JSON round trips, wrapper prefixes, strict keys, backbone transfer, no pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dualpose.errors import DataFormatError
from dualpose.model import DualPoseBackbone, DualPoseLifter, build_spec, load_backbone_from, load_weights, save_weights
from dualpose.model.weights import read_weights, strip_wrapper_prefixes

torch.set_num_threads(1)  # small ops: threads only add overhead (and spin on a busy machine)

TINY = {"depth": 2, "dim": 16, "heads": 2, "rep_dim": 8}


def settled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, so that a wrongly loaded tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def x2d(b: int = 2, t: int = 9) -> torch.Tensor:
    return torch.randn(b, t, 17, 3, generator=torch.Generator().manual_seed(1))


def test_save_load_round_trip(tmp_path):
    spec = build_spec("XS", TINY)
    model = settled(DualPoseLifter(spec))
    folder = save_weights(model, spec, tmp_path / "weights")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "DualPoseLifter" and config["spec"] == spec.to_dict()
    loaded = load_weights(folder)
    assert isinstance(loaded, DualPoseLifter) and loaded.spec == spec and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x2d()), model(x2d()))
    # the safetensors file alone is self-describing (config in its metadata)
    (folder / "config.json").unlink()
    with torch.no_grad():
        assert torch.equal(load_weights(folder / "model.safetensors")(x2d()), model(x2d()))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    spec = build_spec("XS", TINY)
    model = settled(DualPoseLifter(spec))
    path = tmp_path / "wrapped.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = DualPoseLifter(spec).eval()
    assert load_weights(path, fresh) is fresh
    with torch.no_grad():
        assert torch.equal(fresh(x2d()), model(x2d()))


def test_wrapped_models_save_plain_keys(tmp_path):
    spec = build_spec("XS", TINY)
    model = settled(DualPoseLifter(spec))
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until called
    save_weights(compiled, None, tmp_path / "w")
    tensors, _ = read_weights(tmp_path / "w")
    assert set(tensors) == set(model.state_dict())
    assert strip_wrapper_prefixes({"backbone._orig_mod.norm.weight": torch.ones(1)}).keys() == {"backbone.norm.weight"}
    with pytest.raises(DataFormatError, match="unique parameter names"):
        strip_wrapper_prefixes({"module.a": torch.ones(1), "a": torch.ones(1)})


def test_key_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    spec = build_spec("XS", TINY)
    state = DualPoseLifter(spec).state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(2)
    state["rep.weight"] = torch.zeros(3, 16)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(DataFormatError) as err:
        load_weights(path, DualPoseLifter(spec))
    msg = str(err.value)
    assert msg.startswith(f"{path}: field 'state dict': expected the ")
    assert "missing keys ['head.bias']" in msg and "unexpected keys ['extra.weight']" in msg
    assert "shape mismatches ['rep.weight: saved (3, 16), model (8, 16)']" in msg


def test_behaviour_fields_must_agree(tmp_path):
    save_weights(DualPoseLifter(build_spec("XS", TINY)), None, tmp_path / "w")
    other = DualPoseLifter(build_spec("XS", {**TINY, "heads": 4}))  # same shapes, other attention
    with pytest.raises(DataFormatError, match="heads: saved 2, model 4"):
        load_weights(tmp_path / "w", other)


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (Path.touch, (Path(self.marker),))


def test_pickle_files_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = str(marker)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": payload}, protocol=2))
    with pytest.raises(DataFormatError, match=r"expected a safetensors file \(pickle-based .pt/.pth/.ckpt weights are "
                                              r"refused: loading them can execute code.*got a pickle/torch.save file"):
        load_weights(evil, DualPoseLifter(build_spec("XS", TINY)))
    assert not marker.exists()
    zipped = tmp_path / "model.pth"
    torch.save(DualPoseLifter(build_spec("XS", TINY)).state_dict(), zipped)
    with pytest.raises(DataFormatError, match="got a pickle/torch.save file"):
        read_weights(zipped)
    with pytest.raises(DataFormatError, match="no such file"):
        read_weights(tmp_path)


def test_backbone_transfer_from_pretraining(tmp_path):
    spec = build_spec("XS", TINY)
    student = settled(DualPoseBackbone(spec, with_mask_token=True), seed=1)
    save_weights(student, spec, tmp_path / "pretrained")
    lifter = settled(DualPoseLifter(spec), seed=2)
    head_before = {k: v.clone() for k, v in lifter.state_dict().items() if not k.startswith("backbone.")}
    loaded = load_backbone_from(tmp_path / "pretrained", lifter)
    assert "mask_token" not in loaded and "pos_embed" in loaded and "norm.weight" in loaded
    assert any(k.startswith("blocks.1.") for k in loaded) and "joints_embed.weight" in loaded
    for k, v in lifter.backbone.state_dict().items():
        assert torch.equal(v, student.state_dict()[k]), k
    for k, v in head_before.items():
        assert torch.equal(lifter.state_dict()[k], v), k
    # a backbone saved alone also reloads as a backbone (with its mask token)
    again = load_weights(tmp_path / "pretrained")
    assert isinstance(again, DualPoseBackbone) and torch.equal(again.mask_token, student.mask_token)


def test_backbone_transfer_from_training_checkpoint_skips_teacher(tmp_path):
    """Layout of dualpose.train.checkpoint: '<module>/<param>' keys, student and teacher side by side."""
    spec = build_spec("XS", TINY)
    student = settled(DualPoseBackbone(spec, with_mask_token=True), seed=3)
    teacher = settled(DualPoseBackbone(spec), seed=4)
    tensors = {f"student/{k}": v for k, v in student.state_dict().items()}
    tensors.update({f"teacher/{k}": v for k, v in teacher.state_dict().items()})
    tensors["optim/0/exp_avg"] = torch.zeros(3)
    folder = tmp_path / "step-00000010"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))
    lifter = DualPoseLifter(spec)
    load_backbone_from(folder, lifter)
    assert torch.equal(lifter.backbone.blocks[0].fusion.weight, student.blocks[0].fusion.weight)
    # two candidate students: ambiguous, named in the error
    tensors.update({f"other/{k}": v.clone() for k, v in teacher.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "tensors.safetensors"))
    with pytest.raises(DataFormatError, match=r"prefixes \['other/', 'student/', 'teacher/'\]"):
        load_backbone_from(folder, lifter)
    load_backbone_from(folder, lifter, prefix="other/")
    assert torch.equal(lifter.backbone.pos_embed, teacher.pos_embed)


def test_backbone_transfer_rejects_another_size(tmp_path):
    save_weights(DualPoseBackbone(build_spec("XS", TINY)), None, tmp_path / "small")
    with pytest.raises(DataFormatError, match=r"missing keys \['blocks.2"):
        load_backbone_from(tmp_path / "small", DualPoseLifter(build_spec("XS", {**TINY, "depth": 3})))
