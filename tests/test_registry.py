"""Model versions and promotion (dualpose/registry.py): the champion moves only for a better challenger;
worse or failed ones leave it; restore rolls back; the CLI and the weight resolution read the champion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dualpose.cli import app
from dualpose.config import load_params, params_from_dict
from dualpose.errors import ConfigError
from dualpose.layout import Layout
from dualpose.registry import (
    CHAMPION,
    ModelRegistry,
    benchmark_score,
    data_files,
    decide,
    params_hash,
    resolve_weights,
)
from tests.pipelines_support import tiny_params, write_params


def _version(score, dataset="synthetic", split="test", fingerprint="abc", vid="v"):
    return {"id": vid, "benchmark": {"dataset": dataset, "split": split, "data_fingerprint": fingerprint,
                                     "score_mm": score, "metric": "mpjpe_mm"}}


@pytest.mark.parametrize("challenger, champion, promote, words", [
    (_version(100.0), None, True, "no champion yet"),
    (_version(99.0), _version(100.0), True, "beats the champion's 100.00 mm by 1.00 mm"),
    (_version(99.6), _version(100.0), False, "does not beat the champion's 100.00 mm by the margin of 0.5 mm"),
    (_version(120.0), _version(100.0), False, "does not beat"),
    (_version(float("nan")), _version(100.0), False, "no finite benchmark score"),
    (_version(None), None, False, "no finite benchmark score"),
    (_version(50.0, fingerprint="new-data"), _version(100.0), False, "scored on another benchmark"),
    (_version(50.0, split="validation"), _version(100.0), False, "scored on another benchmark"),
])
def test_decide(challenger, champion, promote, words):
    decision = decide(challenger, champion, margin_mm=0.5)
    assert decision.promote is promote
    assert words in decision.reason
    if champion is not None and benchmark_score(challenger) is not None:
        assert decision.delta_mm == pytest.approx(benchmark_score(challenger) - benchmark_score(champion))


def test_margin_is_inclusive_and_configurable():
    assert decide(_version(99.5), _version(100.0), 0.5).promote
    assert not decide(_version(99.5), _version(100.0), 0.6).promote
    assert decide(_version(100.0), _version(100.0), 0.0).promote  # equal with no margin: the newer model


# -- a registry on disk -------------------------------------------------------------------------------
@pytest.fixture
def trained(tmp_path):
    """A storage root with data files (manifest, clip index) and a factory of 'trained' weight folders."""
    root = tmp_path / "artifacts"
    layout = Layout(root)
    (layout.tables("synthetic")).mkdir(parents=True)
    (layout.tables("synthetic") / "manifest.json").write_text(json.dumps({"rows": 300}))
    layout.clips("synthetic").parent.mkdir(parents=True)
    layout.clips("synthetic").write_bytes(b"clip index bytes")
    params = params_from_dict(tiny_params(root))

    def weights(tag: str) -> Path:
        folder = tmp_path / "runs" / tag
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(f"weights of {tag}".encode())
        (folder / "config.json").write_text(json.dumps({"variant": "XS", "tag": tag}))
        return folder

    return root, layout, params, weights


def _register(registry, layout, params, folder, score, run_id):
    return registry.register(folder, params, metrics={"best_val_mpjpe_mm": 1.0}, run_id=run_id,
                             evaluation={"mpjpe_mm": score, "split": "test"},
                             data_files=data_files(layout, "synthetic"))


def test_better_worse_and_failed_challengers(trained):
    root, layout, params, weights = trained
    registry = ModelRegistry.at(root)
    assert registry.champion() is None and registry.versions() == []

    first = _register(registry, layout, params, weights("first"), 150.0, "run-1")
    decision, pointer = registry.promote_if_better(first["id"], 0.5)
    assert decision.promote and pointer["version"] == first["id"]

    better = _register(registry, layout, params, weights("better"), 140.0, "run-2")
    decision, _ = registry.promote_if_better(better["id"], 0.5)
    assert decision.promote and registry.champion()["version"] == better["id"]
    champion_bytes = (root / CHAMPION).read_bytes()

    worse = _register(registry, layout, params, weights("worse"), 141.0, "run-3")
    decision, pointer = registry.promote_if_better(worse["id"], 0.5)
    assert not decision.promote and pointer is None
    assert (root / CHAMPION).read_bytes() == champion_bytes  # untouched, byte for byte

    failed = _register(registry, layout, params, weights("failed"), float("nan"), "run-4")
    decision, _ = registry.promote_if_better(failed["id"], 0.5)
    assert not decision.promote and (root / CHAMPION).read_bytes() == champion_bytes

    # every run is its own version, with weights, config, metrics and lineage
    assert [v["lineage"]["run_id"] for v in registry.versions()] == ["run-1", "run-2", "run-3", "run-4"]
    stored = root / "models" / "versions" / better["id"]
    assert (stored / "weights" / "model.safetensors").read_bytes() == b"weights of better"
    assert json.loads((stored / "weights" / "config.json").read_text())["tag"] == "better"
    record = json.loads((stored / "version.json").read_text())
    assert record["metrics"] == {"best_val_mpjpe_mm": 1.0}
    assert record["benchmark"]["score_mm"] == 140.0 and record["benchmark"]["split"] == "test"
    assert record["lineage"]["params_hash"] == params_hash(params)
    assert record["lineage"]["data_fingerprint"] == first["lineage"]["data_fingerprint"]
    assert len(record["lineage"]["code_version"]) >= 7
    assert record["config"]["model"]["variant"] == "XS" and "storage" not in record["config"]
    assert math.isnan(registry.version(failed["id"])["benchmark"]["score_mm"])
    assert not list((root / "models").glob("**/*.tmp"))  # atomic writes leave nothing behind

    # the champion's weights are what evaluation and predict read by default
    assert resolve_weights(root, "champion") == stored / "weights"
    champion = registry.champion()
    assert [h["version"] for h in champion["history"]] == [first["id"]]

    # restore: back to the first model whatever its score
    pointer = registry.restore(first["id"])
    assert pointer["version"] == first["id"] and pointer["how"] == "restore"
    assert [h["version"] for h in pointer["history"]] == [first["id"], better["id"]]


def test_changed_data_changes_the_fingerprint_and_blocks_automatic_promotion(trained):
    root, layout, params, weights = trained
    registry = ModelRegistry.at(root)
    old = _register(registry, layout, params, weights("old"), 150.0, "r1")
    registry.promote_if_better(old["id"], 0.5)
    layout.clips("synthetic").write_bytes(b"a different clip index")
    new = _register(registry, layout, params, weights("new"), 10.0, "r2")
    assert new["lineage"]["data_fingerprint"] != old["lineage"]["data_fingerprint"]
    decision, _ = registry.promote_if_better(new["id"], 0.5)
    assert not decision.promote and "another benchmark" in decision.reason
    assert registry.champion()["version"] == old["id"]


def test_same_weights_twice_get_two_versions(trained):
    root, layout, params, weights = trained
    registry = ModelRegistry.at(root)
    folder = weights("same")
    a = _register(registry, layout, params, folder, 1.0, "a")
    b = _register(registry, layout, params, folder, 1.0, "b")
    assert a["id"] != b["id"] and a["weights_sha256_16"] == b["weights_sha256_16"]


def test_missing_weights_and_unknown_versions_are_clear_errors(trained, tmp_path):
    root, layout, params, _ = trained
    registry = ModelRegistry.at(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors, config.json; nothing registered"):
        _register(registry, layout, params, empty, 1.0, "x")
    assert registry.versions() == []
    with pytest.raises(ConfigError, match="no such model version"):
        registry.restore("20990101T000000Z-deadbeef")
    (root / "models").mkdir(exist_ok=True)
    (root / CHAMPION).write_text("{not json")
    with pytest.raises(ConfigError, match="champion.json: not valid JSON"):
        registry.champion()


def test_without_a_champion_the_best_folder_is_used(tmp_path):
    assert resolve_weights(tmp_path / "artifacts", "champion") == tmp_path / "artifacts" / "models/finetune/best"
    assert resolve_weights("artifacts", "last", tmp_path) == tmp_path / "artifacts" / "models/finetune/last"
    assert resolve_weights(tmp_path, "/x/y") == Path("/x/y")


def test_registry_on_s3(tmp_path, trained):
    pytest.importorskip("s3fs")
    from tests.servers import create_bucket, moto_s3

    _, layout, params, weights = trained
    with moto_s3() as endpoint:
        create_bucket(endpoint, "models-bucket")
        registry = ModelRegistry.at("s3://models-bucket/team/dualpose")
        one = _register(registry, layout, params, weights("s3-one"), 100.0, "r1")
        two = _register(registry, layout, params, weights("s3-two"), 90.0, "r2")
        assert registry.promote_if_better(one["id"], 0.5)[0].promote
        assert registry.promote_if_better(two["id"], 0.5)[0].promote
        again = ModelRegistry.at("s3://models-bucket/team/dualpose")  # a fresh reader sees the same
        assert again.champion()["version"] == two["id"]
        assert [v["id"] for v in again.versions()] == [one["id"], two["id"]]
        assert again.storage.read_bytes(f"models/versions/{two['id']}/weights/model.safetensors") == b"weights of s3-two"
        with pytest.raises(ConfigError, match=f"the champion {two['id']} lives on remote storage .*--weights"):
            again.champion_weights()


def test_registry_section_of_params(tmp_path):
    assert load_params(None).registry.promotion_margin_mm == 0.5
    with pytest.raises(ConfigError, match="registry.promotion_margin_mm"):
        params_from_dict({"registry": {"promotion_margin_mm": -1}})
    with pytest.raises(ConfigError, match="registry.metric"):
        params_from_dict({"registry": {"metric": "accuracy"}})


# -- the CLI ---------------------------------------------------------------------------------------
def test_models_cli_list_promote_restore(trained, tmp_path):
    root, layout, params, weights = trained
    path = write_params(tmp_path, tiny_params(root, registry={"promotion_margin_mm": 2.0}))
    registry = ModelRegistry.at(root)
    a = _register(registry, layout, params, weights("a"), 100.0, "ra")
    b = _register(registry, layout, params, weights("b"), 99.0, "rb")  # better, but within the 2 mm margin
    c = _register(registry, layout, params, weights("c"), 90.0, "rc")
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, [*args, "--params", str(path)])

    assert cli("models", "promote", a["id"]).exit_code == 0
    kept = cli("models", "promote", b["id"])
    assert kept.exit_code == 1 and "champion kept" in kept.output and "margin of 2 mm" in kept.output
    assert registry.champion()["version"] == a["id"]
    assert cli("models", "promote", c["id"]).exit_code == 0
    listing = cli("models", "list", "--json")
    data = json.loads(listing.output)
    assert [r["id"] for r in data["versions"]] == [a["id"], b["id"], c["id"]]
    assert [r["champion"] for r in data["versions"]] == [False, False, True]
    assert data["versions"][2]["score_mm"] == 90.0
    text = cli("models", "list").output
    assert f"* {c['id']}" in text and "mpjpe_mm 90.00 mm" in text
    restored = cli("models", "restore", b["id"])
    assert restored.exit_code == 0 and registry.champion()["version"] == b["id"]
    unknown = cli("models", "restore", "nope")
    assert unknown.exit_code == 2 and "no such model version" in unknown.output


def test_models_register_cli_versions_the_evaluated_best_model(trained, tmp_path):
    root, layout, params, weights = trained
    path = write_params(tmp_path, tiny_params(root))
    best = root / "models" / "finetune" / "best"
    best.parent.mkdir(parents=True)
    weights("best").rename(best)
    (root / "models" / "finetune" / "metrics.json").write_text(json.dumps({"best_val_mpjpe_mm": 80.0}))
    metrics = layout.eval_dir("synthetic") / "metrics_detail.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"mpjpe_mm": 91.5, "split": "test", "weights": str(best),
                                   "per_action": {"walk": 90.0}}))
    runner = CliRunner()
    first = runner.invoke(app, ["models", "register", "--params", str(path), "--run-id", "dvc-1"])
    assert first.exit_code == 0, first.output
    assert "promoted: no champion yet" in first.output
    (version,) = ModelRegistry.at(root).versions()
    assert version["lineage"]["run_id"] == "dvc-1" and version["benchmark"]["score_mm"] == 91.5
    assert version["metrics"] == {"best_val_mpjpe_mm": 80.0} and "per_action" not in version["evaluation"]
    assert resolve_weights(root, "champion") == root / "models" / "versions" / version["id"] / "weights"

    metrics.write_text(json.dumps({"mpjpe_mm": 50.0, "split": "validation", "weights": str(best)}))
    wrong = runner.invoke(app, ["models", "register", "--params", str(path)])
    assert wrong.exit_code == 2 and "expected" in wrong.output and "'test'" in wrong.output
    assert len(ModelRegistry.at(root).versions()) == 1
