"""DVC: `dvc repro` runs the pipeline from a fresh clone; metrics, plots, local and S3 remotes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_params_dict
from tests.servers import create_bucket, moto_s3


def _env(home: Path) -> dict:
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"], HOME=str(home), DVC_NO_ANALYTICS="1",
                GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@example.invalid", DUALPOSE_PROGRESS="0", OMP_NUM_THREADS="1")


def _run(cmd, cwd, env, check=True):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def clone(tmp_path):
    """A fresh clone of the repository's tracked files with the tiny configuration committed."""
    env = _env(tmp_path)
    files = _run(["git", "ls-files"], ROOT, env).stdout.split()
    repo = tmp_path / "repo"
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = tiny_params_dict(tmp_path)
    params["storage"]["root"] = "artifacts"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)
    return repo, env


def dvc(*args):
    return [sys.executable, "-m", "dvc", *args]


def test_repro_metrics_plots_and_remotes(clone, tmp_path):
    repo, env = clone
    _run(dvc("repro"), repo, env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"fetch", "prepare", "clips", "mask", "pretrain", "finetune", "evaluate"}
    metrics = json.loads(_run(dvc("metrics", "show", "--json"), repo, env).stdout)
    flat = json.dumps(metrics)
    assert "mpjpe_mm" in flat and "best_val_mpjpe_mm" in flat
    assert "Stage 'prepare' didn't change" in _run(dvc("repro"), repo, env).stdout  # nothing is stale
    _run(dvc("plots", "show", "-o", str(tmp_path / "plots")), repo, env)
    assert (tmp_path / "plots" / "index.html").exists()

    # local default remote: push, drop the cache and the outputs, pull them back
    weights = repo / "artifacts" / "models" / "finetune" / "best" / "model.safetensors"
    original = weights.read_bytes()
    _run(dvc("push"), repo, env)
    assert (tmp_path / "dualpose-dvc-remote").is_dir()
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "artifacts" / "models")
    _run(dvc("pull"), repo, env)
    assert weights.read_bytes() == original

    # S3 remote on a local moto server
    with moto_s3() as endpoint:
        create_bucket(endpoint, "dvc-bucket")
        _run(dvc("remote", "add", "s3", "s3://dvc-bucket/store"), repo, env)
        _run(dvc("remote", "modify", "s3", "endpointurl", endpoint), repo, env)
        s3_env = dict(env, **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
                      AWS_DEFAULT_REGION="us-east-1")
        _run(dvc("push", "-r", "s3"), repo, s3_env)
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / "artifacts" / "models")
        _run(dvc("pull", "-r", "s3"), repo, s3_env)
        assert weights.read_bytes() == original
