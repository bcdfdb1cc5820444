"""Give the library local paths whatever the storage root is.

The library works on a :class:`~dualpose.layout.Layout` of local paths. With a local root an
asset runs the library on the root itself. With a remote root (``s3://bucket/prefix``) an asset
opens a :meth:`ArtefactStore.stage`: its inputs are downloaded into a fresh local folder, the
library runs there, and its outputs are uploaded back when (and only when) the step succeeded;
the folder is removed afterwards. Artefact names are the Layout's paths relative to the root
(``tables/synthetic``, ``clips/synthetic.parquet``), so one definition of where things live
serves the CLI, DVC and Dagster. Nothing here imports Dagster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dualpose.io.storage import Storage
from dualpose.layout import Layout

NAMES = Layout(Path())  # the layout relative to the root: NAMES.tables("x") == Path("tables/x")


def name_of(path: Path) -> str:
    """A storage name (``/``-separated) from a path of :data:`NAMES`."""
    return Path(path).as_posix()


@dataclass(frozen=True)
class FileSignature:
    """What identifies one stored file's content cheaply (no download): size and version stamp."""

    name: str
    size: int
    stamp: str  # local mtime in ns, or the S3 ETag / LastModified


@dataclass(frozen=True)
class ArtefactStore:
    """One storage root (local folder or ``s3://``) and where remote artefacts are staged locally."""

    storage: Storage
    work_dir: Path | None = None  # parent of staging folders (remote roots); None: the system temp

    @property
    def is_local(self) -> bool:
        return self.storage.is_local

    @property
    def root(self) -> str:
        return self.storage.root

    def location(self, path: Path | str) -> str:
        """Full location (absolute path or ``s3://...``) of a name from :data:`NAMES`."""
        return self.storage.path(name_of(Path(path)))

    @contextlib.contextmanager
    def stage(self, inputs: Sequence[Path | str] = (), outputs: Sequence[Path | str] = ()) -> Iterator[Layout]:
        """A local :class:`Layout` holding ``inputs``; ``outputs`` are stored when the block succeeds.

        Local roots: the root's own layout (nothing is copied). Inputs that do not exist are
        skipped (the library reports what it misses); so are outputs the step did not write.
        """
        if self.is_local:
            yield Layout(Path(self.storage.root))
            return
        if self.work_dir is not None:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="dualpose-stage-", dir=self.work_dir))
        try:
            for item in inputs:
                self.download(name_of(Path(item)), folder)
            yield Layout(folder)
            for item in outputs:
                self.upload(folder, name_of(Path(item)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def download(self, name: str, folder: Path) -> bool:
        """Copy a stored file or folder to ``folder / name``; False when nothing is stored there."""
        target = folder / name
        if self.storage.isdir(name):
            self.storage.get_dir(name, target)
            return True
        if self.storage.exists(name):
            self.storage.get(name, target)
            return True
        return False

    def upload(self, folder: Path, name: str) -> bool:
        """Store ``folder / name`` (file or folder) under ``name``; False when the step wrote nothing."""
        source = folder / name
        if source.is_dir():
            self.storage.put_dir(source, name)
            return True
        if source.is_file():
            self.storage.put(source, name)
            return True
        return False

    def signatures(self, prefix: Path | str) -> list[FileSignature]:
        """Every stored file below ``prefix`` with its size and version stamp, sorted by name."""
        name = name_of(Path(prefix))
        if not self.storage.exists(name):
            return []
        fs = self.storage.fs
        location = self.storage.path(name)
        if not self.is_local:
            fs.invalidate_cache()
        found = fs.find(location, detail=True)
        out = []
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
            if isinstance(stamp, float):
                stamp = f"{int(stamp * 1e9)}"
            out.append(FileSignature(self.storage.relative(path), int(info.get("size") or 0), str(stamp)))
        return sorted(out, key=lambda s: s.name)


def listing_fingerprint(signatures: Sequence[FileSignature]) -> str:
    """A short hash of a folder listing (names, sizes, stamps); the empty string for no files."""
    if not signatures:
        return ""
    text = json.dumps([(s.name, s.size, s.stamp) for s in signatures])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
