"""TaskMix paths: one shared backbone forward, prepared inputs in task order, tasks owning their step, tensor
metrics without host reads, zero-weight tasks skipped, MixModel's backbone name; the core bench's mix timing."""

import pytest
import torch
from torch import nn

from pretrainkit.core.bench import shared_forward_speedup
from pretrainkit.core.losses import InfoNCE
from pretrainkit.core.task import MixModel, PretrainTask, TaskMix

torch.set_num_threads(1)


class CountingBackbone(nn.Module):
    """A linear backbone that records every input it is called on."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.calls: list[torch.Tensor] = []

    def forward(self, x):
        self.calls.append(x)
        return self.lin(x)


class Shared(PretrainTask):
    def __init__(self, name: str, d: int = 4):
        super().__init__()
        self.name = name
        self.head = nn.Linear(d, 1)

    def loss(self, batch, out):
        loss = self.head(out).pow(2).mean()
        return loss, {"twice": 2 * loss.detach(), "const": 1.5}


class Noised(Shared):
    """Corrupts its input with noise drawn from the generator (a masked-modelling stand-in)."""

    def prepare(self, batch, generator=None):
        return batch + torch.randn(batch.shape, generator=generator)


class TwoView(PretrainTask):
    """Owns its step: two noisy views through the backbone, InfoNCE between them."""

    name = "two_view"

    def __init__(self):
        super().__init__()
        self.nce = InfoNCE(temperature=0.5)

    def forward(self, batch, backbone, generator=None):
        v1 = backbone(batch + 0.1 * torch.randn(batch.shape, generator=generator))
        v2 = backbone(batch + 0.1 * torch.randn(batch.shape, generator=generator))
        return self.nce(v1, v2), {}


def test_paths_are_detected_from_overrides_and_can_be_forced():
    assert Shared("a").shares_input
    assert not Noised("b").shares_input
    assert not TwoView().shares_input

    class Forced(Shared):
        shares_input = False

    assert not Forced("c").shares_input


def test_three_sharing_tasks_call_the_backbone_once_and_equal_separate_forwards():
    torch.manual_seed(0)
    bb, tasks = CountingBackbone(), [Shared(n) for n in ("a", "b", "c")]
    mix = TaskMix(tasks, {"a": 0.5, "b": 1.0, "c": 2.0})
    x = torch.randn(6, 4)
    total, metrics = mix(x, bb)
    assert len(bb.calls) == 1 and bb.calls[0] is x
    manual = None
    for t in tasks:
        term = mix.weights[t.name] * t.loss(x, bb.lin(x))[0]
        manual = term if manual is None else manual + term
    assert torch.equal(total, manual)
    assert torch.equal(metrics["b/twice"], 2 * metrics["loss/b"]) and metrics["b/const"] == 1.5


def test_prepared_tasks_draw_in_task_order_and_shared_forward_runs_at_the_first_sharing_task():
    torch.manual_seed(0)
    bb = CountingBackbone()
    tasks = [Noised("n1"), Shared("s1"), Noised("n2"), Shared("s2")]
    mix = TaskMix(tasks, {"n1": 1.0, "s1": 0.5, "n2": 2.0, "s2": 0.25})
    x = torch.randn(5, 4)
    total, _ = mix(x, bb, generator=torch.Generator().manual_seed(3))
    assert len(bb.calls) == 3  # n1, the shared one (s1 and s2), n2

    g = torch.Generator().manual_seed(
        3
    )  # the old loop: prepare -> backbone -> loss per task, summed in order
    x1 = tasks[0].prepare(x, g)
    x2 = tasks[2].prepare(x, g)
    assert torch.equal(bb.calls[0], x1) and bb.calls[1] is x and torch.equal(bb.calls[2], x2)
    manual = 1.0 * tasks[0].loss(x1, bb.lin(x1))[0]
    manual = manual + 0.5 * tasks[1].loss(x, bb.lin(x))[0]
    manual = manual + 2.0 * tasks[2].loss(x2, bb.lin(x2))[0]
    manual = manual + 0.25 * tasks[3].loss(x, bb.lin(x))[0]
    assert torch.equal(total, manual)


def test_a_two_view_task_owns_its_forward_beside_a_sharing_task():
    torch.manual_seed(0)
    bb, shared, views = CountingBackbone(), Shared("s"), TwoView()
    mix = TaskMix([shared, views])
    x = torch.randn(8, 4)
    total, metrics = mix(x, bb, generator=torch.Generator().manual_seed(1))
    assert len(bb.calls) == 3  # one shared forward, two views
    g = torch.Generator().manual_seed(1)
    ref = views(x, bb, generator=g)[0]
    assert torch.equal(metrics["loss/two_view"], ref.detach())
    total.backward()
    assert bb.lin.weight.grad.abs().sum() > 0 and shared.head.weight.grad.abs().sum() > 0


class PerturbedView(PretrainTask):
    """Owns its step like PHE's semantic task: the clean backbone against a copy with perturbed parameters."""

    name = "perturbed"

    def __init__(self):
        super().__init__()
        self.nce = InfoNCE(temperature=0.5)

    def forward(self, batch, backbone, generator=None):
        params = {
            n: p + 0.1 * torch.randn(p.shape, generator=generator) for n, p in backbone.named_parameters()
        }
        perturbed = torch.func.functional_call(backbone, params, (batch,))
        return self.nce(backbone(batch), perturbed), {}


def test_an_own_step_task_can_run_a_perturbed_copy_of_the_backbone():
    torch.manual_seed(0)
    bb = CountingBackbone()
    model = MixModel(bb, TaskMix([PerturbedView()]))
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    loss, _ = model(torch.randn(6, 4))
    loss.backward()
    assert len(bb.calls) == 2 and bb.lin.weight.grad.abs().sum() > 0
    assert all(torch.equal(p, before[n]) for n, p in bb.named_parameters())  # the perturbation was a copy


def test_zero_weight_tasks_run_nothing():
    bb = CountingBackbone()
    mix = TaskMix([Shared("s"), TwoView(), Noised("n")], {"s": 0.0, "two_view": 0.0, "n": 1.0})
    _, metrics = mix(torch.randn(3, 4), bb)
    assert len(bb.calls) == 1  # only the prepared task's forward: no shared forward, no views
    assert "loss/s" not in metrics and "loss/two_view" not in metrics and "loss/n" in metrics


def test_metrics_are_detached_tensors_and_nothing_is_read_back(monkeypatch):
    bb = CountingBackbone()
    mix = TaskMix([Shared("s"), Noised("n"), TwoView()], {"s": 0.5, "n": 1.0, "two_view": 2.0})

    def refuse(*_a, **_k):
        raise AssertionError("a metric was read back to the host during the step")

    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "__float__", refuse)
    total, metrics = mix(torch.randn(4, 4), bb)
    monkeypatch.undo()
    for k in ("loss", "loss/s", "loss/n", "loss/two_view", "s/twice"):
        v = metrics[k]
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k
    assert metrics["weight/two_view"] == 2.0 and metrics["s/const"] == 1.5
    assert torch.equal(metrics["loss"], total.detach())


def test_default_forward_is_prepare_backbone_loss():
    torch.manual_seed(0)
    bb, task = CountingBackbone(), Noised("n")
    x = torch.randn(3, 4)
    loss, _ = task(x, bb, generator=torch.Generator().manual_seed(5))
    xp = task.prepare(x, torch.Generator().manual_seed(5))
    assert torch.equal(loss, task.loss(xp, bb.lin(xp))[0])


def test_mix_model_backbone_name_sets_the_state_dict_prefix():
    bb, task = CountingBackbone(), Shared("s")
    default = MixModel(bb, TaskMix([task]))
    assert default.backbone is bb and {k.split(".")[0] for k in default.state_dict()} == {"backbone", "mix"}
    named = MixModel(bb, TaskMix([task]), backbone_name="lm")
    assert named.backbone is bb and named.lm is bb
    assert {k for k in named.state_dict() if not k.startswith("mix.")} == {f"lm.{k}" for k in bb.state_dict()}
    x = torch.randn(2, 4)
    assert torch.equal(named(x)[0], default(x)[0])


def test_shared_forward_speedup_returns_a_positive_ratio():
    out = shared_forward_speedup(steps=2, batch=4, repeats=1)
    assert out["speedup"] > 0 and len(out["shared_s_per_step"]) == len(out["separate_s_per_step"]) == 1
    assert all(v > 0 for v in out["shared_s_per_step"] + out["separate_s_per_step"])


def test_core_bench_renders_the_shared_forward_speedup_from_stored_timings():
    from pretrainkit.core.bench import render

    payload = {
        "config": {"steps": 4, "warmup": 3, "batch": 8},
        "bare_s_per_step": [0.01, 0.02],
        "trainer_s_per_step": [0.011, 0.03],
        "ddp_s_per_step": {"1": 0.02, "2": 0.0125},
    }
    headline, body, _ = render(payload)
    assert "shared_forward_speedup" not in headline and "shared backbone" not in body  # results from before
    payload["mix_s_per_step"] = {"shared": [0.02, 0.025], "separate": [0.05, 0.045]}
    headline, body, _ = render(payload)
    assert headline["shared_forward_speedup"] == round(0.045 / 0.02, 3) and "## Task mix" in body


def test_bench_tasks_take_the_paths_they_name():
    from pretrainkit.core.bench import _HeadTask, _OwnForwardHeadTask

    assert _HeadTask("a").shares_input and not _OwnForwardHeadTask("b").shares_input


@pytest.mark.parametrize("weights", [{"s": 1.0, "n": 0.0}, {"s": 0.0, "n": 1.0}])
def test_gradients_flow_only_through_active_tasks(weights):
    bb, s, n = CountingBackbone(), Shared("s"), Noised("n")
    total, _ = TaskMix([s, n], weights)(torch.randn(3, 4), bb)
    total.backward()
    assert (s.head.weight.grad is not None) == (weights["s"] > 0)
    assert (n.head.weight.grad is not None) == (weights["n"] > 0)


def test_a_weight_schedule_reaches_the_mix_through_the_trainer(tmp_path):
    """MixModel's forward(batch) carries no step; the trainer tells every scheduled mix the step, so a
    schedule (here: task b switched on from step 3) takes effect in training."""
    from pretrainkit.core.data import EpochBatches
    from pretrainkit.core.rundir import RunDir
    from pretrainkit.core.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    mix = TaskMix([Shared("a"), Shared("b")], schedule=lambda step: {"b": 0.0 if step < 3 else 1.0})

    class OnX(CountingBackbone):
        def forward(self, batch):
            return super().forward(batch["x"])

    model = MixModel(OnX(), mix)
    cfg = TrainConfig(max_steps=5, lr=1e-2, log_every=1, progress=False)
    Trainer(model, EpochBatches({"x": torch.randn(32, 4)}, 8, seed=0), cfg, run_dir=tmp_path).fit()
    recs = [r for r in RunDir(tmp_path).read_metrics() if "loss/a" in r]
    # the record of step k is the k-th step (index k - 1); a zero-weight task does not run, so logs nothing
    assert [(r["step"], r.get("weight/b")) for r in recs] == [
        (1, None),
        (2, None),
        (3, None),
        (4, 1.0),
        (5, 1.0),
    ]
