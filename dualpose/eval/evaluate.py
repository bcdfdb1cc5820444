"""The ``evaluate`` stage: predict every frame of a split and score it (paper-notes section 6).

Every video is predicted through overlapping T-frame windows (averaged where they overlap;
``centre`` mode predicts each frame at the centre of its own window, the MPI-INF-3DHP
protocol), optionally with flip test-time augmentation. Predictions are decoded to millimetres
by the same codec that encoded the training targets, root at zero. Outputs
(``<root>/eval/<dataset>``): ``metrics.json`` (the summary scalars, a DVC metric),
``metrics_detail.json`` (everything: per action, per joint, protocol; not a DVC metric),
``report.md`` (names the model trained and compares with a mean-pose baseline) and ``plots/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dualpose.config import Params
from dualpose.data.clips import SPLITS, ClipIndex
from dualpose.errors import ConfigError
from dualpose.eval.metrics import H36M_EXCLUDED_VIDEO_PATTERNS, compute_all, strip_subaction
from dualpose.eval.windows import predict_sequences
from dualpose.layout import Layout
from dualpose.model.flip import flip_tta
from dualpose.model.weights import load_weights
from dualpose.train.feeds import EncodedTable, StageData
from dualpose.train.runtime import progress_enabled

log = logging.getLogger(__name__)

# Published numbers the report compares against (paper-notes sections 6 and 7).
REFERENCE_RESULTS = {
    "h36m": [
        {"method": "DualPose paper (Ye et al. 2025)", "mpjpe_mm": 38.0, "p_mpjpe_mm": 31.9},
        {"method": "MotionAGFormer-B", "mpjpe_mm": 38.4},
        {"method": "MotionBERT (finetuned)", "mpjpe_mm": 37.5},
        {"method": "TCPFormer", "mpjpe_mm": 37.9, "p_mpjpe_mm": 31.7},
    ],
    "mpi_inf_3dhp": [
        {"method": "DualPose paper (Ye et al. 2025)", "mpjpe_mm": 15.9},
        {"method": "MotionAGFormer-L", "mpjpe_mm": 16.2, "pck_percent": 98.2, "auc_percent": 85.3},
        {"method": "TCPFormer", "mpjpe_mm": 15.0, "pck_percent": 99.0, "auc_percent": 87.7},
    ],
}


def split_rows(table: EncodedTable, index: ClipIndex, split: str) -> np.ndarray:
    """Boolean (N,) mask of the table rows that belong to ``split`` (whole videos)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; splits are {list(SPLITS)}")
    arrays = table.arrays
    if split == "test":
        test_code = arrays.categories["split"].index("test") if "test" in arrays.categories["split"] else -1
        return arrays.codes["split"] == test_code
    videos = np.unique(index.select(split).video)
    return np.isin(arrays.codes["video_id"], videos)


def portable_path(path: Path, layout: Layout) -> str:
    """``path`` relative to the folder that holds the storage root (e.g. ``artifacts/models/...``) when
    it lies there, else as given: reports and metrics then hash the same in every checkout (DVC)."""
    base = Path(layout.root).resolve().parent
    try:
        return Path(path).resolve().relative_to(base).as_posix()
    except ValueError:
        return str(path)


def resolve_weights(layout: Layout, weights: str) -> Path:
    if weights in ("best", "last"):
        path = layout.model("finetune") / weights
    else:
        path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no finetuned weights; run `dualpose finetune` first")
    return path


def predict_split(model: torch.nn.Module, table: EncodedTable, rows: np.ndarray, window: int, stride: int,
                  mode: str, flip: bool, batch_size: int, tails: str = "cover", blend: str = "uniform") -> np.ndarray:
    """Normalised predictions (N, J, 3) for the selected rows (NaN elsewhere)."""
    from tqdm.auto import tqdm

    skeleton = table.arrays.skeleton
    starts, lengths = table.arrays.video_runs()
    keep = rows[starts]
    starts, lengths = starts[keep], lengths[keep]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return flip_tta(model, x, skeleton) if flip else model(x)

    n_windows_hint = int(np.sum(np.maximum(1, -(-np.maximum(lengths - window, 0) // stride) + 1)))
    with tqdm(total=n_windows_hint, desc="evaluate", unit="window", disable=not progress_enabled()) as bar:
        pred = predict_sequences(predictor, table.inputs.numpy(), window, stride, mode=mode, starts=starts,
                                 lengths=lengths, batch_size=batch_size, progress=bar.update, tails=tails, blend=blend,
                                 targets=(rows & table.arrays.valid) if mode == "centre" else None)
    return pred


def mean_pose_baseline(table: EncodedTable, codec, train_rows: np.ndarray, gt_mm: np.ndarray) -> dict:
    """The reference a lifter must beat: predict the mean root-relative training pose (mm) for
    every evaluated frame. ``{}`` when the split has no training frames with 3D."""
    rows = np.flatnonzero(train_rows)
    if not rows.size:
        return {}
    a = table.arrays
    train_mm = codec.decode_target(table.targets.numpy()[rows], a.factor_2_5d[rows], a.width[rows].astype(np.float32))
    mean_pose = np.nanmean(train_mm, axis=0)
    err = np.linalg.norm(mean_pose[None] - gt_mm, axis=-1).mean(-1)
    return {"method": "mean training pose (baseline)", "mpjpe_mm": float(np.nanmean(err))}


def run_evaluation(params: Params, layout: Layout, weights: str = "best", split: str = "test",
                   callbacks: list[Callable[[dict], None]] | None = None) -> dict:
    from dualpose.eval.plots import plot_per_action, plot_per_joint, plot_skeleton_pair
    from dualpose.eval.report import describe_model, split_metrics, write_markdown_report, write_metrics_json

    cfg = params.evaluate
    dataset = params.train_dataset
    torch.manual_seed(params.seed)
    data = StageData.load(params, layout, need_3d="evaluation")
    skeleton, codec, table, index = data.skeleton, data.codec, data.table, data.index
    rows = split_rows(table, index, split) & table.arrays.has_3d
    if not rows.any():
        raise ConfigError(f"data set {dataset!r} has no {split} frames with 3D keypoints")
    weights_path = resolve_weights(layout, weights)
    model = load_weights(weights_path, skeleton=skeleton)
    model.eval()

    window = params.clips.length
    stride = params.clips.stride("test") if cfg.stride is None else cfg.stride
    adapter = params.datasets[dataset].adapter if dataset in params.datasets else ""
    mode = cfg.mode if cfg.mode != "auto" else ("centre" if adapter == "mpi_inf_3dhp" else "average")
    pred_norm = predict_split(model, table, rows, window, stride, mode, cfg.flip_tta, cfg.batch_size)

    a = table.arrays
    sel = np.flatnonzero(rows)
    factor, width = a.factor_2_5d[sel], a.width[sel].astype(np.float32)
    pred_mm = codec.decode_target(pred_norm[sel].astype(np.float32), factor, width)
    gt_mm = codec.decode_target(table.targets.numpy()[sel], factor, width)
    actions = strip_subaction(a.strings("action")[sel]) if cfg.per_action else None
    exclude = list(cfg.excluded_videos) or (list(H36M_EXCLUDED_VIDEO_PATTERNS) if adapter.startswith("h36m") else [])
    metrics = compute_all(
        pred_mm, gt_mm, actions=actions, valid=a.valid[sel], fps=a.fps[sel], video_codes=a.strings("video_id")[sel],
        skeleton=skeleton, exclude_patterns=exclude,
        pck_threshold_mm=cfg.pck_threshold_mm, auc_max_mm=cfg.auc_max_mm, auc_step_mm=cfg.auc_step_mm,
    )
    shown_weights = portable_path(weights_path, layout)
    metrics.update({"dataset": dataset, "split": split, "weights": shown_weights, "flip_tta": cfg.flip_tta,
                    "window": window, "stride": stride, "mode": mode, "frames": int(len(sel))})
    notes = [f"weights: {shown_weights}", f"windows of {window} frames, stride {stride}, {mode} mode, "
             f"flip TTA {'on' if cfg.flip_tta else 'off'}"]
    if cfg.reference_windows and mode == "average":
        ref = reference_window_metrics(model, table, rows, sel, window, cfg, codec, gt_mm, actions, exclude, skeleton)
        metrics["reference_windows"] = ref
        notes.append(f"references' windows (non-overlapping {window}-frame clips, tails dropped, short videos "
                     f"resampled; {ref['frames_evaluated']} of {len(sel)} frames): P1 {ref['mpjpe_mm']:.1f} mm, "
                     f"P2 {ref['p_mpjpe_mm']:.1f} mm")
    baseline = mean_pose_baseline(table, codec, split_rows(table, index, "train") & a.has_3d, gt_mm)
    spec = model.spec
    n_params = sum(p.numel() for p in model.parameters())
    from dualpose.model.config import VARIANTS

    model_line = describe_model(spec, n_params, params.model.variant, VARIANTS.get(params.model.variant))
    metrics.update({"model": model_line, "model_depth": spec.depth, "model_dim": spec.dim,
                    "model_params": int(n_params), "baseline_mean_pose_mpjpe_mm": baseline.get("mpjpe_mm")})

    out = layout.eval_dir(dataset)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    if metrics.get("per_action"):
        figures["MPJPE per action"] = plot_per_action(metrics, plots_dir / "per_action.png")
    if metrics.get("per_joint"):
        figures["MPJPE per joint"] = plot_per_joint(metrics, plots_dir / "per_joint.png")
    errors = np.linalg.norm(pred_mm - gt_mm, axis=-1).mean(-1)
    sample = int(np.argsort(errors)[len(errors) // 2])  # a typical (median-error) frame
    video = a.strings("video_id")[sel[sample]]
    figures["Prediction beside ground truth (median-error frame)"] = plot_skeleton_pair(
        pred_mm[sample], gt_mm[sample], plots_dir / "sample_skeleton.png", skeleton,
        title=f"{video} frame {a.frame[sel[sample]]}: {errors[sample]:.1f} mm")
    summary_metrics, detail = split_metrics(metrics)
    metrics_path = write_metrics_json(summary_metrics, out / "metrics.json")
    write_metrics_json(detail, out / "metrics_detail.json")
    report = write_markdown_report(
        out / "report.md", metrics, title=f"Evaluation: {dataset} ({split})",
        published=REFERENCE_RESULTS.get(adapter_family(adapter), []),
        label=f"DualPose-{params.model.variant} (this run)", model=model_line,
        baselines=[baseline] if baseline else [],
        figures={k: str(Path(v).relative_to(out)) for k, v in figures.items()},
        notes=notes,
    )
    plots = list(figures.values())
    summary = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    for cb in callbacks or []:
        cb({"kind": "evaluation", **summary})
    log.info("evaluation of %s (%s, %d frames): %s", dataset, split, len(sel), summary)
    return {"summary": summary, "metrics": metrics, "metrics_path": str(metrics_path), "report": str(report),
            "plots": [str(p) for p in plots]}


def reference_window_metrics(model, table: EncodedTable, rows: np.ndarray, sel: np.ndarray, window: int, cfg,
                             codec, gt_mm: np.ndarray, actions, exclude: list[str], skeleton) -> dict:
    """P1/P2 on the references' Human3.6M test clips (non-overlapping T windows, tail frames
    dropped, videos shorter than T resampled), for comparison with published numbers; the
    full-coverage protocol above scores every frame."""
    pred_norm = predict_split(model, table, rows, window, window, "average", cfg.flip_tta, cfg.batch_size,
                              tails="drop")
    a = table.arrays
    covered = np.isfinite(pred_norm[sel]).all(axis=(1, 2))
    keep = sel[covered]
    pred_mm = codec.decode_target(pred_norm[keep].astype(np.float32), a.factor_2_5d[keep],
                                  a.width[keep].astype(np.float32))
    m = compute_all(pred_mm, gt_mm[covered], actions=None if actions is None else actions[covered],
                    valid=a.valid[keep], fps=a.fps[keep], video_codes=a.strings("video_id")[keep],
                    skeleton=skeleton, exclude_patterns=exclude)
    return {"mpjpe_mm": m["mpjpe_mm"], "p_mpjpe_mm": m["p_mpjpe_mm"], "n_mpjpe_mm": m["n_mpjpe_mm"],
            "frames_evaluated": m.get("frames_evaluated", int(covered.sum())), "window": window, "stride": window}


def adapter_family(adapter: str) -> str:
    return "h36m" if adapter.startswith("h36m") else adapter


SUMMARY_KEYS = ("mpjpe_mm", "p_mpjpe_mm", "n_mpjpe_mm", "mpjve_mm_per_frame", "accel_error_mm_per_frame2",
                "pck_percent", "auc_percent", "frames_evaluated")
