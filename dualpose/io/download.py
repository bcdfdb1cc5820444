"""Fetch raw data files from http(s)://, s3:// (or any fsspec URL), file:// or plain paths.

* :func:`fetch` downloads one URL to a chosen file: streamed in chunks into ``<name>.part``,
  resumed with a ranged request after an interruption, checked against a sha256, then renamed
  into place, so the final name never holds half a file. A resume is conditional: the part's
  validators (ETag / Last-Modified, kept in ``<name>.part.json``) go with the request as
  ``If-Range`` (HTTP) or are compared with the object's (S3); a changed or unvalidated source
  restarts from byte 0, so old and new bytes are never spliced. A body larger than
  ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`, or ``DUALPOSE_MAX_DOWNLOAD_BYTES``) stops the
  transfer with an error.
* :func:`resolve` gives a local path for a location: local files are used where they are (checked,
  never copied); remote ones are downloaded once into a cache folder under a stable name.
* :func:`resolve_dataset_files` does that for the ``datasets.<name>.files`` map of params.yaml.

Failures raise :class:`~dualpose.errors.DownloadError` with a message naming the URL and the cause.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from dualpose.errors import ConfigError, DownloadError
from dualpose.io.atomic import atomic_dir, file_lock
from dualpose.io.storage import LOCAL_PROTOCOLS, filesystem, split_protocol

CHUNK_SIZE = 1 << 20  # bytes per read; nothing is held in memory beyond one chunk
DEFAULT_TIMEOUT_S = 30.0  # per network operation (connect, or one read), not the whole transfer
DEFAULT_RETRIES = 2  # extra attempts after an interrupted transfer or a timeout
RETRY_BACKOFF_S = 0.5  # doubled after each failed attempt
USER_AGENT = "dualpose-download/1"
DEFAULT_MAX_BYTES = 256 << 30  # 256 GiB: larger than any supported data set file
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Transient(Exception):
    """An attempt failed in a way that another attempt (resuming) may fix."""


def max_download_bytes(value: int | None = None) -> int:
    """The size limit: ``value``, else ``DUALPOSE_MAX_DOWNLOAD_BYTES``, else :data:`DEFAULT_MAX_BYTES`."""
    if value is None:
        env = os.environ.get("DUALPOSE_MAX_DOWNLOAD_BYTES")
        if env is None:
            return DEFAULT_MAX_BYTES
        if not env.strip().isdigit() or int(env) < 1:
            raise ConfigError(f"DUALPOSE_MAX_DOWNLOAD_BYTES={env!r}: expected a positive number of bytes")
        return int(env)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_bytes {value!r}: expected a positive number of bytes")
    return value


def _too_large(url: str, limit: int, size: int | str) -> DownloadError:
    return DownloadError(f"{url}: larger than the download limit of {limit} bytes (got {size}); raise it with "
                         "DUALPOSE_MAX_DOWNLOAD_BYTES if the file is genuine; the partial download was removed")


# -- validators of a part file: what the source was when its first bytes were written ---------
def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_meta(part: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _write_meta(part: Path, url: str, etag: str | None, modified: str | None, size: int | None) -> None:
    _meta_path(part).write_text(json.dumps({"url": url, "etag": etag, "last_modified": modified, "size": size}))


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _resumable_offset(part: Path, url: str, resume: bool) -> tuple[int, dict[str, Any]]:
    """Bytes of ``part`` that may be continued: only with validators recorded for the same URL."""
    if not (resume and part.exists()):
        return 0, {}
    meta = _read_meta(part)
    if meta.get("url") != url or not (meta.get("etag") or meta.get("last_modified")):
        _discard_part(part)  # no way to tell whether the source changed: start again
        return 0, {}
    return part.stat().st_size, meta


# -- small helpers ---------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_sha256(value: str | None, where: str = "sha256") -> str | None:
    """Lower-case hex digest; accepts an optional ``sha256:`` prefix. Anything else is a ConfigError."""
    if value is None:
        return None
    text = str(value).strip().lower()
    text = text.removeprefix("sha256:")
    if not _HEX64.fullmatch(text):
        raise ConfigError(f"{where}: {value!r} is not a sha256 digest (64 hexadecimal digits)")
    return text


def is_remote(url: str | os.PathLike) -> bool:
    """True for URLs that must be downloaded (http, https, s3, ...); False for file:// and paths."""
    return split_protocol(os.fspath(url))[0] not in LOCAL_PROTOCOLS


def local_source(url: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """The local path named by a plain path or ``file://`` URL; relative paths are taken from ``base_dir``."""
    text = os.fspath(url)
    protocol, rest = split_protocol(text)
    if protocol not in LOCAL_PROTOCOLS:
        raise ValueError(f"{text}: not a local path")
    if "://" in text and len(text.split("://", 1)[0]) > 1:
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"{text}: file:// URLs must not name a host (use file:///absolute/path)")
        path = Path(urllib.request.url2pathname(parsed.path))
    else:
        path = Path(rest)
    path = path.expanduser()
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return Path(os.path.normpath(path))


def cache_path(url: str, cache_dir: str | os.PathLike) -> Path:
    """Stable cache location of a remote URL: ``cache_dir/<16 hex of sha256(url)>/<file name>``.

    The original file name is kept (readers may recognise formats by suffix); the hashed folder
    keeps different URLs with the same name apart.
    """
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlparse(url).path.rstrip("/")))
    name = name.replace("/", "_").replace("\\", "_")
    if name in ("", ".", ".."):
        name = "download"
    return Path(cache_dir) / key / name


def _host_port(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, "")
    return f"{parsed.hostname}:{port}"


def _progress_bar(total: int | None, initial: int, label: str, progress: bool) -> tqdm:
    show = progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
        disable=not show, leave=False,
    )


def _copy_stream(read: Any, out: IO[bytes], digest: Any, bar: tqdm, timeout: float | None = None,
                 room: int | None = None) -> int:
    """Copy chunks from ``read(n)`` to ``out``; a failing read is transient (the part file is kept).

    More than ``room`` bytes raise :class:`OverflowError` (the caller names the limit).
    """
    written = 0
    while True:
        try:
            chunk = read(CHUNK_SIZE)
        except TimeoutError as exc:
            raise _Transient(f"timed out after {timeout:g} s without data" if timeout else "timed out") from exc
        except (http.client.HTTPException, OSError) as exc:  # resets, timeouts, short reads
            raise _Transient(f"transfer interrupted ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:  # fsspec back ends raise their own types mid-transfer
            raise _Transient(f"transfer interrupted ({type(exc).__name__}: {exc})") from exc
        if not chunk:
            return written
        if room is not None and written + len(chunk) > room:
            raise OverflowError(written + len(chunk))
        out.write(chunk)
        digest.update(chunk)
        bar.update(len(chunk))
        written += len(chunk)


def _digest_of_part(part: Path, offset: int) -> Any:
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
                digest.update(chunk)
    return digest


# -- HTTP ------------------------------------------------------------------------------------
def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``"bytes 10-99/100"`` -> (10, 100); ``"bytes */100"`` -> (None, 100)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _http_open(url: str, offset: int, timeout: float, validator: str | None = None) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # the server sends the whole (new) file if it changed
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            raise DownloadError(
                f"{url}: connection refused by {_host_port(url)}; check the address and that the server is running"
            ) from None
        if isinstance(reason, TimeoutError):
            raise _Transient(f"timed out after {timeout:g} s connecting to {_host_port(url)}") from None
        if isinstance(reason, socket.gaierror):
            host = urllib.parse.urlparse(url).hostname
            raise DownloadError(f"{url}: cannot resolve host {host!r}; check the address and the network") from None
        raise DownloadError(f"{url}: cannot connect to {_host_port(url)}: {reason}") from None
    except TimeoutError:
        raise _Transient(f"timed out after {timeout:g} s waiting for {_host_port(url)}") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise _Transient(f"connection failed ({type(exc).__name__}: {exc})") from None


def _download_http(url: str, part: Path, *, resume: bool, timeout: float, progress: bool,
                   limit: int = DEFAULT_MAX_BYTES) -> tuple[int, str]:
    """One attempt: continue ``part`` (or start it) and return (size, sha256) once the body is complete."""
    offset, meta = _resumable_offset(part, url, resume)
    try:
        response = _http_open(url, offset, timeout, meta.get("etag") or meta.get("last_modified"))
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:  # the part is already complete, or longer than the file
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    return offset, _digest_of_part(part, offset).hexdigest()
                _discard_part(part)
                return _download_http(url, part, resume=False, timeout=timeout, progress=progress, limit=limit)
            if exc.code >= 500:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                _discard_part(part)
                raise _Transient(f"server answered a request for byte {offset} with byte {start}; restarting")
            if (meta.get("etag") and etag and etag != meta["etag"]) or (total is not None and meta.get("size")
                                                                         not in (None, total)):
                _discard_part(part)  # a server that ignores If-Range but reveals the change
                raise _Transient("the file changed on the server since the download began; restarting")
        else:  # 200: the server ignored Range, the file changed (If-Range), or there was nothing to resume
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            _write_meta(part, url, etag, modified, total)
        if total is not None and total > limit:
            _discard_part(part)
            raise _too_large(url, limit, total)
        digest = _digest_of_part(part, offset)
        label = part.name.removesuffix(".part")
        with open(part, "ab" if offset else "wb") as out, _progress_bar(total, offset, label, progress) as bar:
            try:
                size = offset + _copy_stream(response.read, out, digest, bar, timeout, room=limit - offset)
            except OverflowError as exc:
                out.close()
                _discard_part(part)
                raise _too_large(url, limit, f"more than {exc.args[0] + offset} bytes") from None
    if total is not None and size < total:
        raise _Transient(f"connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        _discard_part(part)
        raise DownloadError(f"{url}: server sent {size} bytes but announced {total}")
    return size, digest.hexdigest()


# -- fsspec (s3://, file://, ...) ------------------------------------------------------------
def _fsspec_for(url: str, storage_options: dict[str, Any] | None) -> Any:
    protocol, _ = split_protocol(url)
    try:
        return filesystem(protocol, storage_options)
    except (ImportError, ValueError) as exc:
        raise DownloadError(f"{url}: unsupported URL scheme {protocol!r} ({exc})") from None


def _remote_info(fs: Any, url: str) -> dict[str, Any]:
    try:
        return fs.info(url)
    except FileNotFoundError:
        raise DownloadError(f"{url}: not found (no such file or object)") from None
    except PermissionError as exc:
        raise DownloadError(f"{url}: access denied ({exc}); check the credentials") from None
    except Exception as exc:  # back-end specific: endpoint unreachable, bad bucket name...
        if "EndpointConnectionError" in type(exc).__name__ or isinstance(exc, ConnectionError):
            raise DownloadError(
                f"{url}: cannot connect ({exc}); check the endpoint (AWS_ENDPOINT_URL or storage_options "
                "endpoint_url) and that the server is running"
            ) from None
        raise DownloadError(f"{url}: cannot read ({type(exc).__name__}: {exc})") from None


def _download_fsspec(url: str, part: Path, *, resume: bool, fs: Any, progress: bool,
                     limit: int = DEFAULT_MAX_BYTES) -> tuple[int, str]:
    """One attempt with ranged reads: seek to the end of ``part`` and read the rest in chunks."""
    info = _remote_info(fs, url)
    if info.get("type") == "directory":
        raise DownloadError(f"{url}: is a folder, not a file (resolve() downloads folders)")
    total = info.get("size")
    etag = info.get("ETag") or info.get("etag")
    modified = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
    etag, modified = (str(etag) if etag else None), (str(modified) if modified else None)
    if total is not None and total > limit:
        _discard_part(part)
        raise _too_large(url, limit, total)
    offset, meta = _resumable_offset(part, url, resume)
    if offset and ((total is not None and offset > total) or meta.get("etag") != etag
                   or meta.get("last_modified") != modified or meta.get("size") != total):
        _discard_part(part)  # the object changed (or cannot be compared): start again
        offset = 0
    if not offset:
        _write_meta(part, url, etag, modified, total)
    digest = _digest_of_part(part, offset)
    try:
        source = fs.open(url, "rb", block_size=CHUNK_SIZE, cache_type="none")
    except FileNotFoundError:
        raise DownloadError(f"{url}: not found (no such file or object)") from None
    label = part.name.removesuffix(".part")
    with source, open(part, "ab" if offset else "wb") as out, _progress_bar(total, offset, label, progress) as bar:
        if offset:
            source.seek(offset)
        try:
            size = offset + _copy_stream(source.read, out, digest, bar, room=limit - offset)
        except OverflowError as exc:
            out.close()
            _discard_part(part)
            raise _too_large(url, limit, f"more than {exc.args[0] + offset} bytes") from None
    if total is not None and size != total:
        raise _Transient(f"read {size} of {total} bytes")
    return size, digest.hexdigest()


# -- public API ------------------------------------------------------------------------------
def fetch(
    url: str | os.PathLike,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    progress: bool = True,
    resume: bool = True,
    storage_options: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    force: bool = False,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to the file ``dest`` and return ``dest``.

    An existing ``dest`` is kept when no ``sha256`` is given or it matches (``force=True``
    downloads anyway). Bytes go to ``<dest>.part`` first; after an interruption the next attempt
    (up to ``retries`` more, or a later call) continues it with a ranged request when
    ``resume`` is true. On a checksum mismatch the part file is removed and ``dest`` is untouched.
    ``storage_options`` go to fsspec for s3:// and other fsspec URLs.
    """
    url = os.fspath(url)
    dest = Path(dest)
    expected = normalise_sha256(sha256, f"{url}: sha256")
    limit = max_download_bytes(max_bytes)
    if is_remote(url):
        source_label = url
    else:
        source = local_source(url)
        if not source.is_file():
            raise DownloadError(f"{url}: no such file ({source})")
        if source == dest.resolve():
            return _verified_local(source, expected, url)
        source_label, url = url, str(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest):  # two processes never download the same file at once
        if dest.is_file() and not force and (expected is None or sha256_file(dest) == expected):
            return dest
        part = dest.with_name(dest.name + ".part")
        protocol, _ = split_protocol(url)
        fs = None if protocol in ("http", "https") else _fsspec_for(url, storage_options)
        attempts = 1 + max(0, retries)
        for attempt in range(attempts):
            try:
                if fs is None:
                    _, actual = _download_http(url, part, resume=resume, timeout=timeout, progress=progress,
                                               limit=limit)
                else:
                    _, actual = _download_fsspec(url, part, resume=resume, fs=fs, progress=progress, limit=limit)
                break
            except _Transient as exc:
                if attempt + 1 < attempts:
                    time.sleep(RETRY_BACKOFF_S * 2**attempt)
                    continue
                if not resume:
                    _discard_part(part)
                kept = f"; run again to resume from {part}" if part.exists() else ""
                raise DownloadError(f"{source_label}: {exc} ({attempts} attempt(s)){kept}") from None
            except BaseException:
                if not resume:
                    _discard_part(part)
                raise
        if expected is not None and actual != expected:
            _discard_part(part)
            raise DownloadError(
                f"{source_label}: sha256 mismatch: expected {expected}, got {actual}; the downloaded file was removed"
            )
        os.replace(part, dest)
        _meta_path(part).unlink(missing_ok=True)
    return dest


def _verified_local(path: Path, expected: str | None, label: str) -> Path:
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise DownloadError(f"{label}: sha256 mismatch: expected {expected}, got {actual} (local file {path})")
    return path


def resolve(
    url: str | os.PathLike,
    cache_dir: str | os.PathLike,
    sha256: str | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> Path:
    """A local path holding the content of ``url``.

    Local files and folders (plain paths, relative to ``base_dir``, or file://) are returned as
    they are, after checking ``sha256`` if given. Remote files are downloaded once to
    :func:`cache_path` under ``cache_dir``; remote folders (an s3:// prefix) are copied whole.
    """
    text = os.fspath(url)
    expected = normalise_sha256(sha256, f"{text}: sha256")
    if not is_remote(text):
        path = local_source(text, base_dir)
        if path.is_dir():
            if expected is not None:
                raise ConfigError(f"{text}: is a folder ({path}); sha256 applies to files only")
            return path
        if not path.is_file():
            raise DownloadError(f"{text}: no such file or folder ({path})")
        return _verified_local(path, expected, text)
    dest = cache_path(text, cache_dir)
    if split_protocol(text)[0] not in ("http", "https"):
        fs = _fsspec_for(text, storage_options)
        if _remote_info(fs, text).get("type") == "directory":
            if expected is not None:
                raise ConfigError(f"{text}: is a folder; sha256 applies to files only")
            return _fetch_folder(fs, text, dest)
    return fetch(
        text, dest, expected, progress=progress, storage_options=storage_options, timeout=timeout, retries=retries
    )


def _fetch_folder(fs: Any, url: str, dest: Path) -> Path:
    """Copy a remote folder to ``dest`` once (built under a temporary name, then swapped in)."""
    if dest.is_dir():
        return dest
    root = split_protocol(url)[1].rstrip("/")
    with atomic_dir(dest) as tmp:
        for found in fs.find(url):
            target = tmp / posixpath.relpath(split_protocol(found)[1], root)
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open(found, "rb") as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK_SIZE)
    return dest


def resolve_dataset_files(
    files: Mapping[str, str],
    sha256: Mapping[str, str] | None,
    cache_dir: str | os.PathLike,
    *,
    base_dir: str | os.PathLike | None = None,
    progress: bool = True,
    storage_options: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> dict[str, Path]:
    """Local paths for a ``datasets.<name>.files`` map (``DatasetConfig.files`` / ``.sha256``).

    Relative plain paths are taken from ``base_dir`` (the folder of params.yaml); remote files are
    downloaded into ``cache_dir``. A ``sha256`` key that names no file is a ConfigError (a typo
    would otherwise switch verification off silently).
    """
    sha256 = dict(sha256 or {})
    unknown = sorted(set(sha256) - set(files))
    if unknown:
        raise ConfigError(f"sha256 given for {unknown}, which are not among the files {sorted(files)}")
    return {
        name: resolve(
            location, cache_dir, sha256.get(name), base_dir=base_dir, progress=progress,
            storage_options=storage_options, timeout=timeout, retries=retries,
        )
        for name, location in files.items()
    }
