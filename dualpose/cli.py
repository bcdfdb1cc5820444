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


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)


def _echo_result(result: dict, indent: str = "  ") -> None:
    """A stage's result as ``key: value`` lines (numbers rounded; nested parts left to the files)."""
    for key, value in result.items():
        if isinstance(value, (dict, list, tuple)):
            continue
        typer.echo(f"{indent}{key.replace('_', ' ')}: {_value(value)}")


def _echo_evaluation(result: dict) -> None:
    m = result["metrics"]
    if m.get("model"):
        typer.echo(f"  model: {m['model']}")
    typer.echo("  " + ", ".join(f"{label} {_value(m[k])} mm" for k, label in
                                (("mpjpe_mm", "P1"), ("p_mpjpe_mm", "P2"), ("n_mpjpe_mm", "N-MPJPE"))
                                if m.get(k) is not None))
    if m.get("baseline_mean_pose_mpjpe_mm") is not None:
        typer.echo(f"  mean-pose baseline P1 {_value(m['baseline_mean_pose_mpjpe_mm'])} mm")
    typer.echo(f"  report: {result['report']}")


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
        typer.echo("pretraining done")
        _echo_result(result)
    _run(body)


@app.command()
def finetune(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
             fresh: bool = typer.Option(False, help="Ignore existing checkpoints and start over.")):
    """Supervised 3D lifting, from the pretrained backbone or from scratch (finetune.init)."""
    def body():
        from dualpose.train.finetune import run_finetuning

        params, layout, _ = _context(params_path, overrides)
        result = run_finetuning(params, layout, resume=not fresh)
        typer.echo("finetuning done")
        _echo_result(result)
    _run(body)


@app.command()
def evaluate(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
             weights: str = typer.Option("champion", help="Weights to evaluate: champion (the promoted model; "
                                         "models/finetune/best when there is none), best, last, or a folder."),
             split: str = typer.Option("test", help="Split to evaluate (test or validation).")):
    """Evaluate the finetuned lifter: P1, P2, N-MPJPE, MPJVE, accel, per action/joint, PCK/AUC."""
    def body():
        from dualpose.eval.evaluate import run_evaluation
        from dualpose.io.weights_check import check_weights_config
        from dualpose.registry import resolve_weights

        params, layout, base = _context(params_path, overrides)
        chosen = str(resolve_weights(params.storage.root, weights, base)) if weights == "champion" else weights
        folder = layout.model("finetune") / chosen if chosen in ("best", "last") else Path(chosen)
        check_weights_config(folder)  # a config asking for a huge model is refused before it is built
        result = run_evaluation(params, layout, weights=chosen, split=split)
        typer.echo(f"evaluation of {params.train_dataset} ({split})")
        _echo_evaluation(result)
    _run(body)


@app.command("run")
def run_all(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt):
    """Everything end to end: prepare -> clips -> mask -> pretrain -> finetune -> evaluate."""
    def body():
        from dualpose.data.prepare import link_sources, prepare_dataset
        from dualpose.eval.evaluate import run_evaluation
        from dualpose.stages import build_clips, build_masks
        from dualpose.train.finetune import run_finetuning
        from dualpose.train.pretrain import run_pretraining

        params, layout, base = _context(params_path, overrides)
        name = params.train_dataset
        typer.secho(f"[1/6] prepare {name}", bold=True)
        link_sources(params, name, layout, base)  # as `dvc repro`'s fetch stage, so dvc.lock matches a run
        prepared = prepare_dataset(params, name, layout, base)
        typer.echo(f"  {prepared.rows} frames, {prepared.videos} videos -> {prepared.folder}")
        typer.secho("[2/6] clips", bold=True)
        typer.echo("  " + ", ".join(f"{k} {v}" for k, v in build_clips(params, layout, name).items()))
        typer.secho("[3/6] masked 2D inputs", bold=True)
        typer.echo("  " + ", ".join(f"{k} {v}" for k, v in build_masks(params, layout, name).items()))
        typer.secho("[4/6] CRL pretraining", bold=True)
        _echo_result(run_pretraining(params, layout, resume=False))
        typer.secho("[5/6] finetuning", bold=True)
        _echo_result(run_finetuning(params, layout, resume=False))
        typer.secho("[6/6] evaluation", bold=True)
        _echo_evaluation(run_evaluation(params, layout, weights="best"))  # the model just trained, as dvc.yaml
    _run(body)


@app.command()
def predict(keypoints: Path = typer.Argument(..., help="Detector output: a JSON file of 2D keypoints."),
            out: Path = typer.Option(Path("prediction.npz"), "--out", help="Where to write the 3D poses (.npz)."),
            fmt: str = typer.Option("coco17", "--format", help="coco17, halpe26 or blazepose33."),
            weights: Optional[Path] = typer.Option(None, help="Weights folder (default: the champion of the "
                                                   "params file's storage root, else its models/finetune/best)."),
            params_path: Path = ParamsOpt,
            width: Optional[int] = typer.Option(None, help="Image width in pixels (if the file lacks it)."),
            height: Optional[int] = typer.Option(None, help="Image height in pixels (if the file lacks it)."),
            fps: float = typer.Option(30.0, help="Frame rate when the file lacks it (recorded only)."),
            subject_height_mm: float = typer.Option(1700.0, help="Assumed stature for the millimetre output."),
            flip: bool = typer.Option(True, help="Flip test-time augmentation.")):
    """Lift your own 2D keypoint sequence to root-relative 3D poses (normalised and millimetres)."""
    def body():
        from dualpose.infer import lift_keypoints_file, save_prediction

        chosen = weights
        if chosen is None:
            from dualpose.config import load_params
            from dualpose.registry import resolve_weights

            root = load_params(params_path).storage.root if params_path.is_file() else "artifacts"
            chosen = resolve_weights(root, "champion", params_path.resolve().parent)
        _check_predict_options(keypoints, out, fmt, Path(chosen), width, height, fps, subject_height_mm)
        result = lift_keypoints_file(keypoints, chosen, fmt, width, height, fps, subject_height_mm, flip)
        save_prediction(result, out)
        typer.echo(f"{len(result['poses_3d'])} frames -> {out} (poses_3d: normalised, poses_3d_mm: scaled to a "
                   f"{subject_height_mm:.0f} mm stature; root-relative, camera axes x right, y down, z forward)")
    _run(body)


@app.command()
def infer(source: Path = typer.Argument(..., help="A video file, a folder of images, or a keypoint JSON file."),
          out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <source>_3d)."),
          weights: Optional[str] = typer.Option(None, help="Weights folder or name (default: the packaged "
                                                "dualpose-xs-cmu; see `dualpose weights list`)."),
          fmt: str = typer.Option("coco17", "--format", help="Keypoint file format: coco17, halpe26, blazepose33."),
          person: str = typer.Option("all", help="Which tracks: all, longest, largest, central, first or id:N."),
          fps: Optional[float] = typer.Option(None, help="Source frame rate (overrides the file's; needed for "
                                              "image folders). Tracks are resampled to the model's rate."),
          width: Optional[int] = typer.Option(None, help="Image width for keypoint files that lack it."),
          height: Optional[int] = typer.Option(None, help="Image height for keypoint files that lack it."),
          stature_mm: Optional[float] = typer.Option(None, help="Subject's stature for the metric scale "
                                                     "(default 1700, recorded as assumed)."),
          focal_px: Optional[float] = typer.Option(None, help="Camera focal length in pixels (root trajectory)."),
          cx: Optional[float] = typer.Option(None, help="Principal point x in pixels (default: image centre)."),
          cy: Optional[float] = typer.Option(None, help="Principal point y in pixels (default: image centre)."),
          smooth: bool = typer.Option(False, help="Also write One-Euro smoothed poses (raw ones are kept)."),
          bones: str = typer.Option("fixed", help="fixed: one length per bone per track, imposed on every frame "
                                    "(unconstrained 3D kept as *_raw); raw: as lifted."),
          render: bool = typer.Option(False, help="Render render.mp4: video + 2D overlay beside the 3D view."),
          viewer: bool = typer.Option(True, help="Write viewer.html, an offline interactive 3D viewer."),
          formats: str = typer.Option("npz,parquet,csv,json", help="Comma-separated output formats."),
          flip: bool = typer.Option(True, help="Flip test-time augmentation."),
          stride: Optional[int] = typer.Option(None, help="Lifting windows every N frames "
                                               "(default T/3; T: 3x faster)."),
          blend: str = typer.Option("taper", help="How overlapping windows combine: taper (fade in and out, "
                                    "no steps at window edges) or uniform (plain mean, as evaluation)."),
          device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
          max_frames: Optional[int] = typer.Option(None, help="Only the first N frames of a video."),
          detector_python: Optional[str] = typer.Option(None, envvar="DUALPOSE_MEDIAPIPE_PYTHON",
                                                        help="Python of a separate MediaPipe environment "
                                                        "(MediaPipe needs protobuf<5); see docs/video.md.")):
    """Video / images / keypoints -> person tracks -> 3D per track -> npz, Parquet, CSV, JSON, MP4, HTML."""
    def body():
        from dualpose.errors import ConfigError
        from dualpose.video.lift import Lifter
        from dualpose.video.pipeline import InferOptions, run_infer
        from dualpose.weights import resolve_weights

        folder = resolve_weights(weights)
        from dualpose.eval.windows import BLENDS
        if blend not in BLENDS:
            raise ConfigError(f"--blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        lifter = Lifter.from_weights(folder, device=device, flip=flip, name=weights or folder.name, blend=blend)
        options = InferOptions(keypoint_format=fmt, person=person, fps=fps, width=width, height=height,
                               stature_mm=stature_mm or 1700.0, focal_px=focal_px, cx=cx, cy=cy, smooth=smooth,
                               bones=bones, render=render,
                               viewer=viewer, formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
                               flip=flip, stride=stride, device=device, max_frames=max_frames,
                               detector_python=detector_python)
        target = out or source.with_name(source.stem + "_3d")
        try:
            run = run_infer(source, target, lifter, options, stature_given=stature_mm is not None)
        except (ImportError, ValueError) as exc:  # missing optional extra, bad option value
            if isinstance(exc, DualPoseError):
                raise
            raise ConfigError(str(exc)) from None
        typer.echo(f"{run.frames} frames, {len(run.result.tracks)} track(s) lifted with {lifter.name} "
                   f"on {lifter.device.type}")
        for t in run.result.tracks:
            typer.echo(f"  track {t.track_id}: frames {t.frame[0]}-{t.frame[-1]} ({int(t.valid.sum())} detected)")
        for kind, path in run.files.items():
            typer.echo(f"  {kind:>7}: {path}")
    _run(body)


weights_app = typer.Typer(no_args_is_help=True, help="Ready-to-use model weights: list and pull.")
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list(catalog: Optional[str] = typer.Option(None, help="Catalogue path or URL (default: packaged).")):
    """Packaged, pulled and downloadable weights."""
    def body():
        from dualpose.weights import DEFAULT_WEIGHTS, list_weights

        entries = list_weights(catalog)
        if not entries:
            typer.echo("no weights installed or catalogued")
        for e in entries:
            mark = " (default)" if e.name == DEFAULT_WEIGHTS else ""
            where = str(e.path) if e.path else e.url
            typer.echo(f"{e.name}{mark}  [{e.where}]  {where}" + (f"  - {e.description}" if e.description else ""))
    _run(body)


@weights_app.command("pull")
def weights_pull(name: str = typer.Argument(..., help="A name from `dualpose weights list`."),
                 catalog: Optional[str] = typer.Option(None, help="Catalogue path or URL (default: packaged)."),
                 force: bool = typer.Option(False, help="Download again even if present.")):
    """Download catalogued weights (sha256-checked, resumable) into the weights cache."""
    def body():
        from dualpose.weights import pull_weights

        folder = pull_weights(name, catalog, force=force)
        typer.echo(f"{name} -> {folder}")
    _run(body)


@weights_app.command("package")
def weights_package(source: Path = typer.Argument(..., help="Trained weights folder "
                                                 "(e.g. artifacts/models/finetune/best)."),
                    dest: Path = typer.Argument(..., help="Folder to write, e.g. dualpose/weights/dualpose-xs-cmu."),
                    fps: float = typer.Option(..., help="Frame rate of the training data (infer resamples to it)."),
                    model_card: Path = typer.Option(..., help="MODEL_CARD.md to ship with the weights.")):
    """Write a packaged weights folder: fp16 safetensors, config.json with fps, MODEL_CARD.md."""
    def body():
        from dualpose.io.download import sha256_file
        from dualpose.weights import package_weights

        folder = package_weights(source, dest, fps=fps, model_card=model_card.read_text(encoding="utf-8"))
        file = folder / "model.safetensors"
        typer.echo(f"{source} -> {folder} ({file.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(file)})")
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


# -- model versions and the champion (dualpose/registry.py) -----------------------------------------
models_app = typer.Typer(no_args_is_help=True, help="Versioned models: list, register, promote, restore.")
app.add_typer(models_app, name="models")


def _registry(params_path: Path, overrides: list[str] | None):
    from dualpose.registry import ModelRegistry

    params, _, base = _context(params_path, overrides)
    return params, ModelRegistry.at(params.storage.root, base), base


@models_app.command("list")
def models_list(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Every registered version (oldest first) with its benchmark score; * marks the champion."""
    def body():
        from dualpose.registry import benchmark_score

        _, registry, _ = _registry(params_path, overrides)
        pointer = registry.champion()
        current = pointer["version"] if pointer else None
        rows = [{"id": v["id"], "champion": v["id"] == current, "score_mm": benchmark_score(v),
                 "metric": v["benchmark"].get("metric"), "dataset": v["benchmark"].get("dataset"),
                 "run_id": v["lineage"].get("run_id"), "code_version": v["lineage"].get("code_version")}
                for v in registry.versions()]
        if as_json:
            typer.echo(json.dumps({"champion": pointer, "versions": rows}, indent=1))
            return
        if not rows:
            typer.echo("no model versions yet (run `dualpose models register` after an evaluation)")
        for r in rows:
            score = "n/a" if r["score_mm"] is None else f"{r['score_mm']:.2f} mm"
            typer.echo(f"{'*' if r['champion'] else ' '} {r['id']}  {r['metric']} {score}  {r['dataset']}  "
                       f"run {r['run_id']}  code {r['code_version']}")
    _run(body)


@models_app.command("register")
def models_register(params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt,
                    run_id: str = typer.Option("cli", help="Recorded in the version's lineage."),
                    promote: bool = typer.Option(True, help="Promote when it beats the champion by the margin.")):
    """Register models/finetune/best with its evaluation (eval/<dataset>/metrics_detail.json, test split)."""
    def body():
        from dualpose.errors import ConfigError
        from dualpose.registry import data_files, resolve_weights

        params, registry, base = _registry(params_path, overrides)
        layout = _context(params_path, overrides)[1]
        best = resolve_weights(params.storage.root, "best", base)
        metrics_file = layout.eval_dir(params.train_dataset) / "metrics_detail.json"
        if not metrics_file.is_file():
            raise FileNotFoundError(f"{metrics_file}: no evaluation; run `dualpose evaluate --weights best` first")
        evaluation = json.loads(metrics_file.read_text())
        if evaluation.get("split") != "test" or Path(evaluation.get("weights", "")).resolve() != best.resolve():
            raise ConfigError(f"{metrics_file}: evaluates {evaluation.get('weights')} on split "
                              f"{evaluation.get('split')!r}; expected {best} on 'test' "
                              "(run `dualpose evaluate --weights best`)")
        train = layout.model("finetune") / "metrics.json"
        data = data_files(layout, params.train_dataset)
        record = registry.register(best, params, metrics=json.loads(train.read_text()) if train.is_file() else {},
                                   evaluation={k: v for k, v in evaluation.items() if not isinstance(v, (dict, list))},
                                   run_id=run_id, data_files=data)
        typer.echo(f"registered {record['id']} ({params.registry.metric} {record['benchmark']['score_mm']})")
        if promote:
            decision, _ = registry.promote_if_better(record["id"], params.registry.promotion_margin_mm)
            typer.echo(("promoted: " if decision.promote else "champion kept: ") + decision.reason)
    _run(body)


@models_app.command("promote")
def models_promote(version: str = typer.Argument(..., help="Version id (see `dualpose models list`)."),
                   params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt):
    """Promote VERSION if it beats the champion by registry.promotion_margin_mm (else leave it)."""
    def body():
        params, registry, _ = _registry(params_path, overrides)
        decision, _ = registry.promote_if_better(version, params.registry.promotion_margin_mm)
        typer.echo(("promoted: " if decision.promote else "champion kept: ") + decision.reason)
        if not decision.promote:
            raise typer.Exit(1)
    _run(body)


@models_app.command("restore")
def models_restore(version: str = typer.Argument(..., help="Version id to make the champion again."),
                   params_path: Path = ParamsOpt, overrides: Optional[list[str]] = OverrideOpt):
    """Make VERSION the champion whatever its score (roll back a promotion)."""
    def body():
        _, registry, _ = _registry(params_path, overrides)
        pointer = registry.restore(version)
        typer.echo(f"champion: {pointer['version']} (restored)")
    _run(body)


def main() -> None:  # pragma: no cover - console entry point (pyproject [project.scripts])
    from dualpose.train.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc(sys.argv[1:])  # training on the CPU: tcmalloc when installed (allocator.py)
    app()


if __name__ == "__main__":  # ``accelerate launch -m dualpose.cli ...``
    from dualpose.train.allocator import reexec_under_tcmalloc

    reexec_under_tcmalloc(sys.argv[1:])
    sys.exit(app())
