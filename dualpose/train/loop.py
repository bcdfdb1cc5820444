"""The training loop shared by pretraining and finetuning (nanoGPT-style: one readable loop).

One code path for 1 CPU process, N CPU processes (gloo), 1..N GPUs and N nodes: Accelerate
wraps the model and optimiser; the launcher (``accelerate launch`` / ``torchrun``) decides the
process count and mixed precision, never this code.

Determinism: the clip order of epoch ``e`` is a permutation seeded by (seed, e), augmentation is
seeded by (seed, step), so a run resumed from a checkpoint replays exactly what an uninterrupted
run would have done (bit-exact in fp32 on CPU).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dualpose.config import OptimConfig
from dualpose.errors import ConfigError, DataFormatError
from dualpose.train.checkpoint import load_latest_intact, run_fingerprint, save_checkpoint


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int  # per process (params.yaml's batch_size is global: see stage_settings)
    grad_accum: int
    save_every_steps: int
    seed: int
    run_dir: Path  # checkpoints/ and tb/ go here
    max_steps: int | None = None
    grad_clip: float | None = 1.0
    resume: bool = True
    progress: bool = True
    desc: str = "train"
    fingerprint: dict[str, str] | None = None  # inputs and settings; a checkpoint of other ones is not resumed


def per_process_batch(global_batch: int, processes: int, where: str) -> int:
    """``batch_size`` in params.yaml is global (clips per micro-batch over all processes), so the
    learning rate and the optimiser steps per epoch do not change with the process count."""
    if global_batch % processes:
        raise ConfigError(f"{where}.batch_size = {global_batch} is the global batch and must divide evenly over "
                          f"the {processes} processes (e.g. {processes * max(1, global_batch // processes)})")
    return global_batch // processes


def stage_settings(cfg, params, layout, stage: str, resume: bool, processes: int = 1) -> LoopSettings:
    """Loop settings of the ``pretrain`` / ``finetune`` section ``cfg`` of params.yaml."""
    from dualpose.train.runtime import progress_enabled

    return LoopSettings(epochs=cfg.epochs, batch_size=per_process_batch(cfg.batch_size, processes, stage),
                        grad_accum=cfg.grad_accum,
                        save_every_steps=cfg.save_every_steps, seed=params.seed, run_dir=layout.run_dir(stage),
                        max_steps=cfg.max_steps, grad_clip=cfg.optim.grad_clip, resume=resume,
                        progress=progress_enabled(), desc=stage, fingerprint=run_fingerprint(params, layout, stage))


@dataclass
class LoopState:
    """Counters that travel in checkpoints (JSON-serialisable)."""

    step: int = 0  # optimiser steps done
    best: float = math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "best_epoch": self.best_epoch, "history": self.history}

    @classmethod
    def from_dict(cls, data: dict) -> "LoopState":
        return cls(step=data["step"], best=data["best"], best_epoch=data["best_epoch"], history=data["history"])


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam(W) with PyTorch's fused kernel (one call for every tensor instead of ~10 small ops per
    tensor: the step 3.5-3.9x faster on the CPU, ``benchmarks/optimizer_step.py``) where this torch
    and the parameters' devices have it; the plain implementation otherwise. Same update rule and
    state either way."""
    params = list(params)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)
    try:
        return cls(params, fused=True, **kwargs)
    except RuntimeError:  # torch < 2.4 on CPU, or a device without the fused kernel
        return cls(params, **kwargs)


def epoch_decay_scheduler(optimizer, decay: float, steps_per_epoch: int):
    """lr x ``decay`` once per epoch, stepped per optimiser step (exact on resume)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** (step // max(1, steps_per_epoch)))


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0xC11B]).permutation(num_items)


def rank_batches(num_items: int, batch_size: int, num_processes: int, rank: int, seed: int, epoch: int) -> list[np.ndarray]:
    """This rank's micro-batches (item indices) for one epoch; every rank gets the same count.

    Global batches of ``batch_size * num_processes`` items are cut from the epoch's permutation
    (the incomplete tail is dropped; a data set smaller than one global batch wraps around).
    """
    order = epoch_order(num_items, seed, epoch)
    global_bs = batch_size * num_processes
    if num_items < global_bs:
        order = np.resize(order, global_bs)
    n_batches = len(order) // global_bs
    batches = order[: n_batches * global_bs].reshape(n_batches, num_processes, batch_size)
    return [b[rank] for b in batches]


class Trainer:
    """Runs ``loss_fn`` over epochs of micro-batches with checkpoints, logs and resume.

    - ``make_batch(indices, step) -> dict`` gathers one micro-batch (augmentation seeded by step);
    - ``loss_fn(batch, step) -> (loss, logs)``;
    - ``after_step(step)`` runs after every optimiser step (EMA teacher update);
    - ``validate(epoch) -> dict | None``: metrics; ``"selection"`` (lower is better) picks the best;
    - ``on_best(epoch, metrics)`` saves the best weights; ``callbacks`` receive every log record.
    """

    def __init__(
        self,
        accelerator,
        settings: LoopSettings,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_items: int,
        make_batch: Callable[[np.ndarray, int], dict],
        loss_fn: Callable[[dict, int], tuple[torch.Tensor, dict[str, float]]],
        lr_decay: float,
        checkpoint_modules: dict[str, nn.Module] | None = None,
        after_step: Callable[[int], dict[str, float] | None] | None = None,
        validate: Callable[[int], dict[str, float] | None] | None = None,
        on_best: Callable[[int, dict], None] | None = None,
        callbacks: list[Callable[[dict], None]] | None = None,
    ):
        if accelerator.gradient_accumulation_steps != settings.grad_accum:
            raise ValueError(f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches "
                             f"but the stage asks for {settings.grad_accum}")
        if num_items < 1:
            raise DataFormatError(settings.run_dir, "training clips", "at least one clip to train on",
                                  "none (check clips.min_length and clips.length against the data)")
        if settings.epochs < 1 or (settings.max_steps is not None and settings.max_steps < 1):
            raise ValueError(f"{settings.desc}: epochs ({settings.epochs}) and max_steps ({settings.max_steps}) "
                             "must be >= 1; a run of zero steps would overwrite the model with untrained weights")
        self.acc = accelerator
        self.s = settings
        self.model = model
        self.optimizer = optimizer
        self.num_items = num_items
        self.make_batch = make_batch
        self.loss_fn = loss_fn
        self.after_step = after_step
        self.validate = validate
        self.on_best = on_best
        self.callbacks = callbacks or []
        self.micro_per_epoch = len(rank_batches(num_items, settings.batch_size, accelerator.num_processes,
                                                accelerator.process_index, settings.seed, 0))
        self.steps_per_epoch = max(1, self.micro_per_epoch // settings.grad_accum)
        self.total_steps = self.steps_per_epoch * settings.epochs
        if settings.max_steps is not None:
            self.total_steps = min(self.total_steps, settings.max_steps)
        self.scheduler = epoch_decay_scheduler(optimizer, lr_decay, self.steps_per_epoch)
        self.checkpoint_modules = checkpoint_modules or {"model": accelerator.unwrap_model(model)}
        self.state = LoopState()
        self.ckpt_dir = settings.run_dir / "checkpoints"
        self.writer = None

    # ------------------------------------------------------------------ helpers
    def _log(self, record: dict) -> None:
        record = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in record.items()}
        self.state.history.append(record)
        if self.acc.is_main_process:
            if self.writer is not None:
                for key, value in record.items():
                    if key not in ("step", "epoch", "kind") and isinstance(value, (int, float)):
                        self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])
            for cb in self.callbacks:
                cb(record)

    def save(self) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(self.ckpt_dir, self.state.step, self.checkpoint_modules, self.optimizer,
                            self.scheduler, {"loop": self.state.as_dict(), "fingerprint": self.s.fingerprint})
        self.acc.wait_for_everyone()

    def _resume(self) -> None:
        if not self.s.resume:
            return
        loaded = load_latest_intact(self.ckpt_dir, self.checkpoint_modules, self.optimizer, self.scheduler,
                                    fingerprint=self.s.fingerprint)
        if loaded is None:
            return
        path, state = loaded
        self.state = LoopState.from_dict(state["extra"]["loop"])
        self.acc.print(f"resumed from {path} at step {self.state.step}")

    # ------------------------------------------------------------------ main loop
    def fit(self) -> LoopState:
        from tqdm.auto import tqdm

        self._resume()
        if self.acc.is_main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.s.run_dir / "tb"))
        start_step = self.state.step
        bar = tqdm(total=self.total_steps, initial=start_step, desc=self.s.desc, unit="step", dynamic_ncols=True,
                   disable=not (self.s.progress and self.acc.is_main_process))
        seqs_per_step = self.s.batch_size * self.s.grad_accum * self.acc.num_processes
        t0, steps_timed = time.perf_counter(), 0
        start_epoch = self.state.step // self.steps_per_epoch
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.model.train()
        for epoch in range(start_epoch, epochs):
            batches = rank_batches(self.num_items, self.s.batch_size, self.acc.num_processes,
                                   self.acc.process_index, self.s.seed, epoch)
            batches = batches[: self.steps_per_epoch * self.s.grad_accum]
            skip = (self.state.step - epoch * self.steps_per_epoch) * self.s.grad_accum
            for micro, indices in enumerate(batches[skip:], start=skip):
                batch = self.make_batch(indices, self.state.step * self.s.grad_accum + micro % self.s.grad_accum)
                with self.acc.accumulate(self.model):
                    with self.acc.autocast():
                        loss, logs = self.loss_fn(batch, self.state.step)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{self.s.desc}: loss is {float(loss)} at step {self.state.step}")
                    self.acc.backward(loss)
                    if self.acc.sync_gradients and self.s.grad_clip:
                        self.acc.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
                    self.optimizer.step()
                    self.scheduler.step() if self.acc.sync_gradients else None
                    self.optimizer.zero_grad(set_to_none=True)
                if not self.acc.sync_gradients:
                    continue
                self.state.step += 1
                steps_timed += 1
                extra = self.after_step(self.state.step) if self.after_step else None
                record = {"kind": "train", "step": self.state.step, "epoch": epoch, "loss": float(loss.detach()),
                          "lr": self.scheduler.get_last_lr()[0], **logs, **(extra or {})}
                if self.state.step % max(1, self.steps_per_epoch // 10) == 0 or self.state.step == 1:
                    record["seq_per_s"] = seqs_per_step * steps_timed / max(time.perf_counter() - t0, 1e-9)
                    self._log(record)
                bar.update(1)
                rate = seqs_per_step * steps_timed / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{record['loss']:.4f}", ep=epoch, seq_s=f"{rate:.1f}")
                finished = self.state.step >= self.total_steps
                if finished or self.state.step % self.steps_per_epoch == 0:
                    self._end_of_epoch(epoch)  # before any checkpoint, so a resume never skips it
                if self.state.step % self.s.save_every_steps == 0 and not finished:
                    self.save()
                if finished:
                    break
            if self.state.step >= self.total_steps:
                break
        bar.close()
        self.save()
        if self.writer is not None:
            self.writer.close()
        return self.state

    def _end_of_epoch(self, epoch: int) -> None:
        if self.validate is None:
            return
        metrics = self.validate(epoch)
        self.model.train()
        if not metrics:
            return
        self._log({"kind": "validation", "step": self.state.step, "epoch": epoch, **metrics})
        selection = metrics.get("selection")
        if selection is not None and selection < self.state.best:
            self.state.best, self.state.best_epoch = float(selection), epoch
            if self.on_best is not None:
                self.on_best(epoch, metrics)


TIMING_KEYS = ("seq_per_s",)  # in TensorBoard and on the progress bar, not in the history files (DVC outputs)


def write_history(history: list[dict], path: Path) -> None:
    """The whole history as one JSON list, plus ``<stem>-<kind>.json`` per record kind
    (``history-train.json``, ``history-validation.json``) for DVC plots and Dagster metadata."""
    from dualpose.io.atomic import atomic_path

    path = Path(path)
    kinds = {"train": [], "validation": []}
    history = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]  # reproducible files
    for record in history:
        kinds.setdefault(record.get("kind", "train"), []).append(record)
    outputs = {path: history, **{path.with_name(f"{path.stem}-{k}.json"): v for k, v in kinds.items()}}
    for target, records in outputs.items():
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(records, indent=0))
