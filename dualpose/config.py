"""One config system: params.yaml read into typed objects, shared by the CLI, Dagster and DVC.

``load_params("params.yaml", overrides=["model.variant=S", "finetune.epochs=3"])`` returns a
:class:`Params`. Every section is a pydantic model that forbids unknown keys, so a typo in
params.yaml is an error naming the key instead of a silently ignored setting.
"""

from __future__ import annotations

import logging
import os
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dualpose.errors import ConfigError
from dualpose.io.names import check_name
from dualpose.io.safe_yaml import safe_yaml

log = logging.getLogger(__name__)


def _admits_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or any(_admits_bool(a) for a in typing.get_args(annotation))


class Section(BaseModel):
    # Floats must be finite; a YAML ``true`` is never taken as the number 1.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, not the boolean {value}")
        return value


class DatasetConfig(Section):
    """One data set: which adapter reads it, where its raw files are, adapter options.

    ``files`` maps a logical name to a location (plain path, file://, http(s)://, s3://); an
    optional ``sha256`` map verifies downloads. Licensed data sets have no default location: the
    user points ``files`` at a copy they are entitled to use.
    """

    adapter: str
    files: dict[str, str] = Field(default_factory=dict)
    sha256: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("files", "sha256")
    @classmethod
    def _file_keys_are_names(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key in value:
            check_name(key, f"{info.field_name} key")
        return value


class SplitConfig(Section):
    """How training data is divided into train and validation (test comes from the source)."""

    validation_subjects: list[str] = Field(default_factory=list)
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # of videos, when no subjects are named
    seed: int = 0


class ClipConfig(Section):
    length: int = Field(27, ge=1)  # T
    train_stride: int | None = Field(None, ge=1)  # default T // 3
    test_stride: int | None = Field(None, ge=1)  # default T
    min_length: int = Field(1, ge=1)  # shorter videos are dropped; [min_length, T) resampled to T
    splits: SplitConfig = Field(default_factory=SplitConfig)

    def stride(self, split: str) -> int:
        if split == "train":
            return self.train_stride or max(1, self.length // 3)
        return self.test_stride or self.length


class MaskingConfig(Section):
    """Masked 2D inputs for pretraining (paper-notes section 3)."""

    probability: float = Field(0.7, ge=0.0, le=1.0)  # nominal per-joint span-start probability p
    span: int = Field(3, ge=1)  # M consecutive joint indices
    frame_ratio: float = Field(0.0, ge=0.0, lt=1.0)  # optional tube/frame masking
    views: int = Field(3, ge=1)  # independent masks per clip
    seed: int = 0


class ModelConfig(Section):
    variant: Literal["XS", "S", "B", "L"] = "XS"
    overrides: dict[str, Any] = Field(default_factory=dict)  # e.g. {depth: 4, dim: 32}


class OptimConfig(Section):
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    amsgrad: bool = False
    lr_decay: float = Field(0.99, gt=0.0, le=1.0)  # per epoch
    grad_clip: float | None = Field(1.0, gt=0.0)


class PretrainConfig(Section):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    top_k_blocks: int = Field(6, ge=1)  # K: targets average the last K teacher blocks (<= model depth)
    # What of each top-K teacher block is a target: "ffn" = its feed-forward output before layer
    # scale and the last residual connection (data2vec), or "output" = the post-residual block
    # output (under layer scale 1e-5 ~99% the token's own input: near masked 2D reconstruction).
    target: Literal["ffn", "output"] = "ffn"
    # Normalisation of each target block (dualpose.train.crl.normalise_block_output): "instance"
    # (per channel over the clip's T x J tokens), "joint" (each joint centred over the batch's clips
    # and frames: contextual targets, measured to help less at CPU scale; docs/crl-study-joint.md),
    # "trajectory" (per joint and channel over one clip's frames) or "layer" (per token).
    target_norm: Literal["instance", "joint", "trajectory", "layer"] = "instance"
    fresh_masks: bool = True  # a new mask per (clip, epoch, view); false: the same masks every epoch
    ema_start: float = Field(0.999, ge=0.0, le=1.0)
    ema_end: float = Field(0.9999, ge=0.0, le=1.0)
    ema_ramp_fraction: float = Field(0.3, ge=0.0, le=1.0)  # of all optimiser steps
    flip_probability: float = Field(0.5, ge=0.0, le=1.0)
    collapse_variance: float = Field(0.1, ge=0.0)  # normalised target variance below this (3 logs running) is a collapse
    transductive_test_2d: bool = False
    save_every_steps: int = Field(500, ge=1)
    max_steps: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)


class LossWeights(Section):
    mpjpe: float = Field(1.0, ge=0.0)
    n_mpjpe: float = Field(0.5, ge=0.0)
    velocity: float = Field(20.0, ge=0.0)


class FinetuneConfig(Section):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossWeights = Field(default_factory=LossWeights)
    flip_probability: float = Field(0.5, ge=0.0, le=1.0)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)  # of training videos with 3D labels
    init: Literal["pretrained", "scratch"] = "pretrained"
    # "validation": the epoch with the lowest validation MPJPE is best/; "last": no validation
    # hold-out needed (train on every training subject), best/ is the last epoch
    select: Literal["validation", "last"] = "validation"
    save_every_steps: int = Field(500, ge=1)
    max_steps: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)


class EvaluateConfig(Section):
    flip_tta: bool = True
    batch_size: int = Field(32, ge=1)
    # "average": overlapping windows averaged (Human3.6M); "centre": each frame at the centre of
    # its own window (MPI-INF-3DHP); "auto" picks by the data set's adapter.
    mode: Literal["auto", "average", "centre"] = "auto"
    stride: int | None = Field(None, ge=1)  # window stride in "average" mode; default clips.test_stride
    per_action: bool = True  # average per action, then across actions (Human3.6M protocol)
    # also score the references' test clips (non-overlapping T windows, tails dropped) in average mode
    reference_windows: bool = True
    pck_threshold_mm: float = Field(150.0, gt=0.0)
    auc_max_mm: float = Field(150.0, gt=0.0)
    auc_step_mm: float = Field(5.0, gt=0.0)
    max_mpjpe_mm: float | None = Field(None, gt=0.0)  # asset check: fail when worse
    # video-id patterns left out of the scores; empty: the three corrupted S9 videos for Human3.6M
    excluded_videos: list[str] = Field(default_factory=list)


class StorageConfig(Section):
    root: str = "artifacts"  # local folder or s3://bucket/prefix


class RegistryConfig(Section):
    """Model versions and promotion (dualpose/registry.py): a retrained model replaces the champion
    only when its ``metric`` on the benchmark (the test split of ``train_dataset``) is lower by at
    least ``promotion_margin_mm``."""

    promotion_margin_mm: float = Field(0.5, ge=0.0)
    metric: Literal["mpjpe_mm", "p_mpjpe_mm", "n_mpjpe_mm"] = "mpjpe_mm"


class Params(Section):
    seed: int = 0
    skeleton: str = "h36m17"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    train_dataset: str = "synthetic"  # the data set that pretraining/finetuning/evaluation use
    clips: ClipConfig = Field(default_factory=ClipConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    @model_validator(mode="after")
    def _train_dataset_known(self) -> "Params":
        for name in self.datasets:
            check_name(name, "datasets key")
        check_name(self.train_dataset, "train_dataset")
        check_name(self.skeleton, "skeleton")
        if self.datasets and self.train_dataset not in self.datasets:
            raise ValueError(
                f"train_dataset {self.train_dataset!r} is not one of the datasets {sorted(self.datasets)}"
            )
        depth = _model_depth(self.model)
        if depth is not None and self.pretrain.top_k_blocks > depth:
            raise ValueError(f"pretrain.top_k_blocks {self.pretrain.top_k_blocks} exceeds the model depth {depth} "
                             f"(model.variant {self.model.variant!r} with overrides {self.model.overrides})")
        return self

    def enabled_datasets(self) -> dict[str, DatasetConfig]:
        return {k: v for k, v in self.datasets.items() if v.enabled}


def _model_depth(model: ModelConfig) -> int | None:
    """The depth the model section asks for, or None when it cannot be told here (the model check decides)."""
    depth = model.overrides.get("depth")
    if depth is None:
        try:
            from dualpose.model.config import VARIANTS

            depth = VARIANTS[model.variant]["depth"]
        except (ImportError, KeyError, TypeError):
            return None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override {dotted!r}: empty key; expected KEY.SUB=VALUE, e.g. finetune.epochs=3")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. finetune.epochs=3")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), safe_yaml(raw, f"override -o {item}"))
    return data


def params_from_dict(data: dict, source: str = "<dict>", overrides: list[str] | None = None) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        given = {o.split("=", 1)[0].strip(): o for o in overrides or [] if "=" in o}
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            origin = next((f" (from -o {o})" for k, o in given.items() if loc == k or loc.startswith(k + ".")), "")
            got = err.get("input")
            shown = f", got {got!r}" if isinstance(got, (int, float, str, bool)) or got is None else ""
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}{shown}{origin}")
        raise ConfigError(f"{source}: invalid parameters:\n" + "\n".join(lines)) from None


SIZE_OVERRIDES = ("depth", "dim")  # model.overrides keys that change a variant's size


def _reset_size_on_variant_change(data: dict, overrides: list[str] | None, source: str) -> None:
    """``-o model.variant=B`` on a params file whose ``model.overrides`` shrink the model (the
    quick start's 4 x 32) would silently train a shrunken B: drop those size overrides, loudly,
    unless the command line sets ``model.overrides`` itself."""
    keys = [item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item]
    if "model.variant" not in keys or any(k == "model.overrides" or k.startswith("model.overrides.") for k in keys):
        return
    model = data.get("model")
    sizes = model.get("overrides") if isinstance(model, dict) else None
    if not isinstance(sizes, dict):
        return
    dropped = {k: sizes.pop(k) for k in SIZE_OVERRIDES if k in sizes}
    if dropped:
        log.warning("%s: model.variant set on the command line, so the file's size overrides %s are dropped "
                    "(the %s variant keeps its own depth and dim); set -o model.overrides.depth=... to size it",
                    source, dropped, model.get("variant"))


def load_params(path: str | os.PathLike = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (or start from defaults if ``path`` is None) and apply overrides.

    Changing ``model.variant`` with ``-o`` drops the file's ``model.overrides`` depth/dim (see
    :func:`_reset_size_on_variant_change`)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: parameters file not found")
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder; expected a parameters file (params.yaml)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        data = safe_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(data, overrides)
    _reset_size_on_variant_change(data, overrides, str(path))
    return params_from_dict(data, str(path), overrides)
