"""Data assets, one partition per data set: raw files -> keypoint tables -> clip index -> masked inputs.

Why partitions and not run config: every data set named (and enabled) in params.yaml becomes a
partition, so the UI shows per data set what is materialised, stale or failing, a run or backfill
picks data sets by ticking partitions, and the sensor can request exactly one. The partitions
come from the same params.yaml as everything else (:mod:`pipelines.settings`).

Each asset runs one library function on a local :class:`~dualpose.layout.Layout` staged by the
storage resource, and reports counts as metadata and a content hash of its files as data version.
"""


import json
from pathlib import Path

import dagster as dg

from dualpose.config import Params
from pipelines import settings
from pipelines.defs.resources import DualPoseConfig, StorageResource
from pipelines.metadata import content_hash, counts_table, md_table
from pipelines.staging import NAMES, ArtefactStore, listing_fingerprint, name_of

DATA_GROUP = "data"
RAW_FINGERPRINT = "raw_fingerprint"  # tables metadata: the raw files they were built from (see the sensor)


def dataset_partitions(params: Params) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(settings.dataset_names(params))


def _location(store: ArtefactStore, path: Path) -> dg.MetadataValue:
    where = store.location(path)
    return dg.MetadataValue.url(where) if "://" in where else dg.MetadataValue.path(where)


def _dataset(context: dg.AssetExecutionContext, params: Params) -> str:
    name = context.partition_key
    if name not in params.datasets:
        raise dg.Failure(f"data set {name!r} is not in params.yaml (datasets: {sorted(params.datasets)}); "
                         "reload the definitions after editing params.yaml")
    return name


def build_data_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    common = dict(partitions_def=partitions, group_name=DATA_GROUP)

    @dg.asset(**common, kinds={"python", "file"},
              description="The data set's source files: downloaded (http, s3, file) into raw/<dataset> and "
                          "checked against sha256 where given; local files are used in place.")
    def raw_files(context: dg.AssetExecutionContext, dualpose: DualPoseConfig,
                  storage: StorageResource) -> dg.MaterializeResult:
        from dualpose.data.prepare import resolve_files

        params = dualpose.load()
        name = _dataset(context, params)
        cfg = params.datasets[name]
        store = storage.store(params)
        with store.stage(inputs=[NAMES.raw(name)]) as layout:
            before = _local_listing(layout.raw(name))
            files = resolve_files(name, cfg, layout, dualpose.base_dir)
            if not store.is_local and _local_listing(layout.raw(name)) != before:
                store.upload(layout.root, name_of(NAMES.raw(name)))  # new downloads join the shared cache
            rows = [(key, str(cfg.files[key]), path.stat().st_size if path.is_file() else "folder")
                    for key, path in files.items()]
            # no files (generated data): the adapter and its options are what the data depends on
            version = content_hash(files.values()) if files else "options-" + _options_hash(cfg.adapter, cfg.options)
        return dg.MaterializeResult(
            metadata={"files": len(files), "adapter": cfg.adapter,
                      "sources": dg.MetadataValue.md(md_table(["file", "location", "bytes"], rows) if rows else
                                                     f"no files: adapter `{cfg.adapter}` generates its data"),
                      "location": _location(store, NAMES.raw(name))},
            data_version=dg.DataVersion(version),
        )

    @dg.asset(**common, deps=[raw_files], kinds={"parquet"},
              description="Keypoint tables (Parquet, one row per frame) written by the data set's adapter.")
    def keypoint_tables(context: dg.AssetExecutionContext, dualpose: DualPoseConfig,
                        storage: StorageResource) -> dg.MaterializeResult:
        from dualpose.data.prepare import prepare_dataset

        params = dualpose.load()
        name = _dataset(context, params)
        store = storage.store(params)
        raw_fingerprint = listing_fingerprint(store.signatures(NAMES.raw(name)))
        with store.stage(inputs=[NAMES.raw(name)], outputs=[NAMES.tables(name)]) as layout:
            prepared = prepare_dataset(params, name, layout, dualpose.base_dir)
            folder = layout.tables(name)
            version = content_hash(sorted(folder.glob("*.parquet")), root=folder)
        return dg.MaterializeResult(
            metadata={"dagster/row_count": prepared.rows, "rows": prepared.rows, "videos": prepared.videos,
                      "parts": dg.MetadataValue.md(counts_table(prepared.parts, "table", "rows")),
                      "splits": dg.MetadataValue.md(counts_table(prepared.splits, "split", "rows")),
                      "seconds": round(prepared.seconds, 2),
                      RAW_FINGERPRINT: raw_fingerprint,
                      "location": _location(store, NAMES.tables(name))},
            data_version=dg.DataVersion(version),
        )

    @dg.asset(**common, deps=[keypoint_tables], kinds={"parquet"},
              description="Clip index: T-frame windows over the tables with train/validation/test splits.")
    def clip_index(context: dg.AssetExecutionContext, dualpose: DualPoseConfig,
                   storage: StorageResource) -> dg.MaterializeResult:
        from dualpose.stages import build_clips

        params = dualpose.load()
        name = _dataset(context, params)
        store = storage.store(params)
        with store.stage(inputs=[NAMES.tables(name)], outputs=[NAMES.clips(name)]) as layout:
            counts = build_clips(params, layout, name)
            version = content_hash([layout.clips(name)])
        splits = {k: v for k, v in counts.items() if k in ("train", "validation", "test")}
        return dg.MaterializeResult(
            metadata={"dagster/row_count": counts["clips"], "clips": counts["clips"], "frames": counts["frames"],
                      "T": counts["T"], **{f"{k}_clips": v for k, v in splits.items()},
                      "clips_per_split": dg.MetadataValue.md(counts_table(splits, "split", "clips")),
                      "location": _location(store, NAMES.clips(name))},
            data_version=dg.DataVersion(version),
        )

    @dg.asset(**common, deps=[clip_index], kinds={"parquet"},
              description="Masked 2D inputs for CRL pretraining: span masks per (clip, view), packed bits.")
    def masked_inputs(context: dg.AssetExecutionContext, dualpose: DualPoseConfig,
                      storage: StorageResource) -> dg.MaterializeResult:
        from dualpose.stages import build_masks

        params = dualpose.load()
        name = _dataset(context, params)
        store = storage.store(params)
        with store.stage(inputs=[NAMES.clips(name)], outputs=[NAMES.masked(name)]) as layout:
            summary = build_masks(params, layout, name)
            version = content_hash([layout.masked(name)])
        return dg.MaterializeResult(
            metadata={"dagster/row_count": int(summary["rows"]), "rows": int(summary["rows"]),
                      "clips": int(summary["clips"]), "views": int(summary["views"]),
                      "masked_ratio_mean": float(summary["masked_ratio_mean"]),
                      "masking": dg.MetadataValue.json(params.masking.model_dump()),
                      "location": _location(store, NAMES.masked(name))},
            data_version=dg.DataVersion(version),
        )

    return [raw_files, keypoint_tables, clip_index, masked_inputs]


def _local_listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file()) \
        if folder.is_dir() else []


def _options_hash(adapter: str, options: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps({"adapter": adapter, "options": options}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


DATA_ASSET_KEYS = [dg.AssetKey(k) for k in ("raw_files", "keypoint_tables", "clip_index", "masked_inputs")]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build_data_assets(dataset_partitions(settings.definition_params())))
