"""The champion as DVC users see it: the registry keeps ``models/champion-metrics.json`` in step with the
champion pointer, and the project's own dvc.yaml makes the real ``dvc metrics show`` list it next to the
model just evaluated (no ``dvc repro`` needed: the registry writes the file, DVC only reads it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dualpose.config import params_from_dict
from dualpose.eval.report import SUMMARY_METRIC_KEYS, split_metrics, write_metrics_json
from dualpose.layout import Layout
from dualpose.registry import CHAMPION, CHAMPION_METRICS, ModelRegistry, champion_metrics, data_files
from tests.pipelines_support import REPO_ROOT, tiny_params

CHAMPION_FILE = f"artifacts/{CHAMPION_METRICS}"


def _evaluation(mpjpe: float) -> dict:
    # what `dualpose evaluate` writes to metrics_detail.json, as model_version / `models register` keep it
    return {"mpjpe_mm": mpjpe, "p_mpjpe_mm": mpjpe * 0.7, "n_mpjpe_mm": mpjpe * 0.9, "pck_percent": 80.5,
            "frames": 640, "split": "test", "weights": "artifacts/models/finetune/best", "per_action": {"walk": 1.0}}


@pytest.fixture
def repo(tmp_path):
    """A DVC repository with the project's dvc.yaml and params.yaml, and a storage root with data files."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["storage"]["root"] == "artifacts"  # what dvc.yaml's ${storage.root} resolves to here
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HOME=str(tmp_path), OMP_NUM_THREADS="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, env=env, check=True)

    root = repo / "artifacts"
    layout = Layout(root)
    layout.tables("synthetic").mkdir(parents=True)
    (layout.tables("synthetic") / "manifest.json").write_text(json.dumps({"rows": 300}))
    layout.clips("synthetic").parent.mkdir(parents=True)
    layout.clips("synthetic").write_bytes(b"clip index")
    return repo, env, layout, params_from_dict(tiny_params(root)), params["train_dataset"]


def _metrics_show(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", *args], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def _shown(repo: Path, env: dict) -> dict:
    """``dvc metrics show --json`` of the workspace, keyed by metrics file."""
    return json.loads(_metrics_show(repo, env, "--json").stdout)[""]["data"]


def _register(registry: ModelRegistry, layout: Layout, params, tmp_path: Path, tag: str, mpjpe: float) -> dict:
    folder = tmp_path / "runs" / tag
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(tag.encode())
    (folder / "config.json").write_text(json.dumps({"tag": tag}))
    evaluation = {k: v for k, v in _evaluation(mpjpe).items() if not isinstance(v, (dict, list))}
    return registry.register(folder, params, metrics={}, evaluation=evaluation, run_id=tag,
                             data_files=data_files(layout, "synthetic"))


def test_dvc_metrics_show_names_the_champion(repo, tmp_path):
    repo, env, layout, params, _ = repo
    registry = ModelRegistry.at(layout.root)

    # before any model: DVC lists the declared file as missing, and does not fail
    shown = _shown(repo, env)
    assert shown[CHAMPION_FILE]["error"]["type"] == "FileNotFoundError"

    first = _register(registry, layout, params, tmp_path, "first", 120.0)
    assert registry.promote_if_better(first["id"], 0.5)[0].promote
    assert _shown(repo, env)[CHAMPION_FILE]["data"] == {
        "version": first["id"], "benchmark": "synthetic/test", "mpjpe_mm": 120.0, "p_mpjpe_mm": pytest.approx(84.0),
        "n_mpjpe_mm": pytest.approx(108.0), "pck_percent": 80.5, "frames": 640}

    # a better challenger moves it; a worse one leaves the file as it is, byte for byte
    better = _register(registry, layout, params, tmp_path, "better", 100.0)
    assert registry.promote_if_better(better["id"], 0.5)[0].promote
    assert _shown(repo, env)[CHAMPION_FILE]["data"]["version"] == better["id"]
    before = (layout.root / CHAMPION_METRICS).read_bytes()
    worse = _register(registry, layout, params, tmp_path, "worse", 130.0)
    assert not registry.promote_if_better(worse["id"], 0.5)[0].promote
    assert (layout.root / CHAMPION_METRICS).read_bytes() == before

    # a restore by hand shows too
    registry.restore(first["id"])
    data = _shown(repo, env)[CHAMPION_FILE]["data"]
    assert data["version"] == first["id"] and data["mpjpe_mm"] == 120.0


def test_the_champion_row_shares_columns_with_the_evaluation(repo, tmp_path):
    """The table stays readable: the champion adds two columns (version, benchmark) to the evaluation's."""
    repo, env, layout, params, dataset = repo
    summary, _ = split_metrics(_evaluation(95.0))
    write_metrics_json(summary, layout.eval_dir(dataset) / "metrics.json")  # as `dualpose evaluate` does
    registry = ModelRegistry.at(layout.root)
    champion = _register(registry, layout, params, tmp_path, "one", 95.0)
    registry.promote_if_better(champion["id"], 0.5)

    shown = _shown(repo, env)
    evaluated = shown[f"artifacts/eval/{dataset}/metrics.json"]["data"]
    assert set(shown[CHAMPION_FILE]["data"]) - set(evaluated) == {"version", "benchmark"}
    table = _metrics_show(repo, env).stdout.splitlines()
    header = table[0].split()
    assert header[0] == "Path" and {"version", "benchmark", "mpjpe_mm"} <= set(header)
    assert len(header) == 1 + len(set(evaluated) | {"version", "benchmark"})  # no other columns
    (row,) = [dict(zip(header, line.split())) for line in table if line.startswith(CHAMPION_FILE)]
    assert row["version"] == champion["id"] and row["benchmark"] == "synthetic/test" and row["mpjpe_mm"] == "95.0"


def test_champion_metrics_are_derived_from_the_version_and_rebuilt_when_missing(repo, tmp_path):
    _, _, layout, params, _ = repo
    registry = ModelRegistry.at(layout.root)
    assert registry.sync_champion_metrics() is None and not (layout.root / CHAMPION_METRICS).exists()
    one = _register(registry, layout, params, tmp_path, "one", 90.0)
    registry.promote_if_better(one["id"], 0.5)
    expected = champion_metrics(registry.version(one["id"]))
    assert list(expected)[:2] == ["version", "benchmark"]
    assert [k for k in expected if k in SUMMARY_METRIC_KEYS] == [k for k in SUMMARY_METRIC_KEYS if k in expected]

    # a champion from before this file existed (or a deleted file): the next decision writes it again
    (layout.root / CHAMPION_METRICS).unlink()
    pointer = (layout.root / CHAMPION).read_bytes()
    worse = _register(registry, layout, params, tmp_path, "worse", 99.0)
    assert not registry.promote_if_better(worse["id"], 0.5)[0].promote
    assert json.loads((layout.root / CHAMPION_METRICS).read_text()) == expected
    assert (layout.root / CHAMPION).read_bytes() == pointer  # the pointer itself was not rewritten

    # a score that is not among the summary keys still shows, under the benchmark's metric
    record = {"id": "v", "benchmark": {"dataset": "d", "split": "test", "metric": "mpjpe_mm", "score_mm": 7.0},
              "evaluation": {"p_mpjpe_mm": float("nan"), "frames": True}}
    assert champion_metrics(record) == {"version": "v", "benchmark": "d/test", "mpjpe_mm": 7.0}
