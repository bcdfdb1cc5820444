"""Training and evaluation as a subprocess that reports to Dagster through Pipes.

Run by :class:`pipelines.defs.resources.TrainingLauncher`, usually under ``accelerate launch``::

    accelerate launch --num_processes 2 -m pipelines.pipes_entry finetune -p params.yaml -o storage.root=/work

Every process trains; only global rank 0 (``RANK``, else ``LOCAL_RANK``, else 0) opens Dagster
Pipes, forwards progress records as log lines and reports the materialisation with its metadata
(counts, loss, MPJPE, a markdown MPJPE table, plots embedded as PNG) and a data version (hash of
the weights or metrics). Outside Dagster (no Pipes environment) it runs the same way and prints
the metadata as JSON, so DVC or a shell can call it too. Imports no Dagster, only dagster-pipes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dualpose.config import Params, load_params
from dualpose.layout import Layout
from pipelines.metadata import content_hash

STAGES = ("pretrain", "finetune", "evaluate")


def process_rank() -> int:
    """The global rank of this process under torchrun/accelerate (0 when launched alone)."""
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return 0


@contextlib.contextmanager
def pipes_session(rank: int) -> Iterator[Any]:
    """The Dagster Pipes context on rank 0 when Dagster launched us; None otherwise."""
    if rank != 0:
        yield None
        return
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    loader = PipesEnvVarParamsLoader()
    if not loader.is_dagster_pipes_process():
        yield None
        return
    with open_dagster_pipes(**s3_channels(loader.load_context_params(), loader.load_messages_params())) as pipes:
        yield pipes


def s3_channels(context_params: dict, messages_params: dict) -> dict:
    """S3 context loader / message writer when a remote launcher put the Pipes channels on S3.

    Remote launchers (Kubernetes, SkyPilot, SLURM) inject the context as an S3 object and read the
    messages from S3 chunks (``bucket`` + ``key``/``key_prefix`` in the bootstrap parameters); local
    launches use the default file channels. The boto3 client takes its endpoint and credentials from
    the usual ``AWS_*`` variables; ``DUALPOSE_PIPES_S3_INTERVAL`` sets seconds between uploads.
    """
    if "bucket" not in context_params and "bucket" not in messages_params:
        return {}
    import boto3
    from dagster_pipes import PipesS3ContextLoader, PipesS3MessageWriter

    client = boto3.client("s3")
    chosen: dict = {}
    if "bucket" in context_params:
        chosen["context_loader"] = PipesS3ContextLoader(client)
    if "bucket" in messages_params:
        interval = float(os.environ.get("DUALPOSE_PIPES_S3_INTERVAL", "10"))
        chosen["message_writer"] = PipesS3MessageWriter(client, interval=interval)
    return chosen


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def progress_logger(pipes: Any, stage: str) -> Callable[[dict], None]:
    """A library callback forwarding each log record (train/validation/evaluation) as one line."""

    def report(record: dict) -> None:
        if pipes is None:
            return
        fields = " ".join(f"{k}={_format(v)}" for k, v in record.items() if k not in ("kind",))
        pipes.log.info(f"{stage} {record.get('kind', '')}: {fields}")

    return report


# -- metadata ------------------------------------------------------------------------------------
def _md(text: str) -> dict:
    return {"raw_value": text, "type": "md"}


def _png(path: Path) -> dict:
    """A plot, reported by path: the asset embeds it after the subprocess ends (a base64 image inside a
    Pipes message can reach the reader half-written)."""
    return {"raw_value": str(path), "type": "path"}


def _num(value: Any) -> dict:
    if isinstance(value, bool):
        return {"raw_value": value, "type": "bool"}
    if isinstance(value, int):
        return {"raw_value": value, "type": "int"}
    try:
        f = float(value)
    except (TypeError, ValueError):
        return {"raw_value": str(value), "type": "text"}
    return {"raw_value": f if math.isfinite(f) else None, "type": "float" if math.isfinite(f) else "null"}


def _history(path: Path, kind: str, key: str) -> list[tuple[float, float]]:
    if not path.is_file():
        return []
    records = json.loads(path.read_text())
    return [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]


def _curve(series: dict[str, list], path: Path, title: str, ylabel: str) -> dict | None:
    from dualpose.eval.plots import plot_loss_curves

    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plot_loss_curves(series, path, title=title, ylabel=ylabel)
    return _png(path)


def pretrain_metadata(layout: Layout, result: dict) -> tuple[dict, str]:
    out = layout.model("pretrain")
    meta = {k: _num(result[k]) for k in ("steps", "final_loss", "final_target_var", "clips", "views", "processes")
            if k in result}
    curve = _curve({"CRL loss": _history(out / "history.json", "train", "loss")},
                   layout.run_dir("pretrain") / "plots" / "loss.png", "pretraining loss", "loss")
    if curve:
        meta["loss_curve"] = curve
    meta["weights"] = {"raw_value": str(out), "type": "path"}
    return meta, content_hash([out / "model.safetensors", out / "config.json"], root=out)


def finetune_metadata(layout: Layout, result: dict) -> tuple[dict, str]:
    out = layout.model("finetune")
    keys = ("steps", "init", "train_clips", "validation_clips", "best_val_mpjpe_mm", "best_epoch",
            "last_val_mpjpe_mm", "final_loss", "processes")
    meta = {k: _num(result[k]) if k != "init" else {"raw_value": str(result[k]), "type": "text"}
            for k in keys if k in result}
    plots = layout.run_dir("finetune") / "plots"
    history = out / "history.json"
    for name, series, title, ylabel in (
        ("loss_curve", {"training loss": _history(history, "train", "loss")}, "finetuning loss", "loss"),
        ("validation_curve", {"validation MPJPE": _history(history, "validation", "val_mpjpe_mm")},
         "validation MPJPE", "MPJPE (mm)"),
    ):
        curve = _curve(series, plots / f"{name}.png", title, ylabel)
        if curve:
            meta[name] = curve
    meta["weights"] = {"raw_value": str(out / "best"), "type": "path"}
    best = out / "best"
    return meta, content_hash([best / "model.safetensors", best / "config.json"], root=best)


def mpjpe_table(metrics: dict) -> str:
    """Markdown: the summary row (P1, P2, ...) and, when the data has actions, the per-action table."""
    from dualpose.eval.report import per_action_table, summary_table

    parts = [summary_table(metrics)]
    if metrics.get("per_action"):
        parts += ["", per_action_table(metrics)]
    return "\n".join(parts)


def evaluate_metadata(layout: Layout, result: dict, params: Params) -> tuple[dict, str]:
    metrics = result.get("metrics") or result["summary"]
    meta: dict[str, Any] = {}
    for key, value in result["summary"].items():
        meta[key] = _num(value)
    meta["mpjpe_table"] = _md(mpjpe_table(metrics))
    for plot in result.get("plots", []):
        path = Path(plot)
        if path.is_file():
            meta[f"plot_{path.stem}"] = _png(path)
    report = Path(result["report"])
    meta["report"] = {"raw_value": str(report), "type": "path"}
    meta["dataset"] = {"raw_value": params.train_dataset, "type": "text"}
    metrics_path = Path(result.get("metrics_path") or layout.eval_dir(params.train_dataset) / "metrics.json")
    return meta, content_hash([metrics_path], root=metrics_path.parent)


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.pipes_entry", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", "-p", default="params.yaml", type=Path)
    parser.add_argument("--override", "-o", action="append", default=[], dest="overrides")
    parser.add_argument("--resume", action="store_true", help="continue from the stage's last checkpoint")
    parser.add_argument("--weights", default="best", help="evaluate: best, last or a folder")
    parser.add_argument("--split", default="test", help="evaluate: test or validation")
    return parser.parse_args(argv)


def run_stage(args: argparse.Namespace, params: Params, layout: Layout, callback: Callable[[dict], None]) -> dict:
    if args.stage == "pretrain":
        from dualpose.train.pretrain import run_pretraining

        return run_pretraining(params, layout, resume=args.resume, callbacks=[callback])
    if args.stage == "finetune":
        from dualpose.train.finetune import run_finetuning

        return run_finetuning(params, layout, resume=args.resume, callbacks=[callback])
    from dualpose.eval.evaluate import run_evaluation

    return run_evaluation(params, layout, weights=args.weights, split=args.split, callbacks=[callback])


def stage_metadata(stage: str, params: Params, layout: Layout, result: dict) -> tuple[dict, str]:
    if stage == "pretrain":
        return pretrain_metadata(layout, result)
    if stage == "finetune":
        return finetune_metadata(layout, result)
    return evaluate_metadata(layout, result, params)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = process_rank()
    with pipes_session(rank) as pipes:
        params = load_params(args.params, args.overrides)
        layout = Layout.from_root(params.storage.root, base=args.params.resolve().parent)
        result = run_stage(args, params, layout, progress_logger(pipes, args.stage))
        if rank != 0:
            return 0
        metadata, version = stage_metadata(args.stage, params, layout, result)
        if pipes is not None:
            pipes.report_asset_materialization(metadata=metadata, data_version=version)
        else:
            shown = {k: v["raw_value"] for k, v in metadata.items() if v["type"] != "md" or len(v["raw_value"]) < 2000}
            print(json.dumps({"stage": args.stage, "data_version": version, **shown}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    from dualpose.train.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc(sys.argv[1:])  # CPU training under tcmalloc when installed, as the CLI
    sys.exit(main())
