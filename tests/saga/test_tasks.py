"""Saga's four registered masked-reconstruction tasks and their TaskMix."""

import pytest
import torch

from pretrainkit.core.task import TASKS, TaskMix
from pretrainkit.errors import ConfigError, DataError, PretrainkitError
from pretrainkit.systems.saga.model import LimuBertConfig, LimuBertEncoder, normalise_imu
from pretrainkit.systems.saga.tasks import SAGA_TASKS, MaskedReconstructionTask

L, H = 40, 12


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def windows(b: int = 8) -> torch.Tensor:
    """Raw-unit windows: gravity on acc z (m/s^2), a walking-like oscillation, gyro noise."""
    g = gen(11)
    t = torch.arange(L, dtype=torch.float32)
    x = 0.5 * torch.randn(b, L, 6, generator=g)
    x[:, :, 2] += 9.8 + 3.0 * torch.sin(2 * torch.pi * t / 10)
    return x


def build(name: str, **kw) -> MaskedReconstructionTask:
    return TASKS.build(name, hidden=H, n_channels=6, **kw)


def encoder() -> LimuBertEncoder:
    torch.manual_seed(0)
    return LimuBertEncoder(LimuBertConfig(seq_len=L, hidden=H, ff=24, n_heads=3, n_layers=2))


def test_tasks_are_registered_and_unknown_names_fail():
    for name in SAGA_TASKS:
        assert name in TASKS and TASKS.get(name).name == name
    with pytest.raises(PretrainkitError, match="saga.period"):
        TASKS.get("saga.bogus")


@pytest.mark.parametrize("name", SAGA_TASKS)
def test_prepare_masks_input_and_normalises_target(name):
    task = build(name, mask_prob=1.0)
    x = windows()
    batch = task.prepare({"x": x, "y": torch.arange(8)}, gen())
    mask = batch["mask"]
    assert mask.dtype == torch.bool and mask.shape == x.shape and mask.any()
    torch.testing.assert_close(batch["target"], normalise_imu(x))
    assert (batch["x"][mask] == 0).all()
    torch.testing.assert_close(batch["x"][~mask], x[~mask])
    assert torch.equal(batch["y"], torch.arange(8))  # other keys pass through


def test_prepare_is_deterministic_and_rejects_bad_batches():
    task = build("saga.point")
    a, b = task.prepare({"x": windows()}, gen(2)), task.prepare({"x": windows()}, gen(2))
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["x"], b["x"])
    with pytest.raises(DataError):
        task.prepare({"inputs": windows()}, gen())
    with pytest.raises(DataError):
        task.prepare({"x": windows()[..., :5]}, gen())


@pytest.mark.parametrize("name", SAGA_TASKS)
def test_loss_is_mse_over_masked_entries_only(name, monkeypatch):
    task = build(name)
    batch = task.prepare({"x": windows()}, gen())
    mask, target = batch["mask"], batch["target"]
    h = torch.randn(8, L, H)

    monkeypatch.setattr(task.head, "forward", lambda _h: target.clone())
    loss, metrics = task.loss(batch, h)
    assert float(loss) == 0.0 and metrics["mse"] == 0.0

    pred = target.clone()
    pred[~mask] += 100.0  # wrong everywhere the loss must not look
    pred[mask] += 0.5
    pred.requires_grad_(True)
    monkeypatch.setattr(task.head, "forward", lambda _h: pred)
    loss, metrics = task.loss(batch, h)
    assert float(loss.detach()) == pytest.approx(0.25)
    assert metrics["masked_frac"] == pytest.approx(float(mask.float().mean()))
    loss.backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).all()


def test_task_options_reach_the_masker_and_unknown_ones_fail():
    assert build("saga.sensor", unit="sensor").masker.unit == "sensor"
    assert build("saga.period", max_period=30).masker.bounds(L) == (3, 30)
    assert build("saga.subperiod", acc_channels=(3, 6)).masker.acc_channels == (3, 6)
    with pytest.raises(ConfigError, match="allowed"):
        build("saga.point", unit="sensor")
    with pytest.raises(ConfigError):
        build("saga.point", mask_prob=2.0)


def test_taskmix_weighted_sum_equals_manual_sum():
    enc = encoder()
    tasks = [build(n) for n in SAGA_TASKS]
    weights = {"saga.sensor": 0.5, "saga.point": 1.0, "saga.subperiod": 2.0, "saga.period": 0.25}
    mix = TaskMix(tasks, weights)
    x = windows()
    total, metrics = mix({"x": x}, enc, generator=gen(7))

    g = gen(7)
    manual = torch.zeros(())
    for task in tasks:  # same order as the mix, so the generator is consumed identically
        b = task.prepare({"x": x}, g)
        loss, _ = task.loss(b, enc(b))
        manual = manual + weights[task.name] * loss
        assert metrics[f"loss/{task.name}"] == pytest.approx(float(loss.detach()))
    torch.testing.assert_close(total, manual)
    assert set(metrics) >= {f"{n}/masked_frac" for n in SAGA_TASKS}

    total.backward()
    for task in tasks:
        assert task.head.net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())
