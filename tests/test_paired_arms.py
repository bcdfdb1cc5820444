"""benchmarks/paired_arms.py: records matched by arm, tag and seed; paired differences; refusals."""

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def paired_arms():
    return load_benchmark("paired_arms")


def _record(p1: float, mpjve: float, steps: int = 100, best_epoch: int = 3) -> dict:
    return {"test": {"mpjpe_mm": p1, "p_mpjpe_mm": p1 * 0.75, "mpjve_mm_per_frame": mpjve,
                     "accel_error_mm_per_frame2": 2 * mpjve},
            "finetune": {"steps": steps, "train_clips": 700, "global_batch": 32, "best_epoch": best_epoch},
            "finetune_seconds": 600.0}


def _results(tmp_path: Path, name: str, arms: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"arms": arms}))
    return path


ARMS = {"none": "no-frame-order", "relative": "frame-relative"}


def test_pairs_by_seed_across_files_and_ignores_other_tags(paired_arms, tmp_path):
    a = _results(tmp_path, "lane0", {"no-frame-order-t81": _record(100.0, 10.0),
                                     "frame-relative-t81": _record(96.0, 9.0),
                                     "no-frame-order-t81-seed2": _record(110.0, 12.0),
                                     "no-frame-order": _record(1.0, 1.0)})        # another tag: not read
    b = _results(tmp_path, "lane1", {"no-frame-order-t81-seed1": _record(90.0, 10.0),
                                     "frame-relative-t81-seed1": _record(91.0, 8.0),
                                     "frame-relative-t81-seed2": _record(104.0, 11.4)})
    found = paired_arms.load([a, b], ARMS, tag="t81")
    assert sorted(found["none"]) == [0, 1, 2] and sorted(found["relative"]) == [0, 1, 2]
    pairs = paired_arms.paired(found, "relative", "none")
    assert paired_arms.differences(pairs, "mpjpe_mm", False) == pytest.approx([-4.0, 1.0, -6.0])
    assert paired_arms.differences(pairs, "mpjve_mm_per_frame", True) == pytest.approx([-10.0, -20.0, -5.0])
    rows = paired_arms.pair_table(found, [("relative", "none")])
    assert rows[2].startswith("| `relative` vs `none` (0, 1, 2) | -4.0 / +1.0 / -6.0 (mean -3.0 ± 3.6; better in 2/3)")
    assert "-10.0 / -20.0 / -5.0 (mean -11.7 ± 7.6; better in 3/3)" in rows[2]
    table = paired_arms.arm_table(found, ARMS)
    assert "| `none` (no-frame-order) | 1 | 90.0 | 67.5 | 10.00 | 20.00 | 4 | 100 | 10.0 |" in table


def test_untagged_records_and_plot(paired_arms, tmp_path):
    a = _results(tmp_path, "r", {"no-frame-order": _record(100.0, 10.0), "frame-relative": _record(98.0, 9.5),
                                 "no-frame-order-t81": _record(1.0, 1.0)})
    out, png = tmp_path / "table.md", tmp_path / "pairs.png"
    paired_arms.main([str(a), "--arm", "none=no-frame-order", "--arm", "relative=frame-relative",
                      "--pair", "relative:none", "--out", str(out), "--plot", str(png)])
    text = out.read_text()
    assert "| `none` (no-frame-order) | 0 | 100.0 |" in text and "| 1.0 |" not in text
    assert "| `relative` vs `none` (0) | -2.0 |" in text  # one seed: no mean or sd
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_refuses_unpaired_budgets_duplicates_and_missing_arms(paired_arms, tmp_path):
    a = _results(tmp_path, "a", {"no-frame-order": _record(100.0, 10.0, steps=100),
                                 "frame-relative": _record(98.0, 9.5, steps=200)})
    found = paired_arms.load([a], ARMS)
    with pytest.raises(SystemExit, match=r"seed 0: not a paired comparison \(steps: 200 vs 100"):
        paired_arms.paired(found, "relative", "none")
    with pytest.raises(SystemExit, match="is also in"):
        paired_arms.load([a, a], ARMS)
    with pytest.raises(SystemExit, match="no record of arm 'no-frame-order' with tag 't81' in .*a.json"):
        paired_arms.load([a], ARMS, tag="t81")
    b = _results(tmp_path, "b", {"no-frame-order-seed1": _record(100.0, 10.0),
                                 "frame-relative": _record(98.0, 9.5)})
    with pytest.raises(SystemExit, match="share no seed"):
        paired_arms.paired(paired_arms.load([b], ARMS), "relative", "none")


def test_command_line_names_a_bad_pair(paired_arms, tmp_path, capsys):
    a = _results(tmp_path, "a", {"no-frame-order": _record(100.0, 10.0)})
    with pytest.raises(SystemExit):
        paired_arms.main([str(a), "--arm", "none=no-frame-order", "--pair", "relative:none"])
    assert "'relative' is not an --arm label (none)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paired_arms.main([str(a), "--arm", "no-frame-order", "--pair", "a:b"])
    assert "--arm takes LABEL=ARM" in capsys.readouterr().err
