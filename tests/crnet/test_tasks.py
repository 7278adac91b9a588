"""crnet.next_token: the CR-Net objective as a registered task. LMObjective (now a one-task mix) equals the
objective of before bit for bit (loss, perplexity sums, every gradient over optimiser steps) and keeps its
``lm.`` checkpoint keys."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pretrainkit.core.task import TASKS, TaskMix
from pretrainkit.systems.crnet.model import LlamaConfig, LlamaLM
from pretrainkit.systems.crnet.pipeline import LMObjective, unwrap_lm
from pretrainkit.systems.crnet.tasks import NextTokenTask

torch.set_num_threads(1)


def batch(seed: int, B: int = 3, T: int = 16, vocab: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g, dtype=torch.int32)
    labels = ids[:, 1:].clone()
    labels[0, :4] = -100  # ignored positions, as at document starts
    return {"input_ids": ids[:, :-1], "labels": labels}


def old_loss(lm: LlamaLM, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """LMObjective's loss before the task mix: ``lm(ids, labels)``, whose cross-entropy was this expression."""
    logits = lm.lm_head(lm.hidden_states(b["input_ids"].long()))
    return F.cross_entropy(logits.float().flatten(0, 1), b["labels"].long().flatten(), ignore_index=-100)


def test_next_token_is_registered_and_shares_the_forward():
    task = TASKS.build("crnet.next_token")
    assert isinstance(task, NextTokenTask) and task.shares_input


@pytest.mark.parametrize("method", ["full", "crnet", "lora"])
def test_lm_objective_equals_the_old_objective_bit_for_bit(method):
    torch.manual_seed(0)
    # lora keeps its 0.05 dropout: the random numbers must be drawn in the same order too
    new = LMObjective(LlamaLM(LlamaConfig.preset("tiny", method=method)))
    old = copy.deepcopy(new)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (old, new)]
    for step in range(3):
        b = batch(step)
        torch.manual_seed(50 + step)
        lo = old_loss(old.lm, b)
        torch.manual_seed(50 + step)
        assert torch.equal(old.lm(b["input_ids"].long(), b["labels"].long())[1], lo)  # lm(ids, labels) too
        torch.manual_seed(50 + step)
        ln, metrics = new(b)
        assert torch.equal(ln, lo) and torch.equal(metrics["loss/crnet.next_token"], lo.detach())
        for opt, loss in zip(opts, (lo, ln)):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        for (n, po), (_, pn) in zip(old.named_parameters(), new.named_parameters()):
            assert (po.grad is None) == (pn.grad is None), n
            if po.grad is not None:
                assert torch.equal(po.grad, pn.grad), n
        for opt in opts:
            opt.step()


def test_sum_loss_path_is_unchanged():
    torch.manual_seed(0)
    model = LMObjective(LlamaLM(LlamaConfig.preset("tiny", method="crnet"))).eval()
    b = batch(3)
    s, c = model(b, sum_loss=True)
    logits = model.lm.lm_head(model.lm.hidden_states(b["input_ids"].long()))
    old = F.cross_entropy(
        logits.float().flatten(0, 1), b["labels"].long().flatten(), ignore_index=-100, reduction="sum"
    )
    assert torch.equal(s, old.double()) and c == int((b["labels"] != -100).sum()) and isinstance(c, int)


def test_checkpoint_keys_keep_the_lm_prefix_and_a_custom_mix_plugs_in():
    lm = LlamaLM(LlamaConfig.preset("tiny"))
    model = LMObjective(lm)
    assert set(model.state_dict()) == {f"lm.{k}" for k in lm.state_dict()}
    assert unwrap_lm(model) is lm and model.backbone is lm
    heavier = LMObjective(lm, TaskMix([NextTokenTask()], {"crnet.next_token": 2.0}))
    b = batch(0)
    torch.manual_seed(0)
    one = model(b)[0]
    torch.manual_seed(0)
    assert torch.equal(heavier(b)[0], 2.0 * one)
