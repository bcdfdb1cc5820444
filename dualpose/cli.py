"""The ``dualpose`` command line: what DVC stages and Dagster assets call.

Every command reads params.yaml (``--params``) and accepts ``-o key.sub=value`` overrides.
Training commands run in the current process; start them under ``accelerate launch`` (or
``torchrun``) for several processes or GPUs: ``accelerate launch -m dualpose.cli finetune``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from dualpose.errors import DualPoseError


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one ``error:`` line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
            from typer._click.exceptions import UsageError
        except ImportError:  # pragma: no cover - older typer
            from click import UsageError
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "dualpose"
            typer.secho(f"error: {command}: {exc.format_message()}", fg=typer.colors.RED, err=True)
            code = 2
        except typer.Abort:
            typer.secho("aborted", fg=typer.colors.RED, err=True)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_OneLineErrors,
                  help="DualPose: 3D human pose lifting with CRL pretraining.")

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="Parameters file (params.yaml).")
OverrideOpt = typer.Option(None, "--override", "-o", help="Override a parameter: -o finetune.epochs=3 (repeatable).")


def _context(params_path: Path, overrides: list[str] | None):
    from dualpose.config import load_params
    from dualpose.layout import Layout

    params = load_params(params_path, overrides)
    base = params_path.resolve().parent
    return params, Layout.from_root(params.storage.root, base=base), base


def error_line(exc: BaseException) -> str:
    """One line saying what went wrong and where (file, field), for any exception."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and not isinstance(exc, DualPoseError) and exc.strerror:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        hint = {errno.ENOSPC: " (the disk is full)", errno.EROFS: " (read-only file system)",
                errno.EACCES: " (no permission)", errno.ENOTDIR: " (a file is where a folder is expected)",
                errno.EISDIR: " (a folder is where a file is expected)",
                errno.EEXIST: " (a file is where a folder is expected)"}.get(exc.errno or 0, "")
        text = f"{where}: {exc.strerror}{hint}" if where else f"{exc.strerror}{hint}"
    elif isinstance(exc, MemoryError):
        text = "out of memory (the input asks for more than this machine has)"
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply"
    else:
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, (DualPoseError, ValueError, OSError)):
            text = f"{type(exc).__name__}: {text} (set DUALPOSE_DEBUG=1 for the traceback)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")) if lines else type(exc).__name__


def _run(fn):
    """Run a command body; print any error as one line (no traceback) and exit 2.

    ``DUALPOSE_DEBUG=1`` lets unexpected errors raise with their traceback instead.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return fn()
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.RED, err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # every failure ends as one plain line, exit 2
        if os.environ.get("DUALPOSE_DEBUG") and not isinstance(exc, DualPoseError):
            raise
        typer.secho(f"error: {error_line(exc)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _datasets(params, names: list[str] | None) -> list[str]:
    return list(names) if names else list(params.enabled_datasets())


@app.command()
def prepare(datasets: Optional[list[str]] = typer.Argument(None, help="Data sets (default: every enabled one)."),
            params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt):
    """Download (if needed) and convert data sets into Parquet keypoint tables."""
    def body():
        from dualpose.data.prepare import prepare_dataset

        params, layout, base = _context(params_path, overrides)
        for name in _datasets(params, datasets):
            result = prepare_dataset(params, name, layout, base)
            typer.echo(f"{name}: {result.rows} frames in {len(result.parts)} tables, {result.videos} videos "
                       f"({', '.join(f'{k} {v}' for k, v in result.splits.items())}) -> {result.folder}")
    _run(body)


@app.command()
def fetch(datasets: Optional[list[str]] = typer.Argument(None, help="Data sets (default: every enabled one)."),
          params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt):
    """Download (if needed) raw files and link them under raw/<dataset>/sources (what DVC tracks)."""
    def body():
        from dualpose.data.prepare import link_sources

        params, layout, base = _context(params_path, overrides)
        for name in _datasets(params, datasets):
            typer.echo(f"{name}: raw files -> {link_sources(params, name, layout, base)}")
    _run(body)


@app.command()
def clips(datasets: Optional[list[str]] = typer.Argument(None), params_path: Path = ParamsOpt,
          overrides: Optional[list[str]] = OverrideOpt):
    """Build the clip index (windows of T frames, train/validation/test splits)."""
    def body():
        from dualpose.stages import build_clips

        params, layout, _ = _context(params_path, overrides)
        for name in _datasets(params, datasets):
            summary = build_clips(params, layout, name)
            typer.echo(f"{name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    _run(body)


@app.command()
def mask(datasets: Optional[list[str]] = typer.Argument(None), params_path: Path = ParamsOpt,
         overrides: Optional[list[str]] = OverrideOpt):
    """Generate the masked 2D inputs that pretraining consumes."""
    def body():
        from dualpose.stages import build_masks

        params, layout, _ = _context(params_path, overrides)
        for name in _datasets(params, datasets):
            summary = build_masks(params, layout, name)
            typer.echo(f"{name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    _run(body)


@app.command()
def pretrain(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
             fresh: bool = typer.Option(False, help="Ignore existing checkpoints and start over.")):
    """CRL pretraining on masked 2D inputs (EMA teacher self-distillation)."""
    def body():
        from dualpose.train.pretrain import run_pretraining

        params, layout, _ = _context(params_path, overrides)
        result = run_pretraining(params, layout, resume=not fresh)
        typer.echo(json.dumps(result, indent=1))
    _run(body)


@app.command()
def finetune(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
             fresh: bool = typer.Option(False, help="Ignore existing checkpoints and start over.")):
    """Supervised 3D lifting, from the pretrained backbone or from scratch (finetune.init)."""
    def body():
        from dualpose.train.finetune import run_finetuning

        params, layout, _ = _context(params_path, overrides)
        result = run_finetuning(params, layout, resume=not fresh)
        typer.echo(json.dumps(result, indent=1))
    _run(body)


@app.command()
def evaluate(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
             weights: str = typer.Option("best", help="Finetuned weights to evaluate: best or last, or a folder."),
             split: str = typer.Option("test", help="Split to evaluate (test or validation).")):
    """Evaluate the finetuned lifter: P1, P2, N-MPJPE, MPJVE, accel, per action/joint, PCK/AUC."""
    def body():
        from dualpose.eval.evaluate import run_evaluation
        from dualpose.io.weights_check import check_weights_config

        params, layout, _ = _context(params_path, overrides)
        folder = layout.model("finetune") / weights if weights in ("best", "last") else Path(weights)
        check_weights_config(folder)  # a config asking for a huge model is refused before it is built
        result = run_evaluation(params, layout, weights=weights, split=split)
        typer.echo(json.dumps(result["summary"], indent=1))
    _run(body)


@app.command("run")
def run_all(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt):
    """Everything end to end: prepare -> clips -> mask -> pretrain -> finetune -> evaluate."""
    def body():
        from dualpose.data.prepare import prepare_dataset
        from dualpose.eval.evaluate import run_evaluation
        from dualpose.stages import build_clips, build_masks
        from dualpose.train.finetune import run_finetuning
        from dualpose.train.pretrain import run_pretraining

        params, layout, base = _context(params_path, overrides)
        name = params.train_dataset
        typer.secho(f"[1/6] prepare {name}", bold=True)
        prepared = prepare_dataset(params, name, layout, base)
        typer.echo(f"  {prepared.rows} frames, {prepared.videos} videos -> {prepared.folder}")
        typer.secho("[2/6] clips", bold=True)
        typer.echo(f"  {build_clips(params, layout, name)}")
        typer.secho("[3/6] masked 2D inputs", bold=True)
        typer.echo(f"  {build_masks(params, layout, name)}")
        typer.secho("[4/6] CRL pretraining", bold=True)
        run_pretraining(params, layout, resume=False)
        typer.secho("[5/6] finetuning", bold=True)
        run_finetuning(params, layout, resume=False)
        typer.secho("[6/6] evaluation", bold=True)
        result = run_evaluation(params, layout)
        typer.echo(f"  report: {result['report']}")
        typer.echo(json.dumps(result["summary"], indent=1))
    _run(body)


@app.command()
def predict(keypoints: Path = typer.Argument(..., help="Detector output: a JSON file of 2D keypoints."),
            out: Path = typer.Option(Path("prediction.npz"), "--out", help="Where to write the 3D poses (.npz)."),
            fmt: str = typer.Option("coco17", "--format", help="coco17, halpe26 or blazepose33."),
            weights: Path = typer.Option(Path("artifacts/models/finetune/best"), help="Finetuned weights folder."),
            width: Optional[int] = typer.Option(None, help="Image width in pixels (if the file lacks it)."),
            height: Optional[int] = typer.Option(None, help="Image height in pixels (if the file lacks it)."),
            fps: float = typer.Option(30.0, help="Frame rate when the file lacks it (recorded only)."),
            subject_height_mm: float = typer.Option(1700.0, help="Assumed stature for the millimetre output."),
            flip: bool = typer.Option(True, help="Flip test-time augmentation.")):
    """Lift your own 2D keypoint sequence to root-relative 3D poses (normalised and millimetres)."""
    def body():
        from dualpose.infer import lift_keypoints_file, save_prediction

        _check_predict_options(keypoints, out, fmt, weights, width, height, fps, subject_height_mm)
        result = lift_keypoints_file(keypoints, weights, fmt, width, height, fps, subject_height_mm, flip)
        save_prediction(result, out)
        typer.echo(f"{len(result['poses_3d'])} frames -> {out} (poses_3d: normalised, poses_3d_mm: scaled to a "
                   f"{subject_height_mm:.0f} mm stature; root-relative, camera axes x right, y down, z forward)")
    _run(body)


def _check_predict_options(keypoints: Path, out: Path, fmt: str, weights: Path, width: int | None,
                           height: int | None, fps: float, subject_height_mm: float) -> None:
    """Refuse bad ``predict`` options before any work, naming the option."""
    import math

    from dualpose.errors import ConfigError

    formats = ("coco17", "halpe26", "blazepose33")

    if not keypoints.is_file():
        raise ConfigError(f"{keypoints}: KEYPOINTS: no such file" + (" (it is a folder)" if keypoints.is_dir() else ""))
    if fmt not in formats:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(formats)}")
    for name, value in (("--width", width), ("--height", height)):
        if value is not None and not 0 < value <= 100_000:
            raise ConfigError(f"{name} {value}: expected an image size in pixels, 1 to 100000")
    if not (math.isfinite(fps) and 0 < fps <= 10_000):
        raise ConfigError(f"--fps {fps}: expected a finite frame rate > 0")
    if not (math.isfinite(subject_height_mm) and 300 <= subject_height_mm <= 3000):
        raise ConfigError(f"--subject-height-mm {subject_height_mm}: expected a stature in millimetres, 300 to 3000")
    if out.suffix.lower() != ".npz":
        raise ConfigError(f"--out {out}: expected a file name ending in .npz")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; expected a file name ending in .npz")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    if out.resolve() == keypoints.resolve():
        raise ConfigError(f"--out {out}: would overwrite the input keypoints")
    if not weights.exists():
        raise ConfigError(f"--weights {weights}: no such weights folder (train one with `dualpose finetune`)")


@app.command("model-info")
def model_info(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
               variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="Only these variants.")):
    """Parameters and multiply-accumulates per clip and per frame, for every model variant."""
    def body():
        from dualpose.model.info import format_model_info
        from dualpose.model.info import model_info as info

        rows = info(variant or None)
        typer.echo(json.dumps(rows, indent=1) if as_json else format_model_info(rows))
    _run(body)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # ``accelerate launch -m dualpose.cli ...``
    sys.exit(app())
