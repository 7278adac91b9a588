"""Losses several systems share, as small standalone ``nn.Module``s usable from plain PyTorch.

- ``InfoNCE``: contrastive loss over cosine similarities, with in-batch, given or queued negatives (PHE).
- ``MaskedMSE``: mean squared error over the masked entries only (Saga's reconstructions).
- ``TokenCrossEntropy``: cross-entropy over token logits with ignored labels, as a mean or (sum, count)
  (CR-Net's next token, L2M's action bins, Bi-VLDoc's masked words).

None of them reads a tensor back to the host except where the computation itself needs it (boolean
selection), so they add no device sync to a training step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.errors import ConfigError, DataError


class InfoNCE(nn.Module):
    """InfoNCE (NT-Xent) on cosine similarities: ``-log softmax(sim / temperature)`` at the positive.

    ``forward(query (B, d), positive (B, d), negatives=None)``:

    - ``negatives`` ``(K, d)``: shared by every query; ``(B, K, d)``: each query's own. Logits are
      ``[q.p, q.n_1 … q.n_K]`` and the target is column 0.
    - ``negatives=None``: in-batch negatives, i.e. the other rows' positives (logits ``q @ p.T``, target the
      diagonal), as in SimCLR/CLIP's one-directional form.
    - ``queue_size > 0``: the queued past keys are appended as further shared negatives in either case;
      MoCo's form (the positive against the queue only) is ``negatives=query.new_zeros(0, d)``.

    The queue is a FIFO of past keys filled only by an explicit ``update_queue(keys)``, which does nothing
    in eval mode; ``forward`` never changes it. So validation never updates a queue, whatever it calls.
    The queue (and its fill state) is part of ``state_dict`` for exact resume.
    """

    def __init__(self, temperature: float = 0.07, queue_size: int = 0):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"InfoNCE temperature must be > 0, got {temperature}")
        if queue_size < 0:
            raise ConfigError(f"InfoNCE queue_size must be >= 0, got {queue_size}")
        self.temperature = float(temperature)
        self.queue_size = int(queue_size)
        # Shape (0, 0) until the first keys fix the dimension. The fill state is kept as host ints (so an
        # update reads nothing back from the device) and mirrored in tensor buffers (safetensors holds tensors).
        self.register_buffer("queue", torch.zeros(0, 0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._ptr = 0
        self._filled = 0

    @property
    def queued(self) -> torch.Tensor:
        """The keys in the queue now, ``(n, d)`` (oldest first is not promised: order does not matter)."""
        return self.queue[: self._filled]

    def forward(
        self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        if query.dim() != 2 or positive.shape != query.shape:
            raise DataError(
                f"InfoNCE expects query and positive of the same (batch, dim) shape, got "
                f"{tuple(query.shape)} and {tuple(positive.shape)}"
            )
        q, p = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
        if negatives is None:
            logits = q @ p.T
            target = torch.arange(q.shape[0], device=q.device)
        else:
            n = F.normalize(negatives, dim=-1)
            if n.dim() == 2 and n.shape[1] == q.shape[1]:
                neg = q @ n.T
            elif n.dim() == 3 and n.shape[0] == q.shape[0] and n.shape[2] == q.shape[1]:
                neg = torch.einsum("bd,bkd->bk", q, n)
            else:
                raise DataError(
                    f"InfoNCE negatives must be (K, {q.shape[1]}) or ({q.shape[0]}, K, {q.shape[1]}), "
                    f"got {tuple(negatives.shape)}"
                )
            logits = torch.cat([(q * p).sum(-1, keepdim=True), neg], dim=1)
            target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        if self._filled:
            if self.queue.shape[1] != q.shape[1]:
                raise DataError(
                    f"InfoNCE queue holds {self.queue.shape[1]}-dim keys, got {q.shape[1]}-dim queries"
                )
            logits = torch.cat([logits, q @ self.queued.to(q.dtype).T], dim=1)
        return F.cross_entropy(logits / self.temperature, target)

    @torch.no_grad()
    def update_queue(self, keys: torch.Tensor) -> bool:
        """Push ``keys (N, d)`` (detached, normalised) into the FIFO; the oldest fall out. Returns whether it
        did: nothing happens in eval mode or when ``queue_size`` is 0."""
        if not self.training or self.queue_size == 0:
            return False
        if keys.dim() != 2:
            raise DataError(f"InfoNCE.update_queue expects keys of shape (N, dim), got {tuple(keys.shape)}")
        keys = F.normalize(keys.detach(), dim=-1)[-self.queue_size :]
        if self.queue.numel() == 0:
            self.queue = keys.new_zeros(self.queue_size, keys.shape[1])
        elif self.queue.shape[1] != keys.shape[1]:
            raise DataError(
                f"InfoNCE queue holds {self.queue.shape[1]}-dim keys, got {keys.shape[1]}-dim ones"
            )
        n = keys.shape[0]
        idx = torch.arange(self._ptr, self._ptr + n, device=keys.device) % self.queue_size
        # out of place: a loss computed from the old queue may still need it for its backward pass
        self.queue = self.queue.index_copy(0, idx, keys.to(self.queue.dtype))
        self._ptr = (self._ptr + n) % self.queue_size
        self._filled = min(self.queue_size, self._filled + n)
        self.queue_ptr.fill_(self._ptr)
        self.queue_filled.fill_(self._filled)
        return True

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The queue's dimension is fixed by the first keys, so a fresh module takes the saved shape first.
        saved = state_dict.get(prefix + "queue")
        if saved is not None and saved.shape != self.queue.shape:
            self.queue = self.queue.new_zeros(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ptr, self._filled = int(self.queue_ptr), int(self.queue_filled)  # once per load, not per step


class MaskedMSE(nn.Module):
    """Mean of ``(pred - target)**2`` over the entries where ``mask`` is true.

    ``mask`` is boolean (or 0/1) and broadcastable to the error's shape, e.g. ``(B, L, 1)`` masks whole
    steps; broadcast entries each count. The masked entries are selected (not multiplied by the mask), so
    the value equals ``err[mask].mean()`` bit for bit. An all-false mask gives 0 (not NaN) with a zero
    gradient that still reaches ``pred`` and ``target`` (DDP and optimisers see every parameter).
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        err = (pred - target).pow(2)
        try:
            keep = torch.broadcast_to(mask if mask.dtype == torch.bool else mask.bool(), err.shape)
        except RuntimeError:
            raise DataError(
                f"MaskedMSE mask of shape {tuple(mask.shape)} does not broadcast to {tuple(err.shape)}"
            ) from None
        picked = err[keep]
        if picked.numel() == 0:
            return err.sum() * 0.0
        return picked.mean()


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of token logits ``(..., V)`` against labels ``(...)``, skipping ``ignore_index``.

    ``reduction="mean"``: the mean over scored tokens (NaN when none is scored, as in PyTorch);
    ``reduction="sum"``: ``(summed NLL, number of scored tokens)``, both tensors, for exact perplexity over
    many batches. Half-precision logits are scored in float32 (a bf16 log-softmax loses the tail).
    """

    def __init__(self, ignore_index: int = -100, reduction: Literal["mean", "sum"] = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"TokenCrossEntropy reduction must be 'mean' or 'sum', got '{reduction}'")
        self.ignore_index = int(ignore_index)
        self.reduction = reduction

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[:-1] != labels.shape:
            raise DataError(
                f"TokenCrossEntropy: logits {tuple(logits.shape)} need labels of shape {tuple(logits.shape[:-1])}, "
                f"got {tuple(labels.shape)}"
            )
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        if self.reduction == "mean":
            return F.cross_entropy(flat, lab, ignore_index=self.ignore_index)
        nll = F.cross_entropy(flat, lab, ignore_index=self.ignore_index, reduction="sum")
        return nll, (lab != self.ignore_index).sum()
