"""Real local servers for tests: an HTTP file server and a moto S3 server, both on 127.0.0.1.

Plain context managers (no pytest fixtures), for any test to import::

    from tests.servers import serve_directory, moto_s3, create_bucket

    with serve_directory(tmp_path) as base_url:          # "http://127.0.0.1:PORT"
        fetch(f"{base_url}/file.bin", dest)

    with moto_s3() as endpoint_url:                      # AWS_* variables set, restored after
        create_bucket(endpoint_url, "artefacts")

:func:`http_file_server` yields a :class:`FileServer` with a log of the requests it saw and
failure modes: ignore Range headers, cut the first responses short, or stall before answering.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A port with no listener, for testing refused connections."""
    return free_port()


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    range: str | None  # the Range header as received
    status: int
    body_bytes: int  # bytes of the body actually sent


@dataclass
class FileServer:
    """A running :func:`http_file_server`: its base URL and what it has been asked."""

    url: str
    root: Path
    requests: list[RequestRecord] = field(default_factory=list)

    def url_for(self, name: str) -> str:
        return f"{self.url}/{urllib.parse.quote(name)}"

    def gets(self, name: str | None = None) -> list[RequestRecord]:
        """The GET requests seen (for one file name when given), in order."""
        wanted = None if name is None else "/" + urllib.parse.quote(name)
        return [r for r in self.requests if r.method == "GET" and (wanted is None or r.path == wanted)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up the test's exit

    def __init__(self, root: Path, record: FileServer, *, ignore_range: bool, drop_after_bytes: int | None,
                 drop_times: int, stall_seconds: float):
        super().__init__((HOST, 0), _Handler)
        self.root = root
        self.record = record
        self.ignore_range = ignore_range
        self.drop_after_bytes = drop_after_bytes
        self.drops_left = drop_times if drop_after_bytes is not None else 0
        self.stall_seconds = stall_seconds
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (timeout test, dropped transfer) is expected; anything else is reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def take_drop(self) -> bool:
        with self.lock:
            if self.drops_left > 0:
                self.drops_left -= 1
                return True
            return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _log(self, status: int, body_bytes: int = 0) -> None:
        self.server.record.requests.append(
            RequestRecord(self.command, urllib.parse.urlsplit(self.path).path, self.headers.get("Range"), status,
                          body_bytes)
        )

    def _empty(self, status: int, extra: dict[str, str] | None = None) -> None:
        body = b"" if status == 416 else f"{status}\n".encode()
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
        self.close_connection = True
        self._log(status)

    def _serve(self, send_body: bool) -> None:
        srv = self.server
        if srv.stall_seconds:
            time.sleep(srv.stall_seconds)
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        file = (srv.root / rel).resolve()
        if not file.is_relative_to(srv.root) or not file.is_file():
            self._empty(404)
            return
        stat = file.stat()
        size = stat.st_size
        etag, modified = validators_of(file)
        start, end, status = 0, size - 1, 200
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (etag, modified):
            requested = None  # RFC 9110: the representation changed, send it whole
        if requested and not srv.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested.strip())
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                if start >= size:
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "none" if srv.ignore_range else "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if not send_body:
            self._log(status)
            return
        drop = srv.drop_after_bytes is not None and srv.take_drop()
        limit = min(length, srv.drop_after_bytes) if drop else length
        sent = 0
        with open(file, "rb") as handle:
            handle.seek(start)
            while sent < limit:
                chunk = handle.read(min(64 * 1024, limit - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        self.wfile.flush()
        self._log(status, sent)
        if drop:  # cut the connection mid-body, as a flaky network would
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def validators_of(file: Path) -> tuple[str, str]:
    """The (ETag, Last-Modified) the file server sends for ``file``: they change whenever it does."""
    stat = Path(file).stat()
    return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"', email.utils.formatdate(stat.st_mtime, usegmt=True)


@contextlib.contextmanager
def http_file_server(
    root: str | os.PathLike,
    *,
    ignore_range: bool = False,
    drop_after_bytes: int | None = None,
    drop_times: int = 1,
    stall_seconds: float = 0.0,
) -> Iterator[FileServer]:
    """Serve the files under ``root`` on 127.0.0.1 (GET and HEAD, with Range support).

    Failure modes: ``ignore_range`` answers every request with the whole file (200);
    ``drop_after_bytes`` closes the connection after that many body bytes, for the first
    ``drop_times`` GET requests; ``stall_seconds`` waits before answering.
    """
    root = Path(root).resolve()
    record = FileServer(url="", root=root)
    server = _Server(root, record, ignore_range=ignore_range, drop_after_bytes=drop_after_bytes,
                     drop_times=drop_times, stall_seconds=stall_seconds)
    record.url = f"http://{HOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike, **behaviour: object) -> Iterator[str]:
    """Serve ``root`` over HTTP; yields the base URL (``http://127.0.0.1:PORT``, no trailing slash)."""
    with http_file_server(root, **behaviour) as server:  # type: ignore[arg-type]
        yield server.url


def _clear_s3fs_cache() -> None:
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def moto_s3(*, set_endpoint_env: bool = True) -> Iterator[str]:
    """Run a fresh moto S3 server on 127.0.0.1; yields its endpoint URL.

    While it runs: fake credentials and region in the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), AWS_ENDPOINT_URL pointing at it unless
    ``set_endpoint_env`` is false, no AWS profile or session token, and s3fs's instance cache
    cleared (before and after), so no client talks to an earlier server. The environment is
    restored on exit.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    endpoint = f"http://{HOST}:{server.get_host_and_port()[1]}"
    settings: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint if set_endpoint_env else None,
        "AWS_ENDPOINT_URL_S3": None,
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    saved = {key: os.environ.get(key) for key in settings}
    werkzeug_log = logging.getLogger("werkzeug")  # moto's server logs every request otherwise
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    try:
        _set_environment(settings)
        _clear_s3fs_cache()
        yield endpoint
    finally:
        _clear_s3fs_cache()
        _set_environment(saved)
        server.stop()
        werkzeug_log.setLevel(saved_level)


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def create_bucket(endpoint_url: str, name: str) -> None:
    """Make a bucket on a (moto) S3 endpoint; names need 3 or more characters."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(Bucket=name)
