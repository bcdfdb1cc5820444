"""The restricted unpickler: real layouts load, anything that could run code is refused."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from dualpose.errors import DataFormatError
from dualpose.io.safe_pickle import ALLOWED_GLOBALS, load_npz, load_pickle, loads_pickle
from tests.fixtures_formats import RunsCode, write_code_pickle, write_h36m_pickle


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_real_layout_pickle_loads_identically(tmp_path, protocol):
    path = tmp_path / "h36m.pkl"
    data = write_h36m_pickle(path, protocol=protocol)
    loaded = load_pickle(path)
    assert sorted(loaded) == sorted(data)
    for split in data:
        assert sorted(loaded[split]) == sorted(data[split])
        for key, value in data[split].items():
            got = loaded[split][key]
            np.testing.assert_array_equal(got, value)
            assert np.asarray(got).dtype == np.asarray(value).dtype


def test_numpy1_spelling_and_containers_load():
    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "od": OrderedDict(x=1), "s": {1, 2},
             "scalar": np.float64(2.5), "list": ["x", b"y", (1, 2.0)], "obj": np.array(["a", None], object)}
    raw = pickle.dumps(value, protocol=2)
    assert b"numpy._core.multiarray" in raw
    raw_np1 = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1.x writes it
    for blob in (raw, raw_np1):
        got = loads_pickle(blob, "mem.pkl")
        np.testing.assert_array_equal(got["a"], value["a"])
        assert got["od"] == value["od"] and isinstance(got["od"], OrderedDict)
        assert got["s"] == {1, 2} and got["scalar"] == 2.5 and got["list"] == ["x", b"y", (1, 2.0)]
        assert got["obj"].tolist() == ["a", None]


def test_code_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = write_code_pickle(tmp_path / "evil.pkl", marker)
    with pytest.raises(DataFormatError) as info:
        load_pickle(path)
    assert not marker.exists()
    err = info.value
    assert err.path == str(path)
    assert err.field == f"pickle global {os.system.__module__}.system"  # posix.system on Linux
    assert "refuses" in str(err) and str(path) in str(err)
    # the file really is hostile: the stock loader runs the command
    with open(path, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


@pytest.mark.parametrize("blob, global_name", [
    (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
    (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
    (b"cnumpy.testing._private.utils\nrunstring\n(S'1'\n}tR.", "numpy.testing._private.utils.runstring"),
])
def test_other_globals_are_refused(blob, global_name):
    with pytest.raises(DataFormatError) as info:
        loads_pickle(blob, "x.pkl")
    assert info.value.field == f"pickle global {global_name}"
    assert info.value.path == "x.pkl"
    assert global_name not in ALLOWED_GLOBALS


def test_truncated_pickle_names_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    write_h36m_pickle(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError) as info:
        load_pickle(path)
    assert info.value.path == str(path) and info.value.field == "<pickle>"
    assert "a complete, readable pickle" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="a readable pickle file"):
        load_pickle(tmp_path / "absent.pkl")


def test_npz_object_and_numeric_members(tmp_path):
    path = tmp_path / "d.npz"
    nested = {"S1": {"Walking 1": np.ones((3, 32, 3), np.float32)}, "S5": {}}
    np.savez_compressed(path, positions_3d=nested, plain=np.arange(12.0).reshape(3, 4),
                        fortran=np.asfortranarray(np.arange(6).reshape(2, 3)))
    got = load_npz(path)
    assert got["positions_3d"].shape == () and got["positions_3d"].dtype == object
    item = got["positions_3d"].item()
    np.testing.assert_array_equal(item["S1"]["Walking 1"], nested["S1"]["Walking 1"])
    np.testing.assert_array_equal(got["plain"], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(got["fortran"], np.arange(6).reshape(2, 3))
    assert list(load_npz(path, ["plain"])) == ["plain"]


def test_npz_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, data=np.array({"x": RunsCode(f"touch '{marker}'")}, dtype=object))
    with pytest.raises(DataFormatError) as info:
        load_npz(path)
    assert not marker.exists()
    assert info.value.path == f"{path}[data]" and info.value.field.startswith("pickle global ")


def test_npz_errors_name_file_and_member(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, a=np.arange(1000.0))
    with pytest.raises(DataFormatError) as info:
        load_npz(path, ["b"])
    assert info.value.field == "b" and "members ['a']" in str(info.value)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataFormatError) as info:
        load_npz(bad)
    assert info.value.path == str(bad)
    # a member whose payload is shorter than its header says
    short = tmp_path / "short.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
        dst.writestr("a.npy", src.read("a.npy")[:-80])
    with pytest.raises(DataFormatError) as info:
        load_npz(short)
    assert info.value.field == "<npy payload>" and "8000 bytes" in str(info.value)
