"""The ``pretrain`` stage: CRL on the masked 2D inputs of the training split.

Artefacts (``<root>/models/pretrain``): ``model.safetensors`` + ``config.json`` (the student
backbone, which finetuning loads), ``metrics.json`` and ``history.json``. Resumable checkpoints
and TensorBoard logs go to ``<root>/runs/pretrain``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

from dualpose.config import Params
from dualpose.data.masking import read_masked_table
from dualpose.layout import Layout
from dualpose.model.backbone import DualPoseBackbone
from dualpose.model.config import spec_from_params
from dualpose.model.weights import save_weights
from dualpose.train.crl import CRLModel
from dualpose.train.ema import ema_decay
from dualpose.train.feeds import ClipSet, StageData, flip_batch, flip_draw
from dualpose.train.loop import Trainer, build_optimizer, stage_settings, write_history
from dualpose.train.runtime import make_accelerator, seed_everything, write_json

log = logging.getLogger(__name__)


class CollapseError(RuntimeError):
    """The teacher's targets lost their variance: the representation collapsed."""


def run_pretraining(params: Params, layout: Layout, resume: bool = True,
                    callbacks: list[Callable[[dict], None]] | None = None) -> dict:
    cfg = params.pretrain
    dataset = params.train_dataset
    seed_everything(params.seed)
    acc = make_accelerator(cfg.grad_accum)

    data = StageData.load(params, layout)
    skeleton, table, index = data.skeleton, data.table, data.index
    splits = ["train"] + (["test"] if cfg.transductive_test_2d else [])
    clip_sets = [ClipSet(table, index, s) for s in splits]
    masked = read_masked_table(layout.masked(dataset), T=params.clips.length, num_joints=skeleton.num_joints,
                               cfg=params.masking)
    views = masked.cfg.views
    clip_ids = np.concatenate([cs.index.clip_id for cs in clip_sets])
    rows = torch.cat([cs.rows for cs in clip_sets])
    num_items = len(clip_ids) * views

    spec = spec_from_params(params, skeleton)
    backbone = DualPoseBackbone(spec, skeleton, with_mask_token=True)
    crl = CRLModel(backbone, cfg.top_k_blocks, cfg.target_norm, cfg.target)
    optimizer = build_optimizer(crl.trainable_parameters(), cfg.optim)
    model, optimizer = acc.prepare(crl, optimizer)
    raw = acc.unwrap_model(model)
    perm = torch.as_tensor(skeleton.flip_permutation)

    def make_batch(items: np.ndarray, micro_step: int) -> dict:
        clip_pos, view = items // views, items % views
        x = table.inputs[rows[torch.as_tensor(clip_pos)]]
        epoch = (micro_step // cfg.grad_accum) // trainer.steps_per_epoch if cfg.fresh_masks else 0
        mask = torch.from_numpy(masked.for_epoch(clip_ids[clip_pos], view, epoch))
        flip = flip_draw(params.seed, micro_step * acc.num_processes + acc.process_index, len(items),
                         cfg.flip_probability)
        x = flip_batch(x, flip, perm)
        return {"input": x.to(acc.device), "mask": mask.to(acc.device)}

    def loss_fn(batch: dict, step: int):
        return model(batch["input"], batch["mask"])

    settings = stage_settings(cfg, params, layout, "pretrain", resume, acc.num_processes)
    trainer: Trainer | None = None
    collapse = {"low": 0}

    def after_step(step: int) -> dict:
        decay = ema_decay(step, trainer.total_steps, cfg.ema_start, cfg.ema_end, cfg.ema_ramp_fraction)
        raw.teacher.update(raw.student, decay)
        return {"ema_decay": decay}

    def watch(record: dict) -> None:
        """Collapse monitor on the normalised targets: 1 for a healthy representation, towards 0 when
        the teacher's outputs become the same for every token (data2vec's ``min_target_var`` test)."""
        if record.get("kind") != "train" or "norm_target_var" not in record:
            return
        var = record["norm_target_var"]
        collapse["low"] = collapse["low"] + 1 if var < cfg.collapse_variance else 0
        if collapse["low"] >= 3:
            raise CollapseError(
                f"pretraining collapsed: normalised target variance {var:.3g} < {cfg.collapse_variance:g} for "
                f"{collapse['low']} logged steps (step {record['step']}; raw teacher variance "
                f"{record.get('target_var', float('nan')):.3g}). Check the EMA schedule "
                f"(pretrain.ema_start/ema_end), the learning rate and pretrain.target_norm."
            )
        if var < 2 * cfg.collapse_variance:
            log.warning("normalised target variance %.3g is approaching collapse (threshold %.3g) at step %d",
                        var, cfg.collapse_variance, record["step"])

    trainer = Trainer(acc, settings, model, optimizer, num_items, make_batch, loss_fn, cfg.optim.lr_decay,
                      checkpoint_modules={"crl": raw}, after_step=after_step,
                      callbacks=[watch, *(callbacks or [])])
    if acc.is_main_process:
        log.info("pretraining %s on %d clips x %d views (%d steps, %d processes)", params.model.variant,
                 len(clip_ids), views, trainer.total_steps, acc.num_processes)
    state = trainer.fit()

    out = layout.model("pretrain")
    train_records = [r for r in state.history if r["kind"] == "train"]
    metrics = {
        "steps": state.step,
        "final_loss": train_records[-1]["loss"] if train_records else math.nan,
        "final_target_var": train_records[-1].get("target_var", math.nan) if train_records else math.nan,
        "final_norm_target_var": train_records[-1].get("norm_target_var", math.nan) if train_records else math.nan,
        "clips": int(len(clip_ids)),
        "views": int(views),
        "processes": acc.num_processes,
        "global_batch": cfg.batch_size,
    }
    if acc.is_main_process:
        save_weights(raw.student, spec, out)
        write_json(out / "metrics.json", metrics)
        write_history(state.history, out / "history.json")
    acc.wait_for_everyone()
    return metrics
