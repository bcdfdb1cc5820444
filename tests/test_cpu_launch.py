"""benchmarks/cpu_launch.py: both launches run the same global batch, the second as N gloo processes."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_benchmark

cpu_launch = load_benchmark("cpu_launch")


def test_a_batch_that_does_not_split_is_refused_before_launching():
    with pytest.raises(SystemExit, match="--batch 3 does not split over 2 processes"):
        cpu_launch.launch("processes", "XS", batch=3, processes=2, steps=1, warmup=0)


def test_one_round_launches_one_process_and_two_single_thread_processes(tmp_path):
    out = tmp_path / "launch.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_launch.py"), "--variant", "XS",
                           "--rounds", "1", "--steps", "1", "--warmup", "0", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [summary] = json.loads(out.read_text())
    threads, processes = summary["runs"]["threads"][0], summary["runs"]["processes"][0]
    assert (threads["processes"], threads["threads_per_process"], threads["batch_per_process"]) == (1, 2, 4)
    assert (processes["processes"], processes["threads_per_process"], processes["batch_per_process"]) == (2, 1, 2)
    assert threads["global_batch"] == processes["global_batch"] == 4
    assert len(processes["peak_rss_mib_per_process"]) == 2
    assert summary["speedup_median"] == pytest.approx(threads["median_step_s"] / processes["median_step_s"])
