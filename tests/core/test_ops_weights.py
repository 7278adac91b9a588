"""Every weight file the project loads is verified: a standalone file carries its checksum, a bit flip is
refused in one line, and where a good earlier copy exists (Saga's encoder, L2M's backbone) it is used."""

import pytest
import torch

from pretrainkit.core.checkpoint import list_checkpoints, load_weights, save_weights
from pretrainkit.errors import CheckpointError


def _flip(path, offset=-3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_weights_round_trip_and_a_flipped_bit_is_refused(tmp_path):
    p = tmp_path / "w.safetensors"
    state = {"a": torch.randn(4, 3), "b": torch.arange(5), "empty": torch.zeros(0)}
    save_weights(p, state)
    back = load_weights(p)
    assert all(torch.equal(state[k], back[k]) for k in state)
    _flip(p)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_weights(p)


def test_a_file_without_a_checksum_is_refused_unless_a_manifest_vouched_for_it(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(p))
    with pytest.raises(CheckpointError, match="carries no checksum"):
        load_weights(p)
    assert torch.equal(load_weights(p, verified=True)["a"], torch.ones(2))


@pytest.fixture
def l2m_pretrained(tmp_path, monkeypatch):
    """(pipeline module, config) after a tiny L2M pre-training on synthetic tasks, rollouts faked."""
    pytest.importorskip("metaworld")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "l2m"))
    from test_pipeline import _config, _fake_rollout

    from pretrainkit.systems.l2m import pipeline

    monkeypatch.setattr(pipeline, "evaluate_task", _fake_rollout)
    cfg = _config(tmp_path)
    pipeline.pretrain(cfg, 0, progress=False, log=lambda s: None)
    return pipeline, cfg


def test_l2m_backbone_with_a_flipped_bit_is_rebuilt_from_its_checkpoint(l2m_pretrained):
    pipeline, cfg = l2m_pretrained
    path = pipeline.backbone_path(cfg, 0)
    good = {k: v.clone() for k, v in load_weights(path).items()}  # load_file maps the file: copy first
    _flip(path)
    logs = []
    pipeline.pretrain(cfg, 0, progress=False, log=logs.append)
    assert any("checksum mismatch" in line for line in logs)
    again = load_weights(path)
    assert all(torch.equal(good[k], again[k]) for k in good)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        _flip(path)
        pipeline.load_backbone(path)


def test_saga_final_encoder_with_a_flipped_bit_falls_back_to_the_previous_checkpoint(tmp_path, shared_data):
    from pretrainkit.core.config import load_config
    from pretrainkit.systems.saga.config import SagaConfig
    from pretrainkit.systems.saga.pipeline import SagaPipeline

    cfg = load_config(
        SagaConfig,
        None,
        [
            f"out={tmp_path}",
            "pretrain.train.max_steps=4",
            "pretrain.train.ckpt_every=2",
            "pretrain.train.log_every=1",
            "model.hidden=16",
            "model.ff=32",
            "model.n_layers=1",
            "model.n_heads=2",
            "pretrain.batch_size=8",
            "pretrain.probe_label=null",
        ],
    )
    logs = []
    pipe = SagaPipeline(cfg, progress=False, log=logs.append)
    enc = pipe.pretrain(["saga.point"], None, tag="t")
    ref = {k: v.clone() for k, v in enc.state_dict().items()}
    final = pipe.final_weights("t", 4)
    _flip(final)
    enc2 = pipe.pretrain(["saga.point"], None, tag="t")
    assert any("corrupted" in line for line in logs)
    assert all(torch.equal(ref[k], v) for k, v in enc2.state_dict().items())  # retrained exactly from step 2
    assert [s for s, _ in list_checkpoints(final.parent.parent)][-1] == 4
    load_weights(final, verified=True)


def test_l2m_stage_file_with_a_flipped_bit_is_refused_in_one_line(l2m_pretrained):
    pipeline, cfg = l2m_pretrained
    run = pipeline.ContinualRun(cfg, "lora", 0, log=lambda s: None)
    run.run()
    _flip(run.dir / "stage-1" / "method.safetensors")
    with pytest.raises(CheckpointError, match="stage-1.*checksum mismatch"):
        pipeline.ContinualRun(cfg, "lora", 0, log=lambda s: None).run()
