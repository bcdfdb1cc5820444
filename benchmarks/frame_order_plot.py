"""Look at what the frame-order signal does: trajectories of one joint over a CMU test take.

Runs the kept weights of the frame-order A/B arms (``benchmarks/cmu_benchmark.py`` keeps each
arm's best weights under ``<work>/arms/<arm>/best``) over the test split exactly as
``dualpose evaluate`` does (same windows, stride and flip TTA), decodes to millimetres and plots,
for one take and joint: x, y and depth over time against the ground truth, and the per-frame
acceleration magnitude (jitter shows up there first). One PNG, one row per coordinate.

Usage (the 12-epoch A/B's seed-0 folder)::

    python benchmarks/frame_order_plot.py --work /tmp/ab15-w0 \
        --arms no-frame-order scratch frame-relative --labels none learned relative \
        --out benchmarks/RESULTS-frame-order/trajectories.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def predictions_mm(params_path: Path, weights: list[Path], stride: int | None = None,
                   blend: str = "uniform") -> tuple[dict, list[np.ndarray], np.ndarray]:
    """(table info, predictions in mm per weights, ground truth in mm) over the test rows, through
    the evaluation's windows (its stride unless ``stride`` is given)."""
    from dualpose.config import load_params
    from dualpose.eval.evaluate import predict_split, split_rows
    from dualpose.layout import Layout
    from dualpose.model.weights import load_weights
    from dualpose.train.feeds import StageData

    params = load_params(params_path)
    layout = Layout.from_root(params.storage.root, base=params_path.resolve().parent)
    data = StageData.load(params, layout, need_3d="evaluation")
    table, codec = data.table, data.codec
    rows = split_rows(table, data.index, "test") & table.arrays.has_3d
    sel = np.flatnonzero(rows)
    a = table.arrays
    factor, width = a.factor_2_5d[sel], a.width[sel].astype(np.float32)
    cfg = params.evaluate
    stride = stride or (params.clips.stride("test") if cfg.stride is None else cfg.stride)
    preds = []
    for path in weights:
        model = load_weights(path, skeleton=data.skeleton).eval()
        with torch.no_grad():
            norm = predict_split(model, table, rows, params.clips.length, stride, "average", cfg.flip_tta, cfg.batch_size,
                                 blend=blend)
        preds.append(codec.decode_target(norm[sel].astype(np.float32), factor, width))
    gt = codec.decode_target(table.targets.numpy()[sel], factor, width)
    info = {"video": a.strings("video_id")[sel], "fps": a.fps[sel], "skeleton": data.skeleton,
            "valid": a.valid[sel], "action": a.strings("action")[sel], "stride": stride, "window": params.clips.length}
    return info, preds, gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a cmu_benchmark.py work folder")
    ap.add_argument("--arms", nargs="+", required=True)
    ap.add_argument("--labels", nargs="+", help="legend names of the arms (default: the arm names)")
    ap.add_argument("--joint", default="r_wrist", help="joint name of the skeleton (default: right wrist)")
    ap.add_argument("--video", help="test take (default: the take where the arms' MPJVE differ most)")
    ap.add_argument("--frames", type=int, default=240, help="frames to plot from the take's start")
    ap.add_argument("--stride", type=int, help="window stride (default: the profile's test stride)")
    ap.add_argument("--blend", default="uniform", choices=["uniform", "taper"], help="how overlapping windows combine")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    labels = args.labels or args.arms
    if len(labels) != len(args.arms):
        raise SystemExit("--labels needs one name per arm")
    info, preds, gt = predictions_mm(args.work / "params.yaml", [args.work / "arms" / arm / "best" for arm in args.arms],
                                     args.stride, args.blend)
    skeleton = info["skeleton"]
    if args.joint not in skeleton.joint_names:
        raise SystemExit(f"--joint {args.joint!r}: not in {list(skeleton.joint_names)}")
    j = list(skeleton.joint_names).index(args.joint)
    root = skeleton.root
    videos = info["video"]

    def rel(p: np.ndarray) -> np.ndarray:
        return p - p[:, root:root + 1]

    def velocity_error(p: np.ndarray, rows: np.ndarray) -> float:
        return float(np.linalg.norm(np.diff(rel(p)[rows], axis=0) - np.diff(rel(gt)[rows], axis=0), axis=-1).mean())

    takes = [v for v in dict.fromkeys(videos) if (videos == v).sum() >= args.frames]
    if args.video:
        take = args.video
    else:  # the take where the arms differ most in velocity error: where the signal matters
        take = max(takes, key=lambda v: np.ptp([velocity_error(p, videos == v) for p in preds]))
    rows = np.flatnonzero(videos == take)[: args.frames]
    fps = float(info["fps"][rows[0]])
    t = np.arange(len(rows)) / fps

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    names = ("x (right) mm", "y (down) mm", "depth (z) mm")
    for c, ax in enumerate(axes[:3]):
        ax.plot(t, rel(gt)[rows, j, c], color="black", lw=2.2, label="ground truth")
        for p, label in zip(preds, labels):
            ax.plot(t, rel(p)[rows, j, c], lw=1.1, label=label)
        ax.set_ylabel(names[c])
        ax.grid(alpha=0.3)
    axes[0].legend(ncol=len(labels) + 1, fontsize=9, loc="upper right")

    def accel(p: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.diff(rel(p)[rows, j], n=2, axis=0), axis=-1)
    axes[3].plot(t[1:-1], accel(gt), color="black", lw=2.2, label="ground truth")
    summary = {}
    for p, label in zip(preds, labels):
        axes[3].plot(t[1:-1], accel(p), lw=1.1, label=label)
        summary[label] = {"take_mpjve_mm": velocity_error(p, videos == take),
                          "take_p1_mm": float(np.linalg.norm(rel(p)[videos == take] - rel(gt)[videos == take], axis=-1).mean())}
    axes[3].set_ylabel("|acceleration| mm/frame²")
    axes[3].set_xlabel("seconds")
    axes[3].grid(alpha=0.3)
    fig.suptitle(f"{take}: {args.joint} relative to the root, first {len(rows)} frames (test split), "
                 f"windows of {info['window']} every {info['stride']} frames, {args.blend} blend\n"
                 + ", ".join(f"{k}: MPJVE {v['take_mpjve_mm']:.1f}, P1 {v['take_p1_mm']:.0f} mm" for k, v in summary.items()),
                 fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps({"take": take, "joint": args.joint, "frames": len(rows), "arms": summary}, indent=1))


if __name__ == "__main__":
    main()
