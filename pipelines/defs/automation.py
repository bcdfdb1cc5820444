"""Jobs, the weekly retraining schedule and the sensor that prepares tables when raw files arrive.

- ``prepare_data``: every data asset (and its checks) for the selected data set partitions.
- ``prepare_tables``: keypoint tables of one data set; what the ``new_raw_files`` sensor runs.
- ``weekly_retraining``: pretrain -> finetune -> evaluate -> model version -> promotion (with
  their checks), tagged
  ``dualpose/training`` so that the run queue admits one such run at a time (tag concurrency
  limit in ``pipelines/dagster.yaml``); the training assets also share one pool.

The sensor lists ``raw/<dataset>/`` under the storage root (local or S3) on every tick: names,
sizes and version stamps, hashed into a fingerprint. A data set whose raw files differ from those
its latest keypoint tables were built from (the tables record the fingerprint they saw) gets one
``prepare_tables`` run, keyed by the fingerprint; the cursor remembers what was requested, so a
failed run is not retried until the files change again. Data sets without raw files (synthetic)
never trigger. Files count when the data set reads them: point ``datasets.<name>.files`` at
``<root>/raw/<name>/...`` (or download remote files there through the ``raw_files`` asset).
"""


import json

import dagster as dg

from pipelines import settings
from pipelines.defs.data_assets import DATA_ASSET_KEYS, RAW_FINGERPRINT
from pipelines.defs.registry_assets import REGISTRY_ASSET_KEYS
from pipelines.defs.resources import StorageResource
from pipelines.defs.training_assets import TRAINING_ASSET_KEYS, TRAINING_TAG
from pipelines.staging import NAMES, listing_fingerprint

WEEKLY_CRON = "0 3 * * 1"  # Mondays 03:00
SENSOR_INTERVAL_S = 60
RAW_TAG = "dualpose/raw_fingerprint"


def tables_fingerprint(instance: dg.DagsterInstance, dataset: str) -> str | None:
    """The raw-file fingerprint that the latest keypoint tables of ``dataset`` were built from."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("keypoint_tables"), asset_partitions=[dataset]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(RAW_FINGERPRINT)
    return None if value is None else str(value.value)


def build_automation(datasets: list[str]) -> dict:
    """Jobs (partitioned like the assets they select), the schedule and the sensor over ``datasets``."""
    prepare_data = dg.define_asset_job(
        "prepare_data", selection=dg.AssetSelection.assets(*DATA_ASSET_KEYS),
        description="Download, convert, index and mask the selected data sets (with their checks).")
    prepare_tables = dg.define_asset_job(
        "prepare_tables", selection=dg.AssetSelection.assets("keypoint_tables"),
        description="Rebuild one data set's keypoint tables from its raw files (with their checks).")
    weekly_retraining = dg.define_asset_job(
        "weekly_retraining", selection=dg.AssetSelection.assets(*TRAINING_ASSET_KEYS, *REGISTRY_ASSET_KEYS),
        tags={TRAINING_TAG: "true"},
        description="Pretrain, finetune and evaluate on params.train_dataset, register the model as a new "
                    "version and promote it if it beats the champion (one training run at a time).")
    schedule = dg.ScheduleDefinition(
        name="weekly_retraining_schedule", job=weekly_retraining, cron_schedule=WEEKLY_CRON,
        execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrain every Monday 03:00 UTC: pretrain -> finetune -> evaluate -> promote if better.")

    @dg.sensor(name="new_raw_files", job=prepare_tables, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Prepare a data set's keypoint tables when its files under raw/<dataset>/ are not "
                           "the ones its tables were built from.")
    def new_raw_files(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
        store = storage.store()
        current = {name: listing_fingerprint(store.signatures(NAMES.raw(name))) for name in datasets}
        requested = json.loads(context.cursor) if context.cursor else {}
        changed = [name for name, fp in current.items()
                   if fp and fp != requested.get(name) and fp != tables_fingerprint(context.instance, name)]
        cursor = json.dumps({**requested, **{name: current[name] for name in changed}}, sort_keys=True)
        if not changed:
            return dg.SensorResult(skip_reason=f"no new raw files under {store.location('raw')}", cursor=cursor)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=name, run_key=f"{name}:{current[name]}",
                                        tags={RAW_TAG: current[name]}) for name in changed],
            cursor=cursor)

    return {"jobs": [prepare_data, prepare_tables, weekly_retraining], "schedules": [schedule],
            "sensors": [new_raw_files]}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(**build_automation(settings.dataset_names(settings.definition_params())))
