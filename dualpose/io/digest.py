"""Content digests of files and folders (data versions, lineage)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def tree_digest(paths: Iterable[Path | str], root: Path | str | None = None) -> str:
    """sha256 (16 hex) over the names (relative to ``root``, else base names) and bytes of files;
    folders are walked in sorted order.

    It changes exactly when a file's content or name changes, not with timestamps or the folder
    the files were staged in.
    """
    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for item in paths:
        item = Path(item)
        found = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item] if item.is_file() else []
        files += [(f.relative_to(root).as_posix() if root is not None else f.name, f) for f in found]
    for label, f in sorted(files):
        digest.update(label.encode() + b"\0")
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]
