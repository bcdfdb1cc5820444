"""Plain helpers for what a materialisation shows: content hashes, markdown tables, embedded images.

Used by the assets (in the Dagster process) and by :mod:`pipelines.pipes_entry` (in the
training subprocess), so nothing here imports Dagster.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def content_hash(paths: Iterable[Path | str], root: Path | str | None = None) -> str:
    """sha256 over the names (relative to ``root``) and bytes of files; folders are walked.

    The result is the data version of an artefact: it changes exactly when a file's content or
    name changes, and not with timestamps or the folder it was staged in.
    """
    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for item in paths:
        item = Path(item)
        found = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item] if item.is_file() else []
        for f in found:
            label = f.relative_to(root).as_posix() if root is not None else f.name
            files.append((label, f))
    for label, f in sorted(files):
        digest.update(label.encode() + b"\0")
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 1) -> str:
    """A markdown table; floats get ``digits`` decimals, non-finite numbers show as a dash."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}" if math.isfinite(v) else "—"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def counts_table(counts: Mapping[str, Any], key: str = "", value: str = "count") -> str:
    return md_table([key, value], [(k, v) for k, v in counts.items()])


def embedded_png(path: Path | str, caption: str) -> str:
    """Markdown showing a PNG inline (base64 data URI), so the Dagster UI displays it without file access."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{caption}](data:image/png;base64,{data})"


def finite_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
