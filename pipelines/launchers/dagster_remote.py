"""The Dagster side of a remote stage: Pipes over S3, the parameters uploaded, the job submitted.

The context goes to ``<root>/launch/pipes/<random>/context.json`` (``PipesS3ContextInjector``) and
the remote rank 0 writes its messages (logs, the materialisation with its metadata) as numbered
chunks under ``<root>/launch/pipes/<random>/`` (``PipesS3MessageWriter``), which
:class:`PrefixedS3MessageReader` reads while the job runs: the same metadata, plots and log lines as
a local run, from any cluster that reaches the bucket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import yaml
from dagster_aws.pipes import PipesS3ContextInjector, PipesS3MessageReader

from dualpose.config import Params
from pipelines import settings
from pipelines.launchers import kubernetes as k8s
from pipelines.launchers import skypilot, slurm
from pipelines.launchers.job import LaunchFailed, RemoteJob, job_name
from pipelines.staging import ArtefactStore

if TYPE_CHECKING:
    from pipelines.defs.resources import TrainingLauncher

PIPES_PREFIX = "launch/pipes"


class PrefixedS3MessageReader(PipesS3MessageReader):
    """``PipesS3MessageReader`` whose chunks live under a prefix of the bucket (the storage root's)."""

    def __init__(self, *, prefix: str, **kwargs):
        super().__init__(**kwargs)
        self.prefix = prefix.strip("/")

    @contextlib.contextmanager
    def get_params(self):
        with super().get_params() as params:
            yield {**params, "key_prefix": f"{self.prefix}/{params['key_prefix']}" if self.prefix else
                   params["key_prefix"]}


def bucket_and_prefix(root: str) -> tuple[str, str]:
    if not root.startswith("s3://"):
        raise dg.Failure(f"remote launchers exchange artefacts and Pipes messages through S3, but the storage root "
                         f"is {root!r}; set storage.root (or the storage resource's root) to s3://bucket/prefix")
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def s3_client(store: ArtefactStore):
    import boto3

    endpoint = (store.storage.storage_options or {}).get("endpoint_url")
    return boto3.client("s3", **({"endpoint_url": endpoint} if endpoint else {}))


def pipes_channels(store: ArtefactStore, interval_s: float,
                   include_stdio: bool) -> tuple[PipesS3ContextInjector, PrefixedS3MessageReader]:
    bucket, prefix = bucket_and_prefix(store.root)
    client = s3_client(store)
    where = f"{prefix}/{PIPES_PREFIX}" if prefix else PIPES_PREFIX
    injector = PipesS3ContextInjector(bucket=bucket, client=client, key_prefix=f"{where}/")
    reader = PrefixedS3MessageReader(prefix=where, bucket=bucket, client=client, interval=interval_s,
                                     include_stdio_in_messages=include_stdio)
    return injector, reader


def upload_params(store: ArtefactStore, params: Params, name: str) -> None:
    """The run's resolved parameters (overrides applied) where every node can read them."""
    store.storage.write_text(name, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))


def remote_job(launcher: "TrainingLauncher", context: dg.AssetExecutionContext, stage: str, store: ArtefactStore,
               inputs: list, outputs: list, extra_args: list[str]) -> RemoteJob:
    run = context.run_id
    name = job_name("dualpose", stage, run[:8])
    env = {"DUALPOSE_PROGRESS": "0", "DUALPOSE_PIPES_S3_INTERVAL": f"{launcher.pipes_interval_s:g}",
           **({"ACCELERATE_MIXED_PRECISION": launcher.mixed_precision} if launcher.mixed_precision != "no" else {}),
           **launcher.remote_env}
    return RemoteJob(name=name, stage_args=(stage, *extra_args), root=store.root,
                     params_name=f"launch/{run}/{stage}/params.yaml", local_root=f"/tmp/dualpose/{name}",
                     inputs=tuple(Path(i).as_posix() for i in inputs),
                     outputs=tuple(Path(o).as_posix() for o in outputs),
                     nnodes=launcher.nodes, nproc_per_node=launcher.gpus_per_node or 1, env=env)


def pod_shape(launcher: "TrainingLauncher") -> k8s.PodShape:
    s = launcher.kubernetes
    return k8s.PodShape(image=s.image, gpus=launcher.gpus_per_node, gpu_resource=s.gpu_resource, cpu=s.cpu,
                        memory=s.memory, shm_size=s.shm_size, env_from_secrets=tuple(s.env_from_secrets),
                        service_account=s.service_account, node_selector=dict(s.node_selector),
                        tolerations=tuple(dict(t) for t in s.tolerations))


def run_remote(launcher: "TrainingLauncher", context: dg.AssetExecutionContext, stage: str, params: Params,
               store: ArtefactStore, inputs: list, outputs: list, extra_args: list[str],
               extras: dict) -> tuple[dg.PipesClientCompletedInvocation, RemoteJob]:
    """Run ``stage`` on the configured cluster; returns the Pipes invocation and the job that ran."""
    job = remote_job(launcher, context, stage, store, inputs, outputs, extra_args)
    upload_params(store, params, job.params_name)
    injector, reader = pipes_channels(store, launcher.pipes_interval_s, launcher.pipes_include_stdio)
    backend = launcher.resolved_backend()
    context.log.info(f"{backend}: {job.nnodes} node(s) x {job.nproc_per_node} process(es): {job.shell()}")
    try:
        if backend == "kubernetes" and job.nnodes == 1:
            from dagster_k8s import PipesK8sClient

            s = launcher.kubernetes
            client = PipesK8sClient(context_injector=injector, message_reader=reader,
                                    load_incluster_config=s.load_incluster_config, kubeconfig_file=s.kubeconfig_file,
                                    kube_context=s.kube_context, poll_interval=s.poll_interval_s)
            invocation = client.run(context=context, extras=extras, namespace=s.namespace,
                                    base_pod_meta={"labels": dict(k8s.LABELS)},
                                    base_pod_spec=k8s.pod_spec(job, pod_shape(launcher)),
                                    pod_wait_timeout=s.timeout_s or 0)
            return invocation, job
        with dg.open_pipes_session(context=context, extras=extras, context_injector=injector,
                                   message_reader=reader) as session:
            job = dataclasses.replace(job, env={**job.env, **session.get_bootstrap_env_vars()})
            _submit(launcher, backend, job, context)
        return dg.PipesClientCompletedInvocation(session), job
    except LaunchFailed as exc:
        raise dg.Failure(f"remote {stage} failed: {exc}") from None


def _submit(launcher: "TrainingLauncher", backend: str, job: RemoteJob, context) -> None:
    log = context.log.info
    if backend == "kubernetes":
        s = launcher.kubernetes
        core, batch = kubernetes_apis(s)
        runner = k8s.KubernetesJobRunner(core, batch, namespace=s.namespace or "default",
                                         poll_interval_s=s.poll_interval_s, timeout_s=s.timeout_s)
        runner.run(k8s.multi_node_manifests(job, pod_shape(launcher)), log=log)
    elif backend == "skypilot":
        s = launcher.skypilot
        task_path = Path(s.task) if Path(s.task).is_absolute() else settings.REPO_ROOT / s.task
        base = yaml.safe_load(task_path.read_text())
        task = skypilot.task_yaml(job, base, s.accelerators)
        if task.get("workdir") == ".":
            task["workdir"] = str(settings.REPO_ROOT)
        runner = skypilot.SkyPilotRunner(cluster=s.cluster, managed=s.managed, idle_minutes=s.idle_minutes_to_autostop,
                                         sky=s.sky, poll_interval_s=s.poll_interval_s, timeout_s=s.timeout_s)
        with tempfile.TemporaryDirectory(prefix="dualpose-sky-") as folder:
            runner.submit_and_wait(task, Path(folder) / f"{job.name}.yaml", log=log)
    elif backend == "slurm":
        s = launcher.slurm
        shape = slurm.SlurmShape(gpus_per_node=launcher.gpus_per_node, cpus_per_task=s.cpus_per_task, time=s.time,
                                 partition=s.partition, account=s.account, output_dir=s.output_dir, workdir=s.workdir,
                                 setup=tuple(s.setup), python=s.python)
        runner = slurm.SlurmRunner(poll_interval_s=s.poll_interval_s, timeout_s=s.timeout_s,
                                   commands={"sbatch": s.sbatch, "squeue": s.squeue, "sacct": s.sacct})
        folder = Path(s.script_dir or tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        runner.submit_and_wait(slurm.sbatch_script(job, shape), folder / f"{job.name}.sbatch", log=log)
    else:  # pragma: no cover - resolved_backend() validates
        raise LaunchFailed(f"unknown backend {backend!r}")


def kubernetes_apis(s) -> tuple:
    import kubernetes

    if s.load_incluster_config:
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=s.kubeconfig_file, context=s.kube_context)
    return kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()


@contextlib.contextmanager
def fetched(store: ArtefactStore, name: str) -> Iterator[Path | None]:
    """A stored file downloaded to a temporary folder (None when it is not there)."""
    with tempfile.TemporaryDirectory(prefix="dualpose-fetch-") as folder:
        target = Path(folder) / Path(name).name
        try:
            store.storage.get(name, target)
        except FileNotFoundError:
            yield None
            return
        yield target
