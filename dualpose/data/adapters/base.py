"""What every dataset adapter provides.

An adapter turns a data set's source files into keypoint tables (see :mod:`dualpose.data.schema`).
It is a module exposing:

- ``Options``: a pydantic model of its options (``datasets.<name>.options`` in params.yaml);
  unknown keys are errors.
- ``REQUIRED_FILES``: logical names of the files it needs (keys of ``datasets.<name>.files``);
  adapters that need no files (synthetic) or read a whole folder say so in their docstring.
- ``convert(files, options, dataset, skeleton) -> Iterator[TablePart]``: yields one part per
  output table. Parts are written as ``<tables>/<dataset>/<part.name>.parquet``. The adapter never
  writes files itself and never imports Dagster or DVC.

Bad input raises :class:`dualpose.errors.DataFormatError` naming the file, the field and what
was expected; since writing happens only after conversion succeeds, nothing is half-written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from dualpose.data.schema import FrameColumns
from dualpose.skeleton import Skeleton


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class TablePart:
    name: str  # file stem, e.g. "train", "test", "train-S1"
    frames: FrameColumns
    notes: dict = field(default_factory=dict)  # JSON-able facts for the manifest (e.g. rejected takes)


class AdapterModule(Protocol):
    Options: type[AdapterOptions]
    REQUIRED_FILES: tuple[str, ...]

    def convert(self, files: dict[str, Path], options: AdapterOptions, dataset: str,
                skeleton: Skeleton) -> Iterator[TablePart]: ...
