"""CPU training memory: stop the C library's heap from keeping the activations of a freed step.

Two settings: by default the commands that run the model re-execute themselves under tcmalloc where it is
installed (:func:`reexec_under_tcmalloc`, below); ``DUALPOSE_MALLOC_TUNING=1`` instead fixes
glibc's mmap threshold (:func:`tune_cpu_allocator`: the least memory, half the speed).

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


# --- tcmalloc for CPU training ------------------------------------------------------------------
# glibc's heap also fragments without the threshold setting: B at T = 243 (batch 2, every block's
# activations kept with the fused sub-layers) peaks at 4.6 GB of RSS for ~3.2 GB of live tensors.
# gperftools' tcmalloc (size classes, freed pages reused, not returned) peaks at 3.5 GB and trains
# as fast or faster (benchmarks/RESULTS-perf.md, "Fused training sub-layers"). It can only be
# chosen before the process starts, so the ``dualpose`` commands that run the model (training,
# evaluation, inference) re-execute themselves
# once with it preloaded when it is installed (Debian/Ubuntu: libtcmalloc-minimal4), as Intel's
# CPU launchers for PyTorch do. ``DUALPOSE_ALLOCATOR=system`` keeps the C library's allocator.

# the commands that run the model (inference allocates many small tensors too: XS inference at
# batch 8 ran 1.41x faster under tcmalloc, benchmarks/RESULTS-perf.md, "lean-infer")
MODEL_COMMANDS = frozenset({"pretrain", "finetune", "run", "evaluate", "predict", "infer"})
TCMALLOC_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
_PRELOADED_MARK = "DUALPOSE_ALLOCATOR_PRELOADED"


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library the dynamic loader would find (a name for LD_PRELOAD), or None."""
    for name in TCMALLOC_LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_environment(command: str | None, environ: dict[str, str],
                         finder=find_tcmalloc) -> dict[str, str] | None:
    """The environment to re-execute ``command`` under tcmalloc, or None to run as is: not a
    command that runs the model, not Linux, ``DUALPOSE_ALLOCATOR`` not ``auto`` (the default) or
    ``tcmalloc``, the glibc threshold setting chosen (``DUALPOSE_MALLOC_TUNING=1``), tcmalloc
    already preloaded, or not installed."""
    choice = environ.get("DUALPOSE_ALLOCATOR", "auto")
    if choice not in ("auto", "tcmalloc", "system"):
        raise ValueError(f"DUALPOSE_ALLOCATOR must be auto, tcmalloc or system, got {choice!r}")
    if (command not in MODEL_COMMANDS or choice == "system" or not sys.platform.startswith("linux")
            or environ.get("DUALPOSE_MALLOC_TUNING") == "1" or environ.get(_PRELOADED_MARK)
            or "tcmalloc" in environ.get("LD_PRELOAD", "")):
        return None
    library = finder()
    if library is None:
        if choice == "tcmalloc":
            log.warning("DUALPOSE_ALLOCATOR=tcmalloc, but no tcmalloc library was found "
                        "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4); using the C library's")
        return None
    preload = " ".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    return {**environ, "LD_PRELOAD": preload, _PRELOADED_MARK: library}


def command_of(argv: list[str]) -> str | None:
    """The ``dualpose`` subcommand in ``argv`` (the first argument that is not an option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def reexec_under_tcmalloc(argv: list[str]) -> None:
    """Replace this process by the same command with tcmalloc preloaded, when
    :func:`tcmalloc_environment` says so; otherwise return. Call before any work is done."""
    env = tcmalloc_environment(command_of(argv), dict(os.environ))
    if env is None:
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def active_allocator() -> str:
    """``"tcmalloc"`` when this process runs with it preloaded, else ``"system"``."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return "system"
    return "tcmalloc" if "tcmalloc" in maps else "system"
