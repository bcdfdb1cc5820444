"""Training checkpoints that load without executing code: safetensors + JSON only.

Accelerate's ``save_state`` pickles the optimiser, scheduler and RNG states; loading a pickle
can run arbitrary code, so DualPose writes its own resumable state instead:

- ``tensors.safetensors``: every module's weights (``<name>/<param>``) and the optimiser's
  per-parameter tensors (``optim/<group-index>/<param-index>/<key>``);
- ``state.json``: step counters, optimiser hyper-parameters, scheduler state, the config.

All randomness in training is derived from (seed, epoch, step), so no RNG state is needed for an
exact resume. Checkpoints are folders ``step-00000420`` written atomically; the newest ``keep``
are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dualpose.io.atomic import atomic_dir

PREFIX = "step-"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    extra: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write ``folder/step-XXXXXXXX`` atomically and prune old checkpoints."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            tensors[f"{prefix}/{name}"] = value.detach().cpu().contiguous()
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    state = {
        "step": step,
        "optimizer": optim_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": extra,
    }
    target = folder / f"{PREFIX}{step:08d}"
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=_json_default))
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _json_default(value):
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} into a checkpoint")


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, Any]:
    """Restore modules (strictly), optimiser and scheduler; return the JSON state."""
    path = Path(path)
    tensors = load_file(str(path / "tensors.safetensors"))
    state = json.loads((path / "state.json").read_text())
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}
        own = module.state_dict()
        missing = sorted(set(own) - set(sub))
        unexpected = sorted(set(sub) - set(own))
        reshaped = sorted(k for k in set(own) & set(sub) if own[k].shape != sub[k].shape)
        if missing or unexpected or reshaped:
            raise KeyError(f"{path}: checkpoint does not match module {prefix!r}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, different shapes {reshaped[:5]}")
        module.load_state_dict(sub)
    if optimizer is not None:
        _restore_optimizer(optimizer, tensors, state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state
