"""Evaluation: protocol metrics (:mod:`.metrics`), whole-sequence prediction through overlapping
windows (:mod:`.windows`), metrics JSON and markdown reports (:mod:`.report`), figures
(:mod:`.plots`). Everything here works on numpy arrays in millimetres; nothing knows of Dagster
or DVC.
"""
