"""Accelerate as users run it: a SIGKILLed run resumes to the same result; two CPU processes (gloo)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_params_dict


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", DUALPOSE_PROGRESS="0", PYTHONHASHSEED="0")
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return env


def _setup(root: Path, **finetune) -> Path:
    params = tiny_params_dict(root)
    params["finetune"].update(finetune)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for stage in ("prepare", "clips", "mask"):
        subprocess.run([sys.executable, "-m", "dualpose.cli", stage, "-p", str(path)], check=True, env=_env(),
                       capture_output=True)
    return path


def _finetune_cmd(params: Path) -> list[str]:
    return [sys.executable, "-m", "dualpose.cli", "finetune", "-p", str(params), "-o", "finetune.init=scratch"]


def _result(root: Path) -> tuple[dict, dict]:
    out = root / "artifacts" / "models" / "finetune"
    return load_file(str(out / "last" / "model.safetensors")), json.loads((out / "metrics.json").read_text())


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    params_a = _setup(a, epochs=4, save_every_steps=3)
    shutil.copytree(a, b)
    params_b = b / "params.yaml"
    params_b.write_text(params_a.read_text().replace(str(a), str(b)))

    subprocess.run(_finetune_cmd(params_a), check=True, env=_env(), capture_output=True)

    ckpts = b / "artifacts" / "runs" / "finetune" / "checkpoints"
    proc = subprocess.Popen(_finetune_cmd(params_b), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (ckpts.exists() and any(ckpts.glob("step-*"))):
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (b / "artifacts" / "models" / "finetune" / "metrics.json").exists()  # it really was cut short

    resumed = subprocess.run(_finetune_cmd(params_b), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    weights_a, metrics_a = _result(a)
    weights_b, metrics_b = _result(b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert (weights_a[key] == weights_b[key]).all(), key
    assert metrics_a == metrics_b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_with_gloo(tmp_path):
    params = _setup(tmp_path, epochs=1)
    env = dict(_env(), ACCELERATE_USE_CPU="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "dualpose.cli", "finetune", "-p", str(params), "-o",
           "finetune.init=scratch"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "artifacts" / "models" / "finetune" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    single = subprocess.run(_finetune_cmd(params) + ["--fresh", "-o", f"storage.root={tmp_path / 'one'}"],
                            env=_env(), capture_output=True, text=True)
    assert single.returncode != 0 and "no keypoint tables" in single.stderr  # a fresh root has no data
    # batch_size is global: two processes take half a batch each and as many optimiser steps as one
    one = subprocess.run(_finetune_cmd(params) + ["--fresh"], env=_env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    metrics_one = json.loads((tmp_path / "artifacts" / "models" / "finetune" / "metrics.json").read_text())
    assert metrics_one["processes"] == 1
    clips, batch = metrics_one["train_clips"], 8
    assert metrics_one["steps"] == clips // batch and metrics["steps"] == clips // batch
    assert metrics["global_batch"] == metrics_one["global_batch"] == batch
    odd = subprocess.run(cmd + ["-o", "finetune.batch_size=7", "--fresh"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert odd.returncode != 0 and "finetune.batch_size = 7 is the global batch" in odd.stderr
