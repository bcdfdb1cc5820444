"""Plain helpers for what a materialisation shows: content hashes, markdown tables, embedded images.

Used by the assets (in the Dagster process) and by :mod:`pipelines.pipes_entry` (in the
training subprocess), so nothing here imports Dagster.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dualpose.io.digest import tree_digest as content_hash  # noqa: F401  (the data version of an artefact)

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
