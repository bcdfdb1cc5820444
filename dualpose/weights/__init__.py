"""Named, ready-to-use model weights: packaged ones and ones pulled from a release URL.

- **Packaged**: ``dualpose/weights/<name>/`` (``model.safetensors`` in fp16, ``config.json``,
  ``MODEL_CARD.md``) ships inside the package, so a fresh install lifts offline.
  :data:`DEFAULT_WEIGHTS` is the one ``dualpose infer`` uses without ``--weights``.
- **Catalogue**: ``catalog.json`` beside this file (or ``$DUALPOSE_WEIGHTS_CATALOG``, a path or
  URL) lists more weights as ``{"weights": {NAME: {"url", "sha256", "description"}}}``; the URL
  names one self-describing safetensors file (its config is in the safetensors metadata).
  ``dualpose weights pull NAME`` downloads it with :func:`dualpose.io.download.fetch` (resumable,
  sha256-checked) into the cache ``$DUALPOSE_WEIGHTS_DIR`` (default ``~/.cache/dualpose/weights``).

:func:`resolve_weights` turns a name or a path into a weights folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualpose.errors import ConfigError, DataFormatError
from dualpose.model.weights import CONFIG_FILE, WEIGHTS_FILE, read_weights

DEFAULT_WEIGHTS = "dualpose-xs-cmu"
PACKAGE_DIR = Path(__file__).resolve().parent
CATALOG_FILE = PACKAGE_DIR / "catalog.json"
MODEL_CARD = "MODEL_CARD.md"


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    where: str  # "packaged", "pulled" or "catalogue"
    path: Path | None  # local folder, when available
    url: str | None = None
    sha256: str | None = None
    description: str = ""


def cache_dir() -> Path:
    return Path(os.environ.get("DUALPOSE_WEIGHTS_DIR") or Path.home() / ".cache" / "dualpose" / "weights")


def packaged_dir() -> Path:
    return Path(os.environ.get("DUALPOSE_PACKAGED_WEIGHTS") or PACKAGE_DIR)


def _is_weights_dir(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file()


def load_catalog(location: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The catalogue's ``weights`` mapping; ``location`` (path or URL) overrides the default."""
    location = location or os.environ.get("DUALPOSE_WEIGHTS_CATALOG") or CATALOG_FILE
    text_loc = os.fspath(location)
    from dualpose.io.download import is_remote

    if is_remote(text_loc):
        from dualpose.io.download import fetch

        path = fetch(text_loc, cache_dir() / ".catalog" / "catalog.json", force=True, progress=False)
    else:
        path = Path(text_loc)
        if not path.is_file():
            return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, "<file>", "a JSON weights catalogue", str(exc)) from None
    entries = doc.get("weights") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise DataFormatError(path, "weights", "a mapping NAME -> {url, sha256, description}", type(entries).__name__)
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not entry.get("url") or not entry.get("sha256"):
            raise DataFormatError(path, f"weights.{name}", "an object with 'url' and 'sha256'", repr(entry)[:80])
    return entries


def list_weights(catalog: str | os.PathLike | None = None) -> list[WeightsEntry]:
    """Packaged, pulled and catalogued weights (a name appears once: packaged > pulled > catalogue)."""
    found: dict[str, WeightsEntry] = {}
    root = packaged_dir()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if _is_weights_dir(folder):
            found[folder.name] = WeightsEntry(folder.name, "packaged", folder, description=_card_title(folder))
    cache = cache_dir()
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []:
        if _is_weights_dir(folder) and folder.name not in found:
            found[folder.name] = WeightsEntry(folder.name, "pulled", folder)
    for name, entry in load_catalog(catalog).items():
        if name not in found:
            found[name] = WeightsEntry(name, "catalogue", None, entry["url"], entry["sha256"],
                                       entry.get("description", ""))
    return sorted(found.values(), key=lambda e: e.name)


def _card_title(folder: Path) -> str:
    card = folder / MODEL_CARD
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines():
            if line.strip():
                return line.lstrip("# ").strip()
    return ""


def pull_weights(name: str, catalog: str | os.PathLike | None = None, *, force: bool = False,
                 progress: bool = True) -> Path:
    """Download catalogued weights ``name`` into the cache (sha256-checked); returns the folder."""
    from dualpose.io.download import fetch

    entries = load_catalog(catalog)
    if name not in entries:
        raise ConfigError(f"no weights named {name!r} in the catalogue; known: {sorted(entries) or 'none'}")
    entry = entries[name]
    folder = cache_dir() / name
    fetch(entry["url"], folder / WEIGHTS_FILE, entry["sha256"], progress=progress, force=force)
    _, config = read_weights(folder / WEIGHTS_FILE)  # also refuses anything that is not safetensors
    if config is None:
        (folder / WEIGHTS_FILE).unlink()
        raise DataFormatError(entry["url"], "metadata", "a self-describing safetensors file (config in its metadata)",
                              "no config")
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def resolve_weights(name_or_path: str | os.PathLike | None = None) -> Path:
    """A weights folder (or file) for a path, a packaged or pulled name, or the default."""
    text = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_WEIGHTS
    path = Path(text).expanduser()
    if path.exists():
        return path
    for folder in (packaged_dir() / text, cache_dir() / text):
        if _is_weights_dir(folder):
            return folder
    hint = f"`dualpose weights pull {text}`" if text in load_catalog() else "`dualpose weights list`"
    if text == DEFAULT_WEIGHTS:
        raise DataFormatError(packaged_dir() / text, WEIGHTS_FILE,
                              "the packaged default weights (reinstall dualpose, or pass --weights)", "missing")
    raise DataFormatError(text, "--weights", f"a weights folder or a known name (see {hint})", "neither")


def package_weights(source: str | os.PathLike, dest: str | os.PathLike, *, fps: float | None,
                    model_card: str, extra_config: dict[str, Any] | None = None) -> Path:
    """Write a packaged weights folder ``dest`` from trained weights ``source``: floating tensors
    in fp16 (halves the size; loading casts back to the model's float32), ``config.json`` with the
    training frame rate ``fps`` (used by ``infer --fps`` resampling) and ``MODEL_CARD.md``.
    The config also goes into the safetensors metadata, so the file alone is a release asset."""
    from safetensors.torch import save_file

    from dualpose.io.atomic import atomic_dir

    tensors, config = read_weights(source)
    if not config or "spec" not in config:
        raise DataFormatError(source, CONFIG_FILE, "weights saved by dualpose (with a model spec)", "no spec")
    config = {**config, **(extra_config or {}), "fps": fps, "dtype": "float16"}
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        save_file(half, str(tmp / WEIGHTS_FILE), metadata={"dualpose_config": json.dumps(config)})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / MODEL_CARD).write_text(model_card, encoding="utf-8")
    return dest
