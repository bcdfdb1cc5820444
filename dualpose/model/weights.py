"""Model weights as safetensors plus a JSON config; loading never executes code.

A weights folder holds ``model.safetensors`` and ``config.json`` (the :class:`ModelSpec`, the
architecture name). The spec is also stored in the safetensors metadata, so the single file is
self-describing. Only safetensors is read: pickle-based files (``.pt``/``.pth``/``.ckpt`` from
``torch.save``) are refused, because unpickling can run arbitrary code.

State dicts saved from wrapped models load as they are: ``module.`` (DataParallel /
DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes are stripped.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dualpose.errors import ConfigError, DataFormatError
from dualpose.io.atomic import atomic_dir
from dualpose.model.backbone import DualPoseBackbone, DualPoseLifter
from dualpose.model.config import ModelSpec
from dualpose.skeleton import Skeleton

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_TENSORS = "tensors.safetensors"  # dualpose.train.checkpoint folders
_META_KEY = "dualpose_config"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_COPY_PREFIX = re.compile(r"(^|[./_])(teacher|ema)([./_]|$)")  # teacher / EMA copies of a backbone
# Spec fields that change behaviour without changing any tensor shape: must agree on load.
_BEHAVIOUR_FIELDS = ("heads", "k_neighbors", "graph_self_loops", "temporal_pos_emb", "skeleton", "num_joints")
ARCHITECTURES = ("DualPoseLifter", "DualPoseBackbone")


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor], source: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` wrappers (and inner ``._orig_mod.``) from keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        clean = key
        while clean.startswith(_WRAPPER_PREFIXES):
            clean = clean.split(".", 1)[1]
        clean = clean.replace("._orig_mod.", ".")  # a compiled submodule
        if clean in out:
            raise DataFormatError(source, key, "unique parameter names after removing module./_orig_mod. prefixes",
                                  f"a second tensor named {clean!r}")
        out[clean] = value
    return out


def _weights_file(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.is_dir():
        for name in (WEIGHTS_FILE, CHECKPOINT_TENSORS):
            if (path / name).is_file():
                return path / name
        raise DataFormatError(path, WEIGHTS_FILE, f"a weights folder containing {WEIGHTS_FILE} (and {CONFIG_FILE})",
                              "no such file")
    if not path.is_file():
        raise DataFormatError(path, "<file>", "an existing safetensors file or weights folder", "not found")
    return path


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file before any parser sees it."""
    with path.open("rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] > size - 8 or head[8:9] != b"{":
        kind = "a pickle/torch.save file" if head[:1] == b"\x80" or head[:2] == b"PK" else "an unknown format"
        raise DataFormatError(path, "<file>", "a safetensors file (pickle-based .pt/.pth/.ckpt weights are refused: "
                              "loading them can execute code; convert them with safetensors.torch.save_file)", kind)


def read_weights(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors (wrapper prefixes stripped) and the saved config (``None`` if there is none) of a
    weights folder, a ``model.safetensors`` file or a training checkpoint folder."""
    path = _weights_file(source)
    _check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise DataFormatError(path, "<file>", "a readable safetensors file", f"{type(exc).__name__}: {exc}") from None
    config: dict[str, Any] | None = None
    config_path = path.parent / CONFIG_FILE
    try:
        if config_path.is_file():
            config = json.loads(config_path.read_text())
        elif _META_KEY in metadata:
            config = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as exc:
        raise DataFormatError(config_path, "<file>", "JSON", str(exc)) from None
    return strip_wrapper_prefixes(tensors, path), config


def save_weights(model: nn.Module, spec: ModelSpec | None, directory: str | os.PathLike) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json`` atomically."""
    model = _unwrap(model)
    spec = spec or getattr(model, "spec", None)
    if spec is None:
        raise ValueError("save_weights needs the model's ModelSpec")
    config = {"architecture": type(model).__name__, "spec": spec.to_dict(), "format": 1}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={_META_KEY: json.dumps(config)})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "_orig_mod", None) or (getattr(model, "module", None)
                                                      if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else None)
        if inner is None:
            return model
        model = inner


def spec_from_config(config: dict[str, Any] | None, source: str | os.PathLike) -> ModelSpec:
    if not config or "spec" not in config:
        raise DataFormatError(source, CONFIG_FILE, "a config with the model 'spec' (written by save_weights)",
                              "none found" if not config else f"keys {sorted(config)}")
    try:
        return ModelSpec.from_dict(config["spec"])
    except (ConfigError, TypeError) as exc:
        raise DataFormatError(source, "spec", "a valid model spec", str(exc)) from None


def _check_behaviour(saved: ModelSpec, spec: ModelSpec, source: str | os.PathLike) -> None:
    diffs = [f"{f}: saved {getattr(saved, f)!r}, model {getattr(spec, f)!r}"
             for f in _BEHAVIOUR_FIELDS if getattr(saved, f) != getattr(spec, f)]
    if diffs:
        raise DataFormatError(source, "spec", "weights saved for the same architecture", "; ".join(diffs))


def key_differences(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """Missing keys, unexpected keys and shape mismatches of ``saved`` against ``own``; "" if none."""
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = sorted(f"{k}: saved {tuple(saved[k].shape)}, model {tuple(own[k].shape)}"
                    for k in set(own) & set(saved) if saved[k].shape != own[k].shape)
    return "; ".join(f"{label} {items}" for label, items in
                     (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
                     if items)


def load_state_dict_strict(module: nn.Module, tensors: dict[str, torch.Tensor],
                           source: str | os.PathLike = "<memory>") -> None:
    """Load exactly the module's keys with matching shapes, or raise listing every difference."""
    own = module.state_dict()
    got = key_differences(own, tensors)
    if got:
        raise DataFormatError(source, "state dict", f"the {len(own)} tensors of {type(module).__name__}", got)
    module.load_state_dict(tensors, strict=True)


def load_weights(source: str | os.PathLike, model: nn.Module | None = None,
                 skeleton: Skeleton | None = None) -> nn.Module:
    """Load weights saved by :func:`save_weights` (or any safetensors state dict).

    Without ``model``, the architecture and spec come from the saved config and a new model is
    built (in eval mode). With ``model``, its keys must match exactly.
    """
    tensors, config = read_weights(source)
    if model is None:
        spec = spec_from_config(config, source)
        arch = (config or {}).get("architecture", "DualPoseLifter")
        if arch not in ARCHITECTURES:
            raise DataFormatError(source, "architecture", f"one of {list(ARCHITECTURES)}", repr(arch))
        if arch == "DualPoseBackbone":
            model = DualPoseBackbone(spec, skeleton, with_mask_token="mask_token" in tensors)
        else:
            model = DualPoseLifter(spec, skeleton)
        model.eval()
    elif config and "spec" in config and hasattr(_unwrap(model), "spec"):
        _check_behaviour(spec_from_config(config, source), _unwrap(model).spec, source)
    load_state_dict_strict(_unwrap(model), tensors, source)
    return model


def _backbone_prefix(tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> str:
    anchor = "joints_embed.weight"
    found = sorted({k[: -len(anchor)] for k in tensors if k.endswith(anchor)})
    students = [p for p in found if not _COPY_PREFIX.search(p.lower())]
    if len(students) != 1:
        raise DataFormatError(source, anchor, "exactly one backbone (besides any teacher/EMA copy); "
                              "pass prefix= to choose", f"prefixes {found}")
    return students[0]


def load_backbone_from(source: str | os.PathLike, model: DualPoseLifter | DualPoseBackbone,
                       prefix: str | None = None) -> list[str]:
    """Initialise a model's backbone (embedding, position embedding, blocks, final norm) from
    pretrained weights; mask token, teacher and heads in the source are ignored.

    ``source``: a weights folder/file or a training checkpoint folder. The backbone's keys are
    found under ``prefix`` (auto-detected: the one prefix of ``...joints_embed.weight`` that is
    not a teacher/EMA copy, e.g. ``""``, ``"backbone."`` or ``"student/"``). Returns the keys
    loaded (relative to the backbone).
    """
    target = _unwrap(model)
    backbone = target.backbone if isinstance(target, DualPoseLifter) else target
    if not isinstance(backbone, DualPoseBackbone):
        raise TypeError(f"expected a DualPoseLifter or DualPoseBackbone, got {type(model).__name__}")
    tensors, config = read_weights(source)
    if prefix is None:
        prefix = _backbone_prefix(tensors, source)
    if config and "spec" in config:
        _check_behaviour(spec_from_config(config, source), backbone.spec, source)
    sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = backbone.state_dict()
    sub = {k: v for k, v in sub.items() if k != "mask_token"}
    wanted = {k: v for k, v in own.items() if k != "mask_token"}
    got = key_differences(wanted, sub)
    if got:
        raise DataFormatError(source, f"backbone tensors under prefix {prefix!r}",
                              "embedding, position embedding, blocks and final norm of the same spec", got)
    backbone.load_state_dict({**own, **sub}, strict=True)
    return sorted(sub)

