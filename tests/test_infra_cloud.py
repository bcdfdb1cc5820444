"""The cluster deployment files, validated offline: Kubernetes manifests against the Kubernetes JSON
schemas shipped by ``kubernetes-validate``; the Kubeflow TrainJob against the TrainJob models of
``kubeflow-trainer-api`` (pydantic models generated from Kubeflow Trainer's OpenAPI spec of the CRD:
required fields and types, plus a round trip that must lose no field, i.e. no field unknown to the
schema); the production dagster.yaml against Dagster's own config schemas (instance, K8sRunLauncher,
S3ComputeLogManager, Postgres storage); the Helm values' Kubernetes objects against the Kubernetes
schemas and their Dagster settings against the same config schemas.

Not validated: the Dagster Helm chart's own values schema (values.schema.json). It is generated from
pydantic models in the chart's source tree (package ``dagster-helm``), which is not published on PyPI;
npm has no ``dagster`` package; Debian has neither helm nor the chart; the chart is served only by
Dagster's Helm repository, which is out of reach. So the values' keys are not checked against the
chart, and the chart cannot be rendered here (no helm binary, no chart) to validate its output.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from tests.pipelines_support import REPO_ROOT

INFRA = REPO_ROOT / "infra"
K8S_VERSION = "1.33"
PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB", "DUALPOSE_LOG_BUCKET")


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_kubernetes_manifest_validates():
    checked = 0
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for doc in _documents(path):
            if doc["apiVersion"].startswith("trainer.kubeflow.org/"):
                validate_trainjob(doc)  # custom resource: not in the Kubernetes schemas
            else:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 5  # ServiceAccount, Role, RoleBinding, Secret, TrainJob


def test_the_validator_rejects_a_broken_manifest(tmp_path):
    doc = _documents(INFRA / "k8s" / "rbac.yaml")[1]
    doc["rules"][0]["verbs"] = "get"  # must be a list
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    doc = _documents(INFRA / "k8s" / "s3-secret.example.yaml")[0]
    doc["stringdata"] = doc.pop("stringData")  # misspelt field: strict schemas reject unknown keys
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- Kubeflow Trainer ----------------------------------------------------------------------------------
def _lost_fields(original, round_trip, path: str = "") -> list[str]:
    """Paths in ``original`` that a model round trip dropped or changed (fields the schema does not know)."""
    if isinstance(original, dict) and isinstance(round_trip, dict):
        lost = []
        for key, value in original.items():
            here = f"{path}.{key}" if path else key
            lost += [here] if key not in round_trip else _lost_fields(value, round_trip[key], here)
        return lost
    if isinstance(original, list) and isinstance(round_trip, list) and len(original) == len(round_trip):
        return [p for i, (a, b) in enumerate(zip(original, round_trip)) for p in _lost_fields(a, b, f"{path}[{i}]")]
    return [] if original == round_trip else [path]


def validate_trainjob(doc: dict) -> None:
    """Validate a TrainJob against kubeflow-trainer-api's TrainJob model (trainer.kubeflow.org/v1alpha1).

    ``from_dict`` enforces the required fields and the types (pydantic ``ValidationError``); the models
    ignore unknown keys, so a round trip through them must give back every field of the manifest.
    """
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    if (doc.get("apiVersion"), doc.get("kind")) != ("trainer.kubeflow.org/v1alpha1", "TrainJob"):
        raise ValueError(f"expected apiVersion trainer.kubeflow.org/v1alpha1, kind TrainJob; got "
                         f"{doc.get('apiVersion')}, {doc.get('kind')}")
    lost = _lost_fields(doc, TrainerV1alpha1TrainJob.from_dict(doc).to_dict())
    if lost:
        raise ValueError(f"not in the TrainJob v1alpha1 schema: {', '.join(lost)}")


def test_trainjob_recipe_validates_against_the_kubeflow_trainer_models():
    job = _documents(INFRA / "k8s" / "trainjob.yaml")[0]
    validate_trainjob(job)
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert trainer["command"] == ["python", "-m", "dualpose.cli"] and trainer["args"][0] == "finetune"
    # the models take any string as a quantity and any env name: the Kubernetes schemas check those
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": trainer["image"], "env": trainer["env"],
                                    "resources": trainer["resourcesPerNode"]}]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def _trainer(job: dict) -> dict:
    return job["spec"]["trainer"]


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize("change, error, words", [
    (lambda j: _rename(_trainer(j), "numNodes", "numNode"), ValueError,
     "not in the TrainJob v1alpha1 schema: spec.trainer.numNode"),
    (lambda j: _rename(_trainer(j)["env"][0], "value", "valu"), ValueError, r"spec.trainer.env\[0\].valu"),
    (lambda j: _rename(_trainer(j)["resourcesPerNode"], "limits", "limit"), ValueError,
     "spec.trainer.resourcesPerNode.limit"),
    (lambda j: j["spec"]["runtimeRef"].pop("name"), ValidationError, "TrainerV1alpha1RuntimeRef\nname"),
    (lambda j: j["spec"].pop("runtimeRef"), ValidationError, "runtimeRef"),
    (lambda j: _trainer(j).update(numNodes="2"), ValidationError, "numNodes\n  Input should be a valid integer"),
    (lambda j: _trainer(j).update(command="python -m dualpose.cli"), ValidationError,
     "command\n  Input should be a valid list"),
    (lambda j: j.update(apiVersion="kubeflow.org/v1"), ValueError, "expected apiVersion trainer.kubeflow.org/v1alpha1"),
])
def test_the_trainjob_validation_rejects_broken_manifests(change, error, words):
    job = _documents(INFRA / "k8s" / "trainjob.yaml")[0]
    change(job)
    with pytest.raises(error, match=words):
        validate_trainjob(job)


def test_launcher_configs_give_valid_pods_and_jobs():
    from pipelines.defs.resources import TrainingLauncher
    from pipelines.launchers import kubernetes as k8s
    from pipelines.launchers.dagster_remote import pod_shape
    from pipelines.launchers.job import RemoteJob

    for name, kinds in (("launcher-kubernetes.yaml", ["Pod"]), ("launcher-kubernetes-multinode.yaml",
                                                                ["Service", "Job"])):
        launcher = TrainingLauncher.from_environment({"DUALPOSE_LAUNCHER_CONFIG": str(INFRA / "dagster" / name)})
        job = RemoteJob(name="dualpose-finetune-0", stage_args=("finetune",), root="s3://b/p",
                        params_name="launch/r/finetune/params.yaml", local_root="/tmp/dualpose/x",
                        nnodes=launcher.nodes, nproc_per_node=launcher.gpus_per_node)
        shape = pod_shape(launcher)
        docs = [k8s.pod_manifest(job, shape)] if launcher.nodes == 1 else k8s.multi_node_manifests(job, shape)
        assert [d["kind"] for d in docs] == kinds
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- Dagster ------------------------------------------------------------------------------------------
def _validate_class_config(entry: dict) -> None:
    import importlib

    from dagster._config import validate_config

    cls = getattr(importlib.import_module(entry["module"]), entry["class"])
    result = validate_config(cls.config_type(), entry.get("config") or {})
    assert result.success, [e.message for e in result.errors]


def test_production_instance_validates_against_dagster_schemas(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres.run_storage import PostgresRunStorage

    from dagster._config import validate_config

    for name in PG_ENV:
        monkeypatch.setenv(name, "x")
    config, _ = dagster_instance_config(str(INFRA / "dagster"))
    for key in ("run_launcher", "compute_logs", "run_coordinator"):
        _validate_class_config(config[key])
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    postgres = validate_config(PostgresRunStorage.config_type(), config["storage"]["postgres"])
    assert postgres.success, [e.message for e in postgres.errors]
    assert {"key": "dualpose/training", "limit": 1} in config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert config["concurrency"]["pools"]["default_limit"] == 1

    # a typo is caught by the same validation
    broken = yaml.safe_load((INFRA / "dagster" / "dagster.yaml").read_text())
    broken["run_launcher"]["config"]["job_namespac"] = broken["run_launcher"]["config"].pop("job_namespace")
    with pytest.raises(AssertionError):
        _validate_class_config(broken["run_launcher"])
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({**broken, "run_storage_typo": {}}))
    with pytest.raises(Exception, match="run_storage_typo"):
        dagster_instance_config(str(home))


def test_production_instance_and_dev_template_share_the_training_limit():
    from pipelines.defs.training_assets import TRAINING_POOL, TRAINING_TAG

    prod = yaml.safe_load((INFRA / "dagster" / "dagster.yaml").read_text())
    dev = yaml.safe_load((REPO_ROOT / "pipelines" / "dagster.yaml").read_text())
    assert prod["concurrency"]["runs"]["tag_concurrency_limits"] == dev["concurrency"]["runs"]["tag_concurrency_limits"]
    assert prod["concurrency"]["pools"] == dev["concurrency"]["pools"] == {"default_limit": 1}
    assert TRAINING_TAG == "dualpose/training" and TRAINING_POOL == "dualpose_training"


def test_helm_values(monkeypatch):
    from dagster._config import validate_config
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
    from dagster_k8s import K8sRunLauncher

    values = yaml.safe_load((INFRA / "dagster" / "helm-values.yaml").read_text())
    prod = yaml.safe_load((INFRA / "dagster" / "dagster.yaml").read_text())

    # Kubernetes objects inside the values, validated as parts of a Pod
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    containers = [
        {"name": "webserver", "image": "x", "resources": values["dagsterWebserver"]["resources"]},
        {"name": "daemon", "image": "x", "resources": values["dagsterDaemon"]["resources"]},
        {"name": "code", "image": "x", "resources": deployment["resources"], "env": deployment["env"],
         "envFrom": [{"secretRef": s} for s in deployment["envSecrets"]]},
        {"name": "run", "image": "x", **launcher["runK8sConfig"]["containerConfig"],
         "envFrom": [{"secretRef": s} for s in launcher["envSecrets"]]},
    ]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "values"}, "spec": {"containers": containers}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)

    # the Dagster settings: the same run launcher / compute logs / limits as dagster.yaml, valid for those classes
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    rendered_by_chart = ("instance_config_map", "dagster_home", "postgres_password_secret", "service_account_name")
    mapped = {**{k: prod["run_launcher"]["config"][k] for k in rendered_by_chart},
              "job_namespace": launcher["jobNamespace"], "load_incluster_config": launcher["loadInclusterConfig"],
              "env_secrets": [s["name"] for s in launcher["envSecrets"]],
              "run_k8s_config": {"container_config": launcher["runK8sConfig"]["containerConfig"]}}
    assert validate_config(K8sRunLauncher.config_type(), mapped).success
    for key in ("job_namespace", "load_incluster_config", "env_secrets", "run_k8s_config"):
        assert mapped[key] == prod["run_launcher"]["config"][key], key
    logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert validate_config(S3ComputeLogManager.config_type(), {_snake(k): v for k, v in logs.items()}).success
    assert logs["prefix"] == prod["compute_logs"]["config"]["prefix"]
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue["tagConcurrencyLimits"] == prod["concurrency"]["runs"]["tag_concurrency_limits"]
    assert values["postgresql"]["enabled"] is False and values["global"]["postgresqlSecretName"] == \
        prod["run_launcher"]["config"]["postgres_password_secret"]

    # the code location the chart starts exists, with the launcher configuration it names
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "pipelines.definitions"
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["DUALPOSE_LAUNCHER"] == "kubernetes"
    assert (REPO_ROOT / Path(env["DUALPOSE_LAUNCHER_CONFIG"]).relative_to("/opt/dualpose")).is_file()
    assert (REPO_ROOT / Path(env["DUALPOSE_PARAMS"]).relative_to("/opt/dualpose")).is_file()


def test_dockerfile_installs_what_the_deployment_imports():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert 'pip install ".[cloud]"' in text and "COPY infra ./infra" in text and "DUALPOSE_CODE_VERSION" in text
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    for package in ("dagster-k8s", "dagster-aws", "dagster-postgres"):
        assert f'"{package}' in pyproject
