"""Classes 6 and 7: tiny inputs that ask for huge allocations, and confident garbage.

Each is refused before any work with an error naming the file and the field; low-confidence
input to ``predict`` is lifted with a warning and per-frame flags.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from dualpose.data.schema import FrameColumns
from dualpose.errors import DataFormatError
from dualpose.skeleton import H36M_17
from tests.adversarial.conftest import (assert_refused, assert_unchanged, coco_doc, coco_keypoints, invoke,
                                        write_json, write_json_text)


def _predict(ws, keypoints, weights, *extra):
    return invoke("predict", keypoints, "--weights", weights, "--out", ws.dir / "out.npz", *extra)


def _doc_with(mutate):
    doc = coco_doc()
    mutate(doc)
    return doc


def _set_kp(doc, value, frames=None, joints=None, coord=0):
    for i, rec in enumerate(doc["annotations"]):
        if frames is None or i in frames:
            kps = np.asarray(rec["keypoints"], dtype=object).reshape(17, 3)
            for j in range(17) if joints is None else joints:
                kps[j, coord] = value
            rec["keypoints"] = kps.reshape(-1).tolist()


# -- class 6: resource bounds -------------------------------------------------------------------
FRAME_BOMBS = {
    "frame index 2e9": (lambda d: d["annotations"][-1].update(image_id=2_000_000_000), "frame"),
    "frame index 2^31": (lambda d: d["annotations"][-1].update(image_id=2**31), "annotations[11].image_id"),
    "30-digit frame id": (lambda d: d["annotations"][0].update(image_id=10**29), "annotations[0].image_id"),
    "30-digit frame name": (lambda d: d["annotations"][0].update(image_id="f" + "9" * 30 + ".jpg"),
                            "annotations[0].image_id"),
    "negative frame": (lambda d: d["annotations"][0].update(image_id=-5), "annotations[0].image_id"),
    "float frame 1e300": (lambda d: d["annotations"][0].update(image_id=1e300), "annotations[0].image_id"),
    "sparse frames": (lambda d: d["annotations"][-1].update(image_id=5_000_000), "frame"),
}


@pytest.mark.parametrize("case", sorted(FRAME_BOMBS))
def test_frame_numbers_that_would_allocate_gigabytes(ws, tiny_weights, case):
    mutate, field = FRAME_BOMBS[case]
    path = write_json(ws.dir / "in.json", _doc_with(mutate))
    before = ws.snapshot()
    assert_refused(_predict(ws, path, tiny_weights), str(path), field)
    assert_unchanged(ws, before)


@pytest.mark.parametrize("depth", [200_000, 1000])
def test_deeply_nested_json(ws, tiny_weights, depth):
    path = write_json_text(ws.dir / "in.json", "[" * depth + "]" * depth)
    before = ws.snapshot()
    assert_refused(_predict(ws, path, tiny_weights), str(path), "nested")
    assert_unchanged(ws, before)


def test_huge_integer_literal(ws, tiny_weights):
    doc = json.dumps(coco_doc()).replace('"image_id": 0,', '"image_id": ' + "9" * 5000 + ",", 1)
    path = write_json_text(ws.dir / "in.json", doc)
    before = ws.snapshot()
    assert_refused(_predict(ws, path, tiny_weights), str(path))
    assert_unchanged(ws, before)


SPEC_BOMBS = [("dim", 2**20), ("depth", 10**6), ("T", 10**9), ("heads", 10**5), ("rep_dim", 2**24),
              ("num_joints", 10**6), ("dim", -4), ("depth", True), ("mlp_ratio", 1e9), ("depth", 200)]


@pytest.mark.parametrize("field, value", SPEC_BOMBS)
def test_weights_config_asking_for_a_huge_model(ws, tiny_weights, tmp_path, field, value):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    config = json.loads((weights / "config.json").read_text())
    config["spec"][field] = value
    (weights / "config.json").write_text(json.dumps(config))
    path = write_json(ws.dir / "in.json", coco_doc())
    before = ws.snapshot()
    field_named = "spec.dim/depth" if (field, value) == ("depth", 200) else f"spec.{field}"
    assert_refused(_predict(ws, path, weights), str(weights / "config.json"), field_named)
    assert_unchanged(ws, before)


# -- class 7: confident garbage -------------------------------------------------------------------
GARBAGE = {
    "NaN literal": (lambda p, d: write_json_text(p, json.dumps(d).replace("0.9]", "NaN]", 1)), "<file>"),
    "Infinity literal": (lambda p, d: write_json_text(p, json.dumps(d).replace("0.9]", "Infinity]", 1)), "<file>"),
    "1e32 px": (lambda p, d: (_set_kp(d, 1e32, frames={3}), write_json(p, d))[-1], "keypoints"),
    "-1e9 px": (lambda p, d: (_set_kp(d, -1e9, frames={0}, joints=[5], coord=1), write_json(p, d))[-1], "keypoints"),
    "all-zero confidences": (lambda p, d: (_set_kp(d, 0.0, coord=2), write_json(p, d))[-1], "confidence"),
    "all joints at one point": (lambda p, d: (_set_kp(d, 100.0, coord=0), _set_kp(d, 100.0, coord=1),
                                              write_json(p, d))[-1], "keypoints"),
    "string coordinate": (lambda p, d: (_set_kp(d, "x", frames={1}, joints=[2]), write_json(p, d))[-1], "keypoints"),
    "null coordinate": (lambda p, d: (_set_kp(d, None, frames={1}, joints=[2]), write_json(p, d))[-1], "keypoints"),
    "width 0": (lambda p, d: (d.update(width=0), write_json(p, d))[-1], "width"),
    "width 1e9": (lambda p, d: (d.update(width=10**9), write_json(p, d))[-1], "width"),
    "fps NaN-like string": (lambda p, d: (d.update(fps="nan"), write_json(p, d))[-1], "fps"),
    "fps 1e9": (lambda p, d: (d.update(fps=1e9), write_json(p, d))[-1], "fps"),
    "not UTF-8": (lambda p, d: (p.write_bytes(b"\xff\xfe" + b"\x00garbage" * 10), p)[-1], "<file>"),
    "empty file": (lambda p, d: write_json_text(p, ""), "<file>"),
    "binary zeros": (lambda p, d: (p.write_bytes(b"\0" * 100), p)[-1], "<file>"),
    "no annotations": (lambda p, d: (d.update(annotations=[]), write_json(p, d))[-1], "annotations"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_keypoints_are_refused(ws, tiny_weights, case):
    make, field = GARBAGE[case]
    path = make(ws.dir / "in.json", coco_doc())
    before = ws.snapshot()
    assert_refused(_predict(ws, path, tiny_weights), str(path), field)
    assert_unchanged(ws, before)
    assert not (ws.dir / "out.npz").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_weights_are_refused(ws, tiny_weights, tmp_path, value):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    tensors = load_file(str(weights / "model.safetensors"))
    name = sorted(tensors)[0]
    if value == -1.0:  # every weight zero: a degenerate network that lifts everyone to one point
        tensors = {k: v * 0 for k, v in tensors.items()}
        field = "<output>"
    else:
        tensors[name].view(-1)[0] = value
        field = name
    save_file(tensors, str(weights / "model.safetensors"))
    path = write_json(ws.dir / "in.json", coco_doc())
    before = ws.snapshot()
    assert_refused(_predict(ws, path, weights), str(weights), field)
    assert_unchanged(ws, before)


def test_low_confidence_frames_are_flagged(ws, tiny_weights, caplog):
    kps = coco_keypoints(12)
    kps[4:7, :, 2] = 0.05  # three frames the detector barely saw
    path = write_json(ws.dir / "in.json", coco_doc(kps))
    result = _predict(ws, path, tiny_weights)
    assert result.exit_code == 0, result.output
    out = np.load(ws.dir / "out.npz")
    assert out["low_confidence"].tolist() == [i in (4, 5, 6) for i in range(12)]
    assert np.isfinite(out["poses_3d_mm"]).all()
    assert "3 of 12 frames have mean confidence" in caplog.text


def _columns(**change) -> FrameColumns:
    n = 4
    rng = np.random.default_rng(0)
    values = dict(dataset="d", split="train", subject="S1", action="walk", video_id="v", camera_id="c",
                  frame=np.arange(n), fps=50.0, width=1000, height=1000,
                  kp2d=rng.uniform(100, 900, (n, 17, 2)), conf=np.full((n, 17), 0.9),
                  kp3d=rng.uniform(-500, 500, (n, 17, 3)) + [0, 0, 4000], factor_2_5d=None, valid=True)
    for key, value in change.items():
        if callable(value):
            values[key] = value(values[key])
        else:
            values[key] = value
    return FrameColumns(**values)


def _poke(index, value):
    def apply(a):
        a = np.array(a, dtype=np.float64)
        a[index] = value
        return a
    return apply


TABLE_GARBAGE = {
    "kp3d 1e30 mm": (dict(kp3d=_poke((1, 3, 0), 1e30)), "kp3d"),
    "kp3d inf": (dict(kp3d=_poke((1, 3, 0), np.inf)), "kp3d"),
    "kp3d partly NaN": (dict(kp3d=_poke((0, 3), np.nan)), "kp3d"),
    "kp2d 1e32 px": (dict(kp2d=_poke((2, 5, 1), 1e32)), "kp2d"),
    "kp2d NaN with confidence": (dict(kp2d=_poke((2, 5, 1), np.nan)), "kp2d"),
    "kp3d all zero": (dict(kp3d=_poke((2,), 0.0)), "kp3d"),
    "kp3d all joints at one point": (dict(kp3d=_poke((0,), 3000.0)), "kp3d"),
    "conf 1.5": (dict(conf=_poke((0, 0), 1.5)), "conf"),
    "conf NaN": (dict(conf=_poke((0, 0), np.nan)), "conf"),
    "fps NaN": (dict(fps=float("nan")), "fps"),
    "fps 0": (dict(fps=0.0), "fps"),
    "width -1": (dict(width=-1), "width/height"),
    "height 1e7": (dict(height=10**7), "width/height"),
}


@pytest.mark.parametrize("case", sorted(TABLE_GARBAGE))
def test_adapter_output_garbage_is_refused_before_writing(tmp_path, case):
    change, field = TABLE_GARBAGE[case]
    source = tmp_path / "source.npz"
    with pytest.raises(DataFormatError) as info:
        _columns(**change).normalised(source, H36M_17)
    assert info.value.path == str(source) and info.value.field == field


# -- our own tables, damaged after they were written ----------------------------------------------
def _rewrite_column(path, name, transform):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = transform(table.column(name).combine_chunks())
    table = table.set_column(table.column_names.index(name), pa.field(name, column.type), column)
    pq.write_table(table, path)


def _nan_first(col):
    import pyarrow as pa

    values = col.to_numpy(zero_copy_only=False).astype(np.float32)
    values[0] = np.nan
    return pa.array(values, type=col.type)


def _conf_two(col):
    import pyarrow as pa

    flat = col.flatten().to_numpy(zero_copy_only=False).copy()
    flat[3] = 2.0
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=col.type.value_type), col.type.list_size)


def _kp2d_nan(col):
    import pyarrow as pa

    inner = col.flatten()
    flat = inner.flatten().to_numpy(zero_copy_only=False).copy()
    flat[0] = np.nan
    rebuilt = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=inner.type.value_type), inner.type.list_size)
    return pa.FixedSizeListArray.from_arrays(rebuilt, col.type.list_size)


def _null_first(col):
    import pyarrow as pa

    values = col.to_pylist()
    values[0] = None
    return pa.array(values, type=col.type)


@pytest.mark.parametrize("column, transform, field", [
    ("fps", _nan_first, "fps"), ("conf", _conf_two, "conf"), ("kp2d", _kp2d_nan, "kp2d"),
    ("frame", _null_first, "frame"), ("width", _null_first, "width"),
])
def test_damaged_table_is_refused_by_its_reader(ws, column, transform, field):
    assert invoke("prepare", "-p", ws.params).exit_code == 0
    table = sorted((ws.root / "tables" / "synthetic").glob("*.parquet"))[0]
    _rewrite_column(table, column, transform)
    before = ws.snapshot()
    assert_refused(invoke("clips", "-p", ws.params), f"{table}: field '{field}'")
    assert_unchanged(ws, before)
    assert not (ws.root / "clips").exists()


def test_evaluate_refuses_a_huge_weights_config(ws, tiny_weights, tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    config = json.loads((weights / "config.json").read_text())
    config["spec"]["dim"] = 2**20
    (weights / "config.json").write_text(json.dumps(config))
    before = ws.snapshot()
    assert_refused(invoke("evaluate", "-p", ws.params, "--weights", weights), str(weights / "config.json"),
                   "spec.dim")
    assert_unchanged(ws, before)
