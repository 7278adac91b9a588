"""Prompt / prefix tuning with an L2P-style prompt pool, for any backbone that runs on a token sequence.

A pool holds ``pool_size`` prompts of ``prompt_len`` tokens, each with a key; per sample the top-k keys by
cosine to a query pick the prompts, which are prepended to the token embeddings. Plain prompt tuning is
the special case ``pool_size == top_k`` (every prompt, fixed order). The only thing asked of a backbone
is to accept a longer sequence: ``PromptHook`` prepends on the output of its embedding module, and the
backbone's output then has ``pool.n_tokens`` extra leading positions, which the caller drops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt.base import AdapterState
from pretrainkit.errors import ConfigError


@dataclass
class PromptSelection:
    """Prompt tokens (B, n_tokens, dim), chosen prompt indices (B, k), key loss mean(1 - cos(query, key))."""

    tokens: torch.Tensor
    indices: torch.Tensor
    key_loss: torch.Tensor


class PromptPool(AdapterState):
    """``pool_size`` learnable prompts (each ``prompt_len`` x ``dim``) with keys of size ``key_dim`` (default dim)."""

    def __init__(
        self,
        pool_size: int,
        prompt_len: int,
        dim: int,
        top_k: int = 1,
        key_dim: int | None = None,
        init_scale: float = 1.0,
    ):
        super().__init__()
        if min(pool_size, prompt_len, dim) < 1 or not 1 <= top_k <= pool_size:
            raise ConfigError(
                f"need pool_size, prompt_len, dim >= 1 and 1 <= top_k <= pool_size, got "
                f"{pool_size}, {prompt_len}, {dim}, top_k={top_k}"
            )
        self.pool_size, self.prompt_len, self.dim, self.top_k = pool_size, prompt_len, dim, top_k
        self.key_dim = key_dim or dim
        self.tokens = nn.Parameter(torch.empty(pool_size, prompt_len, dim).uniform_(-init_scale, init_scale))
        self.keys = nn.Parameter(torch.empty(pool_size, self.key_dim).uniform_(-1.0, 1.0))

    @property
    def n_tokens(self) -> int:
        """Tokens prepended per sample."""
        return self.top_k * self.prompt_len

    def forward(self, query: torch.Tensor | None, batch_size: int | None = None) -> PromptSelection:
        """Choose prompts for each sample by cosine(query, keys); ``query=None`` only when every prompt is used."""
        if query is None:
            if self.top_k != self.pool_size or batch_size is None:
                raise ConfigError(
                    "a query (batch, key_dim) is needed to choose prompts unless top_k == pool_size "
                    "and batch_size is given"
                )
            idx = torch.arange(self.top_k, device=self.keys.device).expand(batch_size, -1)
            key_loss = self.keys.new_zeros(())
        else:
            if query.dim() != 2 or query.shape[1] != self.key_dim:
                raise ConfigError(f"query must have shape (batch, {self.key_dim}), got {tuple(query.shape)}")
            sim = F.normalize(query.detach().float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T
            idx = sim.detach().topk(self.top_k, dim=-1).indices.sort(dim=-1).values  # fixed order by index
            key_loss = (1.0 - sim.gather(1, idx)).mean()
        tokens = self.tokens[idx].reshape(idx.shape[0], self.n_tokens, self.dim)
        return PromptSelection(tokens, idx, key_loss)

    def prompts(self, query: torch.Tensor) -> torch.Tensor:
        """Just the prompt tokens (B, n_tokens, dim) for ``query``."""
        return self(query).tokens


def prepend(tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """``[prompts, tokens]`` along the sequence: (B, P, d) + (B, T, d) -> (B, P + T, d)."""
    return torch.cat([prompts.to(tokens.dtype), tokens], dim=1)


def extend_mask(mask: torch.Tensor, n: int, value: bool | float = True) -> torch.Tensor:
    """Grow a (B, T) padding / attention mask to (B, n + T) so the prompt positions are visible."""
    return torch.cat([mask.new_full((mask.shape[0], n), value), mask], dim=1)


def mean_query(embeddings: torch.Tensor) -> torch.Tensor:
    """Default query: the mean token embedding (detached, so the backbone gets no key gradient)."""
    return embeddings.detach().mean(dim=1)


class PromptHook:
    """Prepends pool prompts to the (B, T, d) output of ``module`` (e.g. a token embedding) on every forward.

    ``hook.last`` holds the latest ``PromptSelection`` (for its key loss); ``hook.remove()`` undoes the hook.
    """

    def __init__(
        self,
        module: nn.Module,
        pool: PromptPool,
        query_fn: Callable[[torch.Tensor], torch.Tensor] | None = mean_query,
    ):
        self.pool, self.query_fn = pool, query_fn
        self.last: PromptSelection | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 3:
            raise ConfigError(f"prompts need a (batch, tokens, dim) embedding output, got {tuple(out.shape)}")
        query = self.query_fn(out) if self.query_fn is not None else None
        self.last = self.pool(query, batch_size=out.shape[0])
        return prepend(out, self.last.tokens)

    def remove(self) -> None:
        self.handle.remove()
