"""Class 9: two ``prepare`` processes on one storage root, round after round: no crash, no mixed tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from dualpose.data.schema import read_keypoint_table
from tests.conftest import ROOT

ROUNDS = 10


def _params(work, seed: int):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["storage"]["root"] = str(work / "artifacts")
    params["datasets"]["synthetic"]["options"] = {"seed": seed, "subjects": 2, "actions": ["walk"], "seconds": 0.4,
                                                  "cameras": 1}
    path = work / f"params-{seed}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _check_consistent(folder) -> int:
    """The folder holds exactly one writer's tables: manifest, part files and contents agree."""
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = {p.stem for p in folder.glob("*.parquet")}
    assert parts == set(manifest["parts"]), (parts, manifest["parts"])
    for name, rows in manifest["parts"].items():
        assert pq.read_metadata(folder / f"{name}.parquet").num_rows == rows
    arrays = read_keypoint_table(sorted(folder.glob("*.parquet")))
    assert arrays.num_frames == manifest["rows"]
    return manifest["rows"]


def test_two_prepare_processes_on_one_root(tmp_path):
    """Writers with *different* data (seeds 1 and 2) so that a mixture would be visible."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DUALPOSE_PROGRESS="0", OMP_NUM_THREADS="1")
    params = [_params(tmp_path, 1), _params(tmp_path, 2)]
    loop = ("import sys\nfrom dualpose.cli import app\n"
            f"for _ in range({ROUNDS}):\n"
            "    try:\n        app(['prepare', 'synthetic', '-p', sys.argv[1]])\n"
            "    except SystemExit as exc:\n        assert exc.code in (0, None), exc.code\n")
    procs = [subprocess.Popen([sys.executable, "-c", loop, str(p)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in params]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert out.count("synthetic:") == ROUNDS
    folder = tmp_path / "artifacts" / "tables" / "synthetic"
    _check_consistent(folder)
    digests = {json.loads((folder / "manifest.json").read_text())["rows"]}
    assert digests  # one writer's whole folder
    leftovers = [p.name for p in folder.parent.iterdir() if p.name != "synthetic"]
    assert leftovers == [], leftovers  # no temporary, old or lock folders left behind


@pytest.mark.parametrize("round_", range(3))
def test_two_cli_processes_start_together(tmp_path, round_):
    """The real console entry, started at once: both exit 0 and the tables are one writer's."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DUALPOSE_PROGRESS="0", OMP_NUM_THREADS="1")
    params = [_params(tmp_path, 1 + round_), _params(tmp_path, 10 + round_)]
    procs = [subprocess.Popen([sys.executable, "-m", "dualpose.cli", "prepare", "synthetic", "-p", str(p)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in params]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    _check_consistent(tmp_path / "artifacts" / "tables" / "synthetic")


def test_folder_swaps_race_without_crash_or_mixture(tmp_path):
    """The mechanism under prepare (and weights/checkpoint writes): two processes swap one folder 300 times each."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = ("import sys\nfrom pathlib import Path\nfrom dualpose.io.atomic import atomic_dir\n"
              "target, tag = Path(sys.argv[1]), sys.argv[2]\n"
              "for i in range(300):\n"
              "    with atomic_dir(target) as tmp:\n"
              "        for k in range(3):\n"
              "            (tmp / f'part{k}.txt').write_text(f'{tag} {i}')\n")
    target = tmp_path / "tables" / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag], env=env, stderr=subprocess.PIPE,
                              text=True) for tag in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    contents = {p.read_text() for p in target.iterdir()}
    assert len(contents) == 1 and len(list(target.iterdir())) == 3  # one writer's folder, whole
    assert [p.name for p in target.parent.iterdir()] == ["shared"]
