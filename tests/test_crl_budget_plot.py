"""benchmarks/crl_budget_plot.py: gains grouped by target norm and length, incomparable studies refused."""

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def budget():
    return load_benchmark("crl_budget_plot")


def _study(tmp_path: Path, name: str, norm: str, epochs: int, pairs: list[tuple[float, float]], r2: float,
           **overrides) -> Path:
    settings = {"T": 27, "depth": 4, "dim": 32, "cameras": 1, "finetune_epochs": 60, "finetune_batch": 8,
                "label_fraction": 0.1, "temporal_pos_emb": "relative", "target": "ffn", "top_k": 2,
                "target_norm": norm, "pretrain_epochs": epochs, **overrides}
    runs = [{"seed": i, "pretrained": {"test_mpjpe_mm": p}, "scratch": {"test_mpjpe_mm": s},
             "diagnostics": {"linear_r2": r2, "position_r2": r2 / 2}} for i, (p, s) in enumerate(pairs)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"runs": runs, "settings": settings}))
    return path


def test_table_groups_by_norm_and_length_with_paired_gains(budget, tmp_path):
    a = _study(tmp_path, "a", "instance", 8, [(100.0, 110.0), (90.0, 96.0)], 0.95)
    b = _study(tmp_path, "b", "joint", 8, [(105.0, 110.0)], 0.3)
    c = _study(tmp_path, "c", "instance", 2, [(108.0, 110.0), (95.0, 96.0)], 0.98)
    series = budget.load([a, b, c])
    assert sorted(series) == ["instance", "joint"]
    assert sorted(series["instance"]) == [2, 8]
    rows = budget.table(series)
    assert "| `instance` | 8 | 0, 1 | -10.0, -6.0 | -8.0 ± 2.8 | 0.95-0.95 | 0.47-0.47 |" in rows
    assert "| `joint` | 8 | 0 | -5.0 | -5.0 | 0.30-0.30 | 0.15-0.15 |" in rows
    order = [r.split(" | ")[:2] for r in rows[2:]]
    assert order == [["| `instance`", "2"], ["| `instance`", "8"], ["| `joint`", "8"]]


def test_refuses_studies_with_different_finetuning(budget, tmp_path):
    a = _study(tmp_path, "a", "instance", 8, [(100.0, 110.0)], 0.95)
    b = _study(tmp_path, "b", "instance", 24, [(100.0, 110.0)], 0.95, label_fraction=1.0)
    with pytest.raises(SystemExit, match=r"not comparable.*label_fraction: 0.1 in .*a.json, 1.0 here"):
        budget.load([a, b])


def test_plot_is_written_whole(budget, tmp_path):
    a = _study(tmp_path, "a", "instance", 8, [(100.0, 110.0), (90.0, 96.0)], 0.95)
    out = tmp_path / "plots" / "budget.png"
    budget.plot(budget.load([a]), -4.9, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["budget.png"]
