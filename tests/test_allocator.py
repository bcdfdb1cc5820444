"""The CPU allocator setting of the training stages: opt-in, applied on glibc, idempotent."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dualpose.train import allocator


def _run(code: str, **env) -> str:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_tuning_is_opt_in_and_applies_once():
    code = """
        from dualpose.train.allocator import tune_cpu_allocator
        print(tune_cpu_allocator(), tune_cpu_allocator())
    """
    assert _run(code, DUALPOSE_MALLOC_TUNING="1") == "True True"  # this image runs glibc
    assert _run(code, DUALPOSE_MALLOC_TUNING="0") == "False False"
    assert _run(code, DUALPOSE_MALLOC_TUNING="") == "False False"  # off by default: it costs time


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_freed_large_blocks_go_back_to_the_os():
    """After a large block was freed, glibc's dynamic threshold keeps later ones on the heap; with
    the threshold fixed, allocating and freeing many 8 MB tensors leaves the RSS where it was."""
    code = """
        import sys, torch
        from dualpose.train.allocator import tune_cpu_allocator
        import os
        os.environ["DUALPOSE_MALLOC_TUNING"] = "1"
        if sys.argv[-1] == "tuned":
            tune_cpu_allocator()
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        x = torch.ones(2**21); del x  # one 8 MB block freed: glibc raises its threshold here
        before = rss()
        keep = []
        for i in range(60):  # 60 x 8 MB, every other one kept until the end: a fragmented heap
            t = torch.ones(2**21)
            if i % 2:
                keep.append(t)
        tail = torch.ones(2**21)  # still live: the heap cannot give its freed middle back by trimming its top
        del keep, t
        print(round(rss() - before))
    """
    tuned = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "tuned"], capture_output=True, text=True,
                           check=True).stdout.strip()
    default = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "default"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert int(tuned) < 20, tuned  # MB still resident after everything but one block was freed
    assert int(default) > int(tuned), (default, tuned)  # glibc's heap keeps some freed 8 MB blocks (40-490 MB seen)


def test_no_tuning_off_linux(monkeypatch):
    monkeypatch.setenv("DUALPOSE_MALLOC_TUNING", "1")
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.tune_cpu_allocator() is False


def test_tcmalloc_is_chosen_for_the_commands_that_run_the_model():
    found = lambda: "libtcmalloc_minimal.so.4"  # noqa: E731
    env = allocator.tcmalloc_environment("finetune", {"PATH": "/bin"}, finder=found)
    if not sys.platform.startswith("linux"):
        assert env is None
        return
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" and env["PATH"] == "/bin"
    assert env["DUALPOSE_ALLOCATOR_PRELOADED"] == "libtcmalloc_minimal.so.4"  # no second re-execution
    assert allocator.tcmalloc_environment("run", {"LD_PRELOAD": "libfoo.so"}, finder=found)["LD_PRELOAD"] \
        == "libtcmalloc_minimal.so.4 libfoo.so"  # an existing preload is kept
    for command in ("pretrain", "run", "evaluate", "predict", "infer"):
        assert allocator.tcmalloc_environment(command, {}, finder=found) is not None, command
    for command, environ in [("prepare", {}), ("weights", {}), ("models", {}), (None, {}),
                             ("finetune", {"DUALPOSE_ALLOCATOR": "system"}),
                             ("finetune", {"DUALPOSE_MALLOC_TUNING": "1"}),  # glibc's setting chosen
                             ("finetune", {"DUALPOSE_ALLOCATOR_PRELOADED": "libtcmalloc_minimal.so.4"}),
                             ("pretrain", {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"})]:
        assert allocator.tcmalloc_environment(command, environ, finder=found) is None, (command, environ)
    assert allocator.tcmalloc_environment("finetune", {}, finder=lambda: None) is None  # not installed
    with pytest.raises(ValueError, match="DUALPOSE_ALLOCATOR must be auto, tcmalloc or system, got 'jemalloc'"):
        allocator.tcmalloc_environment("finetune", {"DUALPOSE_ALLOCATOR": "jemalloc"}, finder=found)


def test_command_of_skips_options():
    assert allocator.command_of(["finetune", "-o", "a=1"]) == "finetune"
    assert allocator.command_of(["--help"]) is None
    assert allocator.command_of([]) is None


@pytest.mark.skipif(allocator.find_tcmalloc() is None or not sys.platform.startswith("linux"),
                    reason="tcmalloc is not installed (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)")
def test_training_process_reexecutes_itself_under_tcmalloc(tmp_path):
    """A command that runs the model replaces its process by itself with tcmalloc preloaded,
    once; others keep the C library's allocator."""
    script = tmp_path / "fake_cli.py"
    script.write_text(textwrap.dedent("""
        import sys
        from dualpose.train.allocator import active_allocator, reexec_under_tcmalloc
        reexec_under_tcmalloc(sys.argv[1:])
        print(sys.argv[1:], active_allocator())
    """))

    def run(*args, **env):
        import os

        environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "DUALPOSE_ALLOCATOR_PRELOADED")}
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True,
                              env={**environ, **env}).stdout.strip()

    assert run("finetune", "-o", "x=1") == "['finetune', '-o', 'x=1'] tcmalloc"
    assert run("prepare") == "['prepare'] system"
    assert run("finetune", DUALPOSE_ALLOCATOR="system") == "['finetune'] system"


def test_the_console_command_goes_through_the_reexecuting_entry_point(monkeypatch):
    """``dualpose`` starts at ``dualpose.cli:main``, which offers the command to the re-execution
    before the Typer app runs it."""
    from pathlib import Path

    import tomllib

    from dualpose import cli

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["dualpose"] == "dualpose.cli:main"
    calls = []
    monkeypatch.setattr(allocator, "reexec_under_tcmalloc", lambda argv: calls.append(("reexec", list(argv))))
    monkeypatch.setattr(cli, "app", lambda: calls.append(("app",)))
    monkeypatch.setattr(sys, "argv", ["dualpose", "finetune", "-o", "x=1"])
    cli.main()
    assert calls == [("reexec", ["finetune", "-o", "x=1"]), ("app",)]
