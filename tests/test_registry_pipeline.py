"""A scheduled retraining simulated end to end in process (local launcher, tiny configuration): the
schedule's run request executes the weekly_retraining job, which trains, evaluates, registers a model
version and promotes it; a later run that does not beat the champion by the margin and a failed run
both leave the champion as it was."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest

from dualpose.registry import CHAMPION, CHAMPION_METRICS, ModelRegistry, resolve_weights
from tests.pipelines_support import DATASET, load_definitions, make_resources, tiny_params, write_params

pytestmark = pytest.mark.filterwarnings("ignore:.*expected_writer_count.*")
DATA_ASSETS = ["raw_files", "keypoint_tables", "clip_index", "masked_inputs"]


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("DUALPOSE_PROGRESS", "0")


def _resources(params, overrides):
    from pipelines.defs.resources import DualPoseConfig, StorageResource

    resources = make_resources(params)
    config = DualPoseConfig(params_path=str(params), overrides=overrides)
    return {**resources, "dualpose": config, "storage": StorageResource(dualpose=config)}


def _meta(result, node, key):
    return result.asset_materializations_for_node(node)[0].metadata[key].value


@pytest.mark.slow
def test_weekly_retraining_promotes_then_protects_the_champion(tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    params = write_params(tmp_path, tiny_params(root))
    defs = load_definitions(monkeypatch, params)
    job = defs.resolve_job_def("weekly_retraining")
    schedule = defs.resolve_schedule_def("weekly_retraining_schedule")
    registry = ModelRegistry.at(root)
    with dg.instance_for_test() as instance:
        data = dg.materialize([*defs.assets, *defs.asset_checks], resources=make_resources(params),
                              selection=dg.AssetSelection.assets(*DATA_ASSETS), partition_key=DATASET,
                              instance=instance, raise_on_error=False)
        assert data.success
        monday = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.timezone.utc)
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=monday) as context:
            (request,) = schedule.evaluate_tick(context).run_requests
        assert request.job_name in (None, "weekly_retraining")

        def weekly(overrides):
            return job.execute_in_process(instance=instance, resources=_resources(params, overrides),
                                          tags=request.tags, raise_on_error=False)

        # 1. the first scheduled run: a new version, promoted (there is no champion yet)
        first = weekly([])
        assert first.success
        assert instance.get_run_by_id(first.run_id).tags["dualpose/training"] == "true"  # one at a time
        (v1,) = registry.versions()
        metrics = json.loads((root / "eval" / DATASET / "metrics.json").read_text())
        assert v1["benchmark"]["score_mm"] == pytest.approx(metrics["mpjpe_mm"])
        assert v1["lineage"]["run_id"] == first.run_id
        assert _meta(first, "model_version", "version") == v1["id"]
        assert _meta(first, "model_version", "score_mm") == pytest.approx(metrics["mpjpe_mm"])
        assert _meta(first, "champion_model", "promoted") is True
        assert _meta(first, "champion_model", "reason") == "no champion yet"
        assert registry.champion()["version"] == v1["id"]
        shown = json.loads((root / CHAMPION_METRICS).read_text())  # the champion's row in `dvc metrics show`
        assert shown["version"] == v1["id"] and shown["mpjpe_mm"] == pytest.approx(metrics["mpjpe_mm"])
        assert _meta(first, "champion_model", "champion_metrics") == shown
        checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks["benchmark_score_finite"] and checks["champion_is_best_known"]
        assert resolve_weights(root, "champion") == root / "models" / "versions" / v1["id"] / "weights"
        pointer = (root / CHAMPION).read_bytes()

        # 2. a challenger that does not beat the champion by the margin: registered, not promoted
        second = weekly(["registry.promotion_margin_mm=100000"])
        assert second.success
        v1_again, v2 = registry.versions()
        assert v1_again["id"] == v1["id"] and v2["lineage"]["run_id"] == second.run_id
        assert _meta(second, "champion_model", "promoted") is False
        assert "does not beat the champion" in _meta(second, "champion_model", "reason")
        assert _meta(second, "champion_model", "champion") == v1["id"]
        assert (root / CHAMPION).read_bytes() == pointer
        assert json.loads((root / CHAMPION_METRICS).read_text())["version"] == v1["id"]

        # 3. a failed retraining (an invalid setting fails the run's first training step): no version,
        # the champion untouched
        third = weekly(["finetune.batch_size=-1"])
        assert not third.success
        assert [s.step_key for s in third.get_step_failure_events()] == ["pretrained_weights"]
        assert not third.asset_materializations_for_node("model_version")
        assert [v["id"] for v in registry.versions()] == [v1["id"], v2["id"]]
        assert (root / CHAMPION).read_bytes() == pointer
