"""Saga's four tasks in one TaskMix equal the loop of before the task-mix rewrite bit for bit: loss, metrics and
every parameter gradient over several optimiser steps, with masks drawn from the global RNG in the same order."""

import copy

import pytest
import torch

from pretrainkit.core.task import TASKS, MixModel, TaskMix
from pretrainkit.systems.saga.model import LimuBertConfig, LimuBertEncoder
from pretrainkit.systems.saga.tasks import SAGA_TASKS

torch.set_num_threads(1)
L, H = 40, 12
WEIGHTS = {"saga.sensor": 0.5, "saga.point": 1.0, "saga.subperiod": 2.0, "saga.period": 0.25}


def windows(b: int = 8, seed: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L, dtype=torch.float32)
    x = 0.5 * torch.randn(b, L, 6, generator=g)
    x[:, :, 2] += 9.8 + 3.0 * torch.sin(2 * torch.pi * t / 10)
    return x


def old_step(enc, tasks, weights, batch, generator=None):
    """The TaskMix loop as it was: per task prepare -> encoder -> masked MSE (inline), weighted sum in order."""
    total, metrics = None, {}
    for task in tasks:
        b = task.prepare(batch, generator)
        pred = task.head(enc(b))
        mask = b["mask"]
        n_masked = int(mask.sum())
        loss = pred.sum() * 0.0 if n_masked == 0 else (pred - b["target"]).pow(2)[mask].mean()
        metrics[f"loss/{task.name}"] = float(loss.detach())
        metrics[f"{task.name}/mse"] = float(loss.detach())
        metrics[f"{task.name}/masked_frac"] = n_masked / mask.numel()
        w = weights[task.name]
        total = w * loss if total is None else total + w * loss
    metrics["loss"] = float(total.detach())
    return total, metrics


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("use_generator", [False, True])
def test_saga_mix_equals_the_old_loop_bit_for_bit(use_generator):
    torch.manual_seed(0)
    enc = LimuBertEncoder(LimuBertConfig(seq_len=L, hidden=H, ff=24, n_heads=3, n_layers=2))
    tasks = [TASKS.build(n, hidden=H, n_channels=6) for n in SAGA_TASKS]
    new = MixModel(enc, TaskMix(tasks, WEIGHTS))
    old = copy.deepcopy(new)  # same weights; the old loop drives its backbone and tasks directly
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (old, new)]
    for step in range(3):
        batch = {"x": windows(seed=step)}
        torch.manual_seed(100 + step)  # the trainer reseeds per step; masks come from the global RNG
        g = torch.Generator().manual_seed(7 + step) if use_generator else None
        old_loss, old_m = old_step(old.backbone, [old.mix.task(n) for n in SAGA_TASKS], WEIGHTS, batch, g)
        rng_old = torch.get_rng_state()
        torch.manual_seed(100 + step)
        g = torch.Generator().manual_seed(7 + step) if use_generator else None
        new_loss, new_m = new.mix(batch, new.backbone, generator=g) if use_generator else new(batch)
        assert torch.equal(torch.get_rng_state(), rng_old)  # the same random numbers were drawn
        assert torch.equal(new_loss, old_loss)
        for k, v in old_m.items():
            assert float(new_m[k]) == v, k
        for opt, loss in zip(opts, (old_loss, new_loss)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        g_old, g_new = grads(old), grads(new)
        assert g_old.keys() == g_new.keys() and len(g_new) == len(list(new.parameters()))
        for n in g_old:
            assert torch.equal(g_old[n], g_new[n]), n
        for opt in opts:
            opt.step()


def test_saga_task_loss_equals_the_inline_masked_mse_even_with_an_empty_mask():
    torch.manual_seed(0)
    task = TASKS.build("saga.point", hidden=H, n_channels=6)
    h = torch.randn(4, L, H)
    target = torch.randn(4, L, 6)
    for mask in (torch.rand(4, L, 6) > 0.7, torch.zeros(4, L, 6, dtype=torch.bool)):
        hn, ho = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
        new, m = task.loss({"mask": mask, "target": target}, hn)
        pred = task.head(ho)
        old = pred.sum() * 0.0 if int(mask.sum()) == 0 else (pred - target).pow(2)[mask].mean()
        assert torch.equal(new, old) and float(m["masked_frac"]) == int(mask.sum()) / mask.numel()
        new.backward()
        old.backward()
        assert torch.equal(hn.grad, ho.grad)
