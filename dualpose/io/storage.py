"""Where artefacts live: a local folder (default) or ``s3://bucket/prefix`` through fsspec.

:class:`Storage` is the one place that turns a relative artefact name (``"tables/cmu/train.parquet"``)
into a location and moves bytes there. Writes never expose half a file: locally they go to a
temporary name that is renamed into place; on S3 the object is uploaded from a local temporary file
and becomes visible only when the upload completes.

S3 endpoints come from ``storage_options["endpoint_url"]`` or, failing that, the ``AWS_ENDPOINT_URL``
environment variable (credentials from the usual AWS variables), so a local moto or MinIO server
works without code changes.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

from dualpose.io.atomic import atomic_dir, atomic_path

LOCAL_PROTOCOLS = ("file", "local")


def split_protocol(url: str) -> tuple[str, str]:
    """``"s3://b/k"`` -> ``("s3", "b/k")``; a plain path (or ``C:\\x``) -> ``("file", path)``."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        if len(protocol) > 1:
            return protocol.lower(), rest
    return "file", url


def filesystem_options(protocol: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``protocol``: a copy of ``storage_options`` plus the S3 endpoint from the environment."""
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        client_kwargs = options.get("client_kwargs") or {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
            options["endpoint_url"] = endpoint
    return options


def filesystem(protocol: str, storage_options: dict[str, Any] | None = None) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for ``protocol`` (``"file"``, ``"s3"``, ...)."""
    return fsspec.filesystem(protocol, **filesystem_options(protocol, storage_options))


def _check_parts(parts: tuple[str, ...]) -> list[str]:
    """Split relative artefact names on ``/`` and refuse anything that would leave the root."""
    pieces: list[str] = []
    for part in parts:
        text = str(part).replace("\\", "/")
        if text.startswith("/") or "://" in text:
            raise ValueError(f"storage path part {part!r} must be relative to the storage root")
        for piece in text.split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                raise ValueError(f"storage path part {part!r} must not contain '..'")
            pieces.append(piece)
    return pieces


class Storage:
    """Artefacts under one root: a local folder or a remote fsspec URL such as ``s3://bucket/prefix``.

    Relative names use ``/`` on every platform. A relative local root is resolved against
    ``base_dir`` (default: the current directory) once, when the object is made.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        storage_options: dict[str, Any] | None = None,
        *,
        base_dir: str | os.PathLike | None = None,
    ):
        protocol, rest = split_protocol(os.fspath(root))
        self.protocol = "file" if protocol in LOCAL_PROTOCOLS else protocol
        self.storage_options = dict(storage_options or {})
        if self.is_local:
            local = Path(rest).expanduser()
            if not local.is_absolute():
                local = Path(base_dir or os.getcwd()) / local
            self._local_root = Path(os.path.normpath(local))
            self.root = str(self._local_root)
            self._fs_root = self._local_root.as_posix()
        else:
            self._local_root = None
            rest = rest.rstrip("/")
            if not rest:
                raise ValueError(f"storage root {root!r} names no bucket")
            self.root = f"{self.protocol}://{rest}"
            self._fs_root = rest
        self._fs: fsspec.AbstractFileSystem | None = None

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem behind this storage (made on first use)."""
        if self._fs is None:
            self._fs = filesystem(self.protocol, self.storage_options)
        return self._fs

    # -- names -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Full location of a relative name: an absolute local path or ``s3://bucket/prefix/...``."""
        pieces = _check_parts(parts)
        if self.is_local:
            return str(self._local_root.joinpath(*pieces))
        return "/".join([self.root, *pieces])

    def local_path(self, *parts: str) -> Path:
        """The local :class:`~pathlib.Path` of a relative name (local storage only)."""
        if not self.is_local:
            raise ValueError(f"{self.root} is remote storage: it has no local path; use get()/open()")
        return self._local_root.joinpath(*_check_parts(parts))

    def _fs_path(self, *parts: str) -> str:
        return posixpath.join(self._fs_root, *_check_parts(parts)) if parts else self._fs_root

    def relative(self, fs_path: str) -> str:
        """Turn a path returned by :attr:`fs` (``ls``/``glob``) back into a name relative to the root."""
        _, rest = split_protocol(fs_path)
        rest = rest.replace("\\", "/") if self.is_local else rest
        prefix = self._fs_root.rstrip("/") + "/"
        if rest.startswith(prefix):
            return rest[len(prefix):]
        if rest.rstrip("/") == self._fs_root.rstrip("/"):
            return ""
        raise ValueError(f"{fs_path!r} is not under storage root {self.root}")

    def _refresh(self, fs_path: str) -> None:
        # Remote listings are cached per filesystem instance; another process may have written since.
        if not self.is_local:
            self.fs.invalidate_cache(fs_path)

    # -- queries -----------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        path = self._fs_path(*parts)
        self._refresh(path)
        return bool(self.fs.exists(path))

    def isdir(self, *parts: str) -> bool:
        path = self._fs_path(*parts)
        self._refresh(path)
        return bool(self.fs.isdir(path))

    def ls(self, *parts: str) -> list[str]:
        """Names (relative to the root) directly inside a folder, sorted; empty if it does not exist."""
        path = self._fs_path(*parts)
        self._refresh(path)
        if not self.fs.isdir(path):
            return []
        return sorted(self.relative(p) for p in self.fs.ls(path, detail=False) if p.rstrip("/") != path)

    def find(self, *parts: str) -> list[str]:
        """All files (relative to the root) below a folder, recursively, sorted."""
        path = self._fs_path(*parts)
        self._refresh(path)
        return sorted(self.relative(p) for p in self.fs.find(path))

    def glob(self, pattern: str) -> list[str]:
        """Names (relative to the root) matching a glob such as ``"tables/*/*.parquet"``, sorted."""
        _check_parts((pattern,))
        self._refresh(self._fs_root)
        return sorted(self.relative(p) for p in self.fs.glob(posixpath.join(self._fs_root, pattern)))

    # -- reading and writing -----------------------------------------------------------------
    @contextlib.contextmanager
    def open(self, name: str, mode: str = "rb", **kwargs: Any) -> Iterator[IO]:
        """Open a relative name. Writes (``"w"``/``"wb"``) appear whole at close, or not at all on error."""
        if any(c in mode for c in "a+x"):
            raise ValueError(f"mode {mode!r}: Storage writes whole files; use 'w' or 'wb'")
        if "w" not in mode:
            path = self._fs_path(name)
            self._refresh(path)
            with self.fs.open(path, mode, **kwargs) as handle:
                yield handle
            return
        if self.is_local:
            with atomic_path(self.local_path(name)) as tmp, open(tmp, mode, **kwargs) as handle:
                yield handle
            return
        with _local_temporary(name) as tmp:
            with open(tmp, mode, **kwargs) as handle:
                yield handle
            self.fs.put_file(str(tmp), self._fs_path(name))

    def read_bytes(self, name: str) -> bytes:
        with self.open(name, "rb") as handle:
            return handle.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open(name, "wb") as handle:
            handle.write(data)

    def read_text(self, name: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(name).decode(encoding)

    def write_text(self, name: str, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(name, text.encode(encoding))

    def put(self, local: str | os.PathLike, name: str) -> str:
        """Copy a local file to a relative name; returns its full location."""
        local = Path(local)
        if not local.is_file():
            raise FileNotFoundError(f"{local}: no such file to store")
        if self.is_local:
            with atomic_path(self.local_path(name)) as tmp:
                shutil.copyfile(local, tmp)
        else:
            self.fs.put_file(str(local), self._fs_path(name))
        return self.path(name)

    def get(self, name: str, local: str | os.PathLike) -> Path:
        """Copy a stored file to a local path (written atomically); returns that path."""
        local = Path(local)
        source = self._fs_path(name)
        self._refresh(source)
        if not self.fs.isfile(source):
            raise FileNotFoundError(f"{self.path(name)}: no such stored file")
        with atomic_path(local) as tmp:
            self.fs.get_file(source, str(tmp))
        return local

    def put_dir(self, local_dir: str | os.PathLike, name: str) -> str:
        """Copy a local folder to a relative name, replacing what was there.

        Locally the folder is swapped in whole. On S3 each object appears whole, one after
        another, so readers should wait for a marker (e.g. a manifest written last).
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise NotADirectoryError(f"{local_dir}: no such folder to store")
        if self.is_local:
            with atomic_dir(self.local_path(name)) as tmp:
                shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
            return self.path(name)
        target = self._fs_path(name)
        self._refresh(target)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for file in files:
            self.fs.put_file(str(file), posixpath.join(target, file.relative_to(local_dir).as_posix()))
        return self.path(name)

    def get_dir(self, name: str, local_dir: str | os.PathLike) -> Path:
        """Copy a stored folder to a local folder (swapped in whole); returns that folder."""
        local_dir = Path(local_dir)
        source = self._fs_path(name)
        self._refresh(source)
        if not self.fs.isdir(source):
            raise FileNotFoundError(f"{self.path(name)}: no such stored folder")
        with atomic_dir(local_dir) as tmp:
            for found in self.fs.find(source):
                dest = tmp / posixpath.relpath(split_protocol(found)[1], source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(found, str(dest))
        return local_dir

    def rm(self, name: str, recursive: bool = False) -> None:
        """Remove a stored file (or folder with ``recursive=True``); missing names are ignored."""
        path = self._fs_path(name)
        self._refresh(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)


@contextlib.contextmanager
def _local_temporary(name: str) -> Iterator[Path]:
    """A fresh local file path (removed afterwards) to spool an upload."""
    folder = Path(tempfile.mkdtemp(prefix="dualpose-upload-"))
    try:
        yield folder / (posixpath.basename(name) or "object")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
