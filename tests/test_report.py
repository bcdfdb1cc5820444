"""Metrics JSON, markdown report and figures (dualpose.eval.report, dualpose.eval.plots)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from dualpose.errors import DataFormatError
from dualpose.eval import plots, report
from dualpose.eval.metrics import compute_all, root_relative
from dualpose.skeleton import H36M_17

PAPER = [{"method": "paper (Ye et al. 2025)", "mpjpe_mm": 38.0, "p_mpjpe_mm": 31.9}]


@pytest.fixture(scope="module")
def metrics() -> dict:
    rng = np.random.default_rng(0)
    gt = rng.normal(scale=300.0, size=(60, H36M_17.num_joints, 3))
    pred = gt + rng.normal(scale=30.0, size=gt.shape)
    actions = np.repeat(["Walking", "Eating", "Sitting Down|x"], 20)
    return compute_all(pred, gt, actions=actions, video_codes=np.repeat([0, 1, 2], 20), fps=50.0)


def test_metrics_json_round_trip_is_strict_and_dvc_friendly(tmp_path, metrics):
    with_nan = {**metrics, "extra": float("nan"), "array": np.arange(3), "flag": np.bool_(True)}
    path = report.write_metrics_json(with_nan, tmp_path / "eval" / "metrics.json")
    text = path.read_text()
    assert "NaN" not in text
    back = report.read_metrics_json(path)
    assert back == report.to_jsonable(with_nan)
    assert back["extra"] is None and back["array"] == [0, 1, 2] and back["flag"] is True
    assert back["mpjpe_mm"] == metrics["mpjpe_mm"]
    # top level: numbers (what `dvc metrics show` tabulates) and the nested tables
    assert isinstance(back["p_mpjpe_mm"], float) and isinstance(back["num_frames"], int)
    assert set(back["per_action"]) == {"Eating", "Sitting Down|x", "Walking"}
    assert list(back["per_joint"]) == list(H36M_17.joint_names)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left


def test_failed_write_leaves_the_old_file(tmp_path, metrics):
    path = report.write_metrics_json(metrics, tmp_path / "metrics.json")
    before = path.read_text()
    with pytest.raises(TypeError, match="cannot write object"):
        report.write_metrics_json({"bad": object()}, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_reading_bad_json_names_the_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match=r"m\.json: field '<file>': expected a JSON metrics object"):
        report.read_metrics_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="expected a JSON object at the top level, got list"):
        report.read_metrics_json(bad)


def test_markdown_has_summary_with_published_rows_and_the_tables(tmp_path, metrics):
    path = report.write_markdown_report(tmp_path / "report.md", metrics, title="H36M test", published=PAPER,
                                        figures={"per action": "per_action.png"}, notes=["synthetic data"])
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# H36M test"
    header = next(line for line in lines if line.startswith("| method |"))
    assert "P1 MPJPE (mm)" in header and "PCK@150 (%)" in header and "ours − theirs, P1 (mm)" in header
    ours = next(line for line in lines if line.startswith("| this run |"))
    assert f"| {metrics['mpjpe_mm']:.1f} |" in ours and f"| {metrics['p_mpjpe_mm']:.1f} |" in ours
    paper = next(line for line in lines if line.startswith("| paper (Ye et al. 2025) |"))
    assert paper.endswith(f"| {metrics['mpjpe_mm'] - 38.0:+.1f} |")
    assert "| 38.0 | 31.9 | — |" in paper  # N-MPJPE not published
    for action, entry in metrics["per_action"].items():
        escaped = action.replace("|", "\\|")
        assert f"| {escaped} | {entry['mpjpe_mm']:.1f} | {entry['p_mpjpe_mm']:.1f} |" in text
    assert f"| **average over actions** | {metrics['mpjpe_mm']:.1f} |" in text
    for joint in H36M_17.joint_names:
        assert f"| {joint} | {metrics['per_joint'][joint]['mpjpe_mm']:.1f} |" in text
    assert "| frames evaluated | 60 |" in text
    assert "- averaging: per_action" in text
    assert "![per action](per_action.png)" in text and "- synthetic data" in text


def test_markdown_without_tables_or_published_rows():
    text = report.render_markdown({"mpjpe_mm": 16.0, "pck_percent": 98.5, "auc_percent": None})
    assert "## Per action" not in text and "## Per joint" not in text and "ours − theirs" not in text
    assert "| this run | 16.0 | 98.5 |" in text and "AUC" not in text


def _assert_png(path, min_width: int) -> None:
    image = imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[1] >= min_width and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05  # something was drawn


def test_bar_charts_of_actions_and_joints(tmp_path, metrics):
    _assert_png(plots.plot_per_action(metrics, tmp_path / "actions.png"), 600)
    _assert_png(plots.plot_per_action(metrics["per_action"], tmp_path / "table.png", metric="p_mpjpe_mm"), 600)
    _assert_png(plots.plot_per_joint(metrics, tmp_path / "joints.png"), 900)
    with pytest.raises(DataFormatError, match="numbers for 'nope'"):
        plots.plot_per_joint(metrics, tmp_path / "x.png", metric="nope")
    assert not (tmp_path / "x.png").exists()


def test_skeleton_pair_and_loss_curves(tmp_path):
    rng = np.random.default_rng(1)
    gt = root_relative(rng.normal(scale=300.0, size=(H36M_17.num_joints, 3)))
    path = plots.plot_skeleton_pair(gt + 10.0, gt, tmp_path / "pose.png", error_mm=10.0)
    _assert_png(path, 900)
    with pytest.raises(DataFormatError, match=r"expected one pose of shape \(17, 3\)"):
        plots.plot_skeleton_pair(gt[:16], gt, tmp_path / "bad.png")
    steps = np.arange(0, 500, 10)
    curves = {"train": list(zip(steps, np.exp(-steps / 50.0))), "val": [(0, 1.2), (250, 0.1)]}
    _assert_png(plots.plot_loss_curves(curves, tmp_path / "loss.png"), 700)
    with pytest.raises(DataFormatError, match="at least one named list"):
        plots.plot_loss_curves({}, tmp_path / "none.png")


def test_figures_are_deterministic(tmp_path, metrics):
    a = imread(plots.plot_per_action(metrics, tmp_path / "a.png"))
    b = imread(plots.plot_per_action(json.loads(json.dumps(metrics)), tmp_path / "b.png"))
    assert a.shape == b.shape and np.array_equal(a, b)
