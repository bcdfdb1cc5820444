"""SLURM: an sbatch script that runs :mod:`pipelines.remote_stage` once per node under ``srun``
(node rank ``SLURM_NODEID``, head = the first host of the allocation), submitted with
``sbatch --parsable``, watched with ``squeue`` while queued or running and judged by ``sacct``
once it has left the queue. Imports no Dagster.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.launchers.commands import run_command
from pipelines.launchers.job import LaunchFailed, RemoteJob, wait_until_done


@dataclass(frozen=True)
class SlurmShape:
    gpus_per_node: int = 1
    cpus_per_task: int = 16
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    output_dir: str | None = None  # where slurm-<job>.out goes (default: sbatch's working directory)
    workdir: str | None = None  # the checkout / install on the cluster
    setup: tuple[str, ...] = ()  # shell lines before srun (module load, venv activation)
    python: str = "python"


def sbatch_script(job: RemoteJob, shape: SlurmShape) -> str:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job.name}", f"#SBATCH --nodes={job.nnodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={shape.cpus_per_task}",
             f"#SBATCH --time={shape.time}"]
    if shape.gpus_per_node > 0:
        lines.append(f"#SBATCH --gpus-per-node={shape.gpus_per_node}")
    if shape.partition:
        lines.append(f"#SBATCH --partition={shape.partition}")
    if shape.account:
        lines.append(f"#SBATCH --account={shape.account}")
    if shape.output_dir:
        lines.append(f"#SBATCH --output={shape.output_dir.rstrip('/')}/%x-%j.out")
    lines.append("set -euo pipefail")
    if shape.workdir:
        lines.append(f"cd {shlex.quote(shape.workdir)}")
    lines += list(shape.setup)
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(job.env.items())]
    lines.append('export DUALPOSE_MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)')
    lines.append("srun --kill-on-bad-exit=1 " + job.shell(python=shape.python))
    return "\n".join(lines) + "\n"


def submitted_job_id(output: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    text = output.strip().splitlines()[-1] if output.strip() else ""
    job_id = text.split(";")[0].strip()
    if not job_id.isdigit():
        raise LaunchFailed(f"sbatch printed no job id: {output.strip()[-500:]!r}")
    return job_id


def final_state(sacct_output: str) -> str | None:
    """``succeeded``/``failed ...`` from ``sacct -X -n -P -o State,ExitCode`` (None when not recorded yet)."""
    rows = [line.split("|") for line in sacct_output.strip().splitlines() if line.strip()]
    if not rows:
        return None
    state, code = rows[0][0].strip(), (rows[0][1].strip() if len(rows[0]) > 1 else "")
    if state == "COMPLETED":
        return "succeeded"
    if state in ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING"):
        return None
    return f"failed: {state} (exit code {code})"


@dataclass
class SlurmRunner:
    poll_interval_s: float = 30.0
    timeout_s: float | None = None
    commands: dict[str, str] = field(default_factory=lambda: {"sbatch": "sbatch", "squeue": "squeue",
                                                                "sacct": "sacct"})
    run: Callable[[Sequence[str]], str] = run_command
    sleep: Callable[[float], None] | None = None

    def poll(self, job_id: str) -> str | None:
        try:
            queued = self.run([self.commands["squeue"], "-h", "-j", job_id, "-o", "%T"]).strip()
        except LaunchFailed:  # recent SLURM: "Invalid job id specified" once the job has left the queue
            queued = ""
        if queued and queued.split()[0] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return None  # PENDING, RUNNING, CONFIGURING, COMPLETING ...
        return final_state(self.run([self.commands["sacct"], "-j", job_id, "-X", "-n", "-P", "-o",
                                     "State,ExitCode"]))

    def submit_and_wait(self, script: str, script_file: Path, log: Callable[[str], None] = print) -> str:
        script_file.write_text(script)
        job_id = submitted_job_id(self.run([self.commands["sbatch"], "--parsable", str(script_file)]))
        log(f"slurm: submitted batch job {job_id} ({script_file})")
        wait_until_done(lambda: self.poll(job_id), self.poll_interval_s, self.timeout_s, f"SLURM job {job_id}",
                        **({"sleep": self.sleep} if self.sleep else {}))
        return job_id
