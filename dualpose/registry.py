"""Versioned models and the champion pointer, under one storage root (local folder or ``s3://``).

::

    <root>/models/versions/<id>/weights/      model.safetensors + config.json (a copy of finetune/best)
    <root>/models/versions/<id>/version.json  metrics, benchmark score, config, lineage
    <root>/models/champion.json               {"version": <id>, ...}: the model that serves
    <root>/models/champion-metrics.json       the champion's id and summary metrics, for `dvc metrics show`

Every training run is registered as a new version (:meth:`ModelRegistry.register`); nothing is
overwritten. The champion moves only through :meth:`ModelRegistry.promote`, which writes the whole
pointer at once (a rename on local disk, one PUT on S3, both atomic for readers), and only when
:func:`decide` says the challenger beats the champion's score on the same benchmark (data set,
split and data fingerprint) by at least ``registry.promotion_margin_mm``. A failed or worse run
therefore never touches the champion. :meth:`ModelRegistry.restore` points it back at any earlier
version by hand. Every move of the pointer also rewrites ``champion-metrics.json`` (a flat file
derived from the pointer and the version: see :func:`champion_metrics`), which dvc.yaml declares as a
top-level metric so that ``dvc metrics show`` names the champion next to the model just evaluated.
Imports nothing of Dagster or DVC.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dualpose.config import Params
from dualpose.errors import ConfigError
from dualpose.eval.report import SUMMARY_METRIC_KEYS
from dualpose.io.digest import tree_digest as file_digest
from dualpose.io.storage import Storage

VERSIONS = "models/versions"
CHAMPION = "models/champion.json"
CHAMPION_METRICS = "models/champion-metrics.json"
WEIGHT_FILES = ("model.safetensors", "config.json")


def params_hash(params: Params) -> str:
    """Hash of the parameters that shape a model (everything but where artefacts are stored)."""
    data = params.model_dump(mode="json", exclude={"storage"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def code_version(repo: Path | None = None) -> str:
    """``$DUALPOSE_CODE_VERSION`` (set in images), else the git commit of ``repo``, else the package version."""
    if os.environ.get("DUALPOSE_CODE_VERSION"):
        return os.environ["DUALPOSE_CODE_VERSION"]
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from dualpose import __version__

    return f"dualpose-{__version__}"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_mm: float | None
    champion_mm: float | None

    @property
    def delta_mm(self) -> float | None:
        if self.challenger_mm is None or self.champion_mm is None:
            return None
        return self.challenger_mm - self.champion_mm


def benchmark_score(version: dict) -> float | None:
    value = (version.get("benchmark") or {}).get("score_mm")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def decide(challenger: dict, champion: dict | None, margin_mm: float) -> Decision:
    """Whether ``challenger`` (a version record) should replace ``champion`` (or None).

    Promote when there is no champion, or when both were scored on the same benchmark and the
    challenger's error is lower by at least ``margin_mm``. A challenger without a finite score never
    promotes; neither does one scored on another benchmark (the scores are not comparable).
    """
    score = benchmark_score(challenger)
    if score is None:
        return Decision(False, f"version {challenger.get('id')} has no finite benchmark score", None,
                        benchmark_score(champion) if champion else None)
    if champion is None:
        return Decision(True, "no champion yet", score, None)
    best = benchmark_score(champion)
    key = ("dataset", "split", "data_fingerprint")
    ours, theirs = challenger.get("benchmark", {}), champion.get("benchmark", {})
    if best is None or any(ours.get(k) != theirs.get(k) for k in key):
        return Decision(False, "the champion was scored on another benchmark "
                        f"({', '.join(f'{k}={theirs.get(k)}' for k in key)}); re-evaluate it or promote by hand",
                        score, best)
    if score <= best - margin_mm:
        return Decision(True, f"{score:.2f} mm beats the champion's {best:.2f} mm by {best - score:.2f} mm "
                        f"(margin {margin_mm:g} mm)", score, best)
    return Decision(False, f"{score:.2f} mm does not beat the champion's {best:.2f} mm by the margin of "
                    f"{margin_mm:g} mm", score, best)


def champion_metrics(version: dict) -> dict:
    """The few keys ``dvc metrics show`` tabulates for the champion ``version`` (a version record).

    ``version`` (its id) and ``benchmark`` (``dataset/split``) name it; the numbers are its evaluation's
    summary metrics under the same keys as ``eval/<dataset>/metrics.json``, so the champion's row and
    the freshly evaluated model's row share columns. The benchmark score is always there.
    """
    bench = version.get("benchmark") or {}
    evaluation = version.get("evaluation") or {}
    out: dict = {"version": version["id"], "benchmark": f"{bench.get('dataset')}/{bench.get('split')}"}
    for key in SUMMARY_METRIC_KEYS:
        value = evaluation.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    score = benchmark_score(version)
    if bench.get("metric") and score is not None:
        out.setdefault(bench["metric"], score)
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ModelRegistry:
    """The versions and the champion under one :class:`~dualpose.io.storage.Storage` root."""

    def __init__(self, storage: Storage):
        self.storage = storage

    @classmethod
    def at(cls, root: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> "ModelRegistry":
        return cls(Storage(root, base_dir=base_dir))

    # -- reading -------------------------------------------------------------------------------
    def _read_json(self, name: str) -> dict | None:
        if not self.storage.exists(name):
            return None
        try:
            data = json.loads(self.storage.read_text(name))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{self.storage.path(name)}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.storage.path(name)}: expected a JSON object")
        return data

    def version(self, version_id: str) -> dict:
        record = self._read_json(f"{VERSIONS}/{version_id}/version.json")
        if record is None:
            known = ", ".join(v["id"] for v in self.versions()) or "none"
            raise ConfigError(f"{self.storage.path(VERSIONS, version_id)}: no such model version (known: {known})")
        return record

    def versions(self) -> list[dict]:
        """Every registered version, oldest first."""
        if not self.storage.isdir(VERSIONS):
            return []
        out = []
        for path in self.storage.ls(VERSIONS):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            record = self._read_json(f"{VERSIONS}/{name}/version.json")
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: (r.get("created", ""), r["id"]))

    def champion(self) -> dict | None:
        """The champion pointer (``version``, ``promoted_at``, ``reason``, ``history``), or None."""
        return self._read_json(CHAMPION)

    def champion_version(self) -> dict | None:
        pointer = self.champion()
        return self.version(pointer["version"]) if pointer else None

    def weights_name(self, version_id: str) -> str:
        return f"{VERSIONS}/{version_id}/weights"

    def champion_weights(self) -> Path | None:
        """Local folder of the champion's weights (local roots only), or None when there is no champion."""
        pointer = self.champion()
        if pointer is None:
            return None
        if not self.storage.is_local:
            raise ConfigError(f"the champion {pointer['version']} lives on remote storage "
                              f"({self.storage.path(self.weights_name(pointer['version']))}); copy that folder "
                              "here and pass it with --weights")
        return self.storage.local_path(self.weights_name(pointer["version"]))

    # -- writing -------------------------------------------------------------------------------
    def register(self, weights_dir: Path, params: Params, *, metrics: dict, evaluation: dict, run_id: str,
                 data_files: Iterable[Path], benchmark_split: str = "test") -> dict:
        """Store ``weights_dir`` (model.safetensors + config.json) as a new version and return its record.

        ``metrics``: the training metrics; ``evaluation``: the evaluation summary on the benchmark
        split (its ``registry.metric`` is the score); ``data_files``: what identifies the data the
        model was trained and scored on, i.e. the tables' manifest.json and the clip index (their
        digest is the data fingerprint; see :func:`data_files`).
        """
        weights_dir = Path(weights_dir)
        missing = [f for f in WEIGHT_FILES if not (weights_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{weights_dir}: missing {', '.join(missing)}; nothing registered")
        weights_hash = file_digest([weights_dir / f for f in WEIGHT_FILES], root=weights_dir)
        created = _now()
        version_id = f"{created:%Y%m%dT%H%M%SZ}-{weights_hash[:8]}"
        suffix = 1
        while self.storage.exists(f"{VERSIONS}/{version_id}"):  # same weights registered twice in a second
            version_id = f"{created:%Y%m%dT%H%M%SZ}-{weights_hash[:8]}-{suffix}"
            suffix += 1
        score = evaluation.get(params.registry.metric)
        fingerprint = file_digest(list(data_files))
        record = {
            "id": version_id,
            "created": created.isoformat(timespec="microseconds"),
            "weights": self.weights_name(version_id),
            "weights_sha256_16": weights_hash,
            "metrics": metrics,
            "evaluation": evaluation,
            "benchmark": {"dataset": params.train_dataset, "split": benchmark_split, "metric": params.registry.metric,
                          "score_mm": score, "data_fingerprint": fingerprint},
            "lineage": {"data_fingerprint": fingerprint, "params_hash": params_hash(params),
                        "code_version": code_version(), "run_id": run_id,
                        "model": {"variant": params.model.variant, **params.model.overrides}},
            "config": params.model_dump(mode="json", exclude={"storage"}),
        }
        # weights first, the record last: a version without version.json is not listed
        for f in WEIGHT_FILES:
            self.storage.put(weights_dir / f, f"{record['weights']}/{f}")
        self._write_json(f"{VERSIONS}/{version_id}/version.json", record)
        return record

    def _write_json(self, name: str, data: dict) -> None:
        # Storage writes are whole: a rename on local disk, one PUT on S3 (readers see old or new)
        self.storage.write_text(name, json.dumps(data, indent=1, default=float))

    def _point(self, version_id: str, reason: str, how: str) -> dict:
        self.version(version_id)  # must exist
        old = self.champion()
        history = list(old.get("history", [])) if old else []
        if old:
            history.append({k: old[k] for k in ("version", "promoted_at", "reason", "how") if k in old})
        pointer = {"version": version_id, "promoted_at": _now().isoformat(timespec="seconds"), "reason": reason,
                   "how": how, "weights": self.weights_name(version_id), "history": history}
        self._write_json(CHAMPION, pointer)
        self.sync_champion_metrics()
        return pointer

    def sync_champion_metrics(self) -> dict | None:
        """(Re)write ``models/champion-metrics.json`` from the champion when it is missing or stale.

        Returns what the file holds, or None without a champion (then nothing is written). The pointer
        is written first and stays the truth: this file is derived and can always be rebuilt from it.
        """
        champion = self.champion_version()
        if champion is None:
            return None
        wanted = champion_metrics(champion)
        try:
            current = self._read_json(CHAMPION_METRICS)
        except ConfigError:
            current = None  # unreadable: rewrite it
        if current != wanted:
            self.storage.write_text(CHAMPION_METRICS, json.dumps(wanted, indent=2, allow_nan=False) + "\n")
        return wanted

    def promote_if_better(self, version_id: str, margin_mm: float) -> tuple[Decision, dict | None]:
        """Apply :func:`decide` to ``version_id`` against the current champion; move the pointer if it says so.

        When the champion stays, its pointer is not written; only a missing or stale champion metrics
        file is brought up to date (:meth:`sync_champion_metrics`)."""
        decision = decide(self.version(version_id), self.champion_version(), margin_mm)
        if decision.promote:
            return decision, self._point(version_id, decision.reason, "promotion")
        self.sync_champion_metrics()
        return decision, None

    def restore(self, version_id: str, reason: str = "restored by hand") -> dict:
        """Make ``version_id`` the champion whatever its score (undo a promotion, roll back)."""
        return self._point(version_id, reason, "restore")


def data_files(layout, dataset: str) -> list[Path]:
    """The files whose digest is a model's data fingerprint: the tables' manifest and the clip index."""
    return [layout.tables(dataset) / "manifest.json", layout.clips(dataset)]


def resolve_weights(root: str | os.PathLike, weights: str, base_dir: str | os.PathLike | None = None) -> Path:
    """``champion`` -> the champion's weights, else ``models/finetune/best``; ``best``/``last`` -> those
    folders; anything else is a folder. For the CLI (local roots)."""
    storage = Storage(root, base_dir=base_dir)
    if weights == "champion":
        champion = ModelRegistry(storage).champion_weights()
        return champion if champion is not None else storage.local_path("models/finetune/best")
    if weights in ("best", "last"):
        return storage.local_path(f"models/finetune/{weights}")
    return Path(weights)
