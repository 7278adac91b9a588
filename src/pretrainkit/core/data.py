"""Batch streams the Trainer reads, and moving a batch of any shape to a device.

A batch stream is anything with the small ``BatchStream`` protocol below, so a resumable graph sampler, a
document loader or a replay buffer plugs into the Trainer without subclassing anything. ``EpochBatches`` is the
stream for a dict of equal-length tensors: shuffled epochs whose position is part of the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class BatchStream(Protocol):
    """What the Trainer reads batches from.

    - ``__next__()``: the next batch for this process (a tensor, a dict/list/tuple of them, a dataclass, or any
      object with ``.to(device)`` such as a PyG ``HeteroData``; see ``to_device``). The stream never ends: an
      epoch-based stream starts the next epoch itself.
    - ``items_per_batch``: items (examples, windows, sequences, graphs) this process gets per batch; the Trainer
      multiplies by grad_accum and the number of processes for ``items_per_s``.
    - ``state_dict()`` / ``load_state_dict(state)``: the stream's position, saved in every checkpoint, so a resumed
      run sees exactly the batches an uninterrupted one would have seen.

    Optional attributes the Trainer reads when present: ``tokens_per_batch: int`` (tokens this process gets per
    batch: ``fit()`` then also reports ``tokens_per_s``) and ``unit: str`` (the progress bar's name for an item).
    A plain iterator still trains; it just resumes from its start and reports no items/s.
    """

    @property
    def items_per_batch(self) -> int: ...

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` on ``device``: tensors and anything else with a callable ``.to`` (a PyG ``HeteroData``, a user
    class) are moved with it; dicts, lists and (named) tuples element by element; a dataclass without ``.to``
    field by field (``dataclasses.replace``); anything else (numbers, strings, arrays) is passed through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if not isinstance(batch, type) and callable(getattr(batch, "to", None)):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple takes its fields positionally
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        moved = {
            f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init
        }
        return dataclasses.replace(batch, **moved)
    return batch


class EpochBatches:
    """Batches of a dict of equal-length tensors, reshuffled each epoch from ``seed + epoch``.

    The order is a pure function of (seed, epoch), so the state is just (epoch, position): resuming
    replays exactly the batches an uninterrupted run would have seen. Under data parallelism each rank
    takes its contiguous slice of every global batch, so the ranks together see the single-process batch.
    """

    def __init__(
        self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0, rank: int = 0, world: int = 1
    ):
        n = {len(v) for v in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"tensors must have equal length, got {sorted(n)}")
        self.n = n.pop()
        batch_size = min(batch_size, self.n)  # a tiny dataset gives one full batch per epoch
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.pos = 0, 0
        self._perm: torch.Tensor | None = None

    @property
    def items_per_batch(self) -> int:
        """Items this process sees per batch (the trainer multiplies by the number of processes)."""
        return self.batch_size // self.world

    def _order(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
        return self._perm

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.pos + self.batch_size > self.n:  # drop the ragged tail: every step sees a full batch
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = self._order()[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        per = self.batch_size // self.world
        idx = idx[self.rank * per : (self.rank + 1) * per]
        return {k: v[idx] for k, v in self.tensors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos, self.seed = int(state["epoch"]), int(state["pos"]), int(state["seed"])
        self._perm = None
