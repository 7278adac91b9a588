"""core/losses.py: InfoNCE (in-batch, given and queued negatives; the queue's FIFO, eval and resume rules),
MaskedMSE (equal to the selected mean, broadcast masks, an empty mask) and TokenCrossEntropy (mean, sum/count)."""

import pytest
import torch
import torch.nn.functional as F

from pretrainkit.core.checkpoint import load_weights, save_weights
from pretrainkit.core.losses import InfoNCE, MaskedMSE, TokenCrossEntropy
from pretrainkit.errors import ConfigError, DataError

torch.set_num_threads(1)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------ InfoNCE
def _manual_nce(q, p, negs, t):
    """Cross-entropy at column 0 of [cos(q, p), cos(q, n_k)...] / t, one row per query."""
    rows = []
    for i in range(q.shape[0]):
        n = negs[i] if negs.dim() == 3 else negs
        sims = torch.cat(
            [F.cosine_similarity(q[i], p[i], dim=0)[None], F.cosine_similarity(q[i][None], n, dim=1)]
        )
        rows.append(-torch.log_softmax(sims / t, 0)[0])
    return torch.stack(rows).mean()


def test_infonce_in_batch_uses_the_other_positives_as_negatives():
    q, p = _rand(5, 8, seed=1), _rand(5, 8, seed=2)
    loss = InfoNCE(temperature=0.2)(q, p)
    manual = torch.stack(
        [_manual_nce(q[i : i + 1], p[i : i + 1], torch.cat([p[:i], p[i + 1 :]]), 0.2) for i in range(5)]
    ).mean()
    torch.testing.assert_close(loss, manual)
    aligned = InfoNCE(temperature=0.2)(q, q * 3.0)  # cosine: scale does not matter
    assert aligned < loss


@pytest.mark.parametrize("shared", [True, False])
def test_infonce_given_negatives(shared):
    q, p = _rand(4, 6, seed=1), _rand(4, 6, seed=2)
    negs = _rand(7, 6, seed=3) if shared else _rand(4, 7, 6, seed=3)
    q.requires_grad_(True)
    loss = InfoNCE(temperature=0.1)(q, p, negs)
    torch.testing.assert_close(loss, _manual_nce(q, p, negs, 0.1))
    loss.backward()
    assert q.grad.abs().sum() > 0
    if shared:  # per-query negatives that repeat the shared ones give the same loss
        torch.testing.assert_close(InfoNCE(0.1)(q, p, negs.expand(4, 7, 6)), loss)


def test_infonce_queue_is_fifo_and_adds_negatives():
    nce = InfoNCE(temperature=0.1, queue_size=5)
    q, p = _rand(3, 4, seed=1), _rand(3, 4, seed=2)
    assert torch.equal(nce(q, p), InfoNCE(0.1)(q, p))  # an empty queue adds nothing
    k1, k2 = _rand(3, 4, seed=3), _rand(4, 4, seed=4)
    assert nce.update_queue(k1) and nce.queued.shape == (3, 4)
    assert nce.update_queue(k2) and nce.queued.shape == (5, 4)
    # 7 keys through a queue of 5: the two oldest (k1[0], k1[1]) fell out.
    kept = {tuple(r.tolist()) for r in nce.queued}
    expect = {tuple(r.tolist()) for r in F.normalize(torch.cat([k1[2:], k2]), dim=-1)}
    assert kept == expect
    negs = torch.cat([F.normalize(k2, dim=-1), nce.queued])
    torch.testing.assert_close(nce(q, p, F.normalize(k2, dim=-1)), _manual_nce(q, p, negs, 0.1))
    torch.testing.assert_close(
        nce(q, p, q.new_zeros(0, 4)), _manual_nce(q, p, nce.queued, 0.1)
    )  # MoCo's form


def test_infonce_queue_never_changes_in_eval_or_by_forward():
    nce = InfoNCE(queue_size=4)
    q, p = _rand(3, 4, seed=1), _rand(3, 4, seed=2)
    nce.update_queue(_rand(2, 4, seed=3))
    before = nce.queued.clone()
    nce(q, p)
    with torch.no_grad():
        nce(q, p)
    nce.eval()
    nce(q, p)
    assert not nce.update_queue(_rand(2, 4, seed=4))  # validation never updates a queue
    assert torch.equal(nce.queued, before)
    nce.train()
    with torch.no_grad():  # a training step computes its keys without grad; the explicit update still works
        assert nce.update_queue(_rand(1, 4, seed=5))
    assert nce.queued.shape == (3, 4)
    assert not InfoNCE()(q, p).isnan() and not InfoNCE().update_queue(q)  # queue_size 0: nothing to fill


def test_infonce_queue_survives_a_safetensors_round_trip(tmp_path):
    nce = InfoNCE(queue_size=4)
    for s in range(3):
        nce.update_queue(_rand(3, 4, seed=s))
    save_weights(tmp_path / "w.safetensors", nce.state_dict())
    fresh = InfoNCE(queue_size=4)
    fresh.load_state_dict(load_weights(tmp_path / "w.safetensors"))
    assert torch.equal(fresh.queued, nce.queued)
    k = _rand(3, 4, seed=9)
    nce.update_queue(k)
    fresh.update_queue(k)
    assert torch.equal(fresh.queue, nce.queue)  # the write position came back too


def test_infonce_bad_arguments():
    with pytest.raises(ConfigError, match="temperature"):
        InfoNCE(temperature=0.0)
    with pytest.raises(ConfigError, match="queue_size"):
        InfoNCE(queue_size=-1)
    with pytest.raises(DataError, match="same"):
        InfoNCE()(_rand(3, 4), _rand(3, 5))
    with pytest.raises(DataError, match="negatives"):
        InfoNCE()(_rand(3, 4), _rand(3, 4), _rand(2, 5, 4))
    nce = InfoNCE(queue_size=3)
    nce.update_queue(_rand(2, 4))
    with pytest.raises(DataError, match="4-dim"):
        nce.update_queue(_rand(2, 5))


# ---------------------------------------------------------------------------------------------------- MaskedMSE
def test_masked_mse_equals_the_selected_mean_bit_for_bit():
    pred, target = _rand(3, 10, 6, seed=1).requires_grad_(True), _rand(3, 10, 6, seed=2)
    mask = _rand(3, 10, 6, seed=3) > 0.3
    loss = MaskedMSE()(pred, target, mask)
    old = (pred - target).pow(2)[mask].mean()
    assert torch.equal(loss, old)
    (g_new,) = torch.autograd.grad(loss, pred)
    (g_old,) = torch.autograd.grad(old, pred)
    assert torch.equal(g_new, g_old)


def test_masked_mse_broadcast_and_numeric_masks():
    pred, target = _rand(2, 5, 3, seed=1), _rand(2, 5, 3, seed=2)
    steps = _rand(2, 5, 1, seed=3) > 0
    full = steps.expand(2, 5, 3)
    assert torch.equal(MaskedMSE()(pred, target, steps), MaskedMSE()(pred, target, full))
    assert torch.equal(MaskedMSE()(pred, target, full.float()), MaskedMSE()(pred, target, full))
    with pytest.raises(DataError, match="broadcast"):
        MaskedMSE()(pred, target, torch.ones(2, 4, 1, dtype=torch.bool))


def test_masked_mse_empty_mask_is_zero_with_a_live_zero_gradient():
    pred = _rand(2, 4, 3, seed=1).requires_grad_(True)
    loss = MaskedMSE()(pred, _rand(2, 4, 3, seed=2), torch.zeros(2, 4, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and not loss.isnan()
    loss.backward()
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


# --------------------------------------------------------------------------------------------- TokenCrossEntropy
def test_token_ce_mean_equals_the_inline_expression_and_sum_counts_scored_tokens():
    logits = _rand(3, 7, 11, seed=1).requires_grad_(True)
    labels = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(2))
    labels[0, :3] = -100
    loss = TokenCrossEntropy()(logits, labels)
    old = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.equal(loss, old)
    assert torch.equal(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(old, logits)[0])
    s, c = TokenCrossEntropy(reduction="sum")(logits, labels)
    assert isinstance(c, torch.Tensor) and int(c) == 18
    torch.testing.assert_close(s / c, loss)
    _, c7 = TokenCrossEntropy(ignore_index=7, reduction="sum")(logits, labels.clamp(min=0))
    assert int(c7) == int((labels.clamp(min=0) != 7).sum())


def test_token_ce_scores_half_precision_in_float32():
    logits, labels = _rand(4, 9, seed=1).bfloat16(), torch.arange(4)
    loss = TokenCrossEntropy()(logits, labels)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.cross_entropy(logits.float(), labels))


def test_token_ce_bad_arguments():
    with pytest.raises(ConfigError, match="reduction"):
        TokenCrossEntropy(reduction="none")
    with pytest.raises(DataError, match="labels of shape"):
        TokenCrossEntropy()(_rand(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_updating_the_queue_after_the_loss_keeps_its_backward_valid():
    """A contrastive task pushes this step's keys right after computing its loss from the queue; an in-place
    write would invalidate the tensor the loss saved for backward."""
    import torch

    from pretrainkit.core.losses import InfoNCE

    nce = InfoNCE(temperature=0.1, queue_size=8)
    nce.update_queue(torch.randn(8, 4))
    q = torch.randn(3, 4, requires_grad=True)
    loss = nce(q, torch.randn(3, 4), torch.empty(0, 4))  # the positive against the queue
    nce.update_queue(torch.randn(3, 4))
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
