"""Jobs, the weekly retraining schedule and the sensor that prepares tables when raw files arrive.

- ``prepare_data``: every data asset (and its checks) for the selected data set partitions.
- ``prepare_tables``: keypoint tables of one data set; what the ``new_raw_files`` sensor runs.
- ``weekly_retraining``: pretrain -> finetune -> evaluate (with their checks), tagged
  ``dualpose/training`` so that the run queue admits one such run at a time (tag concurrency
  limit in ``pipelines/dagster.yaml``); the training assets also share one pool.

The sensor lists ``raw/<dataset>/`` under the storage root (local or S3) on every tick and
compares names, sizes and version stamps with its cursor. The first tick records what is there;
afterwards a changed listing requests one ``prepare_tables`` run for that data set, keyed by the
listing's fingerprint so that the same files are never prepared twice.
"""


import hashlib
import json

import dagster as dg

from pipelines import settings
from pipelines.defs.data_assets import DATA_ASSET_KEYS
from pipelines.defs.resources import StorageResource
from pipelines.defs.training_assets import TRAINING_ASSET_KEYS, TRAINING_TAG
from pipelines.staging import NAMES, FileSignature

WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00
SENSOR_INTERVAL_S = 60


def listing_fingerprint(signatures: list[FileSignature]) -> str:
    """A short hash of a folder listing (names, sizes, stamps); empty string for no files."""
    if not signatures:
        return ""
    text = json.dumps([(s.name, s.size, s.stamp) for s in signatures])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_automation(datasets: list[str]) -> dict:
    partitions = dg.StaticPartitionsDefinition(datasets)
    prepare_data = dg.define_asset_job(
        "prepare_data", selection=dg.AssetSelection.assets(*DATA_ASSET_KEYS), partitions_def=partitions,
        description="Download, convert, index and mask the selected data sets (with their checks).")
    prepare_tables = dg.define_asset_job(
        "prepare_tables", selection=dg.AssetSelection.assets("keypoint_tables"), partitions_def=partitions,
        description="Rebuild one data set's keypoint tables from its raw files (with their checks).")
    weekly_retraining = dg.define_asset_job(
        "weekly_retraining", selection=dg.AssetSelection.assets(*TRAINING_ASSET_KEYS),
        tags={TRAINING_TAG: "true"},
        description="Pretrain, finetune and evaluate on params.train_dataset (one training run at a time).")
    schedule = dg.ScheduleDefinition(
        name="weekly_retraining_schedule", job=weekly_retraining, cron_schedule=WEEKLY_CRON,
        execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrain every Monday 03:00 UTC: pretrain -> finetune -> evaluate.")

    @dg.sensor(name="new_raw_files", job=prepare_tables, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Prepare a data set's keypoint tables when files under raw/<dataset>/ change.")
    def new_raw_files(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
        store = storage.store()
        current = {name: listing_fingerprint(store.signatures(NAMES.raw(name))) for name in datasets}
        cursor = json.dumps(current, sort_keys=True)
        if context.cursor is None:
            files = sum(1 for v in current.values() if v)
            return dg.SensorResult(skip_reason=f"first tick: recorded the raw folders of {files} data set(s) as "
                                               "the baseline", cursor=cursor)
        seen = json.loads(context.cursor)
        changed = [name for name, fp in current.items() if fp and fp != seen.get(name)]
        if not changed:
            return dg.SensorResult(skip_reason=f"no new raw files under {store.location('raw')}",
                                   cursor=cursor)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=name, run_key=f"{name}:{current[name]}",
                                        tags={"dualpose/raw_fingerprint": current[name]}) for name in changed],
            cursor=cursor)

    return {"jobs": [prepare_data, prepare_tables, weekly_retraining], "schedules": [schedule],
            "sensors": [new_raw_files]}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(**build_automation(settings.dataset_names(settings.definition_params())))
