"""benchmarks/gpu_perf.py: the short-lease plan measures issue 11's headline figures first."""

from tests.conftest import load_benchmark

gpu_perf = load_benchmark("gpu_perf")


def test_mfu_plan_times_b_and_l_bf16_eager_then_compiled_before_anything_else():
    steps = gpu_perf.mfu_plan(["XS", "B", "L"], {"L": 24})
    assert steps[:4] == [("time", "B", 32, "bf16", False, False, "train"), ("time", "B", 32, "bf16", False, True, "train"),
                         ("time", "L", 24, "bf16", False, False, "train"), ("time", "L", 24, "bf16", False, True, "train")]
    assert steps[4][1] == "XS" and steps[5] == ("time", "XS", 256, "bf16", False, True, "train")
    assert [s[3] for s in steps[6:]] == ["fp32"] * 3
    assert all(s[1] != "L" for s in gpu_perf.mfu_plan(["B"], {}))


def test_both_plans_are_selectable_and_well_formed():
    assert set(gpu_perf.PLANS) == {"full", "mfu"}
    for make in gpu_perf.PLANS.values():
        for kind, variant, batch, precision, ckpt, compiled, mode in make(["XS", "B"], {}):
            assert kind in ("time", "largest") and variant in ("XS", "B") and batch >= 1
            assert precision in ("fp32", "bf16") and mode in ("train", "infer") and isinstance(compiled, bool)
