"""Training checkpoints that load without executing code: safetensors + JSON only.

Accelerate's ``save_state`` pickles the optimiser, scheduler and RNG states; loading a pickle
can run arbitrary code, so DualPose writes its own resumable state instead:

- ``tensors.safetensors``: every module's weights (``<name>/<param>``) and the optimiser's
  per-parameter tensors (``optim/<group-index>/<param-index>/<key>``);
- ``state.json``: step counters, optimiser hyper-parameters, scheduler state, the config.

All randomness in training is derived from (seed, epoch, step), so no RNG state is needed for an
exact resume. Checkpoints are folders ``step-00000420`` written atomically; the newest ``keep``
are kept.

Resuming is safe against two kinds of staleness: a damaged newest checkpoint (torn by a full
disk, edited by hand) is skipped for the previous intact one, saying so; and a checkpoint whose
*fingerprint* (digests of the data tables, clip index, masked inputs and initial weights, and of
the config sections that shape the run) differs from the current run is refused, so a resumed
run never mixes old data or settings with new ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dualpose.errors import DualPoseError
from dualpose.io.atomic import atomic_dir

PREFIX = "step-"
log = logging.getLogger(__name__)
# Settings that change how long a run goes or how often it saves, not what each step computes:
# a resumed run may change them.
_RESUMABLE_SETTINGS = ("epochs", "max_steps", "save_every_steps", "num_workers")


class StaleCheckpointError(DualPoseError):
    """The checkpoint was made from other data or settings than the current run's."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_fingerprint(params, layout, stage: str) -> dict[str, str]:
    """Digests of what a training stage reads: config sections and input files (by name under the root).

    Paths are not part of it (a copied storage root resumes); contents are.
    """
    dataset = params.train_dataset
    section = getattr(params, stage).model_dump(mode="json")
    for key in _RESUMABLE_SETTINGS:
        section.pop(key, None)
    config = {"seed": params.seed, "skeleton": params.skeleton, "clips": params.clips.model_dump(mode="json"),
              "model": params.model.model_dump(mode="json"), stage: section}
    if stage == "pretrain":
        config["masking"] = params.masking.model_dump(mode="json")
    found = {"config": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()}
    tables = layout.tables(dataset)
    inputs = {f"tables/{p.name}": p for p in sorted(tables.glob("*.parquet"))} if tables.is_dir() else {}
    inputs["clips"] = layout.clips(dataset)
    if stage == "pretrain":
        inputs["masked"] = layout.masked(dataset)
    if stage == "finetune" and getattr(params.finetune, "init", None) == "pretrained":
        inputs["pretrained"] = layout.model("pretrain") / "model.safetensors"
    for name, path in inputs.items():
        if Path(path).is_file():
            found[name] = _file_digest(Path(path))
    return found


def check_fingerprint(path: Path, saved: dict[str, str] | None, current: dict[str, str] | None) -> None:
    """Raise :class:`StaleCheckpointError` naming what changed since ``path`` was written."""
    if not current:
        return
    if saved is None:
        log.warning("%s: checkpoint has no fingerprint (older DualPose); cannot tell whether data or config changed",
                    path)
        return
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        raise StaleCheckpointError(
            f"{path}: cannot resume: {', '.join(changed)} changed since this checkpoint was written; "
            "run again with --fresh to start over (or restore the inputs)")


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


def load_latest_intact(
    folder: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    fingerprint: dict[str, str] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that reads back whole; skip damaged ones (saying so).

    Returns ``(path, state)``, or None when there is no checkpoint. Raises when every checkpoint
    is damaged, or when the newest intact one is stale (see :func:`check_fingerprint`).
    """
    found = list_checkpoints(folder)
    damaged: list[str] = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, modules, optimizer, scheduler, fingerprint=fingerprint)
        except StaleCheckpointError:
            raise
        except Exception as exc:  # torn safetensors, bad JSON, missing keys: try the one before
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            damaged.append(path.name)
            log.warning("%s: checkpoint is damaged (%s); falling back to the previous one", path, reason)
            continue
        if damaged:
            log.warning("resuming from %s (skipped damaged %s)", path.name, ", ".join(damaged))
        return path, state
    if found:
        raise DualPoseError(f"{folder}: every checkpoint is damaged ({', '.join(damaged)}); "
                            "run again with --fresh to start over")
    return None


def load_checkpoint(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    fingerprint: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Restore modules (strictly), optimiser and scheduler; return the JSON state.

    Everything is read and checked (including the fingerprint) before any module changes.
    """
    path = Path(path)
    tensors = load_file(str(path / "tensors.safetensors"))
    state = json.loads((path / "state.json").read_text())
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path / 'state.json'}: field 'step': expected an integer step counter")
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path / 'tensors.safetensors'}: tensor {name!r}: expected finite values, got NaN/inf")
    check_fingerprint(path, (state.get("extra") or {}).get("fingerprint"), fingerprint)
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
