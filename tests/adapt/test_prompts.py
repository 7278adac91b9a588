"""Prompt pool: top-k selection by cosine, shapes, key loss, and the embedding hook that prepends prompts."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pretrainkit.adapt import PromptHook, PromptPool, extend_mask, prepend
from pretrainkit.errors import ConfigError


def test_selects_top_k_nearest_prompts_with_shapes():
    torch.manual_seed(0)
    pool = PromptPool(pool_size=6, prompt_len=3, dim=8, top_k=2, key_dim=5)
    q = torch.randn(4, 5)
    sel = pool(q)
    sim = F.normalize(q, dim=-1) @ F.normalize(pool.keys, dim=-1).T
    assert torch.equal(sel.indices, sim.topk(2, dim=-1).indices.sort(-1).values)
    assert sel.tokens.shape == (4, 6, 8) and pool.n_tokens == 6
    i, j = sel.indices[2].tolist()
    assert torch.equal(sel.tokens[2], torch.cat([pool.tokens[i], pool.tokens[j]]))
    torch.testing.assert_close(sel.key_loss, (1 - sim.gather(1, sel.indices)).mean())
    assert torch.equal(pool.prompts(q), sel.tokens)


def test_key_loss_trains_keys_and_prompts_get_task_gradient():
    pool = PromptPool(pool_size=4, prompt_len=2, dim=3)
    sel = pool(torch.randn(5, 3))
    (sel.key_loss + sel.tokens.sum()).backward()
    used = sel.indices.unique()
    unused = [i for i in range(4) if i not in used]
    assert pool.keys.grad[used].abs().sum() > 0 and pool.keys.grad[unused].abs().sum() == 0
    assert pool.tokens.grad[unused].abs().sum() == 0


def test_plain_prompt_tuning_needs_no_query():
    pool = PromptPool(pool_size=2, prompt_len=3, dim=4, top_k=2)
    sel = pool(None, batch_size=3)
    assert sel.tokens.shape == (3, 6, 4) and sel.key_loss.item() == 0
    assert torch.equal(sel.tokens[0], pool.tokens.reshape(6, 4))
    with pytest.raises(ConfigError, match="query"):
        PromptPool(pool_size=3, prompt_len=1, dim=4)(None, batch_size=3)
    with pytest.raises(ConfigError, match="query must have shape"):
        pool(torch.randn(3, 5))
    with pytest.raises(ConfigError):
        PromptPool(pool_size=2, prompt_len=1, dim=4, top_k=3)


def test_hook_prepends_prompts_to_embeddings():
    embed = nn.Embedding(10, 4)
    encoder = nn.Sequential(embed, nn.Linear(4, 4))
    pool = PromptPool(pool_size=3, prompt_len=2, dim=4)
    tokens = torch.randint(0, 10, (2, 5))
    plain = encoder(tokens)
    hook = PromptHook(embed, pool)
    out = encoder(tokens)
    assert out.shape == (2, 7, 4)
    torch.testing.assert_close(out[:, 2:], plain)  # the backbone's own positions are unchanged here
    expect_idx = pool(embed.weight[tokens].mean(1)).indices
    assert torch.equal(hook.last.indices, expect_idx)
    torch.testing.assert_close(out[:, :2], encoder[1](pool.tokens[expect_idx[:, 0]]))
    hook.remove()
    assert encoder(tokens).shape == (2, 5, 4)


def test_prepend_and_mask_helpers():
    t, p = torch.zeros(2, 3, 4), torch.ones(2, 2, 4)
    assert torch.equal(prepend(t, p)[:, :2], p) and prepend(t, p).shape == (2, 5, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert extend_mask(mask, 2).tolist() == [
        [True, True, True, True, False],
        [True, True, True, False, False],
    ]
