"""A tiny transformer-like backbone for adapter tests: named Linears (attn.q, attn.v, mlp.fc, mlp.proj)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F


class Attn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.v = nn.Linear(d, d)

    def forward(self, h):
        return self.v(h) * torch.sigmoid(self.q(h))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(2 * d, d)

    def forward(self, h):
        return self.proj(F.gelu(self.fc(h)))


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = Attn(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class Tiny(nn.Module):
    """(B, T, 4) -> (B, T, 3)."""

    def __init__(self, d: int = 8, n_blocks: int = 2):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(n_blocks)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


@pytest.fixture
def make_model():
    """``make_model(seed=0, d=8)``: the same weights for the same seed."""

    def make(seed: int = 0, d: int = 8) -> Tiny:
        torch.manual_seed(seed)
        return Tiny(d)

    return make


@pytest.fixture
def x():
    return torch.randn(5, 6, 4, generator=torch.Generator().manual_seed(1))
