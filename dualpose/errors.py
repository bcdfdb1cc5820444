"""Errors that name the file, the field and what was expected."""

from __future__ import annotations

from os import PathLike


class DualPoseError(Exception):
    """Base class of the library's own errors."""


class DataFormatError(DualPoseError, ValueError):
    """Input data does not match its documented format.

    The message always names the file, the field (key, column or record) and what was expected,
    so that a user can fix the input without reading our code.
    """

    def __init__(self, path: str | PathLike | None, field: str, expected: str, got: str | None = None):
        self.path = str(path) if path is not None else "<memory>"
        self.field = field
        self.expected = expected
        self.got = got
        msg = f"{self.path}: field {field!r}: expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)


class ConfigError(DualPoseError, ValueError):
    """params.yaml (or an override) is invalid."""


class DownloadError(DualPoseError, OSError):
    """A download failed (not found, refused, checksum mismatch...)."""
