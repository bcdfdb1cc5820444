"""Named weights: packaged folders (fp16), the catalogue, `dualpose weights list/pull` over HTTP."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dualpose.cli import app
from dualpose.errors import DataFormatError, DownloadError
from dualpose.io.download import sha256_file
from dualpose.model.weights import load_weights, read_weights
from dualpose.weights import (DEFAULT_WEIGHTS, PACKAGE_DIR, list_weights, package_weights, pull_weights,
                              resolve_weights)
from tests.servers import http_file_server
from tests.video_support import tiny_weights


@pytest.fixture
def env(tmp_path, monkeypatch):
    packaged = tmp_path / "packaged"
    packaged.mkdir()
    monkeypatch.setenv("DUALPOSE_PACKAGED_WEIGHTS", str(packaged))
    monkeypatch.setenv("DUALPOSE_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DUALPOSE_WEIGHTS_CATALOG", raising=False)
    return tmp_path


def _packaged(env, name=DEFAULT_WEIGHTS):
    return package_weights(tiny_weights(env / "trained"), env / "packaged" / name, fps=30.0,
                           model_card=f"# {name}: tiny test model\n\nnot trained\n")


def test_packaged_weights_are_fp16_and_lift_like_the_fp32_original(env):
    folder = _packaged(env)
    tensors, config = read_weights(folder)
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float16}
    assert config["fps"] == 30.0 and config["spec"]["depth"] == 1
    assert (folder / "MODEL_CARD.md").read_text().startswith(f"# {DEFAULT_WEIGHTS}")
    original, packed = load_weights(env / "trained"), load_weights(folder)
    assert next(packed.parameters()).dtype == torch.float32  # cast back on load
    x = torch.randn(2, 9, 17, 3)
    with torch.no_grad():
        np.testing.assert_allclose(packed(x).numpy(), original(x).numpy(), atol=5e-3)
    assert resolve_weights() == folder  # the default name finds the packaged folder
    assert resolve_weights(DEFAULT_WEIGHTS) == folder


def test_missing_default_and_unknown_names_are_clear_errors(env):
    with pytest.raises(DataFormatError, match="packaged default weights"):
        resolve_weights()
    with pytest.raises(DataFormatError, match="dualpose weights list"):
        resolve_weights("nope-xl")


def test_pull_from_a_release_url_with_sha256(env, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    folder = _packaged(env, "small-test")
    asset = release / "small-test.safetensors"
    asset.write_bytes((folder / "model.safetensors").read_bytes())
    with http_file_server(release) as server:
        catalog = tmp_path / "catalog.json"
        catalog.write_text(json.dumps({"weights": {"remote-test": {
            "url": f"{server.url}/small-test.safetensors", "sha256": sha256_file(asset),
            "description": "served from 127.0.0.1"}}}))
        names = {e.name: e.where for e in list_weights(catalog)}
        assert names == {"small-test": "packaged", "remote-test": "catalogue"}
        res = CliRunner().invoke(app, ["weights", "pull", "remote-test", "--catalog", str(catalog)])
        assert res.exit_code == 0, res.output
        pulled = env / "cache" / "remote-test"
        assert (pulled / "config.json").is_file() and resolve_weights("remote-test") == pulled
        assert json.loads((pulled / "config.json").read_text())["fps"] == 30.0  # from the file's metadata
        listed = CliRunner().invoke(app, ["weights", "list", "--catalog", str(catalog)])
        assert "remote-test  [pulled]" in listed.output and "small-test  [packaged]" in listed.output
        # a wrong checksum is refused and nothing is left under the final name
        catalog.write_text(json.dumps({"weights": {"bad": {"url": f"{server.url}/small-test.safetensors",
                                                           "sha256": "0" * 64}}}))
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            pull_weights("bad", catalog, progress=False)
        assert not (env / "cache" / "bad" / "model.safetensors").exists()
        # a catalogue may itself be a URL
        (release / "catalog.json").write_text(json.dumps({"weights": {"remote-test": {
            "url": f"{server.url}/small-test.safetensors", "sha256": sha256_file(asset)}}}))
        assert [e.name for e in list_weights(f"{server.url}/catalog.json")] == ["remote-test", "small-test"]
    bad_catalog = tmp_path / "broken.json"
    bad_catalog.write_text(json.dumps({"weights": {"x": {"url": "http://127.0.0.1:1/x"}}}))
    with pytest.raises(DataFormatError, match="weights.x"):
        list_weights(bad_catalog)


def test_the_shipped_default_is_installed_with_its_model_card():
    """The packaged default (trained by the lead on CMU) must be inside the package."""
    folder = PACKAGE_DIR / DEFAULT_WEIGHTS
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} not present yet: the trained default weights are added by the lead")
    tensors, config = read_weights(folder)
    assert config and config.get("fps") and (folder / "MODEL_CARD.md").is_file()
    load_weights(folder)


def test_weights_package_command(env, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# tiny: test card\n")
    dest = tmp_path / "out" / "tiny"
    res = CliRunner().invoke(app, ["weights", "package", str(tiny_weights(tmp_path / "src")), str(dest),
                                   "--fps", "25", "--model-card", str(card)])
    assert res.exit_code == 0, res.output
    assert sha256_file(dest / "model.safetensors") in res.output
    assert json.loads((dest / "config.json").read_text())["fps"] == 25.0
    assert (dest / "MODEL_CARD.md").read_text() == card.read_text()
