"""Class 8: faults of the machine and of options end in one line naming what and where, exit 2."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from dualpose.config import OptimConfig
from dualpose.errors import DualPoseError
from dualpose.train.checkpoint import list_checkpoints
from dualpose.train.loop import LoopSettings, Trainer, build_optimizer
from tests.adversarial.conftest import assert_refused, assert_unchanged, coco_doc, invoke, write_json
from tests.conftest import ROOT


# -- a file where a folder is expected ------------------------------------------------------------
@pytest.mark.parametrize("command, blocker", [
    ("prepare", "artifacts/tables"), ("prepare", "artifacts/tables/synthetic"), ("fetch", "artifacts/raw"),
    ("fetch", "artifacts/raw/synthetic/sources"),
])
def test_file_where_a_folder_is_expected(ws, command, blocker):
    (ws.dir / blocker).parent.mkdir(parents=True, exist_ok=True)
    (ws.dir / blocker).write_text("a stray file")
    before = ws.snapshot()
    assert_refused(invoke(command, "-p", ws.params), blocker.split("/")[-1])
    assert_unchanged(ws, before)


def test_storage_root_is_a_file(ws, tmp_path):
    stray = tmp_path / "rootfile"
    stray.write_text("not a folder")
    before = ws.snapshot()
    assert_refused(invoke("prepare", "-p", ws.params, "-o", f"storage.root={stray}"), "rootfile")
    assert_unchanged(ws, before)
    assert stray.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["clips", "mask"])
def test_missing_inputs_of_a_stage(ws, command):
    before = ws.snapshot()
    assert_refused(invoke(command, "-p", ws.params), "synthetic")
    assert_unchanged(ws, before)


# -- full and read-only disks (simulated where the tests run as root) ------------------------------
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "no permission"), (errno.EIO, "Input/output error")])
def test_disk_faults_while_writing_tables(ws, monkeypatch, code, words):
    assert invoke("prepare", "-p", ws.params).exit_code == 0
    before = ws.snapshot()

    def failing_write(table, where, **kwargs):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr("dualpose.data.schema.pq.write_table", failing_write)
    line = assert_refused(invoke("prepare", "-p", ws.params), words, str(ws.root / "tables"))
    assert ".parquet" in line
    assert_unchanged(ws, before)  # the earlier tables are intact, no temporary folder is left


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_storage_root(ws):
    ws.root.chmod(0o555)
    try:
        before = ws.snapshot()
        assert_refused(invoke("prepare", "-p", ws.params), "Permission denied")
        assert_unchanged(ws, before)
    finally:
        ws.root.chmod(0o755)


# -- predict options ------------------------------------------------------------------------------
BAD_PREDICT = {
    "width 0": (["--width", "0"], "--width"),
    "width -5": (["--width", "-5"], "--width"),
    "width 10^7": (["--width", "10000000"], "--width"),
    "height 0": (["--height", "0"], "--height"),
    "width not a number": (["--width", "abc"], "--width"),
    "format unknown": (["--format", "xyz"], "--format"),
    "format empty": (["--format", ""], "--format"),
    "fps 0": (["--fps", "0"], "--fps"),
    "fps nan": (["--fps", "nan"], "--fps"),
    "stature nan": (["--subject-height-mm", "nan"], "--subject-height-mm"),
    "stature inf": (["--subject-height-mm", "inf"], "--subject-height-mm"),
    "stature 0": (["--subject-height-mm", "0"], "--subject-height-mm"),
    "out is a folder": (["--out", "{ws}/outdir"], "--out"),
    "out not npz": (["--out", "{ws}/pred.txt"], "--out"),
    "out under a file": (["--out", "{ws}/in.json/x.npz"], "--out"),
    "weights missing": (["--weights", "{ws}/no-weights"], "--weights"),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICT))
def test_bad_predict_options(ws, tiny_weights, case):
    extra, needle = BAD_PREDICT[case]
    (ws.dir / "outdir.npz").mkdir()
    (ws.dir / "outdir").mkdir()
    path = write_json(ws.dir / "in.json", coco_doc())
    args = [a.format(ws=ws.dir) for a in extra]
    if "--out" in args and "out is a folder" == case:
        args[1] = str(ws.dir / "outdir.npz")
    if "--weights" not in args:
        args += ["--weights", str(tiny_weights)]
    if "--out" not in args:
        args += ["--out", str(ws.dir / "o.npz")]
    before = ws.snapshot()
    assert_refused(invoke("predict", path, *args), needle)
    assert_unchanged(ws, before)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_bad_keypoints_path(ws, tiny_weights, kind):
    path = ws.dir / "nothing.json"
    if kind == "folder":
        path.mkdir()
    before = ws.snapshot()
    assert_refused(invoke("predict", path, "--weights", tiny_weights, "--out", ws.dir / "o.npz"), str(path))
    assert_unchanged(ws, before)


def test_usage_error_from_the_console_is_one_line(ws):
    """The real entry point (a subprocess), not the test runner: one line, exit 2."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DUALPOSE_PROGRESS="0")
    result = subprocess.run([sys.executable, "-m", "dualpose.cli", "predict", "in.json", "--width", "abc"],
                            cwd=ws.dir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--width" in lines[0], result.stderr


# -- damaged checkpoints: fall back to the previous intact one, saying so --------------------------
def _toy(run_dir: Path, fingerprint=None, epochs=2):
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-2))
    model, opt = acc.prepare(model, opt)
    data = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))

    def make_batch(idx, step):
        return {"x": data[idx]}

    def loss_fn(batch, step):
        return model(batch["x"]).pow(2).mean(), {}

    settings = LoopSettings(epochs=epochs, batch_size=4, grad_accum=1, save_every_steps=2, seed=0, run_dir=run_dir,
                            progress=False, fingerprint=fingerprint)
    return Trainer(acc, settings, model, opt, 16, make_batch, loss_fn, 0.9)


def _damage(ckpt: Path, how: str) -> None:
    tensors = ckpt / "tensors.safetensors"
    if how == "truncated tensors":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif how == "missing tensors":
        tensors.unlink()
    elif how == "garbage state.json":
        (ckpt / "state.json").write_text("{not json")
    elif how == "state without step":
        (ckpt / "state.json").write_text(json.dumps({"extra": {}}))
    elif how == "NaN tensor":
        values = load_file(str(tensors))
        name = sorted(values)[0]
        values[name].view(-1)[0] = float("nan")
        save_file(values, str(tensors))
    elif how == "renamed tensor":
        values = load_file(str(tensors))
        name = sorted(values)[0]
        values["model/unknown"] = values.pop(name)
        save_file(values, str(tensors))


DAMAGE = ["truncated tensors", "missing tensors", "garbage state.json", "state without step", "NaN tensor",
          "renamed tensor"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_newest_checkpoint_falls_back(tmp_path, caplog, how):
    trainer = _toy(tmp_path, epochs=1)
    trainer.fit()  # 4 steps: checkpoints at steps 2 and 4
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    _damage(ckpts[-1], how)
    resumed = _toy(tmp_path, epochs=1)
    with caplog.at_level(logging.WARNING):
        resumed._resume()
    assert resumed.state.step == 2
    assert "step-00000004: checkpoint is damaged" in caplog.text
    assert "falling back to the previous one" in caplog.text
    assert "resuming from step-00000002" in caplog.text


def test_every_checkpoint_damaged_is_an_error(tmp_path):
    _toy(tmp_path, epochs=1).fit()
    for ckpt in list_checkpoints(tmp_path / "checkpoints"):
        _damage(ckpt, "truncated tensors")
    with pytest.raises(DualPoseError, match="every checkpoint is damaged.*--fresh"):
        _toy(tmp_path, epochs=1)._resume()
