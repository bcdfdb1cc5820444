"""Names that become paths (data sets, stages, ``files`` keys, skeletons): one rule, checked once.

A name is one path component: letters, digits, ``_``, ``-`` and ``.`` (not leading), at most 64
characters. That excludes ``..``, ``/``, ``\\``, absolute paths, drive letters, NUL and
whitespace, so ``tables/<name>`` can never leave ``tables/``.
"""

from __future__ import annotations

import re

from dualpose.errors import ConfigError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "a name of 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def check_name(name: object, field: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise a ConfigError naming ``field``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(f"{field}: expected {NAME_RULE}, got {name!r}")
    return name
