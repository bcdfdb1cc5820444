"""SkyPilot: the task of ``infra/skypilot/train.yaml`` with its ``run`` replaced by
:mod:`pipelines.remote_stage`, submitted detached and polled to the end.

Two ways to submit: on a named cluster (``sky launch -y -d -c CLUSTER -i MIN --down TASK``; the
cluster goes away after MIN idle minutes) polled with ``sky queue CLUSTER``; or as a managed job
(``sky jobs launch -y -d -n NAME TASK``, recovered from spot preemptions) polled with
``sky jobs queue``. Node rank and head address come from SkyPilot's ``SKYPILOT_NODE_RANK`` and
``SKYPILOT_NODE_IPS``. Imports no Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.launchers.commands import run_command
from pipelines.launchers.job import LaunchFailed, RemoteJob, wait_until_done

SUCCEEDED = {"SUCCEEDED"}
FAILED = {"FAILED", "FAILED_SETUP", "FAILED_DRIVER", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE", "FAILED_CONTROLLER",
          "CANCELLED", "CANCELLING"}


def run_script(job: RemoteJob) -> str:
    """The task's ``run`` section: export the head node's address, then start the stage on this node."""
    return ("set -e\n"
            'export DUALPOSE_MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)\n'
            + job.shell() + "\n")


def task_yaml(job: RemoteJob, base: dict[str, Any], accelerators: str | None = None) -> dict[str, Any]:
    """The task to submit: ``base`` (infra/skypilot/train.yaml) with this job's nodes, GPUs, env and run."""
    task = {k: v for k, v in base.items() if k not in ("run",)}
    task["name"] = job.name
    task["num_nodes"] = job.nnodes
    resources = dict(base.get("resources") or {})
    if accelerators:
        resources["accelerators"] = accelerators
    elif "accelerators" in resources and job.nproc_per_node:
        kind = str(resources["accelerators"]).split(":")[0]
        resources["accelerators"] = f"{kind}:{job.nproc_per_node}"
    task["resources"] = resources
    envs = {k: v for k, v in (base.get("envs") or {}).items() if k not in ("STAGE", "STORAGE_ROOT", "PARAMS")}
    task["envs"] = {**envs, **{k: str(v) for k, v in sorted(job.env.items())}}
    task["run"] = run_script(job)
    return task


def launch_command(task_file: Path, cluster: str, managed: bool, idle_minutes: int, sky: str = "sky",
                   name: str | None = None) -> list[str]:
    if managed:
        return [sky, "jobs", "launch", "-y", "-d", "-n", name or cluster, str(task_file)]
    return [sky, "launch", "-y", "-d", "-c", cluster, "-i", str(idle_minutes), "--down", str(task_file)]


def queue_command(cluster: str, managed: bool, sky: str = "sky") -> list[str]:
    return [sky, "jobs", "queue"] if managed else [sky, "queue", cluster]


def submitted_job_id(output: str) -> str:
    """The job id that ``sky launch -d`` / ``sky jobs launch -d`` printed ("Job submitted, ID: 3")."""
    found = re.findall(r"\bID:\s*(\d+)", output)
    if not found:
        raise LaunchFailed(f"could not find the job id in SkyPilot's output:\n{output.strip()[-2000:]}")
    return found[-1]


def queue_status(output: str, job_id: str) -> str | None:
    """The STATUS of job ``job_id`` in a ``sky queue`` / ``sky jobs queue`` table (None if not listed)."""
    lines = output.splitlines()
    header = next((i for i, line in enumerate(lines) if re.match(r"\s*ID\s", line) and "STATUS" in line), None)
    if header is None:
        return None
    column = lines[header].index("STATUS")
    for line in lines[header + 1:]:
        fields = line.split()
        if fields and fields[0] == job_id and len(line) > column:
            rest = line[column:].split()
            return rest[0] if rest else None
    return None


def state_of(status: str | None) -> str | None:
    if status in SUCCEEDED:
        return "succeeded"
    if status in FAILED:
        return f"failed with status {status}"
    return None


@dataclass
class SkyPilotRunner:
    cluster: str
    managed: bool = False
    idle_minutes: int = 10
    sky: str = "sky"
    poll_interval_s: float = 30.0
    timeout_s: float | None = None
    run: Callable[[Sequence[str]], str] = run_command
    sleep: Callable[[float], None] | None = None

    def submit_and_wait(self, task: dict[str, Any], task_file: Path, log: Callable[[str], None] = print) -> str:
        task_file.write_text(yaml.safe_dump(task, sort_keys=False))
        cmd = launch_command(task_file, self.cluster, self.managed, self.idle_minutes, self.sky, task["name"])
        log("skypilot: " + " ".join(cmd))
        job_id = submitted_job_id(self.run(cmd))
        log(f"skypilot: job {job_id} submitted")
        where = "managed job" if self.managed else f"job on cluster {self.cluster}"
        wait_until_done(lambda: state_of(queue_status(self.run(queue_command(self.cluster, self.managed, self.sky)),
                                                      job_id)),
                        self.poll_interval_s, self.timeout_s, f"SkyPilot {where} {job_id}",
                        **({"sleep": self.sleep} if self.sleep else {}))
        return job_id
