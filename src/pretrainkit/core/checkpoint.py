"""Atomic, verifiable checkpoints: ``step-N/{model.safetensors, state.pt, manifest.json}``.

A checkpoint directory is written under a temporary name and renamed only once every file is on disk
with its checksum in the manifest, so a run killed at any moment leaves either a complete checkpoint or
none. On resume a checkpoint whose files do not match their manifest is refused and the previous one used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

# atomic_write_bytes/text are re-exported for existing callers; their home is pretrainkit.core.io.
from pretrainkit.core.io import (  # noqa: F401
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    fsync_dir,
    temp_name,
)
from pretrainkit.errors import CheckpointError

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST = "manifest.json"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a detached contiguous clone is always accepted.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


WEIGHTS_DIGEST_KEY = "pretrainkit.sha256"


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order: the checksum a weight file carries in its
    own safetensors metadata, so a standalone file is verified without a sidecar that could go astray."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def save_weights(
    path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Weights to safetensors, atomically, with their checksum in the file's metadata."""
    state = _contiguous(state)
    meta = {**(metadata or {}), WEIGHTS_DIGEST_KEY: tensors_digest(state)}
    atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))


def load_weights(path: str | Path, verified: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, checked against the checksum it carries.

    ``verified=True``: the caller has already checked the file against a checkpoint manifest, so a file without
    an embedded checksum (a checkpoint's model file) is accepted; otherwise such a file is refused, since a
    flipped bit would otherwise go unnoticed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"weights file {path} is corrupted or not safetensors ({str(e).splitlines()[0]})"
        ) from None
    digest = meta.get(WEIGHTS_DIGEST_KEY)
    if digest is None and not verified:
        raise CheckpointError(
            f"weights file {path} carries no checksum (written by an older pretrainkit or another "
            "tool), so it cannot be verified; delete it to have it re-created"
        )
    if digest is not None and tensors_digest(state) != digest:
        raise CheckpointError(f"weights file {path} is corrupted (checksum mismatch)")
    return state


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep_last`` complete ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = temp_name(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model_state = _contiguous(model_state)  # its own checksum too, so the file is verifiable on its own
    save_file(model_state, str(tmp / MODEL_FILE), metadata={WEIGHTS_DIGEST_KEY: tensors_digest(model_state)})
    buf = io.BytesIO()
    torch.save(train_state, buf)
    (tmp / STATE_FILE).write_bytes(buf.getvalue())
    files = {
        name: {"sha256": file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        for name in (MODEL_FILE, STATE_FILE)
    }
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    for name in (MODEL_FILE, STATE_FILE, MANIFEST):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    prune(root, keep_last)
    return final


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoint directories, oldest first (temporary ones are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-"):
            try:
                out.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return sorted(out)


def prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for _, p in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def _manifest_files(ckpt: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` table, checked for shape: a crafted or half-written manifest is refused like
    any other bad checkpoint instead of raising deep inside the loader."""
    man = ckpt / MANIFEST
    if not man.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no manifest (incomplete write)")
    try:
        files = json.loads(man.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {ckpt} has an unreadable manifest") from None
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"checkpoint {ckpt} has a manifest whose 'files' is not a table of files")
    for name, info in files.items():
        if Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"checkpoint {ckpt} has a manifest naming {name!r}, outside its folder")
        if not (
            isinstance(info, dict)
            and isinstance(info.get("sha256"), str)
            and isinstance(info.get("bytes"), int)
        ):
            raise CheckpointError(
                f"checkpoint {ckpt} has a manifest entry for {name} without sha256 and bytes"
            )
    return files


def verify(ckpt: str | Path) -> None:
    """Raise CheckpointError unless every file matches the manifest's size and checksum."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    for name, info in _manifest_files(ckpt).items():
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is missing {name}")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {ckpt}: {name} is truncated ({f.stat().st_size} of {info['bytes']} bytes)"
            )
        if file_sha256(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {ckpt}: {name} is corrupted (checksum mismatch)")


def load_checkpoint(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified (model_state, train_state). ``state.pt`` is read with ``weights_only=True``: no code runs."""
    ckpt = Path(ckpt)
    verify(ckpt)
    model_state = load_weights(ckpt / MODEL_FILE, verified=True)
    try:
        train_state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(
            f"checkpoint {ckpt}: {STATE_FILE} cannot be read safely ({type(e).__name__})"
        ) from None
    return model_state, train_state


def latest_valid(root: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """Newest checkpoint that verifies; corrupted newer ones are reported (one line each) and skipped.

    The skips are reported only when a good checkpoint is found: when none verifies, the caller refuses in
    one line of its own, which would otherwise follow a line per bad checkpoint."""
    warn = warn or (lambda msg: print(f"pretrainkit: {msg}", file=sys.stderr))
    skipped = []
    for step, p in reversed(list_checkpoints(root)):
        try:
            verify(p)
        except CheckpointError as e:
            skipped.append(f"skipping bad checkpoint: {e}")
            continue
        for msg in skipped:
            warn(msg)
        return p
    return None


def none_verifies(n: int, root: str | Path) -> CheckpointError:
    return CheckpointError(
        f"none of the {n} checkpoint(s) under {root} verifies, so --resume auto will not start over silently; "
        "delete that folder (or use another --out) to start over"
    )


def check_resume(resume: str | Path | None, root: str | Path) -> None:
    """Refuse, before anything in a run directory is written, a resume the trainer would refuse later: a
    ``--resume PATH`` that is missing or damaged, or ``auto`` over checkpoints of which none verifies."""
    if resume is None:
        return
    if str(resume) == "auto":
        found = list_checkpoints(root)
        if found and latest_valid(root, warn=lambda msg: None) is None:
            raise none_verifies(len(found), root)
        return
    verify(resume)
