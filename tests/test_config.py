from pathlib import Path

import pytest

from dualpose.config import load_params
from dualpose.errors import ConfigError
from dualpose.model.config import spec_from_params

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.train_dataset == "synthetic"
    assert "synthetic" in params.enabled_datasets()
    assert params.clips.stride("train") == params.clips.length // 3
    assert params.clips.stride("test") == params.clips.length
    assert params.finetune.loss.velocity == 20.0


def test_overrides_are_parsed_as_yaml(tmp_path):
    params = load_params(ROOT / "params.yaml", ["finetune.epochs=3", "model.overrides={depth: 2, dim: 32}",
                                                 "clips.splits.validation_subjects=[S1, S2]"])
    assert params.finetune.epochs == 3
    assert params.model.overrides == {"depth": 2, "dim": 32}
    assert params.clips.splits.validation_subjects == ["S1", "S2"]


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("finetune:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"finetune\.epocs: Extra inputs are not permitted"):
        load_params(p)


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    p = tmp_path / "params.yaml"
    p.write_text("clips:\n  length: 0\n")
    with pytest.raises(ConfigError, match=r"clips\.length"):
        load_params(p)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(ROOT / "params.yaml", ["finetune.epochs"])
    p.write_text("datasets:\n  a: {adapter: synthetic}\ntrain_dataset: b\n")
    with pytest.raises(ConfigError, match="train_dataset 'b' is not one of the datasets"):
        load_params(p)


def test_variant_change_on_the_command_line_drops_the_quick_start_size(caplog):
    """-o model.variant=B on params.yaml (XS shrunk to 4 x 32) trains a real B, and says so."""
    root = Path(__file__).resolve().parents[1]
    with caplog.at_level("WARNING"):
        params = load_params(root / "params.yaml", ["model.variant=B"])
    assert params.model.variant == "B" and "depth" not in params.model.overrides and "dim" not in params.model.overrides
    assert "size overrides {'depth': 4, 'dim': 32} are dropped" in caplog.text
    spec = spec_from_params(params)
    assert (spec.depth, spec.dim) == (16, 128)
    # a size given on the command line is kept
    kept = load_params(root / "params.yaml", ["model.variant=S", "model.overrides.depth=3"])
    assert kept.model.overrides["depth"] == 3 and kept.model.overrides["dim"] == 32
    # without a variant change the file's overrides stand
    assert load_params(root / "params.yaml").model.overrides["depth"] == 4
