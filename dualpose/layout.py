"""Where each artefact lives under the storage root (one definition for CLI, DVC and Dagster).

::

    <root>/raw/<dataset>/...                 downloaded source files (cache)
    <root>/tables/<dataset>/<part>.parquet    keypoint tables (+ manifest.json)
    <root>/clips/<dataset>.parquet            clip index
    <root>/masked/<dataset>.parquet           masked 2D inputs for pretraining
    <root>/models/pretrain/                   CRL backbone: model.safetensors, config.json, metrics.json
    <root>/models/finetune/{best,last}/       lifter weights (+ metrics.json, history)
    <root>/runs/<stage>/                      Accelerate checkpoints and TensorBoard logs
    <root>/eval/<dataset>/                    metrics.json, report.md, plots/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dualpose.errors import ConfigError
from dualpose.io.names import check_name


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def from_root(cls, root: str | Path, base: str | Path | None = None) -> "Layout":
        """The layout of a local root (relative to ``base``). Remote roots (``s3://``) are refused:
        the CLI and DVC stages work on local folders; Dagster stages S3 artefacts through its
        storage resource and hands the library a local :class:`Layout`."""
        text = str(root)
        if "://" in text:
            scheme, rest = text.split("://", 1)
            if scheme.lower() not in ("file", "local"):
                raise ConfigError(
                    f"storage.root {text!r}: the dualpose CLI and DVC stages need a local folder; an {scheme}:// root "
                    "is supported by the Dagster storage resource only (see README, 'Against S3')")
            text = rest
        if not text.strip():
            raise ConfigError("storage.root: expected a folder, got an empty string")
        root = Path(text).expanduser()
        if not root.is_absolute() and base is not None:
            root = Path(base) / root
        return cls(root)

    def raw(self, dataset: str) -> Path:
        check_name(dataset, "data set name")
        return self.root / "raw" / dataset

    def tables(self, dataset: str) -> Path:
        check_name(dataset, "data set name")
        return self.root / "tables" / dataset

    def table_files(self, dataset: str) -> list[Path]:
        folder = self.tables(dataset)
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(
                f"{folder}: no keypoint tables for data set {dataset!r}; run `dualpose prepare {dataset}` first"
            )
        return files

    def clips(self, dataset: str) -> Path:
        check_name(dataset, "data set name")
        return self.root / "clips" / f"{dataset}.parquet"

    def masked(self, dataset: str) -> Path:
        check_name(dataset, "data set name")
        return self.root / "masked" / f"{dataset}.parquet"

    def model(self, stage: str) -> Path:
        check_name(stage, "stage name")
        return self.root / "models" / stage

    def run_dir(self, stage: str) -> Path:
        check_name(stage, "stage name")
        return self.root / "runs" / stage

    def eval_dir(self, dataset: str) -> Path:
        check_name(dataset, "data set name")
        return self.root / "eval" / dataset
