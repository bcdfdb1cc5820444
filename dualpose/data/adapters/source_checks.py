"""Checks that source files hold what an adapter expects, raising DataFormatError(file, field, ...).

Shared by the licensed-data adapters. Every check is vectorised and allocates at most one chunk
of temporaries, so validating millions of frames costs little memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dualpose.errors import DataFormatError

Source = str | os.PathLike | None
_CHUNK_ROWS = 1 << 16


def describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def mapping(value: Any, source: Source, field: str, expected: str = "a dict") -> Mapping:
    if not isinstance(value, Mapping):
        raise DataFormatError(source, field, expected, describe(value))
    return value


def require_key(container: Mapping, key: str, source: Source, field: str) -> Any:
    if key not in container:
        keys = sorted(map(str, container))
        raise DataFormatError(source, field, "present", f"missing (keys: {keys[:20]}{' ...' if len(keys) > 20 else ''})")
    return container[key]


def shape_text(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def float_array(value: Any, source: Source, field: str, shape: Sequence[int | str | None]) -> np.ndarray:
    """A floating-point ndarray whose shape matches ``shape`` (None = any size); returned without copying."""
    if not isinstance(value, np.ndarray):
        raise DataFormatError(source, field, f"a float array of shape {shape_text(shape)}", describe(value))
    if value.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, value.shape)):
        raise DataFormatError(source, field, f"shape {shape_text(shape)}", f"shape {value.shape}")
    if value.dtype.kind != "f":
        raise DataFormatError(source, field, "a float array (float32 or float64)", f"dtype {value.dtype}")
    return value


def first_nonfinite_row(a: np.ndarray) -> int | None:
    """Index (along axis 0) of the first row holding NaN or inf, or None when all is finite."""
    if a.size == 0:
        return None
    # One pass without temporaries: a float64 sum of finite float32/float64 data is finite.
    with np.errstate(all="ignore"):
        if np.isfinite(np.sum(a, dtype=np.float64)):
            return None
    for start in range(0, a.shape[0], _CHUNK_ROWS):
        chunk = a[start:start + _CHUNK_ROWS]
        bad = ~np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None  # only overflow of the sum itself: every value is finite


def check_finite(a: np.ndarray, source: Source, field: str, what: str = "finite values (no NaN or inf)") -> None:
    row = first_nonfinite_row(a)
    if row is not None:
        raise DataFormatError(source, field, what, f"NaN/inf at index {row}")


def check_range(a: np.ndarray, source: Source, field: str, low: float | None, high: float | None,
                expected: str) -> None:
    """All values in [low, high] (chunked; ``a`` already finite)."""
    for start in range(0, max(a.shape[0], 1), _CHUNK_ROWS):
        chunk = a[start:start + _CHUNK_ROWS]
        bad = np.zeros(chunk.shape, bool)
        if low is not None:
            bad |= chunk < low
        if high is not None:
            bad |= chunk > high
        if bad.any():
            idx = np.unravel_index(int(np.argmax(bad)), chunk.shape)
            raise DataFormatError(source, field, expected,
                                  f"{float(chunk[idx])!r} at index {(start + int(idx[0]), *map(int, idx[1:]))}")


def string_column(value: Any, n: int, source: Source, field: str) -> np.ndarray:
    """One string per frame, as an (n,) array without copying the strings.

    Accepts a list/tuple of str (-> object array of those str), or a numpy str, bytes or object
    array. Element types are checked where it is cheap; :func:`run_values` checks the values
    that matter (run boundaries compare unequal for any non-str inside a run of str).
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise DataFormatError(source, field, f"{n} strings (one per frame)", f"{len(value)}")
        arr = np.empty(n, dtype=object)
        arr[:] = value
        return _sampled_str(arr, source, field)
    if not isinstance(value, np.ndarray):
        raise DataFormatError(source, field, f"{n} strings (a list or a string array)", describe(value))
    if value.shape != (n,):
        raise DataFormatError(source, field, f"shape ({n},), one string per frame", f"shape {value.shape}")
    if value.dtype.kind == "U":
        return value
    if value.dtype.kind == "O":
        return _sampled_str(value, source, field)
    if value.dtype.kind == "S":
        return np.char.decode(value, "utf-8")
    raise DataFormatError(source, field, "strings", f"dtype {value.dtype}")


def _sampled_str(arr: np.ndarray, source: Source, field: str, sample: int = 1000) -> np.ndarray:
    """Fail early, with the index, when the first elements are not str."""
    for i, v in enumerate(arr[:sample]):
        if not isinstance(v, str):
            raise DataFormatError(source, field, "strings", f"{type(v).__name__} at index {i}")
    return arr


def run_values(column: np.ndarray, starts: np.ndarray, source: Source, field: str) -> np.ndarray:
    """The value at each run start, checked to be a string, as a numpy ``U`` array."""
    values = column[starts]
    if values.dtype.kind == "O":
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]  # one check per run
        if bad:
            raise DataFormatError(source, field, "strings",
                                  f"{type(values[bad[0]]).__name__} at index {int(starts[bad[0]])}")
        values = values.astype(str) if values.size else np.zeros(0, dtype="U1")
    return values


def run_starts(values: np.ndarray) -> np.ndarray:
    """Start index of every run of equal consecutive values (vectorised)."""
    if values.shape[0] == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]]).astype(np.int64)


def running_index(run_keys: np.ndarray, run_lengths: np.ndarray) -> np.ndarray:
    """Per-row index within its key, counting across every run of that key in row order.

    ``run_keys`` (R,) identifies the key of each run, ``run_lengths`` (R,) its length; returns
    (sum(run_lengths),) int64. A key that appears in several runs continues its count.
    """
    run_lengths = np.asarray(run_lengths, np.int64)
    _, key_codes = np.unique(run_keys, return_inverse=True)
    order = np.argsort(key_codes, kind="stable")
    sorted_len = run_lengths[order]
    sorted_codes = key_codes[order]
    before = np.cumsum(sorted_len) - sorted_len  # rows of earlier runs, all keys
    first = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
    group_start = np.maximum.accumulate(np.where(first, before, 0))
    offset = np.empty_like(run_lengths)
    offset[order] = before - group_start  # rows of earlier runs with the same key
    starts = np.cumsum(run_lengths) - run_lengths
    total = int(run_lengths.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(starts - offset, run_lengths)
