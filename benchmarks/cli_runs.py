"""Run ``dualpose`` CLI stages from a benchmark script, as a user would, logging to a file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

DUALPOSE = [sys.executable, "-m", "dualpose.cli"]


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (appending its output to ``log``, no progress bars); return its wall seconds."""
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT,
                       env=dict(os.environ, DUALPOSE_PROGRESS="0"))
    return time.perf_counter() - start
