"""The packaged default weights lift real held-out motion well (CMU test subject 09, filmed by the
same virtual-camera path as training). Needs ../shared/data/cmu; skips with the reason otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dualpose.codec import PoseCodec
from dualpose.data.adapters.mocap_npz import MotionOptions, motion_parts, read_motion_npz
from dualpose.eval.metrics import mpjpe, p_mpjpe
from dualpose.eval.windows import predict_sequences
from dualpose.model.flip import flip_tta
from dualpose.model.weights import load_weights
from dualpose.skeleton import H36M_17
from dualpose.weights import DEFAULT_WEIGHTS, PACKAGE_DIR

EXTRA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu" / "cmu_extra_train.npz"
WEIGHTS = PACKAGE_DIR / DEFAULT_WEIGHTS


@pytest.mark.skipif(not EXTRA.is_file(), reason=f"needs the CMU data at {EXTRA} (../shared/data/cmu)")
@pytest.mark.skipif(not (WEIGHTS / "model.safetensors").is_file(), reason=f"no packaged weights at {WEIGHTS}")
def test_default_weights_lift_a_held_out_subject():
    torch.set_num_threads(1)
    sequences = [s for s in read_motion_npz(EXTRA) if s.subject == "09"]  # a test subject of profiles/cmu.yaml
    options = MotionOptions(cameras=1, test_subjects=["09"], seed=0)
    frames = next(p.frames for p in motion_parts(sequences, options, "cmu", H36M_17) if p.name == "test")
    codec = PoseCodec(H36M_17)
    x = codec.encode_input(frames.kp2d, frames.conf, frames.width, frames.height).astype(np.float32)
    video = np.asarray(frames.video_id)
    starts = np.flatnonzero(np.r_[True, video[1:] != video[:-1]])
    lengths = np.diff(np.r_[starts, len(video)])
    model = load_weights(WEIGHTS).eval()
    pred = predict_sequences(lambda b: flip_tta(model, b, H36M_17), x, model.spec.T, model.spec.T,
                             starts=starts, lengths=lengths)
    pred_mm = codec.decode_target(pred.astype(np.float32), frames.factor_2_5d, frames.width)
    gt_mm = frames.kp3d - frames.kp3d[:, :1]
    p1, p2 = float(np.mean(mpjpe(pred_mm, gt_mm))), float(np.mean(p_mpjpe(pred_mm, gt_mm)))
    # measured 2026-11-27 on the shipped weights: see the model card; a mean pose scores ~190 mm
    print(f"subject 09: P1 {p1:.1f} mm, P2 {p2:.1f} mm over {len(gt_mm)} frames")
    assert p1 < 110.0 and p2 < 80.0, (p1, p2)
