import pytest
import torch

from pretrainkit.core.data import to_device
from pretrainkit.errors import ConfigError, DataError
from pretrainkit.systems.bivldoc.encoding import CLS, encode_page, encode_windows
from pretrainkit.systems.bivldoc.model import BiVLDocModel, DocBatch, collate, n_params, preset


def test_presets_sizes():
    assert 1e6 < n_params(BiVLDocModel(preset("cpu"))) < 10e6
    with torch.device("meta"):  # no memory: only the count
        assert n_params(BiVLDocModel(preset("base"))) > 100e6
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("huge")


@pytest.mark.parametrize("attention", ["co", "merged"])
def test_both_attention_variants_fuse_the_streams(encoded, tiny, attention):
    tok, cfg, enc = encoded
    torch.manual_seed(0)
    model = BiVLDocModel(tiny(cfg.vocab_size, attention=attention, dropout=0.0)).eval()
    b = collate(enc[:3])
    b.images.requires_grad_(True)
    out = model(b)
    assert out.text.shape == (*b.input_ids.shape, cfg.d_model)
    assert out.vis_seg.shape == (*b.seg_mask.shape, cfg.d_model) and out.vis_global.shape == (3, cfg.d_model)
    out.text[b.attention_mask].sum().backward()  # the text stream reads the image...
    assert b.images.grad.abs().sum() > 0
    # ...and the visual stream reads the text: other words, other visual features
    b2 = b.replace(
        input_ids=torch.where(b.attention_mask, (b.input_ids + 7) % cfg.vocab_size, b.input_ids),
        images=b.images.detach(),
    )
    assert not torch.allclose(model(b2).vis_seg, out.vis_seg.detach())
    # padding does not change a page's features
    solo = model(collate(enc[:1]))
    n = int(b.attention_mask[0].sum())
    torch.testing.assert_close(solo.text[0, :n], out.text[0, :n].detach(), atol=1e-5, rtol=1e-4)


def test_collate_pads_and_moves(encoded):
    _, _, enc = encoded
    b = collate(enc[:2])
    assert isinstance(b, DocBatch) and (b.input_ids[:, 0] == CLS).all()
    assert b.labels.shape == b.input_ids.shape and (b.labels[~b.attention_mask] == -100).all()
    moved = to_device(b, "cpu")
    assert isinstance(moved, DocBatch) and moved.page_ids == b.page_ids
    seg = collate(enc[:2], layout="segment")
    has = seg.seg_index[0] >= 0
    assert torch.equal(seg.boxes[0][has], seg.seg_boxes[0][seg.seg_index[0][has]])


def test_windows_cover_every_word_once_and_overflow_is_stated(funsd_few, encoded):
    tok, cfg, _ = encoded
    page = max(funsd_few, key=lambda p: len(p.words))
    wins = encode_windows(page, tok, cfg)
    words = torch.cat([w.word_index[w.word_index >= 0] for w in wins])
    assert len(wins) > 1 and torch.equal(words, torch.arange(len(page.words)))
    assert all(len(w.input_ids) <= cfg.max_tokens and len(w.seg_boxes) <= cfg.max_segments for w in wins)
    with pytest.raises(DataError, match="exceed model.max_tokens"):
        encode_page(page, tok, cfg, overflow="error")
    cut = encode_page(page, tok, cfg, overflow="truncate")
    assert cut.n_words_kept < cut.n_words
