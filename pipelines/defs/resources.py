"""Resources: the parameters (params.yaml), where artefacts live, and how training processes start.

- :class:`DualPoseConfig`: params.yaml plus ``key=value`` overrides, the file the CLI and DVC read.
- :class:`StorageResource`: the one place that decides where every artefact lives: a local folder
  (default: ``storage.root`` of params.yaml, relative to that file) or ``s3://bucket/prefix``
  (endpoint and credentials from the usual AWS variables, or ``endpoint_url``). Assets stage
  through it (:class:`pipelines.staging.ArtefactStore`).
- :class:`TrainingLauncher`: where and how :mod:`pipelines.pipes_entry` runs under Dagster Pipes.
  ``backend: local`` (default): a subprocess, ``accelerate launch`` (several processes with
  ``num_processes``), ``torchrun`` or plain ``python``. ``kubernetes``, ``skypilot``, ``slurm``: a
  remote job (:mod:`pipelines.launchers`) of ``nodes`` x ``gpus_per_node``, exchanging artefacts and
  Pipes messages through the S3 storage root. Chosen per deployment without code:
  ``$DUALPOSE_LAUNCHER`` names the backend and ``$DUALPOSE_LAUNCHER_CONFIG`` a YAML file of these
  fields (see ``infra/dagster/launcher-*.yaml``), or the resource's run config.
"""


import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

import dagster as dg
from pydantic import Field

from dualpose.config import Params, load_params
from dualpose.io.storage import Storage
from pipelines import settings
from pipelines.staging import ArtefactStore

ENTRY_MODULE = "pipelines.pipes_entry"


class DualPoseConfig(dg.ConfigurableResource):
    """params.yaml (``params_path``) with ``overrides`` such as ``finetune.epochs=3`` applied.

    Partitions (the data sets) are read from ``$DUALPOSE_PARAMS`` when the definitions load; the
    resource's file should be the same one (it is, unless a run's resource config changes it).
    """

    params_path: str = Field(description="params.yaml: the one source of truth shared with the CLI and DVC")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides, e.g. finetune.epochs=3")

    def load(self) -> Params:
        return load_params(self.params_path, self.overrides)

    @property
    def base_dir(self) -> Path:
        """The folder of params.yaml: relative paths in it are taken from here (as the CLI does)."""
        return Path(self.params_path).resolve().parent


class StorageResource(dg.ConfigurableResource):
    """Where artefacts live: ``root`` if given, else ``storage.root`` from params.yaml."""

    dualpose: DualPoseConfig
    root: str | None = Field(default=None, description="local folder or s3://bucket/prefix; default: params.yaml")
    work_dir: str | None = Field(default=None, description="parent of local staging folders for a remote root")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint (default: $AWS_ENDPOINT_URL)")

    def store(self, params: Params | None = None) -> ArtefactStore:
        root = self.root or (params or self.dualpose.load()).storage.root
        options = {"endpoint_url": self.endpoint_url} if self.endpoint_url else None
        storage = Storage(root, options, base_dir=self.dualpose.base_dir)
        return ArtefactStore(storage, Path(self.work_dir) if self.work_dir else None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LAUNCHER_ENV = "DUALPOSE_LAUNCHER"
LAUNCHER_CONFIG_ENV = "DUALPOSE_LAUNCHER_CONFIG"
BACKENDS = ("local", "kubernetes", "skypilot", "slurm")


class KubernetesSettings(dg.Config):
    """Pods for ``backend: kubernetes`` (one pod through dagster-k8s Pipes; several as an indexed Job)."""

    image: str = Field(default="ghcr.io/your-org/dualpose:latest", description="built from infra/docker/Dockerfile")
    namespace: str | None = Field(default=None, description="default: the current namespace, else 'default'")
    service_account: str | None = None
    env_from_secrets: list[str] = Field(default_factory=list, description="Secrets with AWS_* keys for S3")
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    shm_size: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(default_factory=list)
    load_incluster_config: bool | None = None
    kubeconfig_file: str | None = None
    kube_context: str | None = None
    poll_interval_s: float = 10.0
    timeout_s: float | None = None


class SkyPilotSettings(dg.Config):
    """``backend: skypilot``: the task file's setup/resources with the stage as its run section."""

    task: str = Field(default="infra/skypilot/train.yaml", description="relative to the repository root")
    cluster: str = "dualpose"
    managed: bool = Field(default=False, description="sky jobs launch (spot recovery) instead of a named cluster")
    accelerators: str | None = Field(default=None, description="e.g. H100:8; default: the task's type x gpus_per_node")
    idle_minutes_to_autostop: int = 10
    sky: str = "sky"
    poll_interval_s: float = 30.0
    timeout_s: float | None = None


class SlurmSettings(dg.Config):
    """``backend: slurm``: an sbatch script (one srun task per node) polled with squeue/sacct."""

    partition: str | None = None
    account: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = 16
    workdir: str | None = Field(default=None, description="the DualPose checkout/install on the cluster")
    setup: list[str] = Field(default_factory=list, description="shell lines before srun, e.g. venv activation")
    python: str = "python"
    output_dir: str | None = None
    script_dir: str | None = Field(default=None, description="where the sbatch scripts are written")
    sbatch: str = "sbatch"
    squeue: str = "squeue"
    sacct: str = "sacct"
    poll_interval_s: float = 30.0
    timeout_s: float | None = None


class TrainingLauncher(dg.ConfigurableResource):
    """How a training or evaluation subprocess starts (Dagster Pipes talks to its rank 0).

    ``accelerate``: ``accelerate launch --num_processes N``; with N > 1 several processes on one
    machine (on a CPU-only machine ACCELERATE_USE_CPU=1 is set so they form one gloo group).
    ``torchrun``: ``torchrun --nproc_per_node N``. ``python``: one plain process (fastest start).
    ``extra_args`` go to the launcher (e.g. ``["--mixed_precision", "bf16"]``), ``env`` to the
    processes; ``DUALPOSE_PROGRESS=0`` keeps progress bars out of Dagster's logs.
    """

    launcher: Literal["accelerate", "torchrun", "python"] = "accelerate"
    num_processes: int = Field(default=1, ge=1)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # -- remote backends ----------------------------------------------------------------------
    backend: str | None = Field(default=None, description="local, kubernetes, skypilot or slurm; "
                                "default: $DUALPOSE_LAUNCHER, else local")
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=1, ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        default="bf16", description="remote launchers: ACCELERATE_MIXED_PRECISION of the training processes")
    remote_env: dict[str, str] = Field(default_factory=dict, description="environment of every remote process")
    pipes_interval_s: float = Field(default=10.0, gt=0, description="seconds between Pipes message uploads")
    pipes_include_stdio: bool = Field(default=True, description="remote stdout/stderr into Dagster's logs")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    skypilot: SkyPilotSettings = Field(default_factory=SkyPilotSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None, **fields: Any) -> "TrainingLauncher":
        """The launcher a deployment asks for: ``$DUALPOSE_LAUNCHER_CONFIG`` (YAML of these fields), then
        ``$DUALPOSE_LAUNCHER`` (the backend), then ``fields``."""
        environ = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        path = environ.get(LAUNCHER_CONFIG_ENV)
        if path:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ValueError(f"{LAUNCHER_CONFIG_ENV}={path}: cannot read it: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{LAUNCHER_CONFIG_ENV}={path}: expected a mapping of launcher fields")
        if environ.get(LAUNCHER_ENV):
            data["backend"] = environ[LAUNCHER_ENV]
        launcher = cls(**{**data, **fields})
        launcher.resolved_backend(environ)
        return launcher

    def resolved_backend(self, environ: dict[str, str] | None = None) -> str:
        environ = os.environ if environ is None else environ
        backend = self.backend or environ.get(LAUNCHER_ENV) or "local"
        if backend not in BACKENDS:
            raise dg.Failure(f"launcher backend {backend!r} (from {'the resource' if self.backend else LAUNCHER_ENV}) "
                             f"is not one of {', '.join(BACKENDS)}")
        return backend

    @property
    def is_remote(self) -> bool:
        return self.resolved_backend() != "local"

    def entry_args(self, stage: str, config: DualPoseConfig, local_root: Path, extra: list[str]) -> list[str]:
        overrides = [*config.overrides, f"storage.root={json.dumps(str(local_root))}"]
        args = [stage, "--params", str(Path(config.params_path).resolve())]
        for item in overrides:
            args += ["--override", item]
        return args + extra

    def command(self, entry_args: list[str]) -> list[str]:
        n = self.num_processes
        if self.launcher == "python":
            if n != 1:
                raise ValueError(f"launcher 'python' runs one process; got num_processes={n} (use accelerate or torchrun)")
            return [sys.executable, "-m", ENTRY_MODULE, *entry_args]
        if self.launcher == "torchrun":
            return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr",
                    "127.0.0.1", "--master_port", str(_free_port()), *self.extra_args, "-m", ENTRY_MODULE, *entry_args]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
        if n > 1:
            cmd += ["--multi_gpu", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port())]
        return [*cmd, *self.extra_args, "-m", ENTRY_MODULE, *entry_args]

    def process_env(self) -> dict[str, str]:
        env = {"DUALPOSE_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(
            p for p in (str(settings.REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        if self.launcher != "python" and self.num_processes > 1 and not _cuda_available():
            env["ACCELERATE_USE_CPU"] = "1"
        return {**env, **self.env}

    def run(self, context: dg.AssetExecutionContext, entry_args: list[str],
            extras: dict | None = None) -> dg.PipesClientCompletedInvocation:
        command = self.command(entry_args)
        context.log.info("launching: " + " ".join(command))
        client = dg.PipesSubprocessClient()
        return client.run(context=context, command=command, env=self.process_env(), extras=extras)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location: params from ``$DUALPOSE_PARAMS`` (or the repository's)."""
    config = DualPoseConfig(params_path=str(settings.params_path()))
    return {
        "dualpose": config,
        "storage": StorageResource(dualpose=config),
        "launcher": TrainingLauncher.from_environment(),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources=default_resources())
