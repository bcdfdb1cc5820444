"""Kubernetes: one pod with N GPUs (run through ``dagster_k8s.PipesK8sClient``), or several nodes as
an indexed Job behind a headless Service, each pod running :mod:`pipelines.remote_stage` with a
static torchrun rendezvous at pod 0 (``<job>-0.<job>``).

The manifests are plain dictionaries in Kubernetes' own (camelCase) form, so that tests validate
them against the Kubernetes schemas and compare them exactly. Imports no Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.launchers.job import LaunchFailed, RemoteJob, wait_until_done

CONTAINER = "dualpose"
LABELS = {"app.kubernetes.io/name": "dualpose", "app.kubernetes.io/component": "training"}


@dataclass(frozen=True)
class PodShape:
    """What every training pod gets: image, GPUs, resources, credentials, placement."""

    image: str
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    shm_size: str = "16Gi"  # /dev/shm for NCCL and data-loader workers
    env_from_secrets: tuple[str, ...] = ()  # e.g. ("dualpose-s3",) holding AWS_* keys
    service_account: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def container_env(env: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": str(v)} for k, v in sorted(env.items())]


def pod_spec(job: RemoteJob, shape: PodShape, master_addr: str | None = None,
             extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The PodSpec of one training pod (``extra_env`` joins ``job.env``)."""
    resources: dict[str, dict[str, str]] = {}
    if shape.gpus > 0:
        resources.setdefault("limits", {})[shape.gpu_resource] = str(shape.gpus)
    for key, value in (("cpu", shape.cpu), ("memory", shape.memory)):
        if value:
            resources.setdefault("requests", {})[key] = value
            resources.setdefault("limits", {})[key] = value
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": shape.image,
        "command": job.argv(master_addr),
        "env": container_env({**job.env, **(extra_env or {})}),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if resources:
        container["resources"] = resources
    if shape.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in shape.env_from_secrets]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shape.shm_size}}],
    }
    if shape.service_account:
        spec["serviceAccountName"] = shape.service_account
    if shape.node_selector:
        spec["nodeSelector"] = dict(shape.node_selector)
    if shape.tolerations:
        spec["tolerations"] = [dict(t) for t in shape.tolerations]
    return spec


def pod_manifest(job: RemoteJob, shape: PodShape, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A whole Pod (for ``kubectl apply`` and schema checks; the Pipes client builds its own around :func:`pod_spec`)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": job.name, "labels": dict(LABELS)},
            "spec": pod_spec(job, shape, extra_env=extra_env)}


def rendezvous_host(job: RemoteJob) -> str:
    """DNS name of pod 0 of the indexed Job: ``<job>-0.<service>`` (the Service has the Job's name)."""
    return f"{job.name}-0.{job.name}"


def multi_node_manifests(job: RemoteJob, shape: PodShape, ttl_seconds: int = 86400) -> list[dict[str, Any]]:
    """A headless Service and an indexed Job of ``job.nnodes`` pods, each pod one node of the torchrun group."""
    labels = {**LABELS, "dualpose/job": job.name}
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": job.name, "labels": labels},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"dualpose/job": job.name},
                 "ports": [{"name": "rendezvous", "port": job.master_port, "targetPort": job.master_port}]},
    }
    spec = pod_spec(job, shape, master_addr=rendezvous_host(job))
    spec["subdomain"] = job.name  # pods get <job>-<index>.<service> names
    spec["containers"][0]["ports"] = [{"name": "rendezvous", "containerPort": job.master_port}]
    batch_job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job.name, "labels": labels},
        "spec": {"completionMode": "Indexed", "completions": job.nnodes, "parallelism": job.nnodes,
                 "backoffLimit": 0, "ttlSecondsAfterFinished": ttl_seconds,
                 "template": {"metadata": {"labels": labels}, "spec": spec}},
    }
    return [service, batch_job]


def job_state(status: Any, completions: int) -> str | None:
    """``succeeded``, ``failed: ...`` or None (running) from a V1JobStatus (or a dict of the same)."""
    get = status.get if isinstance(status, dict) else lambda k: getattr(status, k, None)
    for condition in get("conditions") or []:
        cget = condition.get if isinstance(condition, dict) else lambda k, c=condition: getattr(c, k, None)
        if cget("type") == "Failed" and cget("status") == "True":
            return f"failed: {cget('reason') or ''} {cget('message') or ''}".rstrip()
    if (get("failed") or 0) > 0:
        return f"failed: {get('failed')} pod(s) failed"
    if (get("succeeded") or 0) >= completions:
        return "succeeded"
    return None


@dataclass
class KubernetesJobRunner:
    """Creates the Service + indexed Job, polls the Job to the end, removes both.

    ``core_api``/``batch_api`` are ``kubernetes.client.CoreV1Api()``/``BatchV1Api()`` (or fakes in tests).
    """

    core_api: Any
    batch_api: Any
    namespace: str = "default"
    poll_interval_s: float = 10.0
    timeout_s: float | None = None
    sleep: Callable[[float], None] | None = None

    def run(self, manifests: list[dict[str, Any]], log: Callable[[str], None] = print) -> None:
        service, batch_job = manifests
        name = batch_job["metadata"]["name"]
        completions = batch_job["spec"]["completions"]
        self.core_api.create_namespaced_service(self.namespace, service)
        try:
            self.batch_api.create_namespaced_job(self.namespace, batch_job)
            log(f"kubernetes: created Job {self.namespace}/{name} ({completions} pods)")
            try:
                wait_until_done(lambda: job_state(self.batch_api.read_namespaced_job_status(name, self.namespace)
                                                  .status, completions),
                                self.poll_interval_s, self.timeout_s, f"Kubernetes Job {self.namespace}/{name}",
                                **({"sleep": self.sleep} if self.sleep else {}))
            finally:
                self.batch_api.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        finally:
            self.core_api.delete_namespaced_service(name, self.namespace)


__all__ = ["LaunchFailed", "PodShape", "pod_spec", "pod_manifest", "multi_node_manifests", "KubernetesJobRunner",
           "job_state", "rendezvous_host"]
