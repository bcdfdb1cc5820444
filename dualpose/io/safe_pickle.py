"""Load pickles and object-array ``.npz`` files without letting them run code.

A pickle can name any importable callable and call it while loading (``os.system`` through
``__reduce__``, for example), so the stock loaders are unsafe on files from elsewhere. The
:class:`RestrictedUnpickler` resolves only the globals that plain containers and numpy arrays
need; any other global is refused *before* it is imported or called, with a
:class:`~dualpose.errors.DataFormatError` naming the file and the global.

``load_npz`` reads ``.npz`` archives the same way: numeric members through numpy with
``allow_pickle=False``, object members (nested dicts and lists, as VideoPose3D and P-STMO write
them) by parsing the ``.npy`` header and handing the pickle payload to the restricted unpickler.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from dualpose.errors import DataFormatError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

import _codecs

# (module, name) -> object. Both numpy spellings: files written by numpy 1.x name numpy.core,
# files written by numpy 2.x name numpy._core; "__builtin__" is how protocol-2 pickles name builtins.
_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _multiarray.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _numeric._frombuffer  # protocol 5 arrays
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype
_ALLOWED[("collections", "OrderedDict")] = collections.OrderedDict
_ALLOWED[("_codecs", "encode")] = _codecs.encode  # bytes in protocol-2 pickles
for _mod in ("builtins", "__builtin__"):
    _ALLOWED[(_mod, "set")] = set
    _ALLOWED[(_mod, "frozenset")] = frozenset
    _ALLOWED[(_mod, "bytearray")] = bytearray
del _mod

ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{m}.{n}" for m, n in _ALLOWED)

_EXPECTED = "only numpy arrays and plain containers (dict, list, tuple, str, numbers)"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: IO[bytes], source: str | os.PathLike | None = None, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataFormatError(
                self.source, f"pickle global {module}.{name}", _EXPECTED,
                f"a reference to {module}.{name}, which the restricted loader refuses (it could run code)",
            ) from None


def _unpickle(file: IO[bytes], source: str | os.PathLike | None, encoding: str) -> Any:
    try:
        return RestrictedUnpickler(file, source=source, encoding=encoding).load()
    except DataFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise DataFormatError(source, "<pickle>", "a complete, readable pickle",
                              f"{type(exc).__name__}: {exc}") from None


def load_pickle(path: str | os.PathLike, *, encoding: str = "ASCII") -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Pass ``encoding="latin1"`` for pickles written by Python 2 that hold numpy arrays.
    """
    path = Path(path)
    try:
        fh = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below; open errors are reported apart
    except OSError as exc:
        raise DataFormatError(path, "<file>", "a readable pickle file", str(exc)) from None
    with fh:
        return _unpickle(fh, path, encoding)


def loads_pickle(data: bytes, source: str | os.PathLike | None = None, *, encoding: str = "ASCII") -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler` (``source`` names them in errors)."""
    return _unpickle(io.BytesIO(data), source, encoding)


def _read_npy_member(fp: IO[bytes], source: str) -> np.ndarray:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        shape, fortran, dtype = npy_format._read_array_header(fp, version)  # 3.0: utf-8 field names
    if dtype.hasobject:
        array = _unpickle(fp, source, "ASCII")
        if not isinstance(array, np.ndarray):
            raise DataFormatError(source, "<npy payload>", "a pickled numpy array", type(array).__name__)
        return array
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = count * dtype.itemsize
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    filled = 0
    while filled < nbytes:
        n = fp.readinto(view[filled:])
        if not n:
            raise DataFormatError(source, "<npy payload>", f"{nbytes} bytes of {dtype} data", f"{filled} bytes")
        filled += n
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def load_npz(path: str | os.PathLike, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read members of an ``.npz`` archive; object members go through the restricted unpickler.

    ``keys`` limits which members are read (default: all). Errors name ``path`` and the member.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataFormatError(path, "<file>", "a readable .npz (zip) archive", str(exc)) from None
    with archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        wanted = list(members) if keys is None else keys
        for key in wanted:
            if key not in members:
                raise DataFormatError(path, key, "a member of the .npz archive", f"members {sorted(members)}")
            source = f"{path}[{key}]"
            try:
                with archive.open(members[key]) as fp:
                    out[key] = _read_npy_member(fp, source)
            except DataFormatError:
                raise
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataFormatError(path, key, "a readable .npy member", f"{type(exc).__name__}: {exc}") from None
    return out
