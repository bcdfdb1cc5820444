"""CPU training memory: stop glibc's heap from keeping the activations of a freed step.

A training step allocates and frees hundreds of megabytes of activation tensors. glibc serves
large blocks with ``mmap`` and returns them on ``free``, but after the first such free it raises
its mmap threshold (up to 32 MiB on 64-bit), so later tensors come from the heap, whose freed
space fragments and stays resident. On B at T = 243 (batch 2, full checkpointing) the peak RSS
was 3.1 GB while the live tensors never exceeded 0.4 GB above the model and optimiser state
(benchmarks/RESULTS-perf.md, "Idle-machine run"). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``,
which also switches the dynamic adjustment off) brings the peak to 873 MiB.

It costs time: every large tensor is then a fresh mapping whose pages fault in on first touch.
Measured on 2 cores (same run), B training ran at 36 instead of 63 frames/s (31 instead of 58
with full checkpointing) and S at 52 instead of 112, so it is **off by default**: set
``DUALPOSE_MALLOC_TUNING=1`` where memory, not time, is what runs out (with full activation
checkpointing B then trains in 0.87 GB instead of 3.1 GB). The setting is process-wide and
glibc-only; :func:`tune_cpu_allocator` is called by the training stages on the CPU and does
nothing elsewhere (musl, macOS, Windows) or when the variable is not ``1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
# Blocks from this size up are mmapped and go back to the OS when freed. Activation tensors of a
# training step are far larger; the small tensors of the loop and the data path stay on the heap.
MMAP_THRESHOLD_BYTES = 1 << 20

_applied: int | None = None


def tune_cpu_allocator(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes when ``DUALPOSE_MALLOC_TUNING=1``; True
    when applied (or already applied)."""
    global _applied
    if os.environ.get("DUALPOSE_MALLOC_TUNING", "0") != "1" or not sys.platform.startswith("linux"):
        return False
    if _applied == threshold:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    gnu_get_libc_version = getattr(libc, "gnu_get_libc_version", None)
    if gnu_get_libc_version is None:  # not glibc: its malloc tunables do not exist
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold)) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) was refused; CPU training keeps glibc's defaults", threshold)
        return False
    _applied = threshold
    return True
