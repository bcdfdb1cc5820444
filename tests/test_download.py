"""fetch / resolve against real local servers: an HTTP server on 127.0.0.1 and a moto S3 server."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import boto3
import pytest

from dualpose.errors import ConfigError, DownloadError
from dualpose.io import download
from dualpose.io.download import cache_path, fetch, normalise_sha256, resolve, resolve_dataset_files, sha256_file
from tests.servers import closed_port, create_bucket, http_file_server, moto_s3, validators_of

SIZE = 2_500_000  # a few chunks of download.CHUNK_SIZE
CUT = 1_000_000  # where the flaky server cuts a transfer


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return random.Random(0).randbytes(SIZE)


@pytest.fixture(scope="module")
def digest(payload) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def site(tmp_path, payload) -> Path:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "data.bin").write_bytes(payload)
    (root / "sub" / "small.txt").write_text("hello\n")
    return root


def record_validators(part: Path, url: str, etag: str | None, modified: str | None, size: int | None) -> None:
    """What fetch notes when a download begins; a part without it is never resumed."""
    download._write_meta(part, url, etag, modified, size)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- HTTP ------------------------------------------------------------------------------------
def test_http_download_is_verified_and_renamed_into_place(site, tmp_path, payload, digest):
    dest = tmp_path / "out" / "data.bin"
    with http_file_server(site) as server:
        got = fetch(server.url_for("data.bin"), dest, digest)
    assert got == dest
    assert dest.read_bytes() == payload
    assert sha256_file(dest) == digest
    assert leftovers(dest.parent) == ["data.bin"]  # no .part, no lock file
    assert [(r.range, r.status, r.body_bytes) for r in server.gets()] == [(None, 200, SIZE)]


def test_existing_verified_file_is_not_downloaded_again(site, tmp_path, digest):
    dest = tmp_path / "data.bin"
    with http_file_server(site) as server:
        fetch(server.url_for("data.bin"), dest, digest)
        fetch(server.url_for("data.bin"), dest, digest)
        fetch(server.url_for("data.bin"), dest)
    assert len(server.gets()) == 1


def test_checksum_mismatch_names_url_and_digests_and_keeps_nothing(site, tmp_path, digest):
    dest = tmp_path / "out" / "data.bin"
    wrong = "ab" * 32
    with http_file_server(site) as server:
        url = server.url_for("data.bin")
        with pytest.raises(DownloadError) as info:
            fetch(url, dest, wrong.upper())
    assert str(info.value) == (
        f"{url}: sha256 mismatch: expected {wrong}, got {digest}; the downloaded file was removed"
    )
    assert leftovers(dest.parent) == []


def test_checksum_mismatch_leaves_an_earlier_file_untouched(site, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"the old version")
    with http_file_server(site) as server:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            fetch(server.url_for("data.bin"), dest, "0" * 64)
    assert dest.read_bytes() == b"the old version"
    assert leftovers(tmp_path) == ["data.bin", "site"]


def test_not_found_names_url_and_status(site, tmp_path):
    with http_file_server(site) as server:
        url = server.url_for("missing.bin")
        with pytest.raises(DownloadError) as info:
            fetch(url, tmp_path / "out" / "missing.bin")
    assert str(info.value) == f"{url}: HTTP 404 Not Found"
    assert leftovers(tmp_path / "out") == []


def test_refused_connection_names_host_and_port(tmp_path):
    port = closed_port()
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "data.bin")
    assert str(info.value) == (
        f"{url}: connection refused by 127.0.0.1:{port}; check the address and that the server is running"
    )
    assert not (tmp_path / "data.bin").exists()


def test_timeout_is_reported(site, tmp_path):
    with http_file_server(site, stall_seconds=1.0) as server:
        url = server.url_for("data.bin")
        with pytest.raises(DownloadError) as info:
            fetch(url, tmp_path / "data.bin", timeout=0.2, retries=0)
    port = url.split(":")[2].split("/")[0]
    assert str(info.value) == f"{url}: timed out after 0.2 s waiting for 127.0.0.1:{port} (1 attempt(s))"
    assert leftovers(tmp_path) == ["site"]


def test_interrupted_transfer_resumes_in_a_later_call(site, tmp_path, payload, digest):
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    with http_file_server(site, drop_after_bytes=CUT) as server:
        url = server.url_for("data.bin")
        with pytest.raises(DownloadError) as info:
            fetch(url, dest, digest, retries=0)
        assert str(info.value) == (
            f"{url}: connection closed after {CUT} of {SIZE} bytes (1 attempt(s)); run again to resume from {part}"
        )
        assert not dest.exists()
        assert part.read_bytes() == payload[:CUT]
        fetch(url, dest, digest, retries=0)
    assert sha256_file(dest) == digest
    assert not part.exists()
    assert [(r.range, r.status, r.body_bytes) for r in server.gets()] == [
        (None, 200, CUT),
        (f"bytes={CUT}-", 206, SIZE - CUT),
    ]


def test_interrupted_transfer_resumes_within_one_call(site, tmp_path, payload, digest):
    dest = tmp_path / "data.bin"
    with http_file_server(site, drop_after_bytes=CUT, drop_times=2) as server:
        fetch(server.url_for("data.bin"), dest, digest, retries=2)
    assert dest.read_bytes() == payload
    assert [r.range for r in server.gets()] == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-"]


def test_server_ignoring_range_restarts_from_zero(site, tmp_path, payload, digest):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes from another attempt")
    with http_file_server(site, ignore_range=True) as server:
        record_validators(tmp_path / "data.bin.part", server.url_for("data.bin"), *validators_of(site / "data.bin"),
                          SIZE)
        fetch(server.url_for("data.bin"), dest, digest)
    assert dest.read_bytes() == payload
    assert [(r.range, r.status) for r in server.gets()] == [("bytes=32-", 200)]


def test_part_without_validators_restarts_from_zero(site, tmp_path, payload, digest):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"bytes of unknown origin")
    with http_file_server(site) as server:
        fetch(server.url_for("data.bin"), dest, digest)
    assert dest.read_bytes() == payload
    assert [(r.range, r.status) for r in server.gets()] == [(None, 200)]


def test_server_ignoring_range_after_an_interruption(site, tmp_path, payload, digest):
    dest = tmp_path / "data.bin"
    with http_file_server(site, ignore_range=True, drop_after_bytes=CUT) as server:
        fetch(server.url_for("data.bin"), dest, digest, retries=1)
    assert dest.read_bytes() == payload
    assert [(r.range, r.status, r.body_bytes) for r in server.gets()] == [
        (None, 200, CUT),
        (f"bytes={CUT}-", 200, SIZE),
    ]


def test_complete_part_file_is_finished_without_download(site, tmp_path, payload, digest):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(payload)  # e.g. killed between download and rename
    with http_file_server(site) as server:
        record_validators(tmp_path / "data.bin.part", server.url_for("data.bin"), *validators_of(site / "data.bin"),
                          SIZE)
        fetch(server.url_for("data.bin"), dest, digest)
    assert dest.read_bytes() == payload
    assert [(r.range, r.status, r.body_bytes) for r in server.gets()] == [(f"bytes={SIZE}-", 416, 0)]


def test_resume_false_starts_again(site, tmp_path, payload):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(payload[:CUT])
    with http_file_server(site) as server:
        fetch(server.url_for("data.bin"), dest, resume=False)
    assert dest.read_bytes() == payload
    assert [r.range for r in server.gets()] == [None]


# -- local sources ---------------------------------------------------------------------------
def test_file_url_and_plain_path_are_copied_by_fetch(site, tmp_path, payload, digest):
    source = site / "data.bin"
    fetch(source.as_uri(), tmp_path / "a" / "copy.bin", digest)
    fetch(str(source), tmp_path / "b" / "copy.bin", digest)
    assert (tmp_path / "a" / "copy.bin").read_bytes() == payload
    assert (tmp_path / "b" / "copy.bin").read_bytes() == payload


def test_local_files_are_resolved_in_place(site, tmp_path, digest):
    cache = tmp_path / "cache"
    source = site / "data.bin"
    assert resolve("data.bin", cache, digest, base_dir=site) == source
    assert resolve(source.as_uri(), cache, digest) == source
    assert resolve(str(site / "sub"), cache) == site / "sub"
    assert not cache.exists()  # nothing copied


def test_local_checksum_mismatch_keeps_the_users_file(site, tmp_path, digest):
    source = site / "data.bin"
    with pytest.raises(DownloadError) as info:
        resolve("data.bin", tmp_path / "cache", "1" * 64, base_dir=site)
    assert str(info.value) == f"data.bin: sha256 mismatch: expected {'1' * 64}, got {digest} (local file {source})"
    assert source.exists()


def test_missing_local_file_is_named(site, tmp_path):
    with pytest.raises(DownloadError) as info:
        resolve("nope.npz", tmp_path / "cache", base_dir=site)
    assert str(info.value) == f"nope.npz: no such file or folder ({site / 'nope.npz'})"


def test_remote_file_is_cached_under_a_stable_name(site, tmp_path, payload):
    cache = tmp_path / "cache"
    with http_file_server(site) as server:
        url = server.url_for("data.bin")
        first = resolve(url, cache)
        second = resolve(url, cache)
    assert first == second == cache_path(url, cache)
    assert first.name == "data.bin" and first.parent.parent == cache
    assert first.read_bytes() == payload
    assert len(server.gets()) == 1


def test_resolve_dataset_files_mixes_local_and_remote(site, tmp_path, digest):
    cache = tmp_path / "cache"
    with http_file_server(site) as server:
        url = server.url_for("data.bin")
        got = resolve_dataset_files(
            {"motion": "data.bin", "remote": url, "folder": "sub"},
            {"motion": digest, "remote": digest},
            cache,
            base_dir=site,
        )
    assert got == {"motion": site / "data.bin", "remote": cache_path(url, cache), "folder": site / "sub"}
    assert sha256_file(got["remote"]) == digest


def test_resolve_dataset_files_rejects_digest_for_unknown_file(site, tmp_path, digest):
    with pytest.raises(ConfigError) as info:
        resolve_dataset_files({"motion": "data.bin"}, {"motoin": digest}, tmp_path, base_dir=site)
    assert str(info.value) == "sha256 given for ['motoin'], which are not among the files ['motion']"


def test_digest_for_a_folder_is_rejected(site, tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve("sub", tmp_path, "0" * 64, base_dir=site)
    assert str(info.value) == f"sub: is a folder ({site / 'sub'}); sha256 applies to files only"


def test_sha256_spelling():
    digest = "AB" * 32
    assert normalise_sha256(f"sha256:{digest}") == "ab" * 32
    with pytest.raises(ConfigError) as info:
        normalise_sha256("abc", "datasets.cmu.sha256.motion")
    assert str(info.value) == "datasets.cmu.sha256.motion: 'abc' is not a sha256 digest (64 hexadecimal digits)"


# -- S3 (moto) -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(payload):
    """A moto server with bucket 'raw-data' holding data.bin and a small folder; endpoint NOT in the environment."""
    with moto_s3(set_endpoint_env=False) as endpoint:
        create_bucket(endpoint, "raw-data")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.put_object(Bucket="raw-data", Key="v1/data.bin", Body=payload)
        client.put_object(Bucket="raw-data", Key="v1/folder/a.txt", Body=b"a\n")
        client.put_object(Bucket="raw-data", Key="v1/folder/deep/b.txt", Body=b"b\n")
        yield endpoint


def test_s3_download_with_endpoint_in_storage_options(s3, tmp_path, payload, digest):
    dest = fetch("s3://raw-data/v1/data.bin", tmp_path / "data.bin", digest, storage_options={"endpoint_url": s3})
    assert dest.read_bytes() == payload
    assert leftovers(tmp_path) == ["data.bin"]


def test_s3_download_with_endpoint_from_environment(s3, tmp_path, monkeypatch, payload):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    dest = resolve("s3://raw-data/v1/data.bin", tmp_path / "cache")
    assert dest == cache_path("s3://raw-data/v1/data.bin", tmp_path / "cache")
    assert dest.read_bytes() == payload


def test_s3_resume_reads_only_the_missing_range(s3, tmp_path, payload, digest):
    # A part file whose bytes differ from the object: if fetch read the object from the start the
    # result would equal the payload; a ranged read from the part's end keeps the foreign prefix.
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    url = "s3://raw-data/v1/data.bin"
    info = download._fsspec_for(url, {"endpoint_url": s3}).info(url)
    validators = (str(info.get("ETag")), str(info.get("LastModified")), info["size"])
    part.write_bytes(b"\0" * CUT)
    record_validators(part, url, *validators)
    fetch(url, dest, storage_options={"endpoint_url": s3})
    assert dest.read_bytes() == b"\0" * CUT + payload[CUT:]
    # With a digest the same foreign prefix is caught, removed, and the next call starts afresh.
    part.write_bytes(b"\0" * CUT)
    record_validators(part, url, *validators)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch("s3://raw-data/v1/data.bin", dest, digest, force=True, storage_options={"endpoint_url": s3})
    assert not part.exists()
    fetch("s3://raw-data/v1/data.bin", dest, digest, force=True, storage_options={"endpoint_url": s3})
    assert dest.read_bytes() == payload


def test_s3_missing_object_is_named(s3, tmp_path):
    url = "s3://raw-data/v1/missing.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "missing.bin", storage_options={"endpoint_url": s3})
    assert str(info.value) == f"{url}: not found (no such file or object)"
    assert leftovers(tmp_path) == []


def test_s3_folder_is_resolved_whole(s3, tmp_path):
    folder = resolve("s3://raw-data/v1/folder", tmp_path / "cache", storage_options={"endpoint_url": s3})
    assert folder == cache_path("s3://raw-data/v1/folder", tmp_path / "cache")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "a.txt",
        "deep/b.txt",
    ]
    assert (folder / "deep" / "b.txt").read_bytes() == b"b\n"


def test_s3_unreachable_endpoint_is_named(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    options = {"endpoint_url": endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(DownloadError) as info:
        fetch("s3://raw-data/v1/data.bin", tmp_path / "data.bin", storage_options=options)
    assert str(info.value) == (
        f's3://raw-data/v1/data.bin: cannot connect (Could not connect to the endpoint URL: "{endpoint}/raw-data/v1/'
        'data.bin"); check the endpoint (AWS_ENDPOINT_URL or storage_options endpoint_url) and that the server is running'
    )
    assert leftovers(tmp_path) == []
