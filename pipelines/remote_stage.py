"""One training or evaluation stage on a remote node (a Kubernetes pod, a SkyPilot node, a SLURM task).

What every remote launcher starts on every node of a job::

    python -m pipelines.remote_stage --root s3://bucket/prefix --params launch/<run>/<stage>/params.yaml \\
        --local-root /tmp/dualpose/<run>/<stage> --input tables/synthetic --output models/finetune \\
        --nnodes 2 --nproc-per-node 8 -- finetune --resume

1. downloads the parameters and the stage's inputs from the storage root into ``--local-root``;
2. runs :mod:`pipelines.pipes_entry` there: one plain process for one process in all, otherwise
   ``torchrun`` (``--standalone`` on one node; on several, a static rendezvous at
   ``--master-addr``/``$DUALPOSE_MASTER_ADDR`` with this node's rank from the scheduler:
   ``JOB_COMPLETION_INDEX`` (Kubernetes indexed Job), ``SKYPILOT_NODE_RANK``, ``SLURM_NODEID`` or
   ``NODE_RANK``), so global rank 0 lives on node 0 and is the one process that talks to Dagster
   (through the S3 Pipes channels named in the inherited ``DAGSTER_PIPES_*`` variables);
3. when the stage succeeded, node 0 uploads the outputs to the storage root (nothing on failure).

The exit status is the stage's. Imports no Dagster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dualpose.io.storage import Storage
from pipelines.staging import ArtefactStore

NODE_RANK_VARIABLES = ("JOB_COMPLETION_INDEX", "SKYPILOT_NODE_RANK", "SLURM_NODEID", "NODE_RANK")
MASTER_ADDR_VARIABLE = "DUALPOSE_MASTER_ADDR"
ENTRY_MODULE = "pipelines.pipes_entry"


def node_rank(environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    for name in NODE_RANK_VARIABLES:
        if environ.get(name, "") != "":
            return int(environ[name])
    return 0


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("remote_stage: the stage arguments follow `--`, e.g. `-- finetune --resume`")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m pipelines.remote_stage", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="storage root (s3://bucket/prefix or a shared folder)")
    parser.add_argument("--params", required=True, help="params.yaml: a name under the root")
    parser.add_argument("--local-root", required=True, type=Path)
    parser.add_argument("--input", action="append", default=[], dest="inputs")
    parser.add_argument("--output", action="append", default=[], dest="outputs")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--master-addr", default=None)
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--keep", action="store_true", help="keep the local folder afterwards")
    return parser.parse_args(argv[:split]), argv[split + 1:]


def stage_command(args: argparse.Namespace, stage_args: list[str], params_file: Path, rank: int,
                  environ: dict[str, str] | None = None) -> list[str]:
    """The command that runs the stage on this node (plain python, or torchrun for several processes)."""
    environ = os.environ if environ is None else environ
    entry = [stage_args[0], "--params", str(params_file), "--override", f"storage.root={args.local_root}",
             *stage_args[1:]]
    if args.nnodes == 1 and args.nproc_per_node == 1:
        return [sys.executable, "-m", ENTRY_MODULE, *entry]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc_per_node)]
    if args.nnodes == 1:
        run += ["--standalone"]
    else:
        master = args.master_addr or environ.get(MASTER_ADDR_VARIABLE)
        if not master:
            raise SystemExit(f"remote_stage: {args.nnodes} nodes need --master-addr or ${MASTER_ADDR_VARIABLE}")
        run += ["--nnodes", str(args.nnodes), "--node_rank", str(rank), "--master_addr", master,
                "--master_port", str(args.master_port)]
    return [*run, "-m", ENTRY_MODULE, *entry]


def main(argv: list[str] | None = None) -> int:
    args, stage_args = parse_args(argv)
    if not stage_args:
        raise SystemExit("remote_stage: no stage after `--`")
    rank = node_rank()
    store = ArtefactStore(Storage(args.root))
    local = args.local_root
    local.mkdir(parents=True, exist_ok=True)
    params_file = local / "params.yaml"
    store.storage.get(args.params, params_file)
    try:
        for name in args.inputs:
            store.download(name, local)
        command = stage_command(args, stage_args, params_file, rank)
        print(f"remote_stage node {rank}: " + " ".join(command), flush=True)
        code = subprocess.call(command, env={**os.environ, "DUALPOSE_PROGRESS": "0"})
        if code == 0 and rank == 0:
            for name in args.outputs:
                store.upload(local, name)
        return code
    finally:
        if not args.keep:
            shutil.rmtree(local, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
