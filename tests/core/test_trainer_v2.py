"""Trainer extension points: scheduler factory, hook(trainer, step), request_stop(), fit()'s own throughput,
batches of any type with .to(device), and metrics read without a device sync per step."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from pretrainkit.core.checkpoint import MODEL_FILE, list_checkpoints, load_weights
from pretrainkit.core.data import BatchStream, EpochBatches, to_device
from pretrainkit.core.trainer import TrainConfig, Trainer
from pretrainkit.errors import NonFiniteLossError

sys.path.insert(0, str(Path(__file__).parent))
from toy import ToyRegressor, toy_data

torch.set_num_threads(1)


def _cfg(**kw):
    base = {"max_steps": 8, "lr": 0.05, "progress": False, "log_every": 1}
    return TrainConfig(**{**base, **kw})


def _trainer(run_dir=None, model=None, batches=None, **kw):
    torch.manual_seed(0)
    hooks = {k: kw.pop(k) for k in ("step_hooks", "eval_hooks", "scheduler", "optimizer") if k in kw}
    return Trainer(
        (model or ToyRegressor)(),
        batches or EpochBatches(toy_data(), 16, seed=1),
        _cfg(**kw),
        run_dir=run_dir,
        **hooks,
    )


# ---- scheduler factory ------------------------------------------------------------------------------
def test_scheduler_factory_is_used_and_checkpointed(tmp_path):
    made = []

    def half(opt, cfg):
        made.append(cfg)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 if s < 4 else 0.25)

    t = _trainer(tmp_path, scheduler=half, ckpt_every=2)
    assert len(made) == 1 and made[0] is t.cfg
    t.fit()
    lrs = [r["lr"] for r in t.run_dir.read_metrics() if "lr" in r]
    assert lrs[:3] == pytest.approx([0.025, 0.025, 0.025]) and lrs[-1] == pytest.approx(0.0125)
    # a resumed run restores the factory's scheduler state (the lr after step 6 is the step-6 one)
    r = _trainer(tmp_path, scheduler=half, ckpt_every=2)
    r.load(list_checkpoints(tmp_path / "checkpoints")[-2][1])
    assert r.step == 6 and r.scheduler.get_last_lr()[0] == pytest.approx(0.0125)


def test_default_scheduler_is_warmup_cosine():
    from pretrainkit.core.trainer import lr_factor

    t = _trainer(warmup_steps=2)
    assert t.scheduler.get_last_lr()[0] == pytest.approx(0.05 * lr_factor(0, t.cfg))


# ---- hooks --------------------------------------------------------------------------------------------
def test_step_and_eval_hooks_receive_the_trainer_and_the_completed_step():
    seen, evals = [], []

    def step_hook(trainer, step):
        seen.append((trainer, step, trainer.step))

    def eval_hook(trainer, step):
        evals.append((trainer, step, trainer.raw_model.training))
        return {"probe": float(step)}

    t = _trainer(step_hooks=[step_hook], eval_hooks=[eval_hook], max_steps=4, eval_every=2)
    out = t.fit()
    assert [(tr is t, s, s2) for tr, s, s2 in seen] == [(True, s, s) for s in range(1, 5)]
    assert [(tr is t, s, training) for tr, s, training in evals] == [(True, 2, False), (True, 4, False)]
    assert out["probe"] == 4.0


# ---- request_stop -------------------------------------------------------------------------------------
def test_request_stop_ends_after_the_current_step_then_evaluates_and_saves(tmp_path):
    evals = []

    def stop_at_3(trainer, step):
        if step == 3:
            trainer.request_stop()

    t = _trainer(
        tmp_path,
        step_hooks=[stop_at_3],
        eval_hooks=[lambda tr, s: evals.append(s) or {"e": 1.0}],
        max_steps=10,
        log_every=4,
    )
    out = t.fit()
    assert t.step == 3 and out["stopped_early"] is True and out["steps_run"] == 3
    assert evals == [3]
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]
    logged = [r["step"] for r in t.run_dir.read_metrics() if "loss" in r]
    assert logged == [3] and math.isfinite(out["loss"])  # the stopping step is logged like a last step
    # a later fit continues (the request does not stick)
    again = _trainer(tmp_path, max_steps=10, log_every=4).fit(resume="auto")
    assert again["stopped_early"] is False and again["steps_run"] == 7


def test_a_full_run_is_not_stopped_early():
    out = _trainer(max_steps=3).fit()
    assert out["stopped_early"] is False and out["steps_run"] == 3


# ---- fit's own measurements ---------------------------------------------------------------------------
class _Tokens(EpochBatches):
    """A stream that says how many tokens a batch holds (8 per item here)."""

    @property
    def tokens_per_batch(self) -> int:
        return self.items_per_batch * 8


def test_fit_returns_its_throughput():
    out = _trainer(max_steps=12).fit()
    assert out["steps_run"] == 12 and out["wall_s"] > 0 and out["items_per_s"] > 0
    assert "tokens_per_s" not in out  # EpochBatches does not say how many tokens a batch has
    tok = _trainer(max_steps=12, batches=_Tokens(toy_data(), 16, seed=1), grad_accum=2).fit()
    assert tok["tokens_per_s"] == pytest.approx(8 * tok["items_per_s"])


def test_resumed_fit_reports_the_remaining_steps(tmp_path):
    _trainer(tmp_path, max_steps=4, ckpt_every=2).fit()
    out = _trainer(tmp_path, max_steps=10, ckpt_every=2).fit(resume="auto")
    assert out["steps_run"] == 6
    done = _trainer(tmp_path, max_steps=10).fit(resume="auto")
    assert done["steps_run"] == 0 and "items_per_s" not in done


def test_streams_satisfy_the_batch_stream_protocol():
    assert isinstance(EpochBatches(toy_data(), 16), BatchStream)
    assert isinstance(_Tokens(toy_data(), 16), BatchStream)
    assert not isinstance(iter([1, 2]), BatchStream)


# ---- batches of any type ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Pair:
    x: torch.Tensor
    y: torch.Tensor
    name: str = "pair"


class _Movable:
    """Like a PyG HeteroData: not a tensor, dict or dataclass, but it knows how to move itself."""

    def __init__(self, x, y):
        self.x, self.y, self.moved_to = x, y, []

    def to(self, device):
        self.moved_to.append(torch.device(device))
        return self


def test_to_device_moves_dataclasses_field_by_field_and_calls_to():
    meta = torch.device("meta")
    moved = to_device({"a": [_Pair(torch.ones(2), torch.zeros(2))], "n": 3}, meta)
    assert moved["a"][0].x.device == meta and moved["a"][0].y.device == meta
    assert moved["a"][0].name == "pair" and moved["n"] == 3
    obj = _Movable(torch.ones(1), torch.ones(1))
    assert to_device((obj,), meta)[0] is obj and obj.moved_to == [meta]
    t = torch.ones(2)
    assert to_device(t, meta).device == meta


class _PairStream(EpochBatches):
    def __init__(self, wrap, *a, **kw):
        super().__init__(*a, **kw)
        self.wrap, self.made = wrap, []

    def __next__(self):
        d = super().__next__()
        b = self.wrap(d["x"], d["y"])
        self.made.append(b)
        return b


class _AttrModel(ToyRegressor):
    def forward(self, batch):
        return super().forward({"x": batch.x, "y": batch.y})


@pytest.mark.parametrize("wrap", [_Pair, _Movable])
def test_trainer_trains_on_dataclass_and_movable_batches(wrap):
    ref = _trainer(max_steps=3).fit()
    stream = _PairStream(wrap, toy_data(), 16, seed=1)
    out = _trainer(max_steps=3, model=_AttrModel, batches=stream).fit()
    assert out["loss"] == ref["loss"]
    if wrap is _Movable:
        assert all(b.moved_to == [torch.device("cpu")] for b in stream.made)


# ---- metrics without a sync per step ------------------------------------------------------------------
def _loss(model, batch):
    return ((model.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()


class _TensorMetrics(ToyRegressor):
    def forward(self, batch):
        loss = _loss(self, batch)
        return loss, {"mse": loss.detach(), "half": loss.detach() / 2, "const": 1}


class _FloatMetrics(ToyRegressor):
    def forward(self, batch):
        loss = _loss(self, batch)
        return loss, {"mse": float(loss.detach()), "half": float(loss.detach()) / 2, "const": 1}


@pytest.mark.parametrize("accum", [1, 2])
def test_tensor_metrics_are_logged_as_the_float_metrics_would_be(tmp_path, accum):
    a = _trainer(
        tmp_path / "a", model=_FloatMetrics, max_steps=6, log_every=2, grad_accum=accum, grad_clip=1.0
    )
    b = _trainer(
        tmp_path / "b", model=_TensorMetrics, max_steps=6, log_every=2, grad_accum=accum, grad_clip=1.0
    )
    oa, ob = a.fit(), b.fit()
    ra = [r for r in a.run_dir.read_metrics() if "loss" in r]
    rb = [r for r in b.run_dir.read_metrics() if "loss" in r]
    assert [r["step"] for r in rb] == [2, 4, 6]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in ("loss", "mse", "half", "const", "grad_norm", "lr"):
            assert type(y[k]) is float and y[k] == pytest.approx(x[k], rel=1e-6), k
    assert all(type(ob[k]) is float for k in ("loss", "mse", "grad_norm"))
    assert ob["mse"] == pytest.approx(oa["mse"], rel=1e-6)


def test_no_host_sync_between_log_steps(monkeypatch):
    """float()/bool()/.item() on a tensor waits for the device: none may happen on a step that is not logged."""
    calls = {"n": 0}
    for name in ("__float__", "__bool__", "item"):
        orig = getattr(torch.Tensor, name)

        def counting(self, *a, _orig=orig, **kw):
            calls["n"] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    at_step = {}
    t = _trainer(
        model=_TensorMetrics,
        max_steps=20,
        log_every=10,
        grad_clip=1.0,
        optimizer=lambda m, c: torch.optim.SGD(m.parameters(), lr=c.lr),
        step_hooks=[lambda tr, s: at_step.__setitem__(s, calls["n"])],
    )
    t.fit()
    assert all(at_step[s] == at_step[1] for s in range(1, 10))
    assert all(at_step[s] == at_step[11] for s in range(11, 20))


class _Exploding(ToyRegressor):
    def forward(self, batch):
        loss, m = super().forward(batch)
        self.calls = getattr(self, "calls", 0) + 1
        return (loss * math.nan if self.calls > 4 else loss), m


def _all_finite(ck):
    return all(torch.isfinite(v).all() for v in load_weights(ck / MODEL_FILE).values())


@pytest.mark.parametrize("log_every,ckpt_every,kept", [(5, 3, [3]), (100, 0, []), (100, 2, [2, 4])])
def test_lazily_detected_nan_raises_and_writes_no_bad_checkpoint(tmp_path, log_every, ckpt_every, kept):
    evals = []
    t = _trainer(
        tmp_path,
        model=_Exploding,
        max_steps=10,
        log_every=log_every,
        ckpt_every=ckpt_every,
        eval_hooks=[lambda tr, s: evals.append(s) or {}],
        eval_every=2,
    )
    with pytest.raises(NonFiniteLossError, match="at step 4") as err:
        t.fit()
    cks = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in cks] == kept and all(_all_finite(p) for _, p in cks)
    assert all(s <= 4 for s in evals)  # no evaluation of non-finite weights either
    assert str(cks[-1][1] if cks else "none written yet") in str(err.value)


# ---- plain progress lines (worker processes have no bar) -------------------------------------------
def test_progress_lines_print_step_loss_and_time_left(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = _cfg(max_steps=6, log_every=2)
    Trainer(
        ToyRegressor(),
        EpochBatches(toy_data(), 16, seed=1),
        cfg,
        run_dir=tmp_path / "enc",
        progress_lines=1e-9,
    ).fit()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("enc: step")]
    assert [ln.split(",")[0] for ln in lines] == ["enc: step 2/6", "enc: step 4/6", "enc: step 6/6"]
    assert all("loss " in ln and "s left" in ln for ln in lines)


def test_no_progress_lines_by_default_or_with_a_bar(tmp_path, capsys):
    torch.manual_seed(0)
    Trainer(
        ToyRegressor(), EpochBatches(toy_data(), 16, seed=1), _cfg(max_steps=4), run_dir=tmp_path / "a"
    ).fit()
    Trainer(
        ToyRegressor(),
        EpochBatches(toy_data(), 16, seed=1),
        _cfg(max_steps=4, progress=True),
        run_dir=tmp_path / "b",
        progress_lines=1e-9,
    ).fit()
    assert "step 4/4" not in capsys.readouterr().out
