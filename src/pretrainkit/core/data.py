"""A resumable batch stream: shuffled epochs whose position is part of the checkpoint."""

from __future__ import annotations

from typing import Any

import torch


class EpochBatches:
    """Batches of a dict of equal-length tensors, reshuffled each epoch from ``seed + epoch``.

    The order is a pure function of (seed, epoch), so the state is just (epoch, position): resuming
    replays exactly the batches an uninterrupted run would have seen. Under data parallelism each rank
    takes its contiguous slice of every global batch, so the ranks together see the single-process batch.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1):
        n = {len(v) for v in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"tensors must have equal length, got {sorted(n)}")
        self.n = n.pop()
        if batch_size > self.n:
            batch_size = self.n  # a tiny dataset gives one full batch per epoch
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
        idx = self._order()[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        per = self.batch_size // self.world
        idx = idx[self.rank * per:(self.rank + 1) * per]
        return {k: v[idx] for k, v in self.tensors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos, self.seed = int(state["epoch"]), int(state["pos"]), int(state["seed"])
        self._perm = None
