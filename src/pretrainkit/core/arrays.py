"""Reading ``.npy`` / ``.npz`` files as plain numeric arrays, with every bad file a one-line DataError.

numpy fails on an empty, truncated or pickled file with many exception types (EOFError, ValueError,
BadZipFile, zlib.error, OSError, ...) and its message for object arrays tells the user to load the file with
``allow_pickle``, which would run arbitrary code. These readers never unpickle, read every array eagerly (so
a truncated member fails here, not later inside training) and say what is wrong in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pretrainkit.errors import DataError

__all__ = ["read_npy", "read_npz"]


ADVICE = "write it again or point at another copy"


def _why(path: Path, exc: BaseException, kind: str, advice: str) -> DataError:
    if "pickle" in str(exc):  # object arrays: numpy's text suggests allow_pickle, which we never use
        return DataError(
            f"{path} holds Python objects (pickled data), which pretrainkit does not load; "
            f"save plain numeric arrays with np.{'save' if kind == 'npy' else 'savez'}"
        )
    return DataError(
        f"{path} is not a readable .{kind} file: truncated or damaged ({type(exc).__name__}); {advice}"
    )


MAGIC = {"npy": b"\x93NUMPY", "npz": b"PK\x03\x04"}


def _check_file(path: Path, kind: str, advice: str) -> None:
    if not path.is_file():
        raise DataError(f"{kind} file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); {advice}")
    with open(path, "rb") as f:
        head = f.read(6)
    # Without its magic numpy would try the bytes as a pickle and talk about allow_pickle; say what it is.
    if not head.startswith(MAGIC[kind]):
        other = next((k for k, m in MAGIC.items() if head.startswith(m)), None)
        what = f"an .{other} file" if other else "not numpy data"
        raise DataError(f"{path} is not a readable .{kind} file ({what}); {advice}")


def read_npy(path: str | Path, advice: str = ADVICE) -> np.ndarray:
    """The array in ``path`` (never unpickled), or a DataError naming the file, the problem and ``advice``."""
    path = Path(path)
    _check_file(path, "npy", advice)
    try:
        with open(path, "rb") as f:  # our own handle: numpy leaves its own open when a zip fails to parse
            return np.load(f, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises many types; each is the same user error
        raise _why(path, exc, "npy", advice) from None


def read_npz(path: str | Path, required: Sequence[str] = (), advice: str = ADVICE) -> dict[str, np.ndarray]:
    """Every array in the archive ``path`` (read now, never unpickled); ``required`` names must be there."""
    path = Path(path)
    _check_file(path, "npz", advice)
    try:
        with open(path, "rb") as f:  # see read_npy
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a plain .npy under an .npz name
                raise DataError(f"{path} is a single .npy array, not an .npz archive")
            with z:
                arrays = {k: z[k] for k in z.files}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see read_npy
        raise _why(path, exc, "npz", advice) from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; it needs {list(required)}")
    return arrays
