"""The Dagster code location: ``dagster dev`` (from the repository root, no workspace file) loads
this through ``[tool.dg]`` / ``[tool.dagster]`` in pyproject.toml.

Everything under ``pipelines/defs/`` is collected: resources, data assets (partitioned by data
set), training assets, asset checks, jobs, the schedule and the sensor. Which params.yaml they
read: ``$DUALPOSE_PARAMS``, else the repository's ``params.yaml``.
"""


from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
