"""A tiny deterministic regression problem shared by the trainer tests and the distributed worker."""

import torch
from torch import nn


class ToyRegressor(nn.Module):
    """Two-layer MLP whose forward returns (loss, metrics), as the trainer expects."""

    def __init__(self, d_in: int = 8, d_hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, 1))

    def forward(self, batch):
        pred = self.net(batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}


def toy_data(n: int = 64, d_in: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.sin(x.sum(-1))
    return {"x": x, "y": y}
