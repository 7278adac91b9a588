"""A restricted unpickler for old pandas pickles holding only numeric DataFrames.

Modern pandas cannot read pandas-1.0-era pickles, and plain ``pickle.load`` would run any code the file
names. ``load_frames`` admits only numpy's array reconstruction, a few inert builtins and stand-in (stub)
classes for the pandas containers; every other global is refused. The column arrays are then read out of
the stubs' saved state, so neither pandas nor arbitrary code is ever involved.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pretrainkit.errors import DataError


class PandasStub:
    """Inert stand-in for a pandas class: records what unpickling hands it and does nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stub(name: str) -> type[PandasStub]:
    return type(name, (PandasStub,), {"__module__": __name__})


# The pandas classes a numeric DataFrame pickle (pandas 0.2x-1.x) refers to.
_STUB_NAMES = {
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.series", "Series"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.indexes.numeric", "Int64Index"),
    ("pandas.core.indexes.numeric", "Float64Index"),
}
_STUBS: dict[tuple[str, str], type[PandasStub]] = {key: _stub(key[1]) for key in _STUB_NAMES}


def _new_index(cls: Any, state: Any) -> PandasStub:
    """Stands in for pandas' ``_new_Index(cls, d)``: an index stub holding the saved dict."""
    if not (isinstance(cls, type) and issubclass(cls, PandasStub)):
        raise DataError(f"pickle asks _new_Index to build {cls!r}; only pandas index stubs are allowed")
    obj = cls()
    obj.state = state
    return obj


def _reconstructor(cls: Any, base: Any, state: Any) -> PandasStub:
    """Stands in for ``copyreg._reconstructor``: may only create (empty) stub objects."""
    if not (isinstance(cls, type) and issubclass(cls, PandasStub)) or base is not object or state is not None:
        raise DataError(f"pickle asks copyreg._reconstructor to build {cls!r}; only pandas stubs are allowed")
    return cls()


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``; allow exactly that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataError(f"pickle calls _codecs.encode with encoding {encoding!r}; only 'latin1' is allowed")
    return text.encode("latin1")


def _ndarray_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, limited to plain ndarrays."""
    if subtype is not np.ndarray:
        raise DataError(f"pickle asks numpy to reconstruct {subtype!r}; only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _encode,
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    **_STUBS,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED`` and refuses the rest."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays/dtypes and pandas "
                "DataFrame/Index containers are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing to unpickle a persistent id: not allowed in a data pickle")


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` (plain or gzip) with the restricted unpickler; returns stubs in place of pandas."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pickle file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is not a readable gzip file: {exc}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(raw)).load()
    except DataError:
        raise
    # truncated or corrupt pickles raise many different types
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
    ) as exc:
        raise DataError(f"{path} is not a readable pickle: {type(exc).__name__}: {exc}") from None


def _index_values(index: Any) -> list:
    """Labels of an Index stub (column names) as a Python list."""
    if not isinstance(index, PandasStub) or not isinstance(index.state, dict) or "data" not in index.state:
        raise DataError("pickled DataFrame has an unexpected column index layout")
    return list(np.asarray(index.state["data"]).tolist())


def frame_columns(frame: Any) -> dict[str, np.ndarray]:
    """Column name → 1-D array of a DataFrame stub (pandas ≥ 0.14 BlockManager state)."""
    if type(frame) is not _STUBS[("pandas.core.frame", "DataFrame")] or not isinstance(frame.state, dict):
        raise DataError(f"expected a pickled DataFrame, got {type(frame).__name__}")
    manager = frame.state.get("_data", frame.state.get("_mgr"))
    if not isinstance(manager, PandasStub) or not isinstance(manager.state, tuple):
        raise DataError("pickled DataFrame has no BlockManager state")
    modern = next((s for s in manager.state if isinstance(s, dict) and "0.14.1" in s), None)
    if modern is None:
        raise DataError("pickled DataFrame uses a pre-0.14 pandas layout, which is not supported")
    names = _index_values(modern["0.14.1"]["axes"][0])
    columns: dict[str, np.ndarray] = {}
    for block in modern["0.14.1"]["blocks"]:
        values, locs = block["values"], block["mgr_locs"]
        if not isinstance(values, np.ndarray) or values.ndim != 2:
            raise DataError("pickled DataFrame block is not a 2-D numpy array")
        positions = range(len(names))[locs] if isinstance(locs, slice) else np.asarray(locs).tolist()
        if len(positions) != values.shape[0]:
            raise DataError("pickled DataFrame block does not match its column positions")
        for row, pos in enumerate(positions):
            columns[str(names[pos])] = values[row]
    missing = [str(n) for n in names if str(n) not in columns]
    if missing:
        raise DataError(f"pickled DataFrame lacks data for columns {missing}")
    return {str(n): columns[str(n)] for n in names}
