"""Deployment recipes stay in step with the CLI: they parse, and every stage they start exists."""

import re
from pathlib import Path

import yaml
from typer.main import get_command

from dualpose.cli import app

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_yaml_recipes_parse():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.parent.name for f in files} >= {"skypilot", "k8s", "accelerate"}
    for f in files:
        documents = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), f


def test_recipes_start_real_cli_commands():
    commands = set(get_command(app).commands)
    used = set()
    for f in INFRA.rglob("*"):
        if f.is_file():
            text = f.read_text()
            used |= set(re.findall(r'dualpose\.cli"?\s*"?\$?\{?\w*\}?"?\s*\]?,?\s*\[?"(\w+)"', text))
            used |= set(re.findall(r"-m dualpose\.cli (\w+)", text))
    used.discard("STAGE")
    assert used, "no recipe starts a dualpose command"
    assert used <= commands, used - commands
    k8s = yaml.safe_load((INFRA / "k8s" / "trainjob.yaml").read_text())
    assert k8s["spec"]["trainer"]["args"][0] in commands
