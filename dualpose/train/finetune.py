"""The ``finetune`` stage: supervised 3D lifting (paper-notes section 4).

Starts from the pretrained backbone (``finetune.init: pretrained``) or from scratch. The
validation split, never the test split, selects the best epoch (``finetune.select: validation``);
``select: last`` trains on every training subject with no hold-out and keeps the last epoch, as
the papers report. Artefacts
(``<root>/models/finetune``): ``best/`` and ``last/`` (``model.safetensors`` + ``config.json``),
``metrics.json`` and ``history.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from dualpose.codec import PoseCodec
from dualpose.config import Params
from dualpose.errors import ConfigError
from dualpose.layout import Layout
from dualpose.model.backbone import DualPoseLifter
from dualpose.model.config import spec_from_params
from dualpose.model.weights import load_backbone_from, save_weights
from dualpose.train.feeds import ClipSet, StageData, flip_draw
from dualpose.train.loop import Trainer, build_optimizer, stage_settings, write_history
from dualpose.train.losses import lifting_loss
from dualpose.train.runtime import make_accelerator, seed_everything, write_json

log = logging.getLogger(__name__)


def label_subset(clips: ClipSet, fraction: float, seed: int) -> np.ndarray:
    """Clip positions whose recordings keep their 3D labels: a seeded ``fraction`` of the videos."""
    videos = clips.index.video
    unique = np.unique(videos)
    keep_n = max(1, int(round(fraction * len(unique))))
    keep = np.random.default_rng([seed, 0x1ABE1]).choice(unique, size=keep_n, replace=False)
    return np.flatnonzero(np.isin(videos, keep))


@torch.no_grad()
def validation_mpjpe(model, clips: ClipSet, codec: PoseCodec, acc, batch_size: int) -> float:
    """MPJPE in mm over the validation clips (sharded across processes, summed)."""
    model.eval()
    arrays = clips.table.arrays
    factor = torch.from_numpy(arrays.factor_2_5d)
    width = torch.from_numpy(arrays.width.astype(np.float32))
    n = len(clips)
    shard = np.arange(acc.process_index, n, acc.num_processes)
    total = torch.zeros(2, dtype=torch.float64, device=acc.device)
    for start in range(0, len(shard), batch_size):
        items = shard[start:start + batch_size]
        batch = clips.batch(items)
        rows = batch["rows"]
        with acc.autocast():
            pred = model(batch["input"].to(acc.device)).float().cpu()
        pred_mm = codec.decode_target(pred, factor[rows], width[rows])
        gt_mm = codec.decode_target(batch["target"], factor[rows], width[rows])
        err = torch.linalg.vector_norm(pred_mm - gt_mm, dim=-1)
        total += torch.tensor([err.sum().item(), err.numel()], dtype=torch.float64, device=acc.device)
    total = acc.reduce(total, reduction="sum")
    return float(total[0] / total[1].clamp_min(1))


def run_finetuning(params: Params, layout: Layout, resume: bool = True,
                   callbacks: list[Callable[[dict], None]] | None = None) -> dict:
    cfg = params.finetune
    seed_everything(params.seed)
    acc = make_accelerator(cfg.grad_accum)

    data = StageData.load(params, layout, need_3d="finetuning")
    skeleton, codec, table, index = data.skeleton, data.codec, data.table, data.index
    train = ClipSet(table, index, "train")
    if cfg.label_fraction < 1.0:
        train = ClipSet(table, index, "train", clip_subset=label_subset(train, cfg.label_fraction, params.seed))
    by_validation = cfg.select == "validation"
    if by_validation and len(index.select("validation")) == 0:
        raise ConfigError("finetune.select is 'validation' but the clip index has no validation clips: hold out "
                          "clips.splits.validation_subjects / validation_fraction, or train on every training "
                          "subject with finetune.select=last (the last epoch's weights are reported)")
    validation = ClipSet(table, index, "validation") if by_validation else None

    spec = spec_from_params(params, skeleton)
    lifter = DualPoseLifter(spec)
    source = "scratch"
    if cfg.init == "pretrained":
        pretrained = layout.model("pretrain")
        load_backbone_from(pretrained, lifter)
        source = str(pretrained)
    optimizer = build_optimizer(lifter.parameters(), cfg.optim)
    model, optimizer = acc.prepare(lifter, optimizer)
    raw = acc.unwrap_model(model)
    out = layout.model("finetune")

    def make_batch(items: np.ndarray, micro_step: int) -> dict:
        flip = flip_draw(params.seed, micro_step * acc.num_processes + acc.process_index, len(items),
                         cfg.flip_probability)
        batch = train.batch(items, flip)
        return {"input": batch["input"].to(acc.device), "target": batch["target"].to(acc.device)}

    def loss_fn(batch: dict, step: int):
        pred = model(batch["input"]).float()
        return lifting_loss(pred, batch["target"], cfg.loss)

    def validate(epoch: int) -> dict | None:
        if validation is None:
            return None
        mm = validation_mpjpe(model, validation, codec, acc, params.evaluate.batch_size)
        return {"val_mpjpe_mm": mm, "selection": mm}

    def on_best(epoch: int, metrics: dict) -> None:
        if acc.is_main_process:
            save_weights(raw, spec, out / "best")
            write_json(out / "best" / "metrics.json", {"epoch": epoch, **metrics})

    settings = stage_settings(cfg, params, layout, "finetune", resume, acc.num_processes)
    trainer = Trainer(acc, settings, model, optimizer, len(train), make_batch, loss_fn, cfg.optim.lr_decay,
                      checkpoint_modules={"lifter": raw}, validate=validate, on_best=on_best,
                      callbacks=callbacks)
    if acc.is_main_process:
        log.info("finetuning %s from %s on %d clips (%s), %d steps, %d processes",
                 params.model.variant, source, len(train),
                 f"{len(validation)} validation" if validation else "no validation: the last epoch is kept",
                 trainer.total_steps, acc.num_processes)
    state = trainer.fit()

    validations = [r for r in state.history if r["kind"] == "validation"]
    metrics = {
        "steps": state.step,
        "init": cfg.init,
        "train_clips": len(train),
        "validation_clips": len(validation) if validation else 0,
        "select": cfg.select,
        "best_val_mpjpe_mm": state.best,
        "best_epoch": state.best_epoch,
        "last_val_mpjpe_mm": validations[-1]["val_mpjpe_mm"] if validations else float("nan"),
        "final_loss": next((r["loss"] for r in reversed(state.history) if r["kind"] == "train"), float("nan")),
        "processes": acc.num_processes,
        "global_batch": cfg.batch_size,
    }
    if acc.is_main_process:
        save_weights(raw, spec, out / "last")
        if not by_validation:  # "best" is the last epoch: what evaluation reads by default
            save_weights(raw, spec, out / "best")
            write_json(out / "best" / "metrics.json", {"epoch": state.step // trainer.steps_per_epoch - 1,
                                                       "selection": "last epoch (no validation split)"})
        write_json(out / "metrics.json", metrics)
        write_history(state.history, out / "history.json")
    acc.wait_for_everyone()
    return metrics
