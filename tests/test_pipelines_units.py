"""Pieces of the Dagster project on their own: check arithmetic, staging through S3, the launch
command, rank-0-only Pipes, and the data checks on real motion capture (CMU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualpose.config import ClipConfig, MaskingConfig
from dualpose.data.schema import FrameColumns, read_keypoint_table, write_keypoint_table
from dualpose.skeleton import H36M_17
from pipelines import quality
from tests.pipelines_support import load_definitions, make_resources, write_params

J = H36M_17.num_joints


def _standing_pose() -> np.ndarray:
    """A T-pose-like H36M-17 skeleton in mm with distinct, non-zero bone vectors."""
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, 150, size=(J, 3)) + np.array([0, -200, 0])
    pose = np.zeros((J, 3))
    for joint, parent in enumerate(H36M_17.parents):
        if parent >= 0:
            pose[joint] = pose[parent] + offsets[joint]
    return pose + np.array([0, 0, 4000.0])


def _table(tmp_path: Path, kp3d: np.ndarray, videos: np.ndarray, kp2d: np.ndarray | None = None):
    n = len(kp3d)
    frames = FrameColumns(dataset="t", split="train", subject="S1", action="walk", video_id=videos, camera_id="c0",
                          frame=np.arange(n), fps=50.0, width=1000, height=800,
                          kp2d=np.full((n, J, 2), 500.0) if kp2d is None else kp2d, conf=np.ones((n, J)),
                          kp3d=kp3d, factor_2_5d=1.0)
    path = write_keypoint_table(frames, tmp_path / "t.parquet")
    return read_keypoint_table(path)


def test_bone_lengths_measure_relative_std_per_video(tmp_path):
    pose = _standing_pose()
    n = 20
    kp3d = np.repeat(pose[None], n, axis=0)
    knee, ankle = H36M_17.index("r_knee"), H36M_17.index("r_ankle")
    shank = pose[ankle] - pose[knee]
    scale = np.where(np.arange(n) % 2 == 0, 1.0, 1.1)[10:]  # video "b": the shank alternates 100% / 110%
    kp3d[10:, ankle] = pose[knee] + scale[:, None] * shank
    videos = np.array(["a"] * 10 + ["b"] * 10)
    finding = quality.bone_lengths_consistent(_table(tmp_path, kp3d, videos))
    lengths = np.linalg.norm(shank) * scale
    expected = lengths.std() / lengths.mean()  # 0.1 / 2.1 * ... = 0.0476...
    assert not finding.passed
    assert finding.numbers["videos_failing"] == 1 and finding.numbers["worst_video"] == "b"
    assert finding.numbers["worst_bone"] == "r_knee-r_ankle"
    assert finding.numbers["worst_relative_std"] == pytest.approx(expected, rel=1e-5)
    assert finding.numbers["worst_ratio_to_limit"] == pytest.approx(expected / 0.01, rel=1e-3)
    loose = quality.bone_lengths_consistent(_table(tmp_path, kp3d, videos), quality.TableLimits(max_bone_rel_std=0.05))
    assert loose.passed


def test_plausible_range_counts_joints_outside_the_image_and_sizes(tmp_path):
    pose = _standing_pose()
    kp3d = np.repeat(pose[None], 4, axis=0)
    kp2d = np.full((4, J, 2), 500.0)
    kp2d[0, 3] = (1000 * 1.5 + 1, 400)  # just beyond the grown image (width 1000, margin 50%)
    kp2d[1, 4] = (-499, 400)  # inside the margin
    table = _table(tmp_path, kp3d, np.array(["a"] * 4), kp2d)
    finding = quality.plausible_range(table)
    assert finding.numbers["outside_image_fraction"] == pytest.approx(1 / (4 * J), abs=1e-6)
    assert not finding.passed
    assert quality.plausible_range(table, quality.TableLimits(max_outside_fraction=0.05)).passed
    extent = np.linalg.norm(pose - pose[0], axis=-1).max()
    assert finding.numbers["extent_max_mm"] == pytest.approx(extent, abs=0.1)


def test_clip_counts_and_threshold_findings():
    cfg = ClipConfig(length=9, splits={"validation_fraction": 0.2})
    ok = quality.clip_counts({"train": 5, "validation": 1, "test": 2}, {"train": 5, "validation": 1, "test": 2},
                             cfg, has_test_rows=True)
    assert ok.passed
    no_val = quality.clip_counts({"train": 5, "validation": 0, "test": 2}, {"train": 5, "validation": 0, "test": 2},
                                 cfg, has_test_rows=True)
    assert not no_val.passed and "no validation clips" in no_val.description
    assert quality.within_threshold(40.0, None).passed
    assert not quality.within_threshold(float("nan"), 100.0).passed
    assert quality.within_threshold(100.0, 100.0).passed and not quality.within_threshold(100.1, 100.0).passed


def test_masked_ratio_expectation_follows_the_settings():
    from dualpose.data.masking import generate_masks

    cfg = MaskingConfig(probability=0.7, span=3)
    masks = generate_masks(500, 9, J, cfg, np.arange(500), 0)
    ratio = masks.mean(axis=(1, 2))
    assert quality.masked_ratio(cfg, cfg, ratio, ratio[:50], ratio[:50], 9, J).passed
    other = MaskingConfig(probability=0.7, span=1)  # spans of 1 mask far more joints (~0.65 vs ~0.4)
    wrong = quality.masked_ratio(other, other, ratio, ratio[:50], ratio[:50], 9, J)
    assert not wrong.passed and wrong.numbers["expected_ratio"] > ratio.mean() + 0.1
    lying = quality.masked_ratio(cfg, cfg, ratio, ratio[:50], ratio[:50] + 0.1, 9, J)
    assert not lying.passed and "disagrees with the stored masks" in lying.description


# -- staging -------------------------------------------------------------------------------------------
def test_remote_stage_uploads_outputs_only_on_success(tmp_path):
    pytest.importorskip("s3fs")
    from dualpose.io.storage import Storage
    from pipelines.staging import NAMES, ArtefactStore
    from tests.servers import create_bucket, moto_s3

    with moto_s3() as endpoint:  # AWS_ENDPOINT_URL points at it: Storage finds it there
        create_bucket(endpoint, "stage-test")
        store = ArtefactStore(Storage("s3://stage-test/root"), tmp_path / "work")
        store.storage.write_text("clips/a.parquet", "index")
        with store.stage(inputs=[NAMES.clips("a"), NAMES.tables("missing")], outputs=[NAMES.masked("a")]) as layout:
            assert layout.clips("a").read_text() == "index"
            assert not layout.tables("missing").exists()
            layout.masked("a").parent.mkdir(parents=True)
            layout.masked("a").write_text("masks")
            staged = layout.root
        assert store.storage.read_text("masked/a.parquet") == "masks"
        assert not staged.exists()
        with pytest.raises(RuntimeError):
            with store.stage(outputs=[NAMES.masked("b")]) as layout:
                layout.masked("b").parent.mkdir(parents=True)
                layout.masked("b").write_text("half")
                raise RuntimeError("step failed")
        assert not store.storage.exists("masked/b.parquet")
        assert list((tmp_path / "work").iterdir()) == []
        signatures = store.signatures("masked")
        assert [(s.name, s.size) for s in signatures] == [("masked/a.parquet", 5)]


def test_local_stage_is_the_root_itself(tmp_path):
    from dualpose.io.storage import Storage
    from pipelines.staging import NAMES, ArtefactStore

    store = ArtefactStore(Storage(tmp_path / "root"))
    with store.stage(inputs=[NAMES.tables("x")], outputs=[NAMES.tables("x")]) as layout:
        assert layout.root == tmp_path / "root"
    assert store.location(NAMES.clips("x")) == str(tmp_path / "root" / "clips" / "x.parquet")


# -- launching and Pipes -------------------------------------------------------------------------------
def test_launcher_commands(tmp_path, monkeypatch):
    from pipelines.defs.resources import DualPoseConfig, TrainingLauncher

    config = DualPoseConfig(params_path=str(tmp_path / "params.yaml"), overrides=["finetune.epochs=2"])
    args = TrainingLauncher().entry_args("finetune", config, tmp_path / "stage", ["--resume"])
    assert args == ["finetune", "--params", str(tmp_path / "params.yaml"), "--override", "finetune.epochs=2",
                    "--override", f'storage.root="{tmp_path / "stage"}"', "--resume"]
    two = TrainingLauncher(num_processes=2, extra_args=["--mixed_precision", "bf16"])
    cmd = two.command(args)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--num_processes"] and cmd[4] == "2"
    assert "--multi_gpu" in cmd and cmd[cmd.index("--mixed_precision", cmd.index("--multi_gpu")) + 1] == "bf16"
    assert cmd[cmd.index("-m", 3):][:2] == ["-m", "pipelines.pipes_entry"] and cmd[-len(args):] == args
    monkeypatch.setattr("pipelines.defs.resources._cuda_available", lambda: False)
    assert two.process_env()["ACCELERATE_USE_CPU"] == "1"
    assert "ACCELERATE_USE_CPU" not in TrainingLauncher().process_env()
    assert TrainingLauncher(launcher="python").command(args)[1:3] == ["-m", "pipelines.pipes_entry"]
    with pytest.raises(ValueError, match="runs one process"):
        TrainingLauncher(launcher="python", num_processes=2).command(args)
    torchrun = TrainingLauncher(launcher="torchrun", num_processes=2).command(args)
    assert torchrun[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]


def test_only_rank_zero_opens_pipes(monkeypatch):
    from pipelines.pipes_entry import pipes_session, process_rank

    for name in ("RANK", "LOCAL_RANK", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    assert process_rank() == 0
    with pipes_session(0) as pipes:  # not launched by Dagster: no session, no mock
        assert pipes is None
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_rank() == 1
    monkeypatch.setenv("RANK", "3")  # the global rank wins over the local one
    assert process_rank() == 3
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", "not even valid")  # would fail if rank 3 tried to open it
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", "not even valid")
    with pipes_session(3) as pipes:
        assert pipes is None


# -- real motion capture -----------------------------------------------------------------------------
def test_real_motion_capture_passes_the_data_checks(tmp_path, monkeypatch):
    import dagster as dg

    cmu = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu"
    if not (cmu / "cmu_train.npz").is_file():
        pytest.skip("reason: CMU data folder ../shared/data/cmu absent")
    params = write_params(tmp_path, {
        "storage": {"root": str(tmp_path / "artifacts")},
        "datasets": {"cmu": {"adapter": "mocap_npz", "files": {"motion": str(cmu / "cmu_train.npz")}}},
        "train_dataset": "cmu",
        "clips": {"length": 27, "min_length": 9, "splits": {"validation_fraction": 0.15}},
    })
    defs = load_definitions(monkeypatch, params)
    keys = [dg.AssetKey(k) for k in ("raw_files", "keypoint_tables", "clip_index", "masked_inputs")]
    result = dg.materialize([*defs.assets, *defs.asset_checks], resources=make_resources(params), partition_key="cmu",
                            selection=dg.AssetSelection.assets(*keys), raise_on_error=False)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"finite_values", "bone_lengths_consistent", "plausible_range", "clip_counts",
                           "masked_ratio"}
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    # real people: every pose between 0.5 and 1.2 m from pelvis to the farthest joint
    assert 500 < checks["plausible_range"].metadata["extent_min_mm"].value
    assert checks["plausible_range"].metadata["extent_max_mm"].value < 1200
