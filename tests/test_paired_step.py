"""benchmarks/paired_step.py: the revision's package is imported under its own name, apart from the tree."""

import importlib
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, load_benchmark

paired = load_benchmark("paired_step")


def _git_has_head() -> bool:
    probe = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _git_has_head(), reason="needs a git checkout with a HEAD commit (git archive HEAD)")
def test_extracted_revision_imports_only_itself_and_builds_the_same_model(tmp_path, monkeypatch):
    paired.extract_base("HEAD", tmp_path)
    package = tmp_path / paired.BASE_PACKAGE
    assert (package / "model" / "__init__.py").exists()
    stray = [str(p) for p in package.rglob("*.py")
             if re.search(r"^\s*(from|import)\s+dualpose\b(?!_base)", p.read_text(), re.MULTILINE)]
    assert stray == []

    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith(paired.BASE_PACKAGE)]:
        monkeypatch.delitem(sys.modules, name)
    base_lib = importlib.import_module(f"{paired.BASE_PACKAGE}.model")
    assert base_lib.__file__.startswith(str(package))
    from dualpose.model import DualPoseLifter, build_spec

    overrides = {"depth": 1, "dim": 16, "heads": 2, "rep_dim": 8, "T": 5}
    base = base_lib.DualPoseLifter(base_lib.build_spec("XS", overrides))
    tree = DualPoseLifter(build_spec("XS", overrides))
    tree.load_state_dict(base.state_dict())  # same parameter names
    x = torch.randn(1, 5, tree.spec.num_joints, tree.spec.in_channels)
    with torch.no_grad():
        torch.testing.assert_close(tree.eval()(x), base.eval()(x))


def test_quartiles_of_the_paired_ratios():
    assert paired.quartiles([1.0]) == (1.0, 1.0)
    low, high = paired.quartiles([0.9, 1.0, 1.1, 1.2, 1.3])
    assert low < 1.1 < high and low >= 0.9 and high <= 1.3
