"""Versioned models and promotion: every evaluated retraining becomes a model version; the champion
moves to it only when it beats the champion on the benchmark by ``registry.promotion_margin_mm``.

- ``model_version``: registers ``models/finetune/best`` with its training metrics, its evaluation on
  the benchmark (the test split of ``train_dataset``) and its lineage (data fingerprint, params
  hash, code version, Dagster run id) under ``models/versions/<id>/`` (:mod:`dualpose.registry`).
  Its blocking check ``benchmark_score_finite`` stops a version without a usable score from going on.
- ``champion_model``: the promotion decision; moves ``models/champion.json`` or leaves it (and keeps
  ``models/champion-metrics.json``, the champion's row in ``dvc metrics show``, in step). Its
  check ``champion_is_best_known`` warns when the champion is worse than another version scored on
  the same benchmark by more than the margin (e.g. after a manual restore).

A failed training or evaluation stops the run before ``model_version``: the champion is untouched.
"""

import json

import dagster as dg

from dualpose.registry import ModelRegistry, benchmark_score, champion_metrics, data_files
from pipelines import settings
from pipelines.defs.resources import DualPoseConfig, StorageResource
from pipelines.staging import NAMES

REGISTRY_GROUP = "models"
MODEL_VERSION = dg.AssetKey("model_version")
CHAMPION_MODEL = dg.AssetKey("champion_model")
REGISTRY_ASSET_KEYS = [MODEL_VERSION, CHAMPION_MODEL]


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def build_registry_assets(train_dataset: str) -> list:
    ds = train_dataset

    @dg.asset(key=MODEL_VERSION, group_name=REGISTRY_GROUP, deps=["evaluation_report"], kinds={"pytorch"},
              description="The finetuned model as a new version under models/versions/<id>/: weights, config, "
                          "metrics, benchmark score and lineage (data fingerprint, params hash, code, run id).")
    def model_version(context: dg.AssetExecutionContext, dualpose: DualPoseConfig,
                      storage: StorageResource) -> dg.MaterializeResult:
        params = dualpose.load()
        store = storage.store(params)
        best = NAMES.model("finetune") / "best"
        inputs = [best, NAMES.model("finetune") / "metrics.json", NAMES.eval_dir(ds) / "metrics_detail.json",
                  NAMES.tables(ds) / "manifest.json", NAMES.clips(ds)]
        with store.stage(inputs=inputs) as layout:
            evaluation = json.loads((layout.eval_dir(ds) / "metrics_detail.json").read_text())
            evaluated = str(evaluation.get("weights", "")).replace("\\", "/")
            if evaluation.get("split") != "test" or not evaluated.endswith("models/finetune/best"):
                raise dg.Failure(f"the evaluation report scored {evaluated or '?'} on split {evaluation.get('split')!r}; "
                                 "a model version needs models/finetune/best on the test split (the benchmark)")
            train_metrics = layout.model("finetune") / "metrics.json"
            record = ModelRegistry(store.storage).register(
                layout.model("finetune") / "best", params,
                metrics=json.loads(train_metrics.read_text()) if train_metrics.is_file() else {},
                evaluation=_scalars(evaluation), run_id=context.run_id, data_files=data_files(layout, ds))
        lineage, bench = record["lineage"], record["benchmark"]
        return dg.MaterializeResult(
            metadata={"version": record["id"], "location": dg.MetadataValue.url(store.location(f"models/versions/"
                                                                                               f"{record['id']}")),
                      "score_mm": dg.MetadataValue.float(float(bench["score_mm"])) if benchmark_score(record)
                      is not None else dg.MetadataValue.text(str(bench["score_mm"])),
                      "metric": bench["metric"], "benchmark": f"{bench['dataset']}/{bench['split']}",
                      "data_fingerprint": lineage["data_fingerprint"], "params_hash": lineage["params_hash"],
                      "code_version": lineage["code_version"], "run_id": lineage["run_id"]},
            data_version=dg.DataVersion(record["id"]))

    @dg.asset(key=CHAMPION_MODEL, group_name=REGISTRY_GROUP, deps=[model_version],
              description="The champion pointer (models/champion.json): moved to the new version only when it beats "
                          "the champion on the benchmark by registry.promotion_margin_mm.")
    def champion_model(context: dg.AssetExecutionContext, dualpose: DualPoseConfig,
                       storage: StorageResource) -> dg.MaterializeResult:
        params = dualpose.load()
        registry = ModelRegistry(storage.store(params).storage)
        event = context.instance.get_latest_materialization_event(MODEL_VERSION)
        if event is None or event.asset_materialization is None:
            raise dg.Failure("no model_version has been materialised yet")
        challenger = str(event.asset_materialization.metadata["version"].value)
        decision, pointer = registry.promote_if_better(challenger, params.registry.promotion_margin_mm)
        current = registry.champion()
        context.log.info(("promoted " if decision.promote else "champion kept: ") + decision.reason)
        metadata = {"promoted": decision.promote, "challenger": challenger,
                    "champion": current["version"] if current else "none", "reason": decision.reason,
                    "margin_mm": float(params.registry.promotion_margin_mm)}
        if current:  # what `dvc metrics show` lists for the champion (models/champion-metrics.json)
            metadata["champion_metrics"] = dg.MetadataValue.json(champion_metrics(registry.version(current["version"])))
        for key, value in (("challenger_mm", decision.challenger_mm), ("champion_mm_before", decision.champion_mm),
                           ("delta_mm", decision.delta_mm)):
            if value is not None:
                metadata[key] = float(value)
        return dg.MaterializeResult(metadata=metadata,
                                    data_version=dg.DataVersion(current["version"] if current else "none"))

    return [model_version, champion_model]


def build_registry_checks() -> list:
    @dg.asset_check(asset=MODEL_VERSION, name="benchmark_score_finite", blocking=True,
                    description="The new version has a finite score on the benchmark split (else no promotion).")
    def benchmark_score_finite(context: dg.AssetCheckExecutionContext, dualpose: DualPoseConfig,
                               storage: StorageResource) -> dg.AssetCheckResult:
        registry = ModelRegistry(storage.store().storage)
        event = context.instance.get_latest_materialization_event(MODEL_VERSION)
        version = registry.version(str(event.asset_materialization.metadata["version"].value))
        score = benchmark_score(version)
        return dg.AssetCheckResult(passed=score is not None, severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"{version['id']}: {version['benchmark']['metric']} = {score}",
                                   metadata={"version": version["id"], **({"score_mm": score} if score else {})})

    @dg.asset_check(asset=CHAMPION_MODEL, name="champion_is_best_known",
                    description="No version scored on the champion's benchmark beats it by more than the margin.")
    def champion_is_best_known(dualpose: DualPoseConfig, storage: StorageResource) -> dg.AssetCheckResult:
        params = dualpose.load()
        registry = ModelRegistry(storage.store(params).storage)
        champion = registry.champion_version()
        if champion is None:
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                                       description="no champion yet")
        key = ("dataset", "split", "data_fingerprint")
        same = [v for v in registry.versions() if benchmark_score(v) is not None
                and all(v["benchmark"].get(k) == champion["benchmark"].get(k) for k in key)]
        best = min(same, key=benchmark_score, default=champion)
        score, best_score = benchmark_score(champion), benchmark_score(best)
        margin = params.registry.promotion_margin_mm
        passed = score is not None and best_score is not None and score <= best_score + margin
        return dg.AssetCheckResult(
            passed=passed, severity=dg.AssetCheckSeverity.WARN,
            description=f"champion {champion['id']} scores {score} mm; the best version on its benchmark is "
                        f"{best['id']} with {best_score} mm (margin {margin:g} mm)",
            metadata={"champion": champion["id"], "best_version": best["id"],
                      **({"champion_mm": score} if score is not None else {}),
                      **({"best_mm": best_score} if best_score is not None else {})})

    return [benchmark_score_finite, champion_is_best_known]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build_registry_assets(settings.definition_params().train_dataset),
                          asset_checks=build_registry_checks())
