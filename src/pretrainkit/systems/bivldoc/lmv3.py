"""The LayoutLMv3 *architecture* baseline: Hugging Face's ``LayoutLMv3Model`` built from a config of our size
(random initialisation, no weights downloaded), behind the same ``forward(DocBatch) -> DocFeatures`` as
``BiVLDocModel``, so the same pre-training tasks, tagger and evaluation run on it.

Sizes follow the ``ModelConfig`` it is given: hidden = d_model, layers = text_layers + fusion_layers (one
unified encoder over text ‖ image patches, as LayoutLMv3), heads, FFN, vocabulary, token length, image size.
Its six 2-D embeddings are concatenated (4 coordinates + 2 shapes = d_model), as in LayoutLMv3. Patches are
``image_size / lmv3_patch`` a side (32 px by default: 64 patches on the CPU preset's 256^2 pages, against
LayoutLMv3's 16 px on 224^2, to keep the joint sequence near ours). Outputs: ``text`` = the text positions,
``vis_global`` = the visual [CLS], ``vis_seg`` = patch features pooled over each segment box (the same
box-overlap pooling as ours).
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainkit.errors import ConfigError
from pretrainkit.systems.bivldoc.encoding import PAD
from pretrainkit.systems.bivldoc.model import DocBatch, DocFeatures, ModelConfig, box_pool_weights

LMV3_PATCH = 32


def lmv3_config(cfg: ModelConfig, patch: int = LMV3_PATCH):
    try:
        from transformers import LayoutLMv3Config
    except ImportError:
        raise ConfigError(
            "the LayoutLMv3 baseline needs Hugging Face transformers: pip install 'pretrainkit[bivldoc]'"
        ) from None
    if cfg.image_size % patch:
        raise ConfigError(f"model.image_size {cfg.image_size} must be divisible by the patch size {patch}")
    d = cfg.d_model
    coord = d // 6 + (1 if d % 6 else 0)
    shape = (d - 4 * coord) // 2
    if 4 * coord + 2 * shape != d or shape <= 0:
        raise ConfigError(
            f"model.d_model {d} cannot split into LayoutLMv3's 4 coordinate + 2 shape embeddings"
        )
    return LayoutLMv3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=d,
        num_hidden_layers=cfg.text_layers + cfg.fusion_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.ffn,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_tokens + PAD + 2,  # RoBERTa-style positions start after the pad id
        pad_token_id=PAD,
        type_vocab_size=1,
        coordinate_size=coord,
        shape_size=shape,
        input_size=cfg.image_size,
        patch_size=patch,
        num_channels=1,
    )


class LayoutLMv3Backbone(nn.Module):
    """``forward(batch: DocBatch) -> DocFeatures`` on HF LayoutLMv3 (random init)."""

    def __init__(self, cfg: ModelConfig, patch: int = LMV3_PATCH):
        super().__init__()
        from transformers import LayoutLMv3Model

        self.cfg, self.grid = cfg, cfg.image_size // patch
        self.net = LayoutLMv3Model(lmv3_config(cfg, patch))

    def forward(self, b: DocBatch) -> DocFeatures:
        L = b.input_ids.shape[1]
        # padding tokens carry the pad id, so HF's position ids skip them as RoBERTa's do
        ids = b.input_ids.masked_fill(~b.attention_mask, PAD)
        h = self.net(
            input_ids=ids, bbox=b.boxes, attention_mask=b.attention_mask.long(), pixel_values=b.images
        ).last_hidden_state
        text, vis = h[:, :L], h[:, L:]
        G = self.grid
        patches = vis[:, 1:].reshape(len(b), G, G, -1)
        seg = torch.einsum("bsyx,byxd->bsd", box_pool_weights(b.seg_boxes, G), patches)
        return DocFeatures(text=text, vis_global=vis[:, 0], vis_seg=seg)
