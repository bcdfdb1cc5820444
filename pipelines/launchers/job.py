"""A remote stage as data: what to run on each node, with which inputs and outputs, and how to wait.

Nothing here imports Dagster: the Kubernetes, SkyPilot and SLURM modules turn a :class:`RemoteJob`
into their own submission (pod/Job manifest, task YAML, sbatch script), and tests compare those
exactly.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REMOTE_MODULE = "pipelines.remote_stage"
DEFAULT_PORT = 29500


class LaunchFailed(RuntimeError):
    """The scheduler reports that the remote job failed (or could not be submitted)."""


@dataclass(frozen=True)
class RemoteJob:
    """One stage on ``nnodes`` nodes x ``nproc_per_node`` processes, artefacts under ``root``."""

    name: str  # scheduler-safe job name (lower case, digits, dashes; at most 52 characters)
    stage_args: tuple[str, ...]  # e.g. ("finetune", "--resume")
    root: str  # storage root, s3://bucket/prefix
    params_name: str  # params.yaml under the root
    local_root: str  # where the node stages artefacts
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    nnodes: int = 1
    nproc_per_node: int = 1
    master_port: int = DEFAULT_PORT
    env: dict[str, str] = field(default_factory=dict)  # for every process (Pipes bootstrap, precision...)

    def argv(self, master_addr: str | None = None, python: str = "python") -> list[str]:
        """The command each node runs (:mod:`pipelines.remote_stage`)."""
        cmd = [python, "-m", REMOTE_MODULE, "--root", self.root, "--params", self.params_name,
               "--local-root", self.local_root]
        for name in self.inputs:
            cmd += ["--input", name]
        for name in self.outputs:
            cmd += ["--output", name]
        cmd += ["--nnodes", str(self.nnodes), "--nproc-per-node", str(self.nproc_per_node),
                "--master-port", str(self.master_port)]
        if master_addr:
            cmd += ["--master-addr", master_addr]
        return [*cmd, "--", *self.stage_args]

    def shell(self, python: str = "python") -> str:
        return shlex.join(self.argv(python=python))


def job_name(*parts: str, limit: int = 52) -> str:
    """A name valid for Kubernetes (DNS label), SkyPilot and SLURM from run id and stage."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return text[:limit].rstrip("-") or "dualpose"


def wait_until_done(poll: Callable[[], str | None], interval_s: float, timeout_s: float | None,
                    what: str, sleep: Callable[[float], None] = time.sleep) -> None:
    """Call ``poll`` until it returns ``"succeeded"``; ``"failed: ..."`` raises :class:`LaunchFailed`.

    ``poll`` returns None (or anything else) while the job is pending or running.
    """
    start = time.monotonic()
    while True:
        state = poll()
        if state == "succeeded":
            return
        if state and state.startswith("failed"):
            raise LaunchFailed(f"{what} {state}")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise LaunchFailed(f"{what} did not finish within {timeout_s:.0f} s (last state: {state})")
        sleep(interval_s)
