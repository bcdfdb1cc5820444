"""The library's stages end to end on a tiny synthetic configuration (in process)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from dualpose.config import load_params
from dualpose.data.prepare import prepare_dataset
from dualpose.errors import ConfigError
from dualpose.eval.evaluate import run_evaluation
from dualpose.layout import Layout
from dualpose.stages import build_clips, build_masks
from dualpose.train.finetune import run_finetuning
from dualpose.train.pretrain import run_pretraining


@pytest.fixture
def prepared(tiny_params_path):
    params = load_params(tiny_params_path)
    layout = Layout.from_root(params.storage.root)
    prepare_dataset(params, "synthetic", layout, tiny_params_path.parent)
    build_clips(params, layout, "synthetic")
    build_masks(params, layout, "synthetic")
    return params, layout


def test_prepare_clips_masks(prepared):
    params, layout = prepared
    manifest = json.loads((layout.tables("synthetic") / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 2 * 3 * 60, "test": 3 * 60}  # 3 subjects x 3 actions x 60 frames
    assert sorted(p.name for p in layout.tables("synthetic").glob("*.parquet")) == ["test.parquet", "train.parquet"]
    assert layout.clips("synthetic").exists() and layout.masked("synthetic").exists()


def test_pretrain_finetune_evaluate(prepared):
    params, layout = prepared
    pre = run_pretraining(params, layout)
    assert pre["steps"] > 0 and np.isfinite(pre["final_loss"]) and pre["final_target_var"] > 0
    with safe_open(str(layout.model("pretrain") / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "mask_token" in keys and not any(k.startswith("teacher") for k in keys)
    history = json.loads((layout.model("pretrain") / "history-train.json").read_text())
    assert {"loss", "target_var", "ema_decay", "lr"} <= set(history[-1])
    assert history[-1]["ema_decay"] > history[0]["ema_decay"] >= params.pretrain.ema_start

    fin = run_finetuning(params, layout)
    assert fin["init"] == "pretrained" and fin["steps"] > 0
    assert (layout.model("finetune") / "best" / "model.safetensors").exists()
    assert (layout.model("finetune") / "last" / "config.json").exists()
    assert 0 < fin["best_val_mpjpe_mm"] <= fin["last_val_mpjpe_mm"] or fin["best_epoch"] == 1

    result = run_evaluation(params, layout)
    metrics = json.loads((layout.eval_dir("synthetic") / "metrics.json").read_text())
    assert metrics["frames"] == 3 * 60
    assert 0 < metrics["mpjpe_mm"] < 2000 and metrics["p_mpjpe_mm"] <= metrics["mpjpe_mm"]
    detail = json.loads((layout.eval_dir("synthetic") / "metrics_detail.json").read_text())
    assert set(detail["per_action"]) == {"walk", "squat", "wave"} and "per_action" not in metrics
    assert detail["split"] == "test" and detail["mpjpe_mm"] == metrics["mpjpe_mm"]
    assert len(metrics) <= 10  # one readable row in `dvc metrics show`
    assert all(not isinstance(v, (dict, list)) for v in metrics.values())  # `dvc metrics show` stays readable
    assert 50 < metrics["baseline_mean_pose_mpjpe_mm"] < 2000 and metrics["model_params"] > 0
    report = (layout.eval_dir("synthetic") / "report.md").read_text()
    assert f"{detail['model_depth']} blocks x {detail['model_dim']} channels" in report
    assert "mean training pose (baseline)" in report
    assert "## Per action" in report and "MPJPE" in report
    assert all((layout.eval_dir("synthetic") / "plots" / n).exists()
               for n in ("per_action.png", "per_joint.png", "sample_skeleton.png"))
    assert result["summary"]["mpjpe_mm"] == metrics["mpjpe_mm"]
    ref = detail["reference_windows"]  # the references' clips: non-overlapping, tails dropped
    assert 0 < ref["frames_evaluated"] <= metrics["frames"] and ref["stride"] == ref["window"] == params.clips.length
    assert 0 < ref["p_mpjpe_mm"] <= ref["mpjpe_mm"] < 2000
    assert "references' windows" in report
    # no absolute path of this checkout in the report or the details: DVC hashes them alike everywhere
    shown = f"{Path(layout.root).name}/models/finetune/best"
    assert detail["weights"] == shown and f"- weights: {shown}" in report
    assert str(Path(layout.root).resolve()) not in report


def test_finetune_from_scratch_needs_no_pretraining(prepared):
    params, layout = prepared
    params.finetune.init = "scratch"
    params.finetune.label_fraction = 0.5
    fin = run_finetuning(params, layout)
    assert fin["init"] == "scratch" and fin["train_clips"] > 0


def test_train_on_every_subject_without_validation_keeps_the_last_epoch(prepared):
    params, layout = prepared
    params.finetune.init = "scratch"
    params.clips.splits.validation_fraction = 0.0
    build_clips(params, layout, "synthetic")
    with pytest.raises(ConfigError, match="no validation clips.*finetune.select=last"):
        run_finetuning(params, layout)
    params.finetune.select = "last"
    fin = run_finetuning(params, layout)
    assert fin["validation_clips"] == 0 and fin["select"] == "last"
    best = layout.model("finetune") / "best"
    last = layout.model("finetune") / "last"
    assert (best / "model.safetensors").read_bytes() == (last / "model.safetensors").read_bytes()
    assert json.loads((best / "metrics.json").read_text())["selection"] == "last epoch (no validation split)"
    history = json.loads((layout.model("finetune") / "history.json").read_text())
    assert not [r for r in history if r["kind"] == "validation"]
