"""Dagster definitions of DualPose, loaded by :func:`dagster.load_from_defs_folder` (one module per kind)."""
