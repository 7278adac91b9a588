"""The one way files are written atomically and hashed: a reader (or a resumed run) sees either the old
file or the complete new one, never a torn file, and a checksum covers exactly the bytes on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: str | Path) -> Path:
    """The hidden name a file or folder is written under before its rename: same folder (so the rename is
    atomic), per process (so two writers never share it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write the file at a temporary name, sync it, then rename it to ``path``.

    ``write`` gets a path and may open it however it likes (``np.savez`` through an open handle, a
    safetensors writer). The temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
