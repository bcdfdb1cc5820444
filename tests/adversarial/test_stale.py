"""Class 4: stale results are seen, never silently reused: DVC sees raw files, resumes check fingerprints,
zero-step runs never overwrite a model."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator

from dualpose.config import OptimConfig
from dualpose.errors import DataFormatError
from dualpose.train.checkpoint import StaleCheckpointError
from dualpose.train.loop import LoopSettings, Trainer, build_optimizer
from tests.adversarial.conftest import (assert_refused, assert_unchanged, coco_doc, coco_keypoints, invoke,
                                        write_json)
from tests.conftest import ROOT

TINY_TRAIN = ["-o", "model.overrides={depth: 1, dim: 16}", "-o", "pretrain.top_k_blocks=1"]


# -- zero-step runs ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("setting", ["epochs=0", "max_steps=0", "epochs=-1"])
def test_zero_step_runs_never_overwrite_a_model(ws, command, setting):
    before = ws.snapshot()
    assert_refused(invoke(command, "-p", ws.params, "-o", f"{command}.{setting}", *TINY_TRAIN),
                   f"{command}.{setting.split('=')[0]}")
    assert_unchanged(ws, before)


def _toy(run_dir: Path, num_items=16, epochs=1, max_steps=None, fingerprint=None):
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 1)
    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-2))
    model, opt = acc.prepare(model, opt)
    data = torch.randn(max(num_items, 1), 4)
    settings = LoopSettings(epochs=epochs, batch_size=4, grad_accum=1, save_every_steps=2, seed=0, run_dir=run_dir,
                            max_steps=max_steps, progress=False, fingerprint=fingerprint)
    return Trainer(acc, settings, model, opt, num_items, lambda idx, step: {"x": data[idx]},
                   lambda b, step: (model(b["x"]).pow(2).mean(), {}), 0.9)


@pytest.mark.parametrize("kwargs, match", [({"num_items": 0}, "at least one clip"),
                                           ({"epochs": 0}, "must be >= 1"), ({"max_steps": 0}, "must be >= 1")])
def test_trainer_refuses_zero_steps(tmp_path, kwargs, match):
    with pytest.raises((DataFormatError, ValueError), match=match):
        _toy(tmp_path, **kwargs)
    assert not (tmp_path / "checkpoints").exists()


# -- fingerprints ----------------------------------------------------------------------------------
BASE = {"config": "c0", "tables/train.parquet": "t0", "clips": "k0", "masked": "m0", "pretrained": "p0"}


@pytest.mark.parametrize("changed", sorted(BASE) + ["tables/extra.parquet"])
def test_resume_refuses_a_changed_input(tmp_path, changed):
    _toy(tmp_path, fingerprint=BASE).fit()
    now = {**BASE, changed: "different"}
    with pytest.raises(StaleCheckpointError, match=f"{changed} changed since this checkpoint.*--fresh"):
        _toy(tmp_path, fingerprint=now)._resume()


def test_resume_with_the_same_inputs_and_old_checkpoints(tmp_path, caplog):
    _toy(tmp_path, fingerprint=BASE).fit()
    same = _toy(tmp_path, fingerprint=dict(BASE))
    same._resume()
    assert same.state.step == 4
    _toy(tmp_path / "old", fingerprint=None).fit()  # checkpoints of an older DualPose: no fingerprint
    with caplog.at_level(logging.WARNING):
        old = _toy(tmp_path / "old", fingerprint=BASE)
        old._resume()
    assert old.state.step == 4 and "has no fingerprint" in caplog.text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny workspace with tables, clips and a finished 2-step finetuning run (checkpoints kept)."""
    from tests.conftest import tiny_params_dict

    work = tmp_path_factory.mktemp("trained")
    params = tiny_params_dict(work)
    params["model"]["overrides"] = {"depth": 1, "dim": 16}
    params["pretrain"]["top_k_blocks"] = 1
    params["finetune"].update({"init": "scratch", "max_steps": 2, "save_every_steps": 1, "epochs": 1})
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for command in ("prepare", "clips", "finetune"):
        result = invoke(command, "-p", path)
        assert result.exit_code == 0, result.output
    return work


@pytest.mark.parametrize("change, named", [
    (["clips", "-o", "clips.train_stride=2"], "clips"),
    (["prepare", "-o", "datasets.synthetic.options.seed=7"], "tables/"),
    (None, "config"),
])
def test_cli_resume_refuses_stale_checkpoint(trained, tmp_path, change, named):
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    params = work / "params.yaml"
    params.write_text(params.read_text().replace(str(trained), str(work)))
    if change is not None:
        assert invoke(change[0], "-p", params, *change[1:]).exit_code == 0
        if change[0] == "prepare":  # new tables: rebuild the clip index the way the run did
            assert invoke("clips", "-p", params).exit_code == 0
    models = work / "artifacts" / "models"
    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    extra = ["-o", "finetune.optim.lr=0.001"] if change is None else []
    line = assert_refused(invoke("finetune", "-p", params, *extra), "cannot resume", named, "--fresh")
    assert str(work / "artifacts" / "runs" / "finetune" / "checkpoints") in line
    assert {p: p.read_bytes() for p in models.rglob("*") if p.is_file()} == before  # the model is intact
    assert invoke("finetune", "-p", params, "--fresh", *extra).exit_code == 0  # --fresh starts over


# -- DVC sees a changed raw file ------------------------------------------------------------------
def test_dvc_status_sees_a_changed_raw_file(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), DVC_NO_ANALYTICS="1", DUALPOSE_PROGRESS="0", OMP_NUM_THREADS="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"], GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    env["PYTHONPATH"] = str(repo)  # `dualpose` in the stages runs this checkout's code
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["datasets"] = {"wild": {"adapter": "keypoints_json", "files": {"keypoints": "raw/wild.json"},
                                   "options": {"width": 640, "height": 480, "fps": 30}}}
    params["train_dataset"] = "wild"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "raw").mkdir()
    write_json(repo / "raw" / "wild.json", coco_doc(coco_keypoints(30)))

    def run(*args):
        result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(*command)
    dvc = [sys.executable, "-m", "dvc"]
    run(*dvc, "repro", "prepare")
    assert "up to date" in run(*dvc, "status", "prepare")
    write_json(repo / "raw" / "wild.json", coco_doc(coco_keypoints(30, seed=1)))  # the raw file changes
    status = run(*dvc, "status", "prepare")
    assert "prepare:" in status and "changed deps" in status and "raw/wild/sources" in status
    run(*dvc, "repro", "prepare")
    assert "up to date" in run(*dvc, "status", "prepare")
