from dataclasses import dataclass, field

import pytest
import torch

from pretrainkit.core.config import load_config
from pretrainkit.core.task import TASKS, PretrainTask, TaskMix, register_task
from pretrainkit.core.trainer import TrainConfig
from pretrainkit.errors import ConfigError, PretrainkitError


@dataclass
class Inner:
    width: int = 4
    name: str = "x"


@dataclass
class Outer:
    train: TrainConfig = field(default_factory=TrainConfig)
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_yaml_plus_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 0.01\ninner:\n  width: 8\n")
    cfg = load_config(Outer, p, ["train.max_steps=5", "inner.name=y", "tags=[a,b]"])
    assert cfg.train.lr == 0.01 and cfg.train.max_steps == 5 and cfg.inner.width == 8
    assert cfg.inner.name == "y" and cfg.tags == ["a", "b"]


@pytest.mark.parametrize(
    "override,match",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'; allowed here: .*lr"),
        (["inner.width=abc"], "'inner.width': expected an integer"),
        (["train.schedule=linear"], "allowed: cosine, constant"),
        (["train.max_steps=0"], "train.max_steps' must be >= 1"),
        (["nokey"], "must look like key.sub=value"),
    ],
)
def test_bad_config_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, override)


def test_malformed_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "none.yaml")


@register_task("test.scale")
class ScaleTask(PretrainTask):
    """Loss = scale * mean(out): a task whose value is known in closed form."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.head = torch.nn.Linear(2, 1)

    def loss(self, batch, out):
        return self.scale * self.head(out).mean(), {"scale": self.scale}


def test_task_mix_weighted_sum_and_per_task_logging():
    a, b = TASKS.build("test.scale", scale=1.0), ScaleTask(scale=3.0)
    b.name = "test.scale3"
    mix = TaskMix([a, b], weights={"test.scale": 0.25, "test.scale3": 2.0})
    x = torch.randn(5, 2)
    total, m = mix(x, backbone=lambda t: t)
    manual = 0.25 * a.head(x).mean() + 2.0 * 3.0 * b.head(x).mean()
    torch.testing.assert_close(total, manual)
    assert set(m) >= {
        "loss/test.scale",
        "loss/test.scale3",
        "weight/test.scale3",
        "test.scale3/scale",
        "loss",
    }


def test_zero_weight_task_is_skipped_and_schedule_overrides():
    a, b = ScaleTask(), ScaleTask(2.0)
    b.name = "two"
    mix = TaskMix([a, b], weights={"test.scale": 1.0, "two": 0.0})
    _, m = mix(torch.randn(3, 2), backbone=lambda t: t)
    assert "loss/two" not in m
    mix.schedule = lambda step: {"two": 1.0 if step >= 10 else 0.0}
    assert mix.active(5) == ["test.scale"] and mix.active(10) == ["test.scale", "two"]


def test_bad_weights_and_unknown_task():
    mix = TaskMix([ScaleTask()])
    with pytest.raises(ConfigError, match="unknown tasks"):
        mix.set_weights({"nope": 1.0})
    with pytest.raises(ConfigError, match="finite and >= 0"):
        mix.set_weights({"test.scale": float("nan")})
    with pytest.raises(ConfigError, match="every task weight is zero"):
        mix.set_weights({"test.scale": 0.0})
        mix(torch.randn(2, 2), backbone=lambda t: t)
    with pytest.raises(PretrainkitError, match="unknown pre-training task 'nope'; allowed: .*test.scale"):
        TASKS.get("nope")


def test_a_partial_override_keeps_the_rest_of_the_sections_own_default():
    """`--set pretrain.train.max_steps=50` used to rebuild the section from TrainConfig()'s bare defaults,
    silently switching e.g. a system's constant schedule to cosine."""
    from dataclasses import dataclass, field

    from pretrainkit.core.config import load_config
    from pretrainkit.core.trainer import TrainConfig

    @dataclass
    class Pretrain:
        train: TrainConfig = field(
            default_factory=lambda: TrainConfig(max_steps=150, schedule="constant", lr=3e-4)
        )

    @dataclass
    class Top:
        pretrain: Pretrain = field(default_factory=Pretrain)

    c = load_config(Top, None, ["pretrain.train.max_steps=50"])
    assert (c.pretrain.train.max_steps, c.pretrain.train.schedule, c.pretrain.train.lr) == (
        50,
        "constant",
        3e-4,
    )
    assert load_config(Top, None, []).pretrain.train.max_steps == 150
