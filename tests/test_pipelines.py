"""The Dagster project: definitions load and validate, the whole graph materialises in process on a
tiny configuration (locally and against a moto S3 server), asset checks fail and block on corrupted
data, training runs through Pipes (``accelerate launch`` with two processes, rank 0 reporting),
and the schedule, sensor and instance template do what they say."""

from __future__ import annotations

import base64
import json
import re
import subprocess

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipelines_support import (
    DATASET,
    REPO_ROOT,
    TINY_SYNTHETIC,
    load_definitions,
    make_resources,
    subprocess_env,
    tiny_params,
    venv_bin,
    write_params,
)

# Dagster's own Pipes session touches a preview API of itself on every run.
pytestmark = pytest.mark.filterwarnings("ignore:.*expected_writer_count.*")

DATA_ASSETS = ["raw_files", "keypoint_tables", "clip_index", "masked_inputs"]
TRAINING_ASSETS = ["pretrained_weights", "finetuned_weights", "evaluation_report"]
DATA_CHECKS = {("keypoint_tables", "finite_values"), ("keypoint_tables", "bone_lengths_consistent"),
               ("keypoint_tables", "plausible_range"), ("clip_index", "clip_counts"), ("masked_inputs", "masked_ratio")}
TRAINING_CHECKS = {("pretrained_weights", "weights_finite"), ("finetuned_weights", "weights_finite"),
                   ("evaluation_report", "mpjpe_within_threshold")}
REGISTRY_ASSETS = ["model_version", "champion_model"]  # tests/test_registry_pipeline.py runs them
REGISTRY_CHECKS = {("model_version", "benchmark_score_finite"), ("champion_model", "champion_is_best_known")}


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("DUALPOSE_PROGRESS", "0")


def _materialise(defs, resources, keys, partition=None, tags=None):
    selection = dg.AssetSelection.assets(*[dg.AssetKey(k) for k in keys])
    return dg.materialize([*defs.assets, *defs.asset_checks], resources=resources, selection=selection,
                          partition_key=partition, tags=tags, raise_on_error=False)


def _run_checks(defs, resources, checks, partition=None):
    """Run asset checks alone (the partition, if any, as a run tag: a checks-only run has no assets)."""
    selection = dg.AssetSelection.checks(*[dg.AssetCheckKey(dg.AssetKey(a), n) for a, n in checks])
    tags = {"dagster/partition": partition} if partition else None
    result = dg.materialize([*defs.assets, *defs.asset_checks], resources=resources, selection=selection,
                            tags=tags, raise_on_error=False)
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def _materialisations(result) -> dict[str, dg.AssetMaterialization]:
    return {e.materialization.asset_key.to_user_string(): e.materialization
            for e in result.get_asset_materialization_events()}


def _checks(result) -> dict[tuple[str, str], object]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


def _value(materialisation, key):
    return materialisation.metadata[key].value


def _png_count(markdown: str) -> int:
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)
    return sum(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)


# -- definitions -----------------------------------------------------------------------------------
def test_definitions_follow_params_yaml(tmp_path, monkeypatch):
    datasets = {
        "synthetic": {"adapter": "synthetic", "options": dict(TINY_SYNTHETIC)},
        "mocap": {"adapter": "mocap_npz", "enabled": False, "files": {"motion": "x.npz"}},
        "second": {"adapter": "synthetic", "options": {**TINY_SYNTHETIC, "seed": 1}},
    }
    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts", datasets=datasets, train_dataset="second"))
    defs = load_definitions(monkeypatch, params)
    dg.Definitions.validate_loadable(defs)

    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == set(DATA_ASSETS + TRAINING_ASSETS +
                                                                           REGISTRY_ASSETS)
    assert {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys} == \
        DATA_CHECKS | TRAINING_CHECKS | REGISTRY_CHECKS
    for key in DATA_ASSETS:  # enabled data sets are the partitions; the disabled one is not
        assert graph.get(dg.AssetKey(key)).partitions_def.get_partition_keys() == ["synthetic", "second"]
    by_key = {k.to_user_string(): a for a in defs.assets for k in a.keys}
    for key in TRAINING_ASSETS:
        assert graph.get(dg.AssetKey(key)).partitions_def is None
        assert by_key[key].op.pool == "dualpose_training"  # one training step at a time
    pretrained = graph.get(dg.AssetKey("pretrained_weights"))
    mapping = pretrained.partition_mappings[dg.AssetKey("masked_inputs")]
    assert mapping.partition_keys == ["second"]  # training reads params.train_dataset only

    assert {j.name for j in defs.jobs} == {"prepare_data", "prepare_tables", "weekly_retraining"}
    schedule = defs.resolve_schedule_def("weekly_retraining_schedule")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "weekly_retraining"
    assert defs.resolve_sensor_def("new_raw_files").job_name == "prepare_tables"
    assert set(defs.resources) == {"dualpose", "storage", "launcher"}
    assert defs.resources["dualpose"].params_path == str(params.resolve())


def test_dagster_cli_validates_from_repository_root(tmp_path):
    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    result = subprocess.run([venv_bin("dagster"), "definitions", "validate"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120,
                            env=subprocess_env(DUALPOSE_PARAMS=str(params), DAGSTER_HOME=str(home)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


# -- the whole graph ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_whole_graph_materialises_in_process(tmp_path, monkeypatch):
    from dualpose.data.clips import ClipIndex
    from dualpose.eval.report import read_metrics_json
    from pipelines.metadata import content_hash

    root = tmp_path / "artifacts"
    params = write_params(tmp_path, tiny_params("artifacts"))  # relative: taken from params.yaml's folder
    defs = load_definitions(monkeypatch, params)
    result = _materialise(defs, make_resources(params), DATA_ASSETS + TRAINING_ASSETS, partition=DATASET)
    assert result.success
    done = _materialisations(result)
    assert set(done) == set(DATA_ASSETS + TRAINING_ASSETS)
    checks = _checks(result)
    assert set(checks) == DATA_CHECKS | TRAINING_CHECKS
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items() if not c.passed}

    # data assets: counts as the files on disk say, data versions = hashes of those files
    manifest = json.loads((root / "tables" / DATASET / "manifest.json").read_text())
    tables = done["keypoint_tables"]
    assert _value(tables, "rows") == manifest["rows"] == 3 * 2 * 25 * 2
    assert _value(tables, "videos") == manifest["videos"] == 3 * 2 * 2
    assert "| train | 200 |" in _value(tables, "splits") and "| test | 100 |" in _value(tables, "splits")
    parquet = sorted((root / "tables" / DATASET).glob("*.parquet"))
    assert tables.tags["dagster/data_version"] == content_hash(parquet, root=root / "tables" / DATASET)
    index = ClipIndex.load(root / "clips" / f"{DATASET}.parquet")
    counts = index.counts()
    clips = done["clip_index"]
    assert _value(clips, "clips") == len(index)
    assert {s: _value(clips, f"{s}_clips") for s in counts} == counts
    masked = done["masked_inputs"]
    assert _value(masked, "rows") == counts["train"] * 2  # two views per training clip
    assert 0.0 < _value(masked, "masked_ratio_mean") < 1.0

    # training: the subprocess's numbers and plots arrive as metadata
    pre, fine, ev = done["pretrained_weights"], done["finetuned_weights"], done["evaluation_report"]
    pre_metrics = json.loads((root / "models" / "pretrain" / "metrics.json").read_text())
    assert _value(pre, "final_loss") == pytest.approx(pre_metrics["final_loss"])
    assert _value(pre, "steps") == pre_metrics["steps"] > 0
    assert _png_count(_value(pre, "loss_curve")) == 1
    fine_metrics = json.loads((root / "models" / "finetune" / "metrics.json").read_text())
    assert _value(fine, "best_val_mpjpe_mm") == pytest.approx(fine_metrics["best_val_mpjpe_mm"])
    assert _png_count(_value(fine, "loss_curve")) == 1 and _png_count(_value(fine, "validation_curve")) == 1
    assert fine.tags["dagster/data_version"] == content_hash(
        [root / "models/finetune/best/model.safetensors", root / "models/finetune/best/config.json"],
        root=root / "models/finetune/best")
    metrics = read_metrics_json(root / "eval" / DATASET / "metrics.json")
    assert _value(ev, "mpjpe_mm") == pytest.approx(metrics["mpjpe_mm"])
    table = _value(ev, "mpjpe_table")
    assert "P1 MPJPE (mm)" in table and f"{metrics['mpjpe_mm']:.1f}" in table
    assert "| walk |" in table and "| jump |" in table  # per-action rows
    plots = {k for k in ev.metadata if k.startswith("plot_")}
    assert "plot_sample_skeleton" in plots and "plot_per_action" in plots
    assert all(_png_count(_value(ev, k)) == 1 for k in plots)
    assert str(_value(ev, "report")) == str(root / "eval" / DATASET / "report.md")
    threshold = checks[("evaluation_report", "mpjpe_within_threshold")]
    assert threshold.metadata["mpjpe_mm"].value == pytest.approx(metrics["mpjpe_mm"])

    # rebuilding the tables from the same configuration gives the same data version
    again = _materialise(defs, make_resources(params), ["keypoint_tables"], partition=DATASET)
    assert _materialisations(again)["keypoint_tables"].tags["dagster/data_version"] == \
        tables.tags["dagster/data_version"]


# -- asset checks on bad data -------------------------------------------------------------------------
@pytest.mark.parametrize("defect, failing", [("bones", "bone_lengths_consistent"), ("metres", "plausible_range")])
def test_blocking_checks_stop_downstream_on_bad_tables(tmp_path, monkeypatch, defect, failing):
    from dualpose.data.adapters import ADAPTERS

    monkeypatch.setitem(ADAPTERS, "corrupted", "tests.pipelines_support")
    datasets = {DATASET: {"adapter": "corrupted", "options": {**TINY_SYNTHETIC, "defect": defect}}}
    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts", datasets=datasets))
    defs = load_definitions(monkeypatch, params)
    result = _materialise(defs, make_resources(params), DATA_ASSETS, partition=DATASET)
    checks = _checks(result)
    assert {k for k, c in checks.items() if not c.passed} == {("keypoint_tables", failing)}
    assert checks[("keypoint_tables", failing)].severity == dg.AssetCheckSeverity.ERROR
    # the tables exist (the schema accepts them) but nothing downstream was built from them
    assert set(_materialisations(result)) == {"raw_files", "keypoint_tables"}
    assert not (tmp_path / "artifacts" / "clips").exists()
    if defect == "bones":
        assert checks[("keypoint_tables", failing)].metadata["videos_failing"].value == 12
    else:
        assert checks[("keypoint_tables", failing)].metadata["extent_max_mm"].value < 2.0


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """The tiny data set prepared (tables, clips, masks), with its definitions and resources."""
    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts"))
    defs = load_definitions(monkeypatch, params)
    resources = make_resources(params)
    assert _materialise(defs, resources, DATA_ASSETS, partition=DATASET).success
    return defs, resources, tmp_path / "artifacts"


def _rewrite_column(path, name, fn):
    table = pq.read_table(path)
    column = table.column(name).combine_chunks()
    values = column.flatten().flatten().to_numpy(zero_copy_only=False).copy()
    values = fn(values)
    inner = column.type.value_type
    rebuilt = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), inner.list_size), column.type.list_size)
    pq.write_table(table.set_column(table.schema.get_field_index(name), name, rebuilt), path)


def test_finite_values_fails_on_nan_and_inf(prepared):
    defs, resources, root = prepared
    train = root / "tables" / DATASET / "train.parquet"

    def corrupt(values):
        values[5] = np.nan  # frame 0, joint 2, x: a visible joint
        values[100] = np.inf
        return values

    _rewrite_column(train, "kp2d", corrupt)
    result = _run_checks(defs, resources, [("keypoint_tables", "finite_values")], DATASET)
    check = result[("keypoint_tables", "finite_values")]
    assert not check.passed
    assert check.metadata["visible_2d_joints_not_finite"].value == 2
    assert check.metadata["inf_values"].value == 1


def test_clip_counts_fails_on_a_stale_index(prepared):
    from dualpose.config import ClipConfig
    from dualpose.data.clips import build_clip_index
    from dualpose.data.schema import read_keypoint_table

    defs, resources, root = prepared
    files = sorted((root / "tables" / DATASET).glob("*.parquet"))
    arrays = read_keypoint_table(files)
    stale = build_clip_index(arrays, ClipConfig(length=9, min_length=9, train_stride=9), table_id=files)
    stale.save(root / "clips" / f"{DATASET}.parquet")
    check = _run_checks(defs, resources, [("clip_index", "clip_counts")], DATASET)[("clip_index", "clip_counts")]
    assert not check.passed
    assert "differ from" in check.description
    assert check.metadata["train_clips"].value == stale.counts()["train"]


def test_masked_ratio_fails_on_other_settings_and_empty_masks(prepared):
    from dualpose.config import MaskingConfig
    from dualpose.data.clips import ClipIndex
    from dualpose.data.masking import build_masked_table, write_masked_table

    defs, resources, root = prepared
    path = root / "masked" / f"{DATASET}.parquet"
    index = ClipIndex.load(root / "clips" / f"{DATASET}.parquet").select("train")
    write_masked_table(build_masked_table(index, MaskingConfig(probability=0.2, span=1, views=2), 17), path)
    check = _run_checks(defs, resources, [("masked_inputs", "masked_ratio")], DATASET)[("masked_inputs", "masked_ratio")]
    assert not check.passed
    assert "probability configured 0.7 stored 0.2" in check.description

    good = build_masked_table(index, MaskingConfig(probability=0.7, span=3, views=2), 17)
    empty = pa.FixedSizeBinaryArray.from_buffers(good.schema.field("mask").type, good.num_rows,
                                                 [None, pa.py_buffer(bytes(good.num_rows * 20))])
    zeros = good.set_column(good.schema.get_field_index("mask"), "mask", empty).set_column(
        good.schema.get_field_index("masked_ratio"), "masked_ratio", pa.array(np.zeros(good.num_rows, np.float32)))
    write_masked_table(zeros.replace_schema_metadata(good.schema.metadata), path)
    check = _run_checks(defs, resources, [("masked_inputs", "masked_ratio")], DATASET)[("masked_inputs", "masked_ratio")]
    assert not check.passed
    assert check.metadata["masked_ratio_mean"].value == 0.0
    assert check.metadata["expected_ratio"].value > 0.3


def test_training_checks_fail_on_nan_weights_and_a_bad_evaluation(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    root = tmp_path / "artifacts"
    params = write_params(tmp_path, tiny_params(root, evaluate={"max_mpjpe_mm": 100.0}))
    defs = load_definitions(monkeypatch, params)
    weights = root / "models" / "pretrain"
    weights.mkdir(parents=True)
    save_file({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, str(weights / "model.safetensors"))
    (root / "eval" / DATASET).mkdir(parents=True)
    (root / "eval" / DATASET / "metrics.json").write_text(json.dumps({"mpjpe_mm": 123.4}))
    result = _run_checks(defs, make_resources(params), [("pretrained_weights", "weights_finite"),
                                                        ("evaluation_report", "mpjpe_within_threshold")])
    weights_check = result[("pretrained_weights", "weights_finite")]
    assert not weights_check.passed and weights_check.metadata["tensors_not_finite"].value == 1
    threshold = result[("evaluation_report", "mpjpe_within_threshold")]
    assert not threshold.passed
    assert threshold.description == "MPJPE 123.4 mm is worse than evaluate.max_mpjpe_mm = 100"


# -- Pipes with several processes -------------------------------------------------------------------
@pytest.mark.slow
def test_accelerate_launch_two_processes_report_once(prepared):
    defs, _, root = prepared
    params = root.parent / "params.yaml"
    resources = make_resources(params, launcher="accelerate", num_processes=2)
    result = _materialise(defs, resources, ["pretrained_weights"])
    assert result.success
    events = result.get_asset_materialization_events()
    assert len(events) == 1  # rank 1 trained too, but only rank 0 reported
    pre = events[0].materialization
    assert _value(pre, "processes") == 2
    metrics = json.loads((root / "models" / "pretrain" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and _value(pre, "steps") == metrics["steps"]
    check = _checks(result)[("pretrained_weights", "weights_finite")]
    assert check.passed


# -- S3 ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_whole_graph_on_s3(tmp_path, monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    from tests.servers import create_bucket, moto_s3

    params = write_params(tmp_path, tiny_params("s3://dualpose-e2e/runs/one"))
    defs = load_definitions(monkeypatch, params)
    work = tmp_path / "work"
    with moto_s3() as endpoint:
        create_bucket(endpoint, "dualpose-e2e")
        resources = make_resources(params, work_dir=work)
        result = _materialise(defs, resources, DATA_ASSETS + TRAINING_ASSETS, partition=DATASET)
        assert result.success
        assert all(c.passed for c in _checks(result).values())
        done = _materialisations(result)
        assert _value(done["keypoint_tables"], "location") == "s3://dualpose-e2e/runs/one/tables/synthetic"
        assert str(_value(done["evaluation_report"], "report")) == \
            "s3://dualpose-e2e/runs/one/eval/synthetic/report.md"
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        stored = {p.removeprefix("dualpose-e2e/runs/one/") for p in fs.find("dualpose-e2e/runs/one")}
        for name in ("tables/synthetic/train.parquet", "tables/synthetic/test.parquet", "clips/synthetic.parquet",
                     "masked/synthetic.parquet", "models/pretrain/model.safetensors",
                     "models/finetune/best/model.safetensors", "eval/synthetic/metrics.json",
                     "eval/synthetic/report.md"):
            assert name in stored
        metrics = json.loads(fs.cat_file("dualpose-e2e/runs/one/eval/synthetic/metrics.json"))
        assert _value(done["evaluation_report"], "mpjpe_mm") == pytest.approx(metrics["mpjpe_mm"])
        assert list(work.iterdir()) == []  # staging folders are removed
        assert not (tmp_path / "s3:").exists() and not (tmp_path / "artifacts").exists()

        # the sensor watches raw/<dataset>/ on S3 too
        sensor = defs.resolve_sensor_def("new_raw_files")
        with dg.instance_for_test() as instance:
            first = _tick(sensor, None, resources["storage"], instance)
            assert not first.run_requests  # synthetic data has no raw files
            fs.pipe_file("dualpose-e2e/runs/one/raw/synthetic/extra.npz", b"new motion")
            second = _tick(sensor, first.cursor, resources["storage"], instance)
            assert [r.partition_key for r in second.run_requests] == ["synthetic"]


def _tick(sensor, cursor, storage, instance):
    with dg.build_sensor_context(cursor=cursor, instance=instance, resources={"storage": storage}) as context:
        return sensor(context)


# -- automation ---------------------------------------------------------------------------------------
def test_sensor_requests_tables_when_raw_files_change(tmp_path, monkeypatch):
    raw = tmp_path / "artifacts" / "raw"
    motion = raw / "mocap" / "take1.npz"
    datasets = {"synthetic": {"adapter": "synthetic", "options": dict(TINY_SYNTHETIC)},
                "mocap": {"adapter": "mocap_npz", "files": {"motion": str(motion)}}}
    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts", datasets=datasets))
    defs = load_definitions(monkeypatch, params)
    sensor = defs.resolve_sensor_def("new_raw_files")
    resources = make_resources(params)
    cmu = REPO_ROOT.parent / "shared" / "data" / "cmu" / "cmu_train.npz"
    if not cmu.is_file():
        pytest.skip("reason: CMU data folder ../shared/data/cmu absent")
    motion.parent.mkdir(parents=True)
    motion.write_bytes(cmu.read_bytes())

    with dg.instance_for_test() as instance:
        def tick(cursor):
            return _tick(sensor, cursor, resources["storage"], instance)

        first = tick(None)  # raw files that no tables were built from; synthetic has none
        assert [(r.partition_key, r.run_key[:6]) for r in first.run_requests] == [("mocap", "mocap:")]
        assert not tick(first.cursor).run_requests  # requested once per state of the files

        # the run the sensor asked for: its tables record the raw files they saw
        job = defs.resolve_job_def("prepare_tables")
        run = job.execute_in_process(partition_key="mocap", instance=instance, resources=resources)
        assert run.success
        assert not tick(None).run_requests  # a fresh cursor: the tables are up to date with the files

        (raw / "mocap" / "notes.txt").write_text("a second take is coming")
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["mocap"]
        assert second.run_requests[0].run_key != first.run_requests[0].run_key
        assert not tick(second.cursor).run_requests


def test_schedule_and_instance_allow_one_training_run(tmp_path, monkeypatch):
    import shutil

    from dagster._core.instance import DagsterInstance

    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts"))
    defs = load_definitions(monkeypatch, params)
    job = defs.resolve_job_def("weekly_retraining")
    assert set(job.graph.node_dict) == set(TRAINING_ASSETS) | {
        f"{a}_{n}" for a, n in TRAINING_CHECKS} or set(TRAINING_ASSETS) <= set(job.graph.node_dict)
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == set(TRAINING_ASSETS + REGISTRY_ASSETS)
    assert job.run_tags["dualpose/training"] == "true"
    schedule = defs.resolve_schedule_def("weekly_retraining_schedule")
    tick = schedule.evaluate_tick(dg.build_schedule_context())
    assert len(tick.run_requests) == 1 and tick.run_requests[0].partition_key is None

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "pipelines" / "dagster.yaml", home / "dagster.yaml")
    instance = DagsterInstance.from_config(str(home))
    try:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        limits = config.run_queue_config.tag_concurrency_limits
        assert {"key": "dualpose/training", "limit": 1} in limits
    finally:
        instance.dispose()
