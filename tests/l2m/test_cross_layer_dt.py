"""CR-Net's cross-layer form on L2M's Decision Transformer (issue 16, item 4): the generic converter
(adapt.cross_layer) applied through the DT's config, so a saved backbone rebuilds in the same form."""

import json
from dataclasses import asdict

import pytest
import torch

from pretrainkit.adapt.cross_layer import CrossLayerLinear
from pretrainkit.core.checkpoint import save_weights
from pretrainkit.errors import ConfigError
from pretrainkit.systems.l2m import diagnose, pipeline
from pretrainkit.systems.l2m.config import L2MConfig
from pretrainkit.systems.l2m.model import DecisionTransformer, DTConfig

torch.set_num_threads(1)


def _cfg(**kw) -> DTConfig:
    base = dict(d_model=16, n_layer=3, n_head=2, context=1, head="continuous", condition_on_rtg=False)
    return DTConfig(**{**base, **kw})


def _batch(n=4, K=1):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, K, 39, generator=g),
        torch.rand(n, K, 4, generator=g) * 2 - 1,
        torch.zeros(n, K),
        torch.zeros(n, K, dtype=torch.long),
    )


def test_blocks_after_the_first_become_low_rank_chains_that_train():
    torch.manual_seed(0)
    dense = DecisionTransformer(_cfg())
    torch.manual_seed(0)
    dt = DecisionTransformer(_cfg(cross_layer_rank=4))
    assert all(not isinstance(m, CrossLayerLinear) for m in dt.blocks[0].modules())
    chained = [n for n, m in dt.named_modules() if isinstance(m, CrossLayerLinear)]
    assert len(chained) == 2 * 6 and all(n.startswith(("blocks.1.", "blocks.2.")) for n in chained)
    assert dt.cross_layer.params_after < dt.cross_layer.params_before == dense.num_params()
    assert dt.num_params() == dt.cross_layer.params_after
    states, actions, rtg, t = _batch()
    opt = torch.optim.SGD(dt.parameters(), lr=0.1)
    for _ in range(3):  # B starts at zero (zero_b init): fc2.B moves at step 1, fc1.B at 2, fc1.A at 3
        opt.zero_grad()
        loss, _ = dt.action_loss(dt(states, actions, rtg, t), actions, None)
        loss.backward()
        opt.step()
    lin = dt.get_submodule("blocks.2.mlp.fc1")
    assert lin.A.grad.abs().sum() > 0 and lin.B.grad.abs().sum() > 0 and lin.beta.grad.abs().sum() > 0


def test_a_saved_cross_layer_backbone_reloads_to_the_same_actions(tmp_path):
    torch.manual_seed(1)
    dt = DecisionTransformer(_cfg(cross_layer_rank=4)).eval()
    path = tmp_path / "backbone.safetensors"
    save_weights(path, dt.state_dict())
    path.with_suffix(".json").write_text(json.dumps(asdict(dt.cfg)))
    again = pipeline.load_backbone(path).eval()
    states, actions, rtg, t = _batch()
    mask = torch.ones(4, 1, dtype=torch.bool)
    assert torch.equal(dt.act(states, rtg, actions, t, mask), again.act(states, rtg, actions, t, mask))


def test_diagnose_variant_trains_the_profiles_dt_in_cross_layer_form_in_its_own_folder():
    cfg = L2MConfig()
    v = diagnose.variant_config(cfg, "dt-cross-layer")
    assert v.model.cross_layer_rank == cfg.diagnose.cross_layer_rank and v.model.head == cfg.model.head
    assert v.out.endswith("diagnose/dt-cross-layer") and cfg.model.cross_layer_rank == 0


def test_adapter_methods_refuse_a_cross_layer_backbone(tmp_path):
    dt = DecisionTransformer(_cfg(cross_layer_rank=4))
    path = tmp_path / "backbone.safetensors"
    save_weights(path, dt.state_dict())
    path.with_suffix(".json").write_text(json.dumps(asdict(dt.cfg)))
    with pytest.raises(ConfigError, match="cross-layer backbone"):
        pipeline.build_method("lora", L2MConfig(), path, 0)
    assert pipeline.build_method("ft", L2MConfig(), path, 0).trainable_parameters() == dt.num_params()
