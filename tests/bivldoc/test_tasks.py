import pytest
import torch

from pretrainkit.core.task import MixModel, PretrainTask, TaskMix
from pretrainkit.systems.bivldoc.encoding import MASK
from pretrainkit.systems.bivldoc.model import BiVLDocModel, DocFeatures, collate
from pretrainkit.systems.bivldoc.stream import PageStream, ViewConfig, pretrain_view
from pretrainkit.systems.bivldoc.tasks import (
    TASK_NAMES,
    LanguageGuidedVision,
    MaskedVisionLanguage,
    build_tasks,
    segment_means,
)


def _view(enc, vocab, seed=0, **kw):
    b = collate(enc)
    return b, pretrain_view(b, ViewConfig(**kw), vocab, torch.Generator().manual_seed(seed))


def test_mvlm_masks_tokens_and_predicts_them_from_fused_features(encoded, tiny):
    tok, cfg, enc = encoded
    clean, v = _view(enc[:3], cfg.vocab_size, mask_prob=0.3)
    scored = v.mlm_labels != -100
    assert scored.any(1).all() and not scored[:, 0].any() and not scored[~clean.attention_mask].any()
    assert torch.equal(v.mlm_labels[scored], clean.input_ids[scored])  # targets: the original tokens
    assert (v.input_ids[scored] == MASK).float().mean() > 0.6  # ~80 % shown as [MASK]
    assert torch.equal(v.input_ids[~scored], clean.input_ids[~scored])
    torch.manual_seed(0)
    model, task = (
        BiVLDocModel(tiny(cfg.vocab_size, dropout=0.0)).eval(),
        MaskedVisionLanguage(32, cfg.vocab_size),
    )
    v.images.requires_grad_(True)
    loss, _ = task.loss(v, model(v))
    loss.backward()
    assert v.images.grad.abs().sum() > 0  # the masked words' prediction reads the page image (fusion)


def test_tipa_hides_the_box_from_the_text_input(encoded, tiny):
    tok, cfg, enc = encoded
    clean, v = _view(enc[:3], cfg.vocab_size, tipa_prob=0.3, itm_prob=0.0)
    assert v.tipa_hidden.any(1).all() and not (v.tipa_hidden & ~clean.seg_mask).any()
    tok_hidden = torch.stack(
        [v.tipa_hidden[i][v.seg_index[i].clamp(min=0)] & (v.seg_index[i] >= 0) for i in range(3)]
    )
    assert (v.boxes[tok_hidden] == 0).all() and (clean.boxes[tok_hidden] != 0).any()
    assert torch.equal(v.tipa_target, clean.seg_boxes)
    # the text stream's input does not depend on the true box: move it, the model's text embedding is the same
    moved = clean.replace(
        boxes=torch.where(tok_hidden[..., None], (clean.boxes + 100).clamp(max=1000), clean.boxes)
    )
    v2 = pretrain_view(
        moved, ViewConfig(tipa_prob=0.3, itm_prob=0.0), cfg.vocab_size, torch.Generator().manual_seed(0)
    )
    model = BiVLDocModel(tiny(cfg.vocab_size, dropout=0.0)).eval()
    torch.testing.assert_close(model.embed(v2), model.embed(v))


def test_lgv_positives_are_the_own_segments(encoded):
    tok, cfg, enc = encoded
    _, v = _view(enc[:3], cfg.vocab_size, itm_prob=0.0)
    text = torch.randn(*v.input_ids.shape, 8)
    vis_seg = torch.randn(*v.seg_mask.shape, 8)
    out = DocFeatures(text=text, vis_global=torch.randn(3, 8), vis_seg=vis_seg)
    task = LanguageGuidedVision(8)
    q, p, which = task.pairs(v, out)
    assert len(q) == int(v.seg_mask.sum())
    for k, (page, seg) in enumerate(which.tolist()):
        assert torch.equal(q[k], vis_seg[page, seg])
        own = v.seg_index[page] == seg
        torch.testing.assert_close(p[k], text[page][own].mean(0))
    # visual tokens equal to their own text's mean: a near-zero loss; shuffled, a large one
    means, _ = segment_means(text, v.seg_index, v.seg_mask.shape[1])
    task.vis.weight.data, task.txt.weight.data = (
        torch.eye(8).repeat(16, 1)[:128],
        torch.eye(8).repeat(16, 1)[:128],
    )
    task.vis.bias.data.zero_(), task.txt.bias.data.zero_()
    aligned, _ = task.loss(v, DocFeatures(text, out.vis_global, means))
    perm = torch.randperm(means.shape[1], generator=torch.Generator().manual_seed(1))
    shuffled, _ = task.loss(v, DocFeatures(text, out.vis_global, means[:, perm]))
    assert aligned < 0.5 * shuffled


def test_itm_negatives_are_real_mismatches(encoded):
    tok, cfg, enc = encoded
    pages = [enc[0], enc[0], enc[1], enc[2]]  # page 0 twice: swapping those two would be no mismatch
    clean, v = _view(pages, cfg.vocab_size, seed=3, itm_prob=1.0)
    assert (v.itm_label == 0).all()
    for i in range(4):
        donors = [j for j in range(4) if torch.equal(v.images[i], clean.images[j])]
        assert donors and all(clean.page_ids[j] != clean.page_ids[i] for j in donors)
    assert not v.tipa_hidden.any()  # TIPA and LGV skip pages whose image is another page's


def test_stream_resumes_with_the_same_masks(encoded):
    tok, cfg, enc = encoded
    a = PageStream(enc, 2, seed=5, view=ViewConfig(), vocab_size=cfg.vocab_size)
    for _ in range(4):
        next(a)
    b = PageStream(enc, 2, seed=5, view=ViewConfig(), vocab_size=cfg.vocab_size)
    b.load_state_dict(a.state_dict())
    x, y = next(a), next(b)
    assert (
        x.page_ids == y.page_ids and torch.equal(x.input_ids, y.input_ids) and torch.equal(x.boxes, y.boxes)
    )
    assert torch.equal(x.itm_label, y.itm_label)


@pytest.mark.skipif(
    not hasattr(PretrainTask, "shares_input"),
    reason="needs the core's shared-forward task mix (branch v2-taskmix)",
)
def test_the_four_tasks_share_one_backbone_forward(encoded, tiny):
    tok, cfg, enc = encoded
    _, v = _view(enc[:3], cfg.vocab_size)
    backbone = BiVLDocModel(tiny(cfg.vocab_size))
    calls = []
    backbone.register_forward_hook(lambda *_: calls.append(1))
    tasks = build_tasks(cfg.d_model, cfg.vocab_size)
    assert all(t.shares_input for t in tasks)
    loss, metrics = MixModel(backbone, TaskMix(tasks))(v)
    assert len(calls) == 1 and all(f"loss/{n}" in metrics for n in TASK_NAMES)
    loss.backward()


@pytest.mark.parametrize("mode", ["grid", "regress"])
def test_mix_trains_every_head(encoded, tiny, mode):
    tok, cfg, enc = encoded
    _, v = _view(enc[:4], cfg.vocab_size)
    torch.manual_seed(0)
    model = MixModel(
        BiVLDocModel(tiny(cfg.vocab_size)), TaskMix(build_tasks(cfg.d_model, cfg.vocab_size, mode))
    )
    loss, metrics = model(v)
    assert torch.isfinite(loss)
    loss.backward()
    for name in TASK_NAMES:
        head = model.mix.task(name)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name
