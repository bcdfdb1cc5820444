"""Class 5: every bounded setting refused out of bounds, bad overrides and YAML named plainly."""

from __future__ import annotations

import pytest

from tests.adversarial.conftest import assert_refused, assert_unchanged, invoke

OUT_OF_BOUNDS = [
    "pretrain.batch_size=0", "pretrain.batch_size=-8", "finetune.batch_size=0", "evaluate.batch_size=0",
    "clips.train_stride=0", "clips.test_stride=-1", "evaluate.stride=0", "pretrain.grad_accum=0",
    "finetune.grad_accum=0", "pretrain.save_every_steps=0", "finetune.save_every_steps=-1",
    "pretrain.epochs=0", "finetune.epochs=0", "pretrain.max_steps=0", "finetune.max_steps=0",
    "masking.probability=1.5", "masking.probability=-0.1", "pretrain.flip_probability=2",
    "finetune.flip_probability=-1", "pretrain.ema_start=1.5", "pretrain.ema_end=-0.5",
    "pretrain.ema_ramp_fraction=3", "pretrain.optim.lr=0", "pretrain.optim.lr=-1e-3",
    "finetune.optim.lr=.nan", "finetune.optim.lr=.inf", "finetune.optim.lr=abc", "finetune.optim.weight_decay=-1",
    "finetune.optim.lr_decay=0", "finetune.optim.lr_decay=1.5", "finetune.optim.grad_clip=0",
    "finetune.loss.velocity=-1", "finetune.label_fraction=0", "evaluate.pck_threshold_mm=0",
    "evaluate.max_mpjpe_mm=-5", "clips.length=0", "masking.span=0", "masking.views=0",
    "pretrain.num_workers=-1", "pretrain.collapse_variance=.nan",
]
BOOLEANS_FOR_NUMBERS = ["seed=true", "pretrain.epochs=true", "finetune.batch_size=false", "clips.length=true",
                        "pretrain.optim.lr=true", "masking.views=yes", "pretrain.top_k_blocks=true"]


@pytest.mark.parametrize("override", OUT_OF_BOUNDS + BOOLEANS_FOR_NUMBERS)
def test_out_of_bounds_setting(ws, override):
    key = override.split("=", 1)[0]
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", ws.params, "-o", override), str(ws.params), key, f"-o {override}")
    assert_unchanged(ws, before)


@pytest.mark.parametrize("override", ["pretrain.top_k_blocks=3", "model.overrides.depth=1"])
def test_top_k_blocks_beyond_depth(ws, override):
    before = ws.snapshot()  # tiny params: depth 2, top_k_blocks 2
    assert_refused(invoke("pretrain", "-p", ws.params, "-o", override), "top_k_blocks", "depth")
    assert_unchanged(ws, before)


BAD_OVERRIDES = {
    "no equals": ("finetune.epochs", "KEY=VALUE"),
    "empty key": ("=3", "empty key"),
    "double dot": ("finetune..epochs=3", "empty key"),
    "not a section": ("seed.x=1", "not a section"),
    "unclosed list": ("finetune.epochs=[", "not valid YAML"),
    "unclosed map": ("finetune.epochs={", "not valid YAML"),
    "unknown key": ("finetune.epochz=3", "finetune.epochz"),
    "python tag": ("seed=!!python/object/apply:os.system [echo]", "not valid YAML"),
    "wrong type": ("finetune.init=[1, 2]", "finetune.init"),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_bad_override(ws, case):
    override, needle = BAD_OVERRIDES[case]
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", ws.params, "-o", override), needle)
    assert_unchanged(ws, before)


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BAD_FILES = {
    "billion laughs": (_bomb(), "aliases"),
    "nested 10000 deep": ("x: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested too deeply"),
    "tab indentation": ("clips:\n\tlength: 9\n", "not valid YAML"),
    "unclosed bracket": ("clips: {length: 9\n", "not valid YAML"),
    "top-level list": ("- 1\n- 2\n", "mapping"),
    "python tag": ("seed: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    "duplicate anchors ok but unknown alias": ("seed: *nope\n", "not valid YAML"),
    "not UTF-8": (b"\xff\xfeseed: 1\n", "UTF-8"),
    "unknown section": ("clipz: {length: 9}\n", "clipz"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_params_file(ws, case):
    content, needle = BAD_FILES[case]
    path = ws.dir / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", path), str(path), needle)
    assert_unchanged(ws, before)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_params_path_that_is_not_a_file(ws, kind):
    path = ws.dir / "nope.yaml"
    if kind == "folder":
        path.mkdir()
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", path), str(path))
    assert_unchanged(ws, before)


def test_zero_clips_names_min_length_and_T(ws):
    assert invoke("prepare", "-p", ws.params).exit_code == 0
    before = ws.snapshot()
    line = assert_refused(invoke("clips", "-p", ws.params, "-o", "clips.min_length=100000"),
                          str(ws.root / "tables" / "synthetic"), "min_length=100000", "T=9")
    assert "0 clips" in line
    assert_unchanged(ws, before)
    assert not (ws.root / "clips").exists()
