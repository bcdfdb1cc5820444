"""Class 3: downloads never splice two versions of a file and never run without bound."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from dualpose.errors import ConfigError, DownloadError
from dualpose.io import download
from dualpose.io.download import fetch
from tests.adversarial.conftest import assert_refused, assert_unchanged, invoke
from tests.servers import create_bucket, moto_s3

OLD = bytes(range(256)) * 4096  # 1 MiB
NEW = bytes(reversed(range(256))) * 4096


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)


class _Site:
    """Files served from memory; behaviours a test switches on."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: int | None = None  # cut the next body after this many bytes
        self.honour_if_range = True
        self.send_etag = True
        self.announce: int | None = None  # a false Content-Length
        self.requests: list[dict] = []


@contextlib.contextmanager
def serve(site: _Site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            name = self.path.lstrip("/")
            self.server_site.requests.append({"path": name, "range": self.headers.get("Range"),
                                              "if_range": self.headers.get("If-Range")})
            if name == "endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):
                    while True:
                        self.wfile.write(b"x" * 65536)
                return
            body = self.server_site.files.get(name)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            start, status = 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if_range = self.headers.get("If-Range")
            if match and (if_range in (None, etag) or not self.server_site.honour_if_range):
                start, status = int(match.group(1)), 206
            chunk = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(self.server_site.announce or len(chunk)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if self.server_site.send_etag:
                self.send_header("ETag", etag)
            self.send_header("Connection", "close")
            self.end_headers()
            cut = self.server_site.drop_after
            self.server_site.drop_after = None
            with contextlib.suppress(OSError):
                self.wfile.write(chunk if cut is None else chunk[:cut])
            self.close_connection = True

    Handler.server_site = site
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("limit", [1, 1000, 1 << 20])
def test_endless_body_stops_at_the_limit(tmp_path, monkeypatch, limit):
    monkeypatch.setenv("DUALPOSE_MAX_DOWNLOAD_BYTES", str(limit))
    site = _Site()
    with serve(site) as base, pytest.raises(DownloadError, match=f"{base}/endless: larger than the download limit "
                                                                 f"of {limit} bytes"):
        fetch(f"{base}/endless", tmp_path / "out.bin", retries=0)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("announced", [10**12, 2 * len(OLD)])
def test_announced_size_over_the_limit_is_refused_before_reading(tmp_path, announced):
    site = _Site()
    site.files["a.bin"] = OLD
    site.announce = announced
    with serve(site) as base, pytest.raises(DownloadError, match="larger than the download limit"):
        fetch(f"{base}/a.bin", tmp_path / "a.bin", max_bytes=len(OLD) + 1, retries=0)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("slack, ok", [(0, True), (-1, False)])
def test_limit_is_exact(tmp_path, slack, ok):
    site = _Site()
    site.files["a.bin"] = OLD
    with serve(site) as base:
        if ok:
            assert fetch(f"{base}/a.bin", tmp_path / "a.bin", max_bytes=len(OLD) + slack).read_bytes() == OLD
        else:
            with pytest.raises(DownloadError, match="download limit"):
                fetch(f"{base}/a.bin", tmp_path / "a.bin", max_bytes=len(OLD) + slack, retries=0)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e9", ""])
def test_bad_limit_setting(tmp_path, monkeypatch, value):
    monkeypatch.setenv("DUALPOSE_MAX_DOWNLOAD_BYTES", value)
    with pytest.raises(ConfigError, match="DUALPOSE_MAX_DOWNLOAD_BYTES"):
        fetch(tmp_path / "nothing", tmp_path / "x")


def _interrupted(site: _Site, base: str, dest: Path) -> Path:
    site.drop_after = 300_000
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(f"{base}/a.bin", dest, retries=0)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == 300_000
    return part


@pytest.mark.parametrize("server", ["honours If-Range", "ignores If-Range, new ETag"])
def test_file_changed_between_attempts_is_never_spliced(tmp_path, server):
    site = _Site()
    site.files["a.bin"] = OLD
    site.honour_if_range = server == "honours If-Range"
    dest = tmp_path / "a.bin"
    with serve(site) as base:
        _interrupted(site, base, dest)
        site.files["a.bin"] = NEW  # the server's file changes before the resume
        fetch(f"{base}/a.bin", dest, hashlib.sha256(NEW).hexdigest())
    assert dest.read_bytes() == NEW
    assert site.requests[1]["if_range"] is not None  # the resume was conditional
    assert _leftovers(tmp_path) == ["a.bin"]


def test_unchanged_file_resumes_from_the_part(tmp_path):
    site = _Site()
    site.files["a.bin"] = OLD
    dest = tmp_path / "a.bin"
    with serve(site) as base:
        _interrupted(site, base, dest)
        fetch(f"{base}/a.bin", dest, hashlib.sha256(OLD).hexdigest())
    assert dest.read_bytes() == OLD
    assert site.requests[-1]["range"] == "bytes=300000-"


@pytest.mark.parametrize("meta", ["none", "other url", "no validators", "garbage"])
def test_part_of_unknown_origin_restarts(tmp_path, meta):
    site = _Site()
    site.files["a.bin"] = OLD
    dest = tmp_path / "a.bin"
    part = tmp_path / "a.bin.part"
    part.write_bytes(NEW[:300_000])
    with serve(site) as base:
        records = {"other url": {"url": f"{base}/b.bin", "etag": '"x"'}, "no validators": {"url": f"{base}/a.bin"}}
        if meta in records:
            (tmp_path / "a.bin.part.json").write_text(json.dumps(records[meta]))
        elif meta == "garbage":
            (tmp_path / "a.bin.part.json").write_text("{{{")
        fetch(f"{base}/a.bin", dest)
    assert dest.read_bytes() == OLD
    assert site.requests[0]["range"] is None


def test_changed_file_with_the_old_checksum_is_never_renamed_into_place(tmp_path):
    site = _Site()
    site.files["a.bin"] = OLD
    site.send_etag = False  # no validators: the resume must restart, then the checksum catches the change
    dest = tmp_path / "a.bin"
    with serve(site) as base:
        _interrupted(site, base, dest)
        site.files["a.bin"] = NEW
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            fetch(f"{base}/a.bin", dest, hashlib.sha256(OLD).hexdigest())
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_s3_object_changed_between_attempts(tmp_path):
    with moto_s3(set_endpoint_env=False) as endpoint:
        create_bucket(endpoint, "raw")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.put_object(Bucket="raw", Key="a.bin", Body=OLD)
        url, options = "s3://raw/a.bin", {"endpoint_url": endpoint}
        info = download._fsspec_for(url, options).info(url)
        part = tmp_path / "a.bin.part"
        part.write_bytes(OLD[:300_000])
        download._write_meta(part, url, str(info.get("ETag")), str(info.get("LastModified")), info["size"])
        client.put_object(Bucket="raw", Key="a.bin", Body=NEW)  # overwritten before the resume
        fetch(url, tmp_path / "a.bin", hashlib.sha256(NEW).hexdigest(), storage_options=options)
    assert (tmp_path / "a.bin").read_bytes() == NEW


def test_cli_prepare_with_an_endless_download(ws, monkeypatch):
    monkeypatch.setenv("DUALPOSE_MAX_DOWNLOAD_BYTES", "100000")
    with serve(_Site()) as base:
        params = ws.params_dict()
        params["datasets"]["wild"] = {"adapter": "keypoints_json", "files": {"keypoints": f"{base}/endless"},
                                      "options": {"width": 640, "height": 480, "fps": 30}}
        ws.write_params(params)
        before = ws.snapshot()
        assert_refused(invoke("prepare", "wild", "-p", ws.params), f"{base}/endless", "download limit")
    assert_unchanged(ws, before, allowed=("artifacts/raw",))
    assert not [p for p in (ws.root / "raw").rglob("*") if p.is_file()]  # no partial file kept
