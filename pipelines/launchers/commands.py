"""Running a scheduler's command line (``sky``, ``sbatch``, ``squeue``, ``sacct``) with clear errors."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from pipelines.launchers.job import LaunchFailed


def run_command(cmd: Sequence[str], timeout_s: float = 600) -> str:
    """stdout of ``cmd``; a missing executable or a non-zero exit raises :class:`LaunchFailed` with its output."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise LaunchFailed(f"`{cmd[0]}` is not installed or not on PATH (needed for: {' '.join(cmd)})") from None
    except subprocess.TimeoutExpired:
        raise LaunchFailed(f"`{' '.join(cmd)}` did not answer within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise LaunchFailed(f"`{' '.join(cmd)}` exited with {done.returncode}: {tail}")
    return done.stdout
