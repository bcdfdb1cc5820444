"""Classes 1 and 2: names that become paths never leave the storage root; an S3 root is refused by the CLI."""

from __future__ import annotations

import json
import os

import pytest

from dualpose.errors import ConfigError
from dualpose.io.names import check_name
from dualpose.layout import Layout
from tests.adversarial.conftest import assert_refused, assert_unchanged, invoke, write_json

BAD_NAMES = ["../models", "../../x", "/tmp/abs", "a/b", "..", ".", "", "a\\b", " lead", "-dash", "x" * 65,
             "tab\tname", "C:evil", "~home", "name/..", ".hidden", "new\nline", "a..b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_data_set_name_in_params(ws, name):
    params = ws.params_dict()
    params["datasets"][name] = params["datasets"].pop("synthetic")
    params["train_dataset"] = name
    ws.write_params(params)
    before = ws.snapshot()
    assert_refused(invoke("prepare", "-p", ws.params), str(ws.params), "datasets key")
    assert_unchanged(ws, before)


@pytest.mark.parametrize("name", ["../models", "/abs", "a/b", ".."])
def test_bad_train_dataset(ws, name):
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", ws.params, "-o", f"train_dataset={json.dumps(name)}"), "train_dataset")
    assert_unchanged(ws, before)


@pytest.mark.parametrize("command", ["prepare", "clips", "mask", "fetch"])
@pytest.mark.parametrize("name", ["../models", "/etc", "synthetic/../../x"])
def test_bad_data_set_argument(ws, command, name):
    before = ws.snapshot()
    line = assert_refused(invoke(command, name, "-p", ws.params))
    assert repr(name) in line or name in line
    assert_unchanged(ws, before)


@pytest.mark.parametrize("key", ["../x", "a/b", "", ".."])
def test_bad_files_key(ws, key):
    params = ws.params_dict()
    params["datasets"]["cmu"]["files"] = {key: "x.npz"}
    ws.write_params(params)
    before = ws.snapshot()
    assert_refused(invoke("prepare", "-p", ws.params), str(ws.params), "files key")
    assert_unchanged(ws, before)


@pytest.mark.parametrize("skeleton", ["../x", "/abs"])
def test_bad_skeleton_name(ws, skeleton):
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", ws.params, "-o", f"skeleton={skeleton}"), "skeleton")
    assert_unchanged(ws, before)


@pytest.mark.parametrize("skeleton", ["../../etc/passwd", "nope", 17])
def test_bad_skeleton_in_weights_config(ws, tiny_weights, tmp_path, skeleton):
    import shutil

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    config = json.loads((weights / "config.json").read_text())
    config["spec"]["skeleton"] = skeleton
    (weights / "config.json").write_text(json.dumps(config))
    from tests.adversarial.conftest import coco_doc

    keypoints = write_json(ws.dir / "in.json", coco_doc())
    before = ws.snapshot()
    assert_refused(invoke("predict", keypoints, "--weights", weights, "--out", ws.dir / "o.npz"),
                   str(weights / "config.json"), "spec.skeleton")
    assert_unchanged(ws, before)


@pytest.mark.parametrize("name", BAD_NAMES[:8])
def test_layout_refuses_escaping_names(tmp_path, name):
    layout = Layout.from_root(tmp_path)
    for method in (layout.raw, layout.tables, layout.clips, layout.masked, layout.model, layout.run_dir,
                   layout.eval_dir):
        with pytest.raises(ConfigError, match="name"):
            method(name)


def test_good_names_pass():
    for name in ("synthetic", "cmu", "h36m", "mpi_inf_3dhp", "my-data.v2", "S1"):
        assert check_name(name, "x") == name


# -- class 2: storage roots the CLI cannot honour ------------------------------------------------
@pytest.mark.parametrize("root", ["s3://bucket/prefix", "S3://bucket", "gs://bucket/x", "http://host/x"])
@pytest.mark.parametrize("command", ["fetch", "prepare", "clips", "mask", "pretrain", "finetune", "evaluate"])
def test_remote_storage_root_is_refused(ws, root, command):
    before = ws.snapshot()
    assert_refused(invoke(command, "-p", ws.params, "-o", f"storage.root={root}"), "storage.root", root,
                   "Dagster")
    assert_unchanged(ws, before)
    assert not any(p.name.endswith(":") for p in ws.dir.rglob("*"))  # no folder named "s3:"


def test_s3_root_writes_nothing_anywhere(ws):
    """Against a moto S3 server: the refused CLI leaves both the bucket and the local disk untouched."""
    import boto3

    from tests.servers import create_bucket, moto_s3

    with moto_s3() as endpoint:
        create_bucket(endpoint, "bucket")
        params = ws.params_dict()
        params["storage"]["root"] = "s3://bucket/prefix"
        ws.write_params(params)
        before = ws.snapshot()
        assert_refused(invoke("prepare", "-p", ws.params), "s3://bucket/prefix")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        assert client.list_objects_v2(Bucket="bucket").get("KeyCount", 0) == 0
        assert_unchanged(ws, before)
        assert not (ws.dir / "s3:").exists() and not os.path.exists("s3:")
