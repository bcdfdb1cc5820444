"""The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) over (F, ...) sequences.

An adaptive low-pass filter: the cut-off rises with the signal's speed, so slow motion is
smoothed strongly (less jitter) and fast motion lags little. ``min_cutoff_hz`` sets the jitter
reduction at rest, ``beta`` how fast the cut-off rises with speed (units of the data per second).
NaN frames pass through as NaN and restart the filter.
"""

from __future__ import annotations

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(values: np.ndarray, fps: float, min_cutoff_hz: float = 1.0, beta: float = 0.01,
             d_cutoff_hz: float = 1.0) -> np.ndarray:
    """Filter ``values`` (F, ...) sampled at ``fps``; returns a new array of the same shape."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    x = np.asarray(values, dtype=np.float64)
    out = np.full_like(x, np.nan)
    dt = 1.0 / fps
    a_d = _alpha(d_cutoff_hz, dt)
    prev = None
    dprev = None
    for i in range(len(x)):
        xi = x[i]
        if not np.isfinite(xi).all():
            prev = dprev = None
            out[i] = xi
            continue
        if prev is None:
            prev, dprev = xi, np.zeros_like(xi)
            out[i] = xi
            continue
        dx = (xi - prev) / dt
        dprev = a_d * dx + (1 - a_d) * dprev
        cutoff = min_cutoff_hz + beta * np.abs(dprev)
        a = _alpha(cutoff, dt)
        prev = a * xi + (1 - a) * prev
        out[i] = prev
    return out
