"""Prepare one data set: resolve (download) its files, run its adapter, write its tables atomically.

All parts of a data set are written into a temporary folder that replaces ``tables/<dataset>``
only when every part succeeded, so a failure leaves the previous tables (or nothing) behind.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from dualpose.config import DatasetConfig, Params
from dualpose.data.adapters import get_adapter
from dualpose.data.schema import to_arrow, write_keypoint_table
from dualpose.errors import ConfigError
from dualpose.io.atomic import atomic_dir
from dualpose.layout import Layout
from dualpose.skeleton import get_skeleton

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass
class PreparedDataset:
    name: str
    folder: Path
    parts: dict[str, int]  # part name -> rows
    splits: dict[str, int]  # split -> rows
    videos: int
    seconds: float

    @property
    def rows(self) -> int:
        return sum(self.parts.values())

    def as_dict(self) -> dict:
        return {"dataset": self.name, "folder": str(self.folder), "parts": self.parts, "splits": self.splits,
                "rows": self.rows, "videos": self.videos, "seconds": round(self.seconds, 3)}


def adapter_options(name: str, cfg: DatasetConfig):
    adapter = get_adapter(cfg.adapter)
    try:
        return adapter, adapter.Options.model_validate(cfg.options)
    except ValidationError as exc:
        lines = [f"  datasets.{name}.options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"data set {name!r} (adapter {cfg.adapter!r}): invalid options:\n" + "\n".join(lines)) from None


def resolve_files(name: str, cfg: DatasetConfig, layout: Layout, base_dir: Path) -> dict[str, Path]:
    """Local paths of the data set's files, downloading remote ones into ``raw/<dataset>``."""
    from dualpose.io.download import resolve_dataset_files

    missing = [k for k in get_adapter(cfg.adapter).REQUIRED_FILES if k not in cfg.files]
    if missing:
        raise ConfigError(
            f"data set {name!r} (adapter {cfg.adapter!r}) needs datasets.{name}.files.{missing[0]}: point it at a "
            "local path or a URL (http(s)://, s3://, file://) of a copy you are entitled to use"
        )
    return resolve_dataset_files(cfg.files, cfg.sha256, layout.raw(name), base_dir=base_dir)


SOURCES = "sources"


def link_sources(params: Params, name: str, layout: Layout, base_dir: Path | str = ".") -> Path:
    """Resolve (download) a data set's raw files and link them from ``raw/<dataset>/sources/<key>``.

    DVC cannot list the files of a ``files`` map in ``dvc.yaml``; the prepare stage depends on
    this folder instead, and DVC hashes through the links, so ``dvc status`` sees a changed raw
    file. ``files.json`` records the configured locations (the folder is never empty).
    """
    if name not in params.datasets:
        raise ConfigError(f"unknown data set {name!r}; params.yaml defines {sorted(params.datasets)}")
    cfg = params.datasets[name]
    files = resolve_files(name, cfg, layout, Path(base_dir)) if cfg.files or get_adapter(cfg.adapter).REQUIRED_FILES \
        else {}
    target = layout.raw(name) / SOURCES
    with atomic_dir(target) as tmp:
        (tmp / "files.json").write_text(json.dumps({"adapter": cfg.adapter, "files": dict(sorted(cfg.files.items()))},
                                                   indent=2))
        for key, path in files.items():
            (tmp / key).symlink_to(Path(path).resolve())
    return target


def prepare_dataset(params: Params, name: str, layout: Layout, base_dir: Path | str = ".") -> PreparedDataset:
    if name not in params.datasets:
        raise ConfigError(f"unknown data set {name!r}; params.yaml defines {sorted(params.datasets)}")
    cfg = params.datasets[name]
    skeleton = get_skeleton(params.skeleton)
    adapter, options = adapter_options(name, cfg)
    files = resolve_files(name, cfg, layout, Path(base_dir))
    start = time.perf_counter()
    parts: dict[str, int] = {}
    splits: dict[str, int] = {}
    videos = 0
    notes: dict = {}
    with atomic_dir(layout.tables(name)) as tmp:
        for part in adapter.convert(files, options, name, skeleton):
            if part.name in parts:
                raise ValueError(f"adapter {cfg.adapter!r} yielded part {part.name!r} twice")
            table = to_arrow(part.frames, skeleton, source=f"{name}/{part.name}")
            write_keypoint_table(table, tmp / f"{part.name}.parquet", skeleton)
            parts[part.name] = table.num_rows
            notes.update(part.notes)
            split_col = table.column("split").combine_chunks()
            for split, count in zip(*_value_counts(split_col)):
                splits[split] = splits.get(split, 0) + count
            videos += len(table.column("video_id").combine_chunks().dictionary)
            log.info("%s/%s: %d rows", name, part.name, table.num_rows)
            del table, part
        if not parts:
            raise ValueError(f"adapter {cfg.adapter!r} produced no tables for data set {name!r}")
        result = PreparedDataset(name, layout.tables(name), parts, splits, videos, time.perf_counter() - start)
        facts = {k: v for k, v in result.as_dict().items() if k not in ("folder", "seconds")}
        (tmp / MANIFEST).write_text(json.dumps({**facts, "adapter": cfg.adapter, "skeleton": skeleton.name,
                                                "notes": notes}, indent=2))  # reproducible: no time, no path
    return result


def _value_counts(dictionary_array) -> tuple[list[str], list[int]]:
    import numpy as np

    codes = dictionary_array.indices.to_numpy(zero_copy_only=False)
    counts = np.bincount(codes, minlength=len(dictionary_array.dictionary))
    names = dictionary_array.dictionary.to_pylist()
    return [n for n, c in zip(names, counts) if c], [int(c) for c in counts if c]
