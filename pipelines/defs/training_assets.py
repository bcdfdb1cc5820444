"""Training assets: pretrained weights -> finetuned weights -> evaluation report.

They are not partitioned: the library trains on ``params.train_dataset`` and keeps one model per
storage root (``models/pretrain``, ``models/finetune``), so each depends on exactly that
partition of the data assets (a specific-partition mapping). Each step runs out of the Dagster
process through Dagster Pipes (:mod:`pipelines.pipes_entry` under the launcher resource) on a
local layout staged by the storage resource; the subprocess reports the materialisation. All
three share the ``dualpose_training`` pool: with ``concurrency.pools`` in dagster.yaml (see
``pipelines/dagster.yaml``) at most one training step, hence one training run, runs at a time.
"""


from pathlib import Path

import dagster as dg

from dualpose.config import Params
from pipelines import settings
from pipelines.defs.resources import DualPoseConfig, StorageResource, TrainingLauncher
from pipelines.metadata import embedded_png
from pipelines.staging import NAMES

TRAINING_GROUP = "training"
TRAINING_POOL = "dualpose_training"
TRAINING_TAG = "dualpose/training"


class TrainingConfig(dg.Config):
    resume: bool = False  # continue from the stage's last checkpoint instead of training afresh


class EvaluationConfig(dg.Config):
    weights: str = "best"  # best, last or a weights folder
    split: str = "test"  # test or validation


def _check_train_dataset(params: Params, train_dataset: str) -> None:
    if params.train_dataset != train_dataset:
        raise dg.Failure(f"params.train_dataset is {params.train_dataset!r} but the definitions were loaded with "
                         f"{train_dataset!r}; reload the code location after changing it")


def _run_stage(context: dg.AssetExecutionContext, stage: str, dualpose: DualPoseConfig, storage: StorageResource,
               launcher: TrainingLauncher, train_dataset: str, inputs: list, outputs: list,
               extra_args: list[str]) -> dg.MaterializeResult:
    params = dualpose.load()
    _check_train_dataset(params, train_dataset)
    store = storage.store(params)
    if launcher.is_remote:
        return _run_remote_stage(context, stage, params, store, launcher, train_dataset, inputs, outputs, extra_args)
    with store.stage(inputs=inputs, outputs=outputs) as layout:
        entry_args = launcher.entry_args(stage, dualpose, layout.root, extra_args)
        invocation = launcher.run(context, entry_args, extras={"stage": stage, "dataset": train_dataset})
        result = invocation.get_materialize_result()
        reported = {k: _embedded_plot(k, v) for k, v in (result.metadata or {}).items()}
        metadata = {k: _stored_location(v, layout.root, store) for k, v in reported.items()}
    metadata["storage_root"] = dg.MetadataValue.text(store.root)
    return dg.MaterializeResult(metadata=metadata, data_version=result.data_version)


def _run_remote_stage(context: dg.AssetExecutionContext, stage: str, params: Params, store, launcher: TrainingLauncher,
                      train_dataset: str, inputs: list, outputs: list, extra_args: list[str]) -> dg.MaterializeResult:
    """The stage on a cluster (:mod:`pipelines.launchers`); reported paths become stored locations and
    plots are fetched from the storage root to be embedded, as for a local run."""
    from pipelines.launchers.dagster_remote import fetched, run_remote

    invocation, job = run_remote(launcher, context, stage, params, store, inputs, outputs, extra_args,
                                 extras={"stage": stage, "dataset": train_dataset})
    result = invocation.get_materialize_result()
    metadata = {}
    for key, value in (result.metadata or {}).items():
        if isinstance(value, dg.PathMetadataValue):
            name = _remote_name(str(value.path), job.local_root, [*job.outputs, *job.inputs])
            if name is None:
                metadata[key] = value
                continue
            if name.endswith(".png"):
                with fetched(store, name) as local:
                    if local is not None:
                        metadata[key] = _embedded_plot(key, dg.MetadataValue.path(str(local)))
                        continue
            metadata[key] = dg.MetadataValue.url(store.location(name)) if not store.is_local else \
                dg.MetadataValue.path(store.location(name))
        else:
            metadata[key] = value
    metadata["storage_root"] = dg.MetadataValue.text(store.root)
    metadata["launcher"] = dg.MetadataValue.text(f"{launcher.resolved_backend()}: {job.nnodes} x "
                                                 f"{job.nproc_per_node} ({job.name})")
    return dg.MaterializeResult(metadata=metadata, data_version=result.data_version)


def _remote_name(path: str, local_root: str, names: list[str]) -> str | None:
    """The storage name of a path reported by a remote node: relative to its local root, or (should a
    node stage elsewhere) from the first artefact name found in the path; None when neither fits."""
    try:
        return Path(path).relative_to(local_root).as_posix()
    except ValueError:
        pass
    posix = Path(path).as_posix()
    for name in names:
        at = posix.find(f"/{name}")
        if at >= 0 and (posix[at + 1 + len(name):][:1] in ("", "/")):
            return posix[at + 1:]
    return None


def _embedded_plot(key: str, value):
    """PNG plots arrive as paths (in the staging folder, still there); show them as images."""
    if isinstance(value, dg.PathMetadataValue) and str(value.path).endswith(".png") and Path(value.path).is_file():
        return dg.MetadataValue.md(embedded_png(Path(value.path), key.removeprefix("plot_").replace("_", " ")))
    return value


def _stored_location(value, local_root, store):
    """A path the subprocess reported inside a staging folder, as its stored location."""
    if store.is_local or not isinstance(value, dg.PathMetadataValue):
        return value
    try:
        relative = Path(value.path).relative_to(local_root)
    except ValueError:
        return value
    return dg.MetadataValue.url(store.location(relative))


def build_training_assets(train_dataset: str) -> list[dg.AssetsDefinition]:
    def data(key: str) -> dg.AssetDep:
        return dg.AssetDep(key, partition_mapping=dg.SpecificPartitionsPartitionMapping([train_dataset]))

    common = dict(group_name=TRAINING_GROUP, pool=TRAINING_POOL, kinds={"pytorch"})
    ds = train_dataset

    @dg.asset(**common, deps=[data("masked_inputs"), data("clip_index"), data("keypoint_tables")],
              description=f"CRL-pretrained backbone on the masked 2D inputs of {ds!r} (models/pretrain).")
    def pretrained_weights(context: dg.AssetExecutionContext, config: TrainingConfig, dualpose: DualPoseConfig,
                           storage: StorageResource, launcher: TrainingLauncher) -> dg.MaterializeResult:
        inputs = [NAMES.tables(ds), NAMES.clips(ds), NAMES.masked(ds)]
        if config.resume:
            inputs.append(NAMES.run_dir("pretrain"))
        return _run_stage(context, "pretrain", dualpose, storage, launcher, ds, inputs,
                          [NAMES.model("pretrain"), NAMES.run_dir("pretrain")],
                          ["--resume"] if config.resume else [])

    @dg.asset(**common, deps=[pretrained_weights, data("clip_index"), data("keypoint_tables")],
              description=f"3D lifter finetuned on {ds!r}, best epoch by validation MPJPE (models/finetune).")
    def finetuned_weights(context: dg.AssetExecutionContext, config: TrainingConfig, dualpose: DualPoseConfig,
                          storage: StorageResource, launcher: TrainingLauncher) -> dg.MaterializeResult:
        inputs = [NAMES.tables(ds), NAMES.clips(ds), NAMES.model("pretrain")]
        if config.resume:
            inputs.append(NAMES.run_dir("finetune"))
        return _run_stage(context, "finetune", dualpose, storage, launcher, ds, inputs,
                          [NAMES.model("finetune"), NAMES.run_dir("finetune")],
                          ["--resume"] if config.resume else [])

    @dg.asset(**common, deps=[finetuned_weights, data("clip_index"), data("keypoint_tables")],
              description=f"Evaluation of the finetuned lifter on {ds!r}: P1/P2..., report and plots (eval/{ds}).")
    def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, dualpose: DualPoseConfig,
                          storage: StorageResource, launcher: TrainingLauncher) -> dg.MaterializeResult:
        return _run_stage(context, "evaluate", dualpose, storage, launcher, ds,
                          [NAMES.tables(ds), NAMES.clips(ds), NAMES.model("finetune")], [NAMES.eval_dir(ds)],
                          ["--weights", config.weights, "--split", config.split])

    return [pretrained_weights, finetuned_weights, evaluation_report]


TRAINING_ASSET_KEYS = [dg.AssetKey(k) for k in ("pretrained_weights", "finetuned_weights", "evaluation_report")]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build_training_assets(settings.definition_params().train_dataset))
