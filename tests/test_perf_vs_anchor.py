"""benchmarks/perf_vs_anchor.py: a figure measured in several rounds is reported as their median."""

from tests.conftest import load_benchmark

perf = load_benchmark("perf_vs_anchor")


def _record(side, fps, rss=None, load=1.0, mode="train"):
    return {"variant": "XS", "mode": mode, "batch": 4 if mode == "train" else 1, "side": side,
            "frames_per_s": fps, "peak_rss_mib": rss, "load_before": load}


def test_rounds_are_merged_by_median_with_their_range():
    results = [_record("before", 190.0, 850.0), _record("after", 290.0, 900.0, load=0.5),
               _record("before", 230.0, 860.0), _record("after", 210.0, 910.0, load=1.5),
               _record("before", 200.0, 855.0), _record("after", 250.0, 905.0, load=1.0),
               _record("after", 600.0, mode="infer")]
    merged = perf.merge_rounds(results)
    after = merged[("XS", "train", "after")]
    assert after["frames_per_s"] == 250.0 and after["peak_rss_mib"] == 905.0 and after["load_before"] == 1.0
    assert after["rounds"] == [290.0, 210.0, 250.0]
    assert merged[("XS", "train", "before")]["frames_per_s"] == 200.0
    assert merged[("XS", "infer1", "after")]["rounds"] == [600.0]
    assert perf._cell(after, "frames_per_s") == "250 (210-290, 3 rounds)"
    assert perf._cell(after, "peak_rss_mib") == "905"
    assert perf._cell(merged[("XS", "infer1", "after")], "frames_per_s") == "600"


def test_rendered_table_reports_the_median_ratio():
    results = [_record("before", 200.0, 850.0), _record("after", 300.0, 900.0),
               _record("before", 100.0, 850.0), _record("after", 100.0, 900.0),
               _record("before", 150.0, 850.0), _record("after", 240.0, 900.0)]
    text = perf.render(results, "cmd", "t0", "t1", "up0", "up1", 60.0)
    row = next(line for line in text.splitlines() if "training, frames/s" in line)
    assert "| 150 (100-200, 3 rounds) | 240 (100-300, 3 rounds) | 1.60 |" in row
    assert "median of its rounds" in text
