"""Asset checks: the data is finite and human, the clips and masks are what the settings say, the
weights are finite and the evaluation is not worse than ``evaluate.max_mpjpe_mm``.

Checks on data assets carry the data assets' partitions (so one check run reads one data set)
and are blocking: a failure stops the downstream assets of the same run, so training never
starts on bad tables, a stale clip index or wrongly masked inputs. The numbers come from
:mod:`pipelines.quality`; each result carries them as metadata.
"""


import contextlib
from collections.abc import Iterator

import dagster as dg
import numpy as np

from dualpose.config import Params
from pipelines import quality, settings
from pipelines.defs.data_assets import dataset_partitions
from pipelines.defs.resources import DualPoseConfig, StorageResource
from pipelines.staging import NAMES

ROWS_RECHECKED = 4096  # masked rows whose stored ratio is recomputed from the bit masks


def _result(finding: quality.Finding) -> dg.AssetCheckResult:
    metadata = {k: v for k, v in finding.numbers.items() if v is not None}
    return dg.AssetCheckResult(passed=finding.passed, description=finding.description, metadata=metadata,
                               severity=dg.AssetCheckSeverity.ERROR)


@contextlib.contextmanager
def _staged(dualpose: DualPoseConfig, storage: StorageResource, inputs: list) -> Iterator[tuple[Params, object]]:
    params = dualpose.load()
    with storage.store(params).stage(inputs=inputs) as layout:
        yield params, layout


def _read_tables(layout, name: str):
    from dualpose.data.schema import read_keypoint_table

    return read_keypoint_table(layout.table_files(name), verify=False)  # the checks measure the damage


def build_data_checks(partitions: dg.PartitionsDefinition,
                      limits: quality.TableLimits = quality.TableLimits()) -> list[dg.AssetChecksDefinition]:
    common = dict(partitions_def=partitions, blocking=True)

    @dg.asset_check(asset="keypoint_tables", name="finite_values", **common,
                    description="No NaN or inf where a value is promised (visible 2D joints, 3D frames, "
                                "confidences, frame rates); NaN only marks missing data, inf never.")
    def finite_values(context: dg.AssetCheckExecutionContext, dualpose: DualPoseConfig,
                      storage: StorageResource) -> dg.AssetCheckResult:
        name = context.partition_key
        with _staged(dualpose, storage, [NAMES.tables(name)]) as (_, layout):
            return _result(quality.finite_values(_read_tables(layout, name)))

    @dg.asset_check(asset="keypoint_tables", name="bone_lengths_consistent", **common,
                    description="Every bone keeps its length within each video (relative std within the "
                                "plausibility limits; limbs strictly, synthesised torso bones looser).")
    def bone_lengths_consistent(context: dg.AssetCheckExecutionContext, dualpose: DualPoseConfig,
                                storage: StorageResource) -> dg.AssetCheckResult:
        name = context.partition_key
        with _staged(dualpose, storage, [NAMES.tables(name)]) as (_, layout):
            return _result(quality.bone_lengths_consistent(_read_tables(layout, name), limits))

    @dg.asset_check(asset="keypoint_tables", name="plausible_range", **common,
                    description="Visible 2D keypoints inside the image (with a margin), and every 3D pose "
                                "the size of a person in millimetres.")
    def plausible_range(context: dg.AssetCheckExecutionContext, dualpose: DualPoseConfig,
                        storage: StorageResource) -> dg.AssetCheckResult:
        name = context.partition_key
        with _staged(dualpose, storage, [NAMES.tables(name)]) as (_, layout):
            return _result(quality.plausible_range(_read_tables(layout, name), limits))

    @dg.asset_check(asset="clip_index", name="clip_counts", **common,
                    description="The stored clip index has the clips per split that the tables and the "
                                "clips settings imply, with no empty split that training needs.")
    def clip_counts(context: dg.AssetCheckExecutionContext, dualpose: DualPoseConfig,
                    storage: StorageResource) -> dg.AssetCheckResult:
        from dualpose.data.clips import ClipIndex, build_clip_index
        from dualpose.errors import DataFormatError

        name = context.partition_key
        with _staged(dualpose, storage, [NAMES.tables(name), NAMES.clips(name)]) as (params, layout):
            files = layout.table_files(name)
            arrays = _read_tables(layout, name)
            expected = build_clip_index(arrays, params.clips, table_id=files).counts()
            try:
                observed = ClipIndex.load(layout.clips(name), tables=arrays).counts()
            except DataFormatError as exc:
                return _result(quality.Finding(False, f"the clip index does not match its tables: {exc}"))
            has_test = "test" in arrays.categories["split"] and bool(
                (arrays.codes["split"] == arrays.categories["split"].index("test")).any())
            return _result(quality.clip_counts(observed, expected, params.clips, has_test))

    @dg.asset_check(asset="masked_inputs", name="masked_ratio", **common,
                    description="Masks made with the configured masking settings, their ratio column true "
                                "to the bits, and the mean ratio what those settings give.")
    def masked_ratio(context: dg.AssetCheckExecutionContext, dualpose: DualPoseConfig,
                     storage: StorageResource) -> dg.AssetCheckResult:
        from dualpose.data.masking import read_masked_table

        name = context.partition_key
        with _staged(dualpose, storage, [NAMES.masked(name)]) as (params, layout):
            masked = read_masked_table(layout.masked(name))
            rows = np.linspace(0, len(masked) - 1, min(len(masked), ROWS_RECHECKED)).astype(np.int64)
            recomputed = masked.masks(rows).mean(axis=(1, 2)) if len(rows) else np.zeros(0)
            return _result(quality.masked_ratio(params.masking, masked.cfg, masked.masked_ratio,
                                                recomputed, masked.masked_ratio[rows], masked.T, masked.J))

    return [finite_values, bone_lengths_consistent, plausible_range, clip_counts, masked_ratio]


def build_training_checks(train_dataset: str) -> list[dg.AssetChecksDefinition]:
    def weights_check(asset: str, folder) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=asset, name="weights_finite", blocking=True,
                        description="Every tensor of the saved weights is finite (no NaN/inf).")
        def weights_finite(dualpose: DualPoseConfig, storage: StorageResource) -> dg.AssetCheckResult:
            from dualpose.model.weights import read_weights

            with _staged(dualpose, storage, [folder]) as (_, layout):
                tensors, _ = read_weights(layout.root / folder)
                return _result(quality.tensors_finite(tensors))

        return weights_finite

    @dg.asset_check(asset="evaluation_report", name="mpjpe_within_threshold",
                    description="MPJPE (P1) of the evaluation is at most evaluate.max_mpjpe_mm.")
    def mpjpe_within_threshold(dualpose: DualPoseConfig, storage: StorageResource) -> dg.AssetCheckResult:
        from dualpose.eval.report import read_metrics_json

        metrics_name = NAMES.eval_dir(train_dataset) / "metrics.json"
        with _staged(dualpose, storage, [metrics_name]) as (params, layout):
            metrics = read_metrics_json(layout.root / metrics_name)
            return _result(quality.within_threshold(metrics.get("mpjpe_mm"), params.evaluate.max_mpjpe_mm))

    return [weights_check("pretrained_weights", NAMES.model("pretrain")),
            weights_check("finetuned_weights", NAMES.model("finetune") / "best"),
            mpjpe_within_threshold]


@dg.definitions
def defs() -> dg.Definitions:
    params = settings.definition_params()
    return dg.Definitions(asset_checks=[*build_data_checks(dataset_partitions(params)),
                                        *build_training_checks(params.train_dataset)])
