"""Storage round trips on a local folder and on S3 (a moto server on 127.0.0.1)."""

from __future__ import annotations

import pytest

from dualpose.io.storage import Storage
from tests.servers import create_bucket, moto_s3


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as endpoint:
        create_bucket(endpoint, "artefacts")
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "store")
    request.getfixturevalue("s3_endpoint")
    return Storage(f"s3://artefacts/{tmp_path.name}/")  # a fresh prefix per test


def test_bytes_and_text_round_trip(storage):
    assert not storage.exists("models/config.json")
    storage.write_text("models/config.json", '{"dim": 32}')
    with storage.open("tables/cmu/part.bin", "wb") as handle:
        handle.write(b"\x00\x01\x02")
    assert storage.exists("models/config.json")
    assert storage.exists("models")
    assert storage.read_text("models/config.json") == '{"dim": 32}'
    with storage.open("tables/cmu/part.bin") as handle:
        assert handle.read() == b"\x00\x01\x02"
    storage.write_text("models/config.json", "replaced")
    assert storage.read_text("models/config.json") == "replaced"


def test_put_get_ls_glob(storage, tmp_path):
    local = tmp_path / "local.parquet"
    local.write_bytes(b"PAR1 pretend")
    assert storage.put(local, "tables/cmu/train.parquet") == storage.path("tables", "cmu", "train.parquet")
    storage.put(local, "tables/cmu/test.parquet")
    storage.put(local, "tables/h36m/train.parquet")
    storage.write_text("tables/cmu/manifest.json", "{}")
    assert storage.ls("tables") == ["tables/cmu", "tables/h36m"]
    assert storage.ls("tables/cmu") == [
        "tables/cmu/manifest.json",
        "tables/cmu/test.parquet",
        "tables/cmu/train.parquet",
    ]
    assert storage.ls("nothing/here") == []
    assert storage.glob("tables/*/train.parquet") == ["tables/cmu/train.parquet", "tables/h36m/train.parquet"]
    back = storage.get("tables/h36m/train.parquet", tmp_path / "fetched" / "t.parquet")
    assert back.read_bytes() == b"PAR1 pretend"
    storage.rm("tables/h36m", recursive=True)
    assert not storage.exists("tables/h36m/train.parquet")
    assert storage.glob("tables/*/train.parquet") == ["tables/cmu/train.parquet"]


def test_put_dir_and_get_dir_replace_whole_folders(storage, tmp_path):
    source = tmp_path / "model"
    (source / "plots").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "plots" / "curve.png").write_bytes(b"png")
    storage.write_text("models/pretrain/stale.txt", "from an older run")
    storage.put_dir(source, "models/pretrain")
    assert storage.find("models/pretrain") == ["models/pretrain/model.safetensors", "models/pretrain/plots/curve.png"]
    assert storage.find("models") == storage.find("models/pretrain")
    assert not storage.exists("models/pretrain/stale.txt")
    target = tmp_path / "copy"
    (target).mkdir()
    (target / "old.txt").write_text("replaced by get_dir")
    storage.get_dir("models/pretrain", target)
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == ["model.safetensors", "plots/curve.png"]
    assert (target / "plots" / "curve.png").read_bytes() == b"png"


def test_failed_write_leaves_nothing_visible(storage):
    storage.write_bytes("metrics.json", b"old")
    with pytest.raises(RuntimeError, match="crash"):
        with storage.open("metrics.json", "wb") as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash while writing")
    with pytest.raises(RuntimeError):
        with storage.open("fresh.json", "w") as handle:
            handle.write("{")
            raise RuntimeError("crash while writing")
    assert storage.read_bytes("metrics.json") == b"old"
    assert not storage.exists("fresh.json")
    assert storage.ls() == ["metrics.json"]  # no temporary names left behind


def test_missing_files_raise(storage, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such stored file"):
        storage.get("absent.bin", tmp_path / "absent.bin")
    with pytest.raises(FileNotFoundError, match="no such stored folder"):
        storage.get_dir("absent", tmp_path / "absent")
    assert not (tmp_path / "absent.bin").exists() and not (tmp_path / "absent").exists()


def test_names_cannot_leave_the_root(storage):
    with pytest.raises(ValueError, match=r"'\.\./x' must not contain '\.\.'"):
        storage.path("../x")
    with pytest.raises(ValueError, match="must be relative to the storage root"):
        storage.write_text("/etc/passwd", "no")
    with pytest.raises(ValueError, match="Storage writes whole files"):
        storage.open("log.txt", "a").__enter__()


def test_local_paths(tmp_path):
    storage = Storage("artefacts", base_dir=tmp_path)
    assert storage.is_local
    assert storage.root == str(tmp_path / "artefacts")
    expected = tmp_path / "artefacts" / "tables" / "cmu" / "train.parquet"
    assert storage.path("tables", "cmu/train.parquet") == str(expected)
    assert storage.local_path("models", "pretrain") == tmp_path / "artefacts" / "models" / "pretrain"
    assert Storage((tmp_path / "x").as_uri()).root == str(tmp_path / "x")
    storage.write_text("a/b.txt", "x")
    assert (tmp_path / "artefacts" / "a" / "b.txt").read_text() == "x"


def test_s3_paths_and_options(s3_endpoint):
    storage = Storage("s3://artefacts/run-1/", {"endpoint_url": s3_endpoint})
    assert not storage.is_local
    assert storage.root == "s3://artefacts/run-1"
    assert storage.path("tables", "cmu/train.parquet") == "s3://artefacts/run-1/tables/cmu/train.parquet"
    with pytest.raises(ValueError, match="is remote storage: it has no local path"):
        storage.local_path("tables")
    storage.write_text("hello.txt", "hi")
    # a second object (fresh filesystem state) sees what the first wrote
    assert Storage("s3://artefacts/run-1").read_text("hello.txt") == "hi"
