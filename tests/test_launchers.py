"""Remote training launchers: exact Kubernetes / SkyPilot / SLURM submissions, submit-poll-fail against
fake schedulers, Pipes messages over a moto S3 server from a separate process, and one stage run
end to end through ``dagster_k8s.PipesK8sClient`` with the pod executed on this machine."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest
import yaml

from pipelines.launchers import kubernetes as k8s
from pipelines.launchers import skypilot, slurm
from pipelines.launchers.job import LaunchFailed, RemoteJob, job_name
from pipelines.remote_stage import node_rank, parse_args, stage_command
from tests.pipelines_support import REPO_ROOT, make_resources, subprocess_env, tiny_params, write_params

pytestmark = pytest.mark.filterwarnings("ignore:.*expected_writer_count.*")
K8S_VERSION = "1.33"
ENV = {"ACCELERATE_MIXED_PRECISION": "bf16", "DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"}


def _job(nnodes=1, nproc=8, **kw):
    return RemoteJob(name="dualpose-finetune-abcd1234", stage_args=("finetune", "--resume"), root="s3://bucket/team",
                     params_name="launch/run-1/finetune/params.yaml",
                     local_root="/tmp/dualpose/dualpose-finetune-abcd1234",
                     inputs=("tables/synthetic", "models/pretrain"), outputs=("models/finetune", "runs/finetune"),
                     nnodes=nnodes, nproc_per_node=nproc, env=dict(ENV), **kw)


ARGV = ["python", "-m", "pipelines.remote_stage", "--root", "s3://bucket/team", "--params",
        "launch/run-1/finetune/params.yaml", "--local-root", "/tmp/dualpose/dualpose-finetune-abcd1234",
        "--input", "tables/synthetic", "--input", "models/pretrain", "--output", "models/finetune", "--output",
        "runs/finetune", "--nnodes", "1", "--nproc-per-node", "8", "--master-port", "29500", "--", "finetune",
        "--resume"]


def test_remote_job_command_and_names():
    assert _job().argv() == ARGV
    assert job_name("DualPose", "finetune", "3F2A_91b0-xx") == "dualpose-finetune-3f2a-91b0-xx"
    assert len(job_name("a" * 100)) == 52


def test_remote_stage_runs_torchrun_per_node():
    args, stage = parse_args(ARGV[3:])
    assert stage == ["finetune", "--resume"]
    params = Path("/tmp/p.yaml")
    one = stage_command(args, stage, params, rank=0, environ={})
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "8", "--standalone", "-m",
                       "pipelines.pipes_entry", "finetune", "--params", "/tmp/p.yaml", "--override",
                       "storage.root=/tmp/dualpose/dualpose-finetune-abcd1234", "--resume"]
    multi, _ = parse_args([*_job(nnodes=2).argv()[3:]])
    cmd = stage_command(multi, stage, params, rank=1, environ={"DUALPOSE_MASTER_ADDR": "10.0.0.7"})
    assert cmd[3:15] == ["--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.7",
                         "--master_port", "29500", "-m", "pipelines.pipes_entry"]
    with pytest.raises(SystemExit, match="2 nodes need --master-addr"):
        stage_command(multi, stage, params, rank=0, environ={})
    single, _ = parse_args([*_job(nproc=1).argv()[3:]])
    assert stage_command(single, stage, params, 0, {})[1:3] == ["-m", "pipelines.pipes_entry"]
    assert node_rank({"JOB_COMPLETION_INDEX": "3"}) == 3
    assert node_rank({"SKYPILOT_NODE_RANK": "1"}) == 1 and node_rank({"SLURM_NODEID": "2"}) == 2
    assert node_rank({}) == 0


# -- Kubernetes ----------------------------------------------------------------------------------------
SHAPE = k8s.PodShape(image="registry.example/dualpose:abc123", gpus=8, cpu="32", memory="256Gi", shm_size="32Gi",
                     env_from_secrets=("dualpose-s3",), service_account="dualpose-training",
                     node_selector={"nvidia.com/gpu.product": "H100"},
                     tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},))


def test_pod_spec_is_exact_and_valid():
    spec = k8s.pod_spec(_job(), SHAPE)
    assert spec == {
        "restartPolicy": "Never",
        "containers": [{
            "name": "dualpose",
            "image": "registry.example/dualpose:abc123",
            "command": ARGV,
            "env": [{"name": "ACCELERATE_MIXED_PRECISION", "value": "bf16"},
                    {"name": "DAGSTER_PIPES_CONTEXT", "value": "ctx"},
                    {"name": "DAGSTER_PIPES_MESSAGES", "value": "msg"}],
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
            "resources": {"limits": {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"},
                          "requests": {"cpu": "32", "memory": "256Gi"}},
            "envFrom": [{"secretRef": {"name": "dualpose-s3"}}],
        }],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}}],
        "serviceAccountName": "dualpose-training",
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    kubernetes_validate.validate(k8s.pod_manifest(_job(), SHAPE), K8S_VERSION, strict=True)
    broken = k8s.pod_manifest(_job(), SHAPE)
    broken["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = {"count": 8}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_multi_node_indexed_job_with_rendezvous():
    job = _job(nnodes=2)
    service, batch = k8s.multi_node_manifests(job, SHAPE, ttl_seconds=3600)
    for manifest in (service, batch):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"dualpose/job": job.name}
    assert batch["spec"]["completionMode"] == "Indexed"
    assert batch["spec"]["completions"] == batch["spec"]["parallelism"] == 2
    assert batch["spec"]["backoffLimit"] == 0 and batch["spec"]["ttlSecondsAfterFinished"] == 3600
    pod = batch["spec"]["template"]
    assert pod["metadata"]["labels"]["dualpose/job"] == job.name and pod["spec"]["subdomain"] == job.name
    container = pod["spec"]["containers"][0]
    assert container["command"] == [*ARGV[:-9], "--nnodes", "2", "--nproc-per-node", "8", "--master-port", "29500",
                                    "--master-addr", "dualpose-finetune-abcd1234-0.dualpose-finetune-abcd1234", "--",
                                    "finetune", "--resume"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["ports"] == [{"name": "rendezvous", "containerPort": 29500}]


class FakeBatchApi:
    def __init__(self, statuses):
        self.statuses, self.created, self.deleted = list(statuses), [], []

    def create_namespaced_job(self, namespace, body):
        self.created.append((namespace, body))

    def read_namespaced_job_status(self, name, namespace):
        class Job:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return Job

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        self.deleted.append((name, namespace, propagation_policy))


class FakeCoreApi:
    def __init__(self):
        self.created, self.deleted = [], []

    def create_namespaced_service(self, namespace, body):
        self.created.append((namespace, body))

    def delete_namespaced_service(self, name, namespace):
        self.deleted.append((name, namespace))


@pytest.mark.parametrize("statuses, error", [
    ([{"active": 2}, {"active": 1, "succeeded": 1}, {"succeeded": 2}], None),
    ([{"active": 2}, {"failed": 1, "active": 1}], "1 pod\\(s\\) failed"),
    ([{"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"}]}],
     "DeadlineExceeded too slow"),
])
def test_kubernetes_job_runner_polls_and_cleans_up(statuses, error):
    core, batch = FakeCoreApi(), FakeBatchApi(statuses)
    manifests = k8s.multi_node_manifests(_job(nnodes=2), SHAPE)
    runner = k8s.KubernetesJobRunner(core, batch, namespace="train", poll_interval_s=0, sleep=lambda s: None)
    if error:
        with pytest.raises(LaunchFailed, match=error):
            runner.run(manifests, log=lambda m: None)
    else:
        runner.run(manifests, log=lambda m: None)
    assert core.created == [("train", manifests[0])] and batch.created == [("train", manifests[1])]
    assert batch.deleted == [(manifests[1]["metadata"]["name"], "train", "Background")]  # removed either way
    assert core.deleted == [(manifests[0]["metadata"]["name"], "train")]


# -- fake scheduler executables ----------------------------------------------------------------------------
def _fake_bin(folder: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``folder`` running ``body`` (Python) with argv, logging every call."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\nfrom pathlib import Path\n"
                    f"STATE = Path({str(folder)!r})\n"
                    "with open(STATE / 'calls.jsonl', 'a') as log: log.write(json.dumps(sys.argv) + '\\n')\n"
                    + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def _calls(folder: Path) -> list[list[str]]:
    return [json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines()]


SKY = """
args = sys.argv[1:]
outcome = os.environ.get("FAKE_SKY_OUTCOME", "SUCCEEDED")
polls = STATE / "polls"
if args[:2] == ["jobs", "launch"] or args[0] == "launch":
    (STATE / "task.yaml").write_text(Path(args[-1]).read_text())
    print("Launching...\\n" + ("Managed job ID: 7" if args[0] == "jobs" else "Job submitted, ID: 3"))
else:
    n = int(polls.read_text()) if polls.exists() else 0
    polls.write_text(str(n + 1))
    status = "RUNNING" if n == 0 else outcome
    job = "7" if args[0] == "jobs" else "3"
    print("Fetching...\\nID  TASK  NAME                USER  SUBMITTED   STARTED     DURATION  RESOURCES   STATUS     LOG")
    print("2   -     old-job             me    1 day ago   1 day ago   1m        1x[H100:8]  FAILED     ~/l")
    print(f"{job}   -     dualpose-finetune   me    5 mins ago  4 mins ago  3m 2s     1x[H100:8]  {status:<10} ~/l")
"""


def test_skypilot_task_from_the_repository_recipe():
    base = yaml.safe_load((REPO_ROOT / "infra" / "skypilot" / "train.yaml").read_text())
    task = skypilot.task_yaml(_job(nnodes=2), base)
    assert task["name"] == "dualpose-finetune-abcd1234" and task["num_nodes"] == 2
    assert task["resources"] == {**base["resources"], "accelerators": "H100:8"}
    assert task["setup"] == base["setup"] and task["workdir"] == base["workdir"]
    assert task["envs"] == {**{k: v for k, v in base["envs"].items() if k not in ("STAGE", "STORAGE_ROOT", "PARAMS")},
                            **ENV}
    assert task["run"] == ("set -e\nexport DUALPOSE_MASTER_ADDR=$(echo \"$SKYPILOT_NODE_IPS\" | head -n1)\n"
                           + " ".join(_job(nnodes=2).argv()) + "\n")
    assert skypilot.task_yaml(_job(nproc=4), base, accelerators="A100-80GB:4")["resources"]["accelerators"] == \
        "A100-80GB:4"
    assert skypilot.task_yaml(_job(nproc=4), base)["resources"]["accelerators"] == "H100:4"


@pytest.mark.parametrize("managed", [False, True])
def test_skypilot_submit_and_poll_with_a_fake_sky(tmp_path, monkeypatch, managed):
    bin_dir = tmp_path / "bin"
    _fake_bin(bin_dir, "sky", SKY)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    base = yaml.safe_load((REPO_ROOT / "infra" / "skypilot" / "train.yaml").read_text())
    task = skypilot.task_yaml(_job(), base)
    runner = skypilot.SkyPilotRunner(cluster="dp-train", managed=managed, idle_minutes=15, poll_interval_s=0,
                                     sleep=lambda s: None)
    job_id = runner.submit_and_wait(task, tmp_path / "task.yaml", log=lambda m: None)
    assert job_id == ("7" if managed else "3")
    calls = [c[1:] for c in _calls(bin_dir)]
    launch = ["jobs", "launch", "-y", "-d", "-n", task["name"]] if managed else \
        ["launch", "-y", "-d", "-c", "dp-train", "-i", "15", "--down"]
    queue = ["jobs", "queue"] if managed else ["queue", "dp-train"]
    assert calls == [[*launch, str(tmp_path / "task.yaml")], queue, queue]
    assert yaml.safe_load((bin_dir / "task.yaml").read_text()) == task  # what sky received

    (bin_dir / "polls").unlink()
    monkeypatch.setenv("FAKE_SKY_OUTCOME", "FAILED_SETUP")
    with pytest.raises(LaunchFailed, match="failed with status FAILED_SETUP"):
        runner.submit_and_wait(task, tmp_path / "task.yaml", log=lambda m: None)


def test_skypilot_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sky at all
    runner = skypilot.SkyPilotRunner(cluster="c", poll_interval_s=0)
    with pytest.raises(LaunchFailed, match="`sky` is not installed or not on PATH"):
        runner.submit_and_wait({"name": "x"}, tmp_path / "t.yaml", log=lambda m: None)
    with pytest.raises(LaunchFailed, match="could not find the job id"):
        skypilot.submitted_job_id("sky: error: no cloud credentials")
    assert skypilot.queue_status("no table here", "3") is None


# -- SLURM --------------------------------------------------------------------------------------------------
SLURM_SHAPE = slurm.SlurmShape(gpus_per_node=4, cpus_per_task=32, time="12:00:00", partition="gpu", account="vision",
                               output_dir="/shared/logs/", workdir="/shared/dualpose",
                               setup=("source /shared/dualpose/.venv/bin/activate",), python="python3")


def test_sbatch_script_is_exact():
    job = _job(nnodes=2, nproc=4)
    assert slurm.sbatch_script(job, SLURM_SHAPE) == textwrap.dedent("""\
        #!/bin/bash
        #SBATCH --job-name=dualpose-finetune-abcd1234
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=1
        #SBATCH --cpus-per-task=32
        #SBATCH --time=12:00:00
        #SBATCH --gpus-per-node=4
        #SBATCH --partition=gpu
        #SBATCH --account=vision
        #SBATCH --output=/shared/logs/%x-%j.out
        set -euo pipefail
        cd /shared/dualpose
        source /shared/dualpose/.venv/bin/activate
        export ACCELERATE_MIXED_PRECISION=bf16
        export DAGSTER_PIPES_CONTEXT=ctx
        export DAGSTER_PIPES_MESSAGES=msg
        export DUALPOSE_MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
        """) + ("srun --kill-on-bad-exit=1 python3 -m pipelines.remote_stage --root s3://bucket/team --params "
                "launch/run-1/finetune/params.yaml --local-root /tmp/dualpose/dualpose-finetune-abcd1234 "
                "--input tables/synthetic --input models/pretrain --output models/finetune --output runs/finetune "
                "--nnodes 2 --nproc-per-node 4 --master-port 29500 -- finetune --resume\n")


SLURM_FAKES = {
    "sbatch": "(STATE / 'job.sbatch').write_text(Path(sys.argv[-1]).read_text())\nprint('4242;cluster-a')\n",
    "squeue": """
n = int((STATE / 'polls').read_text()) if (STATE / 'polls').exists() else 0
(STATE / 'polls').write_text(str(n + 1))
if n == 0:
    print('PENDING')
elif n == 1:
    print('RUNNING')
else:
    print('slurm_load_jobs error: Invalid job id specified', file=sys.stderr)
    sys.exit(1)
""",
    "sacct": "print(os.environ.get('FAKE_SACCT', 'COMPLETED|0:0'))\n",
}


@pytest.mark.parametrize("sacct, error", [("COMPLETED|0:0", None), ("FAILED|1:0", "FAILED \\(exit code 1:0\\)"),
                                          ("TIMEOUT|0:15", "TIMEOUT"), ("CANCELLED by 1000|0:15", "CANCELLED")])
def test_slurm_submit_poll_and_fail_with_fake_commands(tmp_path, monkeypatch, sacct, error):
    bin_dir = tmp_path / "bin"
    for name, body in SLURM_FAKES.items():
        _fake_bin(bin_dir, name, body)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SACCT", sacct)
    script = slurm.sbatch_script(_job(), SLURM_SHAPE)
    runner = slurm.SlurmRunner(poll_interval_s=0, sleep=lambda s: None)
    if error:
        with pytest.raises(LaunchFailed, match=f"SLURM job 4242 failed: {error}"):
            runner.submit_and_wait(script, tmp_path / "job.sbatch", log=lambda m: None)
    else:
        assert runner.submit_and_wait(script, tmp_path / "job.sbatch", log=lambda m: None) == "4242"
    assert (bin_dir / "job.sbatch").read_text() == script
    calls = [c[1:] for c in _calls(bin_dir)]
    squeue = ["-h", "-j", "4242", "-o", "%T"]
    assert calls == [["--parsable", str(tmp_path / "job.sbatch")], squeue, squeue, squeue,
                     ["-j", "4242", "-X", "-n", "-P", "-o", "State,ExitCode"]]


def test_slurm_parsing():
    assert slurm.submitted_job_id("Submitted\n123\n") == "123"
    with pytest.raises(LaunchFailed, match="sbatch printed no job id"):
        slurm.submitted_job_id("sbatch: error: invalid partition")
    assert slurm.final_state("") is None and slurm.final_state("RUNNING|0:0") is None
    assert slurm.final_state("OUT_OF_MEMORY|0:125") == "failed: OUT_OF_MEMORY (exit code 0:125)"


# -- choosing the launcher ----------------------------------------------------------------------------------
def test_launcher_from_environment_and_config_file(tmp_path):
    from pipelines.defs.resources import TrainingLauncher

    assert TrainingLauncher.from_environment({}).resolved_backend({}) == "local"
    config = tmp_path / "launcher.yaml"
    config.write_text(yaml.safe_dump({"backend": "kubernetes", "nodes": 2, "gpus_per_node": 8,
                                      "kubernetes": {"image": "r/dualpose:1", "env_from_secrets": ["s3"]}}))
    launcher = TrainingLauncher.from_environment({"DUALPOSE_LAUNCHER_CONFIG": str(config)})
    assert launcher.backend == "kubernetes" and launcher.nodes == 2 and launcher.kubernetes.image == "r/dualpose:1"
    assert launcher.kubernetes.env_from_secrets == ["s3"] and launcher.skypilot.task == "infra/skypilot/train.yaml"
    override = TrainingLauncher.from_environment({"DUALPOSE_LAUNCHER_CONFIG": str(config), "DUALPOSE_LAUNCHER": "slurm"})
    assert override.resolved_backend() == "slurm" and override.nodes == 2
    with pytest.raises(dg.Failure, match="launcher backend 'ray' .* is not one of local, kubernetes, skypilot, slurm"):
        TrainingLauncher.from_environment({"DUALPOSE_LAUNCHER": "ray"})
    with pytest.raises(ValueError, match="DUALPOSE_LAUNCHER_CONFIG=.*missing.yaml: cannot read it"):
        TrainingLauncher.from_environment({"DUALPOSE_LAUNCHER_CONFIG": str(tmp_path / "missing.yaml")})
    for example in sorted((REPO_ROOT / "infra" / "dagster").glob("launcher-*.yaml")):
        loaded = TrainingLauncher.from_environment({"DUALPOSE_LAUNCHER_CONFIG": str(example)})
        assert loaded.resolved_backend() == yaml.safe_load(example.read_text())["backend"], example


def test_remote_backend_refuses_a_local_storage_root(tmp_path, monkeypatch):
    from tests.pipelines_support import load_definitions

    params = write_params(tmp_path, tiny_params(tmp_path / "artifacts"))
    defs = load_definitions(monkeypatch, params)
    resources = make_resources(params)
    from pipelines.defs.resources import TrainingLauncher

    resources["launcher"] = TrainingLauncher(launcher="python", backend="slurm")
    result = dg.materialize([*defs.assets], resources=resources, selection=[dg.AssetKey("pretrained_weights")],
                            raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "remote launchers exchange artefacts and Pipes messages through S3" in failure


# -- Pipes over S3, from a separate process ----------------------------------------------------------------
WRITER = """
import sys
from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
from pipelines.pipes_entry import s3_channels
loader = PipesEnvVarParamsLoader()
channels = s3_channels(loader.load_context_params(), loader.load_messages_params())
assert set(channels) == {"context_loader", "message_writer"}, channels
with open_dagster_pipes(**channels) as pipes:
    assert pipes.extras["stage"] == "finetune", pipes.extras
    for step in range(3):
        pipes.log.info(f"finetune train: step={step} loss={1.0 / (step + 1):.3f}")
    pipes.report_asset_materialization(metadata={"best_val_mpjpe_mm": {"raw_value": 87.25, "type": "float"},
                                                 "steps": {"raw_value": 42, "type": "int"}},
                                       data_version="abc123")
"""


def test_s3_pipes_messages_round_trip_from_another_process(tmp_path):
    pytest.importorskip("s3fs")
    from dualpose.io.storage import Storage
    from pipelines.launchers.dagster_remote import pipes_channels
    from pipelines.staging import ArtefactStore
    from tests.servers import create_bucket, moto_s3

    seen = {}
    with moto_s3() as endpoint:
        create_bucket(endpoint, "pipes-bucket")
        store = ArtefactStore(Storage("s3://pipes-bucket/team/dualpose"))

        @dg.asset
        def remote_thing(context):
            injector, reader = pipes_channels(store, interval_s=0.2, include_stdio=False)
            with dg.open_pipes_session(context=context, context_injector=injector, message_reader=reader,
                                       extras={"stage": "finetune"}) as session:
                env = session.get_bootstrap_env_vars()
                seen["params"] = {k: json.loads(zlib.decompress(base64.b64decode(v))) for k, v in env.items()}
                done = subprocess.run([sys.executable, "-c", WRITER], capture_output=True, text=True, timeout=120,
                                      env=subprocess_env(**env, DUALPOSE_PIPES_S3_INTERVAL="0.2"))
                assert done.returncode == 0, done.stderr
            return dg.PipesClientCompletedInvocation(session).get_materialize_result()

        with dg.instance_for_test() as instance:
            result = dg.materialize([remote_thing], instance=instance)
            logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
        assert result.success
        import boto3

        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="pipes-bucket").get("Contents", [])]
    context_params = seen["params"]["DAGSTER_PIPES_CONTEXT"]
    message_params = seen["params"]["DAGSTER_PIPES_MESSAGES"]
    assert context_params["bucket"] == message_params["bucket"] == "pipes-bucket"
    assert context_params["key"].startswith("team/dualpose/launch/pipes/")
    assert context_params["key"].endswith("/context.json")
    assert message_params["key_prefix"].startswith("team/dualpose/launch/pipes/")
    assert any(k.startswith(message_params["key_prefix"] + "/") for k in keys)  # the chunks, under the root
    materialisation = result.asset_materializations_for_node("remote_thing")[0]
    assert materialisation.metadata["best_val_mpjpe_mm"].value == 87.25
    assert materialisation.metadata["steps"].value == 42
    assert materialisation.tags["dagster/data_version"] == "abc123"
    assert [m for m in logs if m.startswith("finetune train:")] == [  # the log lines, in order
        "finetune train: step=0 loss=1.000", "finetune train: step=1 loss=0.500", "finetune train: step=2 loss=0.333"]


# -- a stage end to end through dagster_k8s.PipesK8sClient, the pod run on this machine ----------------------
class LocalPods:
    """Stands in for the Kubernetes API: each created pod's first container runs here as a process."""

    def __init__(self, workdir: Path):
        self.workdir, self.created, self.deleted, self.processes = workdir, [], [], {}
        self.core_api = self

    def create_namespaced_pod(self, namespace, body):
        from kubernetes.client import ApiClient

        manifest = ApiClient().sanitize_for_serialization(body)
        self.created.append((namespace, manifest))
        container = manifest["spec"]["containers"][0]
        command = [sys.executable if c == "python" else c for c in container["command"]]
        env = subprocess_env(**{e["name"]: e["value"] for e in container.get("env", [])})
        log = open(self.workdir / f"{manifest['metadata']['name']}.log", "w")
        self.processes[manifest["metadata"]["name"]] = subprocess.Popen(command, env=env, stdout=log, stderr=log)

    def wait_for_pod(self, pod_name, namespace, wait_for_state=None, **kwargs):
        from dagster_k8s.client import DagsterK8sError, WaitForPodState

        if wait_for_state == WaitForPodState.Terminated:
            code = self.processes[pod_name].wait(timeout=600)
            if code != 0:
                raise DagsterK8sError(f"Pod did not exit successfully (exit code {code})")

    def delete_namespaced_pod(self, name, namespace):
        self.deleted.append((name, namespace))


def _prepare_on_s3(tmp_path: Path, root: str) -> None:
    """The tiny data set prepared locally with the library, then stored under an S3 root."""
    from dualpose.config import params_from_dict
    from dualpose.data.prepare import prepare_dataset
    from dualpose.io.storage import Storage
    from dualpose.layout import Layout
    from dualpose.stages import build_clips, build_masks

    local = tmp_path / "prepared"
    params = params_from_dict(tiny_params(local))
    layout = Layout(local)
    prepare_dataset(params, "synthetic", layout, tmp_path)
    build_clips(params, layout, "synthetic")
    build_masks(params, layout, "synthetic")
    storage = Storage(root)
    storage.put_dir(layout.tables("synthetic"), "tables/synthetic")
    storage.put(layout.clips("synthetic"), "clips/synthetic.parquet")
    storage.put(layout.masked("synthetic"), "masked/synthetic.parquet")


@pytest.mark.slow
def test_a_stage_runs_in_a_kubernetes_pod_through_s3_pipes(tmp_path, monkeypatch):
    pytest.importorskip("s3fs")
    from dagster_k8s import PipesK8sClient
    from dagster_k8s import pipes as k8s_pipes

    from dualpose.io.storage import Storage
    from pipelines.defs.resources import KubernetesSettings, TrainingLauncher
    from tests.pipelines_support import load_definitions
    from tests.servers import create_bucket, moto_s3

    root = "s3://dualpose-k8s/team"
    params = write_params(tmp_path, tiny_params(root))
    defs = load_definitions(monkeypatch, params)
    pods = LocalPods(tmp_path)
    monkeypatch.setattr(PipesK8sClient, "_load_k8s_config", lambda self: None)
    monkeypatch.setattr(k8s_pipes.DagsterKubernetesClient, "production_client", staticmethod(lambda: pods))
    launcher = TrainingLauncher(
        launcher="python", backend="kubernetes", gpus_per_node=1, mixed_precision="no", pipes_interval_s=0.5,
        remote_env={"OMP_NUM_THREADS": "1"},
        kubernetes=KubernetesSettings(image="registry.example/dualpose:test", namespace="train",
                                      env_from_secrets=["dualpose-s3"], poll_interval_s=0.1))
    with moto_s3():
        create_bucket(os.environ["AWS_ENDPOINT_URL"], "dualpose-k8s")
        _prepare_on_s3(tmp_path, root)
        resources = {**make_resources(params, work_dir=tmp_path / "work"), "launcher": launcher}
        selection = dg.AssetSelection.assets("pretrained_weights")
        result = dg.materialize([*defs.assets, *defs.asset_checks], resources=resources, selection=selection,
                                raise_on_error=False)
        assert result.success, (tmp_path / f"{pods.created[0][1]['metadata']['name']}.log").read_text()[-3000:]
        storage = Storage(root)
        metrics = json.loads(storage.read_text("models/pretrain/metrics.json"))
        stored_params = yaml.safe_load(storage.read_text(f"launch/{result.run_id}/pretrain/params.yaml"))

        # a failing stage (no finetuned weights to evaluate): the pod fails, the step fails, nothing is stored
        failed = dg.materialize([*defs.assets, *defs.asset_checks], resources=resources,
                                selection=dg.AssetSelection.assets("evaluation_report"), raise_on_error=False)
        assert not failed.success
        assert not storage.exists("eval/synthetic/metrics.json")

    # the pod that ran: image, GPUs, command, env (S3 Pipes channels under the root), secrets
    namespace, pod = pods.created[0]
    assert namespace == "train" and pods.deleted[0] == (pod["metadata"]["name"], "train")
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", **pod}, K8S_VERSION, strict=True)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/dualpose:test"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert container["envFrom"] == [{"secretRef": {"name": "dualpose-s3"}}]
    assert pod["spec"]["restartPolicy"] == "Never"
    name = container["command"][container["command"].index("--local-root") + 1].rsplit("/", 1)[1]
    assert container["command"] == [
        "python", "-m", "pipelines.remote_stage", "--root", root, "--params", f"launch/{result.run_id}/pretrain/params.yaml",
        "--local-root", f"/tmp/dualpose/{name}", "--input", "tables/synthetic", "--input", "clips/synthetic.parquet",
        "--input", "masked/synthetic.parquet", "--output", "models/pretrain", "--output", "runs/pretrain",
        "--nnodes", "1", "--nproc-per-node", "1", "--master-port", "29500", "--", "pretrain"]
    assert name == f"dualpose-pretrain-{result.run_id[:8]}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "1" and env["DUALPOSE_PIPES_S3_INTERVAL"] == "0.5"
    assert "ACCELERATE_MIXED_PRECISION" not in env  # mixed_precision: no
    channels = {k: json.loads(zlib.decompress(base64.b64decode(env[k])))
                for k in ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")}
    assert channels["DAGSTER_PIPES_CONTEXT"]["bucket"] == "dualpose-k8s"
    assert channels["DAGSTER_PIPES_CONTEXT"]["key"].startswith("team/launch/pipes/")
    assert channels["DAGSTER_PIPES_MESSAGES"]["key_prefix"].startswith("team/launch/pipes/")
    assert stored_params["train_dataset"] == "synthetic" and stored_params["model"]["overrides"]["dim"] == 16

    # what the UI shows: the same metadata as a local run, plots embedded, locations on S3
    done = result.asset_materializations_for_node("pretrained_weights")[0]
    assert done.metadata["final_loss"].value == pytest.approx(metrics["final_loss"])
    assert done.metadata["steps"].value == metrics["steps"] > 0
    assert "data:image/png;base64," in done.metadata["loss_curve"].value
    assert done.metadata["weights"].value == f"{root}/models/pretrain"
    assert done.metadata["launcher"].value == f"kubernetes: 1 x 1 ({name})"
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "weights_finite" and check.passed


# -- the other backends end to end: fake schedulers that really run the job on this machine ------------------
def _python_wrapper(bin_dir: Path) -> None:
    """``python`` on PATH that is this interpreter (what the image / cluster environment provides)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)


RUN_IN_BACKGROUND = """
import subprocess
def start(command, env, name):
    log = open(STATE / f"{name}.log", "w")
    wrapped = f"({command}); echo $? > {STATE / (name + '.exit')}"
    subprocess.Popen(["bash", "-c", wrapped], env=env, stdout=log, stderr=log, start_new_session=True)
def exit_code(name):
    path = STATE / f"{name}.exit"
    return int(path.read_text()) if path.exists() and path.read_text().strip() else None
"""

SLURM_RUNNING_FAKES = {
    "sbatch": RUN_IN_BACKGROUND + """
import shlex
start("bash " + shlex.quote(sys.argv[-1]), dict(os.environ, SLURM_JOB_NODELIST="node001", SLURM_NODEID="0"), "4243")
print("4243")
""",
    "squeue": RUN_IN_BACKGROUND + "print('RUNNING' if exit_code('4243') is None else '')\n",
    "sacct": RUN_IN_BACKGROUND + "code = exit_code('4243')\nprint('COMPLETED|0:0' if code == 0 else f'FAILED|{code}:0')\n",
    "scontrol": "print('127.0.0.1')\n",
    "srun": "args = sys.argv[1:]\nwhile args[0].startswith('--'):\n    args = args[1:]\nos.execvp(args[0], args)\n",
}

SKY_RUNNING = RUN_IN_BACKGROUND + """
import yaml
args = sys.argv[1:]
if args[0] == "launch":
    task = yaml.safe_load(Path(args[-1]).read_text())
    env = dict(os.environ, **{k: str(v) for k, v in task["envs"].items()}, SKYPILOT_NODE_RANK="0",
               SKYPILOT_NODE_IPS="127.0.0.1\\n", SKYPILOT_NUM_NODES=str(task["num_nodes"]))
    start(task["run"], env, "job5")
    print("Job submitted, ID: 5")
else:
    code = exit_code("job5")
    status = "RUNNING" if code is None else "SUCCEEDED" if code == 0 else "FAILED"
    print("ID  TASK  NAME      USER  SUBMITTED  STARTED  DURATION  RESOURCES  STATUS     LOG")
    print(f"5   -     dualpose  me    now        now      1s        1x[CPU:1]  {status:<10} ~/l")
"""


class LocalIndexedJob(LocalPods):
    """Stands in for the batch API: each index of an indexed Job runs here as a process (node rank =
    JOB_COMPLETION_INDEX), pod 0's DNS name answered by 127.0.0.1 and a free port for the rendezvous."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.jobs, self.services = [], []

    def create_namespaced_service(self, namespace, body):
        self.services.append((namespace, body))

    def delete_namespaced_service(self, name, namespace):
        self.deleted.append(("service", name))

    def create_namespaced_job(self, namespace, body):
        from tests.servers import free_port

        self.jobs.append((namespace, body))
        container = body["spec"]["template"]["spec"]["containers"][0]
        command = [sys.executable if c == "python" else c for c in container["command"]]
        command[command.index("--master-addr") + 1] = "127.0.0.1"
        command[command.index("--master-port") + 1] = str(free_port())
        local = command.index("--local-root") + 1
        for index in range(body["spec"]["completions"]):
            node = list(command)
            node[local] = f"{command[local]}-node{index}"  # two "nodes" on one machine: two folders
            env = subprocess_env(**{e["name"]: e["value"] for e in container["env"]},
                                 JOB_COMPLETION_INDEX=str(index))
            log = open(self.workdir / f"node{index}.log", "w")
            self.processes[index] = subprocess.Popen(node, env=env, stdout=log, stderr=log)

    def read_namespaced_job_status(self, name, namespace):
        codes = [p.poll() for p in self.processes.values()]
        status = {"succeeded": sum(c == 0 for c in codes), "failed": sum(c not in (None, 0) for c in codes)}
        return type("Job", (), {"status": status})

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        self.deleted.append(("job", name))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["kubernetes-2-nodes", "slurm", "skypilot"])
def test_remote_backends_run_a_stage_end_to_end(tmp_path, monkeypatch, backend):
    pytest.importorskip("s3fs")
    from dualpose.io.storage import Storage
    from pipelines.defs.resources import KubernetesSettings, SkyPilotSettings, SlurmSettings, TrainingLauncher
    from pipelines.launchers import dagster_remote
    from tests.pipelines_support import load_definitions
    from tests.servers import create_bucket, moto_s3

    root = "s3://dualpose-remote/e2e"
    params = write_params(tmp_path, tiny_params(root))
    defs = load_definitions(monkeypatch, params)
    bin_dir = tmp_path / "bin"
    _python_wrapper(bin_dir)
    common = dict(launcher="python", gpus_per_node=1, mixed_precision="no", pipes_interval_s=0.5,
                  remote_env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "DUALPOSE_PROGRESS": "0"})
    if backend == "kubernetes-2-nodes":
        cluster = LocalIndexedJob(tmp_path)
        monkeypatch.setattr(dagster_remote, "kubernetes_apis", lambda settings: (cluster, cluster))
        launcher = TrainingLauncher(backend="kubernetes", nodes=2, **common,
                                    kubernetes=KubernetesSettings(image="r/dualpose:t", namespace="train",
                                                                  poll_interval_s=0.2))
    elif backend == "slurm":
        for name, body in SLURM_RUNNING_FAKES.items():
            _fake_bin(bin_dir, name, body)
        launcher = TrainingLauncher(backend="slurm", **common,
                                    slurm=SlurmSettings(script_dir=str(tmp_path / "scripts"), poll_interval_s=0.2))
    else:
        _fake_bin(bin_dir, "sky", SKY_RUNNING)
        launcher = TrainingLauncher(backend="skypilot", **common,
                                    skypilot=SkyPilotSettings(cluster="dp", poll_interval_s=0.2))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with moto_s3():
        create_bucket(os.environ["AWS_ENDPOINT_URL"], "dualpose-remote")
        _prepare_on_s3(tmp_path, root)
        resources = {**make_resources(params, work_dir=tmp_path / "work"), "launcher": launcher}
        result = dg.materialize([*defs.assets, *defs.asset_checks], resources=resources,
                                selection=dg.AssetSelection.assets("pretrained_weights"), raise_on_error=False)
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.rglob("*.log")))
        assert result.success, logs
        metrics = json.loads(Storage(root).read_text("models/pretrain/metrics.json"))
    done = result.asset_materializations_for_node("pretrained_weights")[0]
    assert done.metadata["final_loss"].value == pytest.approx(metrics["final_loss"])
    assert done.metadata["processes"].value == metrics["processes"]
    assert "data:image/png;base64," in done.metadata["loss_curve"].value
    assert done.metadata["weights"].value == f"{root}/models/pretrain"
    assert done.metadata["launcher"].value.startswith(f"{launcher.backend}: {launcher.nodes} x 1 ")
    if backend == "kubernetes-2-nodes":
        assert metrics["processes"] == 2  # one process per node, one torchrun group
        assert [kind for kind, _ in cluster.deleted] == ["job", "service"]
        assert cluster.jobs[0][1]["spec"]["completions"] == 2
    else:
        assert metrics["processes"] == 1
