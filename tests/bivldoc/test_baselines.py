"""The bench's baselines and the harder pre-training views: no-hybrid (late fusion), text-only, the HF
LayoutLMv3 architecture, same-source ITM negatives, word-patch alignment."""

import pytest
import torch

from pretrainkit.core.task import MixModel, TaskMix
from pretrainkit.errors import ConfigError
from pretrainkit.systems.bivldoc.model import BiVLDocModel, collate, n_params
from pretrainkit.systems.bivldoc.stream import PageStream, ViewConfig, pretrain_view
from pretrainkit.systems.bivldoc.tasks import TASK_NAMES, WPA, build_tasks

torch.set_num_threads(1)


def _grad_to_image(model, b):
    b = b.replace(images=b.images.clone().requires_grad_(True))
    out = model(b)
    out.text[b.attention_mask].sum().backward()
    return b.images.grad


def test_text_only_model_never_reads_the_image(encoded, tiny):
    tok, cfg, enc = encoded
    torch.manual_seed(0)
    model = BiVLDocModel(tiny(cfg.vocab_size, vision=False, dropout=0.0)).eval()
    assert not any("image" in n for n, _ in model.named_parameters())
    b = collate(enc[:2])
    a = model(b).text
    other = model(b.replace(images=torch.rand_like(b.images))).text
    torch.testing.assert_close(a, other)
    full = BiVLDocModel(tiny(cfg.vocab_size, dropout=0.0))
    assert n_params(model) < n_params(full)


def test_no_hybrid_fuses_only_late(encoded, tiny):
    """``concat``: no cross-modal attention (a token's features before the late projection ignore the image),
    yet the output reads its segment's visual token."""
    tok, cfg, enc = encoded
    torch.manual_seed(0)
    model = BiVLDocModel(tiny(cfg.vocab_size, attention="concat", dropout=0.0)).eval()
    b = collate(enc[:2])
    assert _grad_to_image(model, b).abs().sum() > 0  # the late concatenation reads the image
    seen = {}
    model.late.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    model(b)
    d = cfg.d_model
    text_part = seen.pop("x")[..., :d]
    model(b.replace(images=torch.rand_like(b.images)))
    torch.testing.assert_close(text_part, seen["x"][..., :d])  # the text stream never attended vision
    with pytest.raises(ConfigError, match="model.attention"):
        BiVLDocModel(tiny(cfg.vocab_size, attention="late"))


def test_layoutlmv3_backbone_fits_the_same_tasks(encoded, tiny):
    pytest.importorskip("transformers")
    from pretrainkit.systems.bivldoc.lmv3 import LayoutLMv3Backbone, lmv3_config

    tok, cfg, enc = encoded
    mcfg = tiny(cfg.vocab_size, dropout=0.0)
    hf = lmv3_config(mcfg)
    assert hf.hidden_size == mcfg.d_model and hf.num_hidden_layers == mcfg.text_layers + mcfg.fusion_layers
    assert 4 * hf.coordinate_size + 2 * hf.shape_size == mcfg.d_model
    torch.manual_seed(0)
    backbone = LayoutLMv3Backbone(mcfg).eval()
    b = collate(enc[:2])
    out = backbone(b)
    assert out.text.shape == (*b.input_ids.shape, mcfg.d_model)
    assert out.vis_seg.shape == (*b.seg_mask.shape, mcfg.d_model)
    # padding does not change a page's text features (the pad id keeps HF's positions right)
    solo = backbone(collate(enc[:1]))
    n = int(b.attention_mask[0].sum())
    torch.testing.assert_close(solo.text[0, :n], out.text[0, :n], atol=1e-5, rtol=1e-4)
    assert _grad_to_image(backbone, b).abs().sum() > 0  # one unified encoder: text attends the patches
    stream = PageStream(enc, 2, view=ViewConfig(wpa_prob=0.5), vocab_size=cfg.vocab_size)
    tasks = build_tasks(mcfg.d_model, cfg.vocab_size, wpa=True)
    weights = {"bivldoc.mvlm": 1.0, WPA: 1.0, **{n: 0.0 for n in TASK_NAMES[1:]}}
    loss, metrics = MixModel(backbone.train(), TaskMix(tasks, weights))(next(stream))
    assert torch.isfinite(loss) and f"loss/{WPA}" in metrics
    with pytest.raises(ConfigError, match="d_model"):
        lmv3_config(tiny(cfg.vocab_size, d_model=2, n_heads=1))


def test_same_source_itm_negatives_come_from_the_same_kind(encoded):
    tok, cfg, enc = encoded
    groups = ["a", "a", "a", "b", "b", "b"][: len(enc)]
    enc = enc[: len(groups)]
    stream = PageStream(
        enc, 2, seed=1, view=ViewConfig(itm_prob=1.0), vocab_size=cfg.vocab_size, groups=groups
    )
    images = {e.page_id: e.image.float() / 255.0 for e in enc}
    ids = [e.page_id for e in enc]
    for _ in range(6):
        b = next(stream)
        assert (b.itm_label == 0).all()
        for i, pid in enumerate(b.page_ids):
            donors = [j for j, q in enumerate(ids) if torch.equal(b.images[i], images[q])]
            assert donors and all(ids[j] != pid and groups[j] == groups[ids.index(pid)] for j in donors)
    with pytest.raises(ConfigError, match="itm_negatives"):
        ViewConfig(itm_negatives="random").validate()


def test_wpa_labels_name_the_blanked_cells(encoded):
    tok, cfg, enc = encoded
    b = collate(enc[:2])
    v = pretrain_view(
        b,
        ViewConfig(itm_prob=0.0, wpa_prob=0.5, wpa_grid=4),
        cfg.vocab_size,
        torch.Generator().manual_seed(0),
    )
    scored = v.wpa_labels != -100
    assert scored.any() and not scored[v.mlm_labels != -100].any()  # masked tokens are not scored
    assert not scored[:, 0].any() and not scored[~b.attention_mask].any()
    H = b.images.shape[-1]
    for i, t in scored.nonzero().tolist():
        x0, y0, x1, y1 = b.boxes[i, t].tolist()
        cx, cy = min(int((x0 + x1) / 2000 * H), H - 1), min(int((y0 + y1) / 2000 * H), H - 1)
        cell = v.images[
            i,
            0,
            (cy // (H // 4)) * (H // 4) : (cy // (H // 4) + 1) * (H // 4),
            (cx // (H // 4)) * (H // 4) : (cx // (H // 4) + 1) * (H // 4),
        ]
        if v.wpa_labels[i, t] == 1:
            assert (cell == 0).all()
        else:  # an unblanked cell keeps the page's pixels
            orig = b.images[
                i,
                0,
                (cy // (H // 4)) * (H // 4) : (cy // (H // 4) + 1) * (H // 4),
                (cx // (H // 4)) * (H // 4) : (cx // (H // 4) + 1) * (H // 4),
            ]
            assert torch.equal(cell, orig)


def test_windowed_corpus_keeps_every_word_and_its_source(funsd_few, tiny):
    from pretrainkit.systems.bivldoc.encoding import train_tokenizer
    from pretrainkit.systems.bivldoc.pipeline import encode_corpus

    tok = train_tokenizer(funsd_few, 400)
    cfg = tiny(tok.get_vocab_size())
    enc, groups, note = encode_corpus(funsd_few, tok, cfg, "windows")
    assert note is None and len(groups) == len(enc) > len(funsd_few)  # long pages split, none cut
    for p in funsd_few:
        mine = [e for e in enc if e.page_id == p.page_id]
        assert sum(e.n_words_kept for e in mine) == len(p.words)
        assert {g for e, g in zip(enc, groups) if e.page_id == p.page_id} == {p.source}
    cut, _, note = encode_corpus(funsd_few, tok, cfg, "truncate")
    assert len(cut) == len(funsd_few) and "truncated" in note
