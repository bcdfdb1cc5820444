"""Uniform vs tapered blending of overlapping windows, measured on the CMU test split.

For each weights folder and window stride, predicts the test split as ``dualpose evaluate`` does
(flip TTA, average mode) once with ``blend="uniform"`` (the plain mean of overlapping windows)
and once with ``blend="taper"`` (``dualpose.eval.windows``: Hann weights per window position),
and reports P1, P2, MPJVE and acceleration error. With ``stride = T`` the two are identical (no
overlap): that row checks the harness.

Usage::

    python benchmarks/window_blend.py --work /tmp/ab15-w0 --weights /tmp/ab15-w0/arms/frame-relative/best \\
        dualpose/weights/dualpose-xs-cmu --strides 27 9 3 --out benchmarks/RESULTS-window-blend.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frame_order_plot import predictions_mm  # noqa: E402

KEYS = ("mpjpe_mm", "p_mpjpe_mm", "mpjve_mm_per_frame", "accel_error_mm_per_frame2")


def main() -> None:
    from dualpose.eval.metrics import compute_all, strip_subaction

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a cmu_benchmark.py work folder (data and profile)")
    ap.add_argument("--weights", type=Path, nargs="+", required=True)
    ap.add_argument("--strides", type=int, nargs="+", default=[27, 9])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    record = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python benchmarks/window_blend.py "
                         + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    for stride in args.strides:
        for blend in ("uniform", "taper"):
            info, preds, gt = predictions_mm(args.work / "params.yaml", args.weights, stride, blend)
            for weights, pred in zip(args.weights, preds):
                m = compute_all(pred, gt, actions=strip_subaction(info["action"]), valid=info["valid"], fps=info["fps"],
                                video_codes=info["video"], skeleton=info["skeleton"])
                row = {"weights": str(weights), "stride": stride, "window": info["window"], "blend": blend,
                       **{k: float(m[k]) for k in KEYS}}
                record["rows"].append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    print("| weights | stride | blend | P1 mm | P2 mm | MPJVE mm/frame | accel. error mm/frame² |")
    print("|---|---|---|---|---|---|---|")
    for r in record["rows"]:
        print(f"| `{Path(r['weights']).parent.name}/{Path(r['weights']).name}` | {r['stride']} | {r['blend']} | "
              f"{r['mpjpe_mm']:.1f} | {r['p_mpjpe_mm']:.1f} | {r['mpjve_mm_per_frame']:.2f} | {r['accel_error_mm_per_frame2']:.2f} |")


if __name__ == "__main__":
    main()
