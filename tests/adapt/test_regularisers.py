"""EWC (diagonal Fisher, summed over tasks) and L2 anchoring: known values and gradient direction."""

import pytest
import torch
from torch import nn

from pretrainkit.adapt import EWC, L2Anchor
from pretrainkit.errors import CheckpointError, ConfigError


def _model():
    torch.manual_seed(0)
    return nn.Linear(3, 1, bias=False)


def _samples(xs, model):
    return lambda: ((model(x) * 1.0).sum() for x in xs)  # d loss / d w = x  =>  Fisher = mean x^2


def test_fisher_known_answer_and_running_sum():
    m = _model()
    xs = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, 0.0, 0.0])]
    ewc = EWC(m, _samples(xs, m))
    ewc.consolidate()
    torch.testing.assert_close(ewc.fisher["weight"], torch.tensor([[5.0, 2.0, 0.0]]))
    ewc.consolidate(_samples([torch.tensor([0.0, 0.0, 2.0])], m))
    torch.testing.assert_close(ewc.fisher["weight"], torch.tensor([[5.0, 2.0, 4.0]]))


@pytest.mark.parametrize("kind", ["ewc", "l2"])
def test_penalty_zero_after_consolidation_positive_after_change_gradient_points_back(kind):
    m = _model()
    reg = (
        EWC(m, _samples([torch.tensor([1.0, 2.0, 3.0])], m), weight=2.0)
        if kind == "ewc"
        else L2Anchor(m, 2.0)
    )
    assert reg.penalty().item() == 0.0  # nothing consolidated yet
    reg.consolidate()
    assert reg.penalty(m).item() == 0.0
    star = m.weight.detach().clone()
    with torch.no_grad():
        m.weight += torch.tensor([[0.5, -1.0, 0.0]])
    pen = reg.penalty()
    F = torch.tensor([[1.0, 4.0, 9.0]]) if kind == "ewc" else torch.ones(1, 3)
    torch.testing.assert_close(pen, 2.0 * (F * (m.weight - star) ** 2).sum())
    assert pen.item() > 0
    (grad,) = torch.autograd.grad(pen, [m.weight])
    torch.testing.assert_close(grad, 2.0 * 2 * F * (m.weight - star))
    with torch.no_grad():  # a small step against the gradient moves back toward theta*
        m.weight -= 0.01 * grad
    assert reg.penalty().item() < pen.item()


def test_frozen_parameters_are_ignored_and_state_round_trips():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    m[0].requires_grad_(False)
    ewc = EWC(m, lambda: [m(torch.ones(1, 2)).sum()])
    ewc.consolidate()
    assert set(ewc.fisher) == {"1.weight", "1.bias"}
    other = EWC(m)
    other.load_state_dict(ewc.state_dict())
    with torch.no_grad():
        m[1].weight += 1.0
    torch.testing.assert_close(other.penalty(), ewc.penalty())
    with pytest.raises(CheckpointError):
        EWC(nn.Linear(2, 2)).load_state_dict(ewc.state_dict())


def test_ewc_needs_losses():
    m = _model()
    with pytest.raises(ConfigError, match="no losses"):
        EWC(m, lambda: iter(())).consolidate()
    with pytest.raises(ConfigError, match="Fisher sample function"):
        EWC(m).consolidate()
