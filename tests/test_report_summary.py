"""The evaluation's DVC metric is a short summary; the detail goes to a separate file."""

from types import SimpleNamespace

from dualpose.eval.report import SUMMARY_METRIC_KEYS, describe_model, render_markdown, split_metrics


def test_split_metrics_keeps_a_short_summary_and_everything_in_the_detail():
    metrics = {"mpjpe_mm": 120.0, "p_mpjpe_mm": 90.0, "weights": "/x", "split": "test", "num_videos": 3,
               "per_action": {"walk": {"mpjpe_mm": 1.0}}, "baseline_mean_pose_mpjpe_mm": 160.0, "frames": 10}
    summary, detail = split_metrics(metrics)
    assert summary == {"mpjpe_mm": 120.0, "p_mpjpe_mm": 90.0, "baseline_mean_pose_mpjpe_mm": 160.0, "frames": 10}
    assert list(summary) == [k for k in SUMMARY_METRIC_KEYS if k in summary]
    assert detail == metrics


def test_the_report_names_a_shrunken_model_and_shows_the_baseline():
    spec = SimpleNamespace(depth=4, dim=32, T=27)
    line = describe_model(spec, 206_827, "XS", {"depth": 12, "dim": 64})
    assert line.startswith("DualPose-XS shrunk to 4 blocks x 32 channels, 0.21 M parameters")
    assert "quick-start model" in line and "12 x 64" in line
    full = describe_model(SimpleNamespace(depth=12, dim=64, T=27), 1_000_000, "XS", {"depth": 12, "dim": 64})
    assert full == "DualPose-XS: 12 blocks x 64 channels, 1.00 M parameters, T = 27"
    text = render_markdown({"mpjpe_mm": 120.0}, model=line,
                           baselines=[{"method": "mean training pose (baseline)", "mpjpe_mm": 160.0}])
    assert f"Model: {line}" in text
    assert "| mean training pose (baseline) | 160.0 | -40.0 |" in text


def test_stage_results_print_as_tidy_lines(capsys):
    from dualpose.cli import _echo_result

    _echo_result({"steps": 243, "best_val_mpjpe_mm": 128.16246, "final_loss": 0.158721, "history": [1, 2],
                  "init": "scratch"})
    out = capsys.readouterr().out
    assert out.splitlines() == ["  steps: 243", "  best val mpjpe mm: 128.2", "  final loss: 0.1587", "  init: scratch"]
