"""What the Dagster definitions read when they load: which params.yaml, which data sets.

Partitions (one per enabled data set) and the data set that training uses must be known when
Dagster loads the code location, before any resource exists, so they come from the same
params.yaml that the resources, the CLI and DVC read: ``$DUALPOSE_PARAMS`` when set, otherwise
``params.yaml`` in the working directory (``dagster dev`` runs from the repository root), otherwise
the one beside the ``pipelines`` package. Nothing here imports Dagster.
"""

from __future__ import annotations

import os
from pathlib import Path

from dualpose.config import Params, load_params

PARAMS_ENV = "DUALPOSE_PARAMS"
REPO_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the pipelines package


def params_path() -> Path:
    """The params.yaml the definitions are built from (absolute)."""
    value = os.environ.get(PARAMS_ENV)
    if value:
        return Path(value).expanduser().resolve()
    here = Path.cwd() / "params.yaml"
    return (here if here.is_file() else REPO_ROOT / "params.yaml").resolve()


def definition_params() -> Params:
    """params.yaml as the definitions see it (no overrides: partitions must not change per run)."""
    return load_params(params_path())


def dataset_names(params: Params) -> list[str]:
    """The partition keys: every enabled data set, in params.yaml order, and the training one."""
    names = list(params.enabled_datasets())
    if params.train_dataset in params.datasets and params.train_dataset not in names:
        names.append(params.train_dataset)
    return names
