"""The Bi-VLDoc backbone in one file: text-layout transformer, small CNN image tower, hybrid-attention fusion.

Reconstruction (the paper's abstract names only "bidirectional supervision" and "hybrid attention"; the rest
follows the same lab's public VLDoc/GeoLayoutLM code, see /work/shared/papers/bivldoc.md §1.2-1.3), every
unknown an option of ``ModelConfig``:

- text: token + 1-D position + 2-D box embeddings (x0, y0, x1, y1, width, height; summed as in LayoutLMv1),
  boxes either per word or the word's segment box (``layout``), plus the segment's rank and the token's
  position inside its segment (``segment_order``); then ``text_layers`` transformer layers.
- vision: a convolutional tower trained from scratch (no downloads: no pretrained ConvNeXt here) to a 1/16
  map with a learned 2-D position embedding; one visual token per segment box, pooled with the box's
  fractional overlap of the grid cells (a RoIAlign stand-in: torchvision does not install beside our torch),
  plus one global token (the mean of the map).
- fusion, ``attention``: ``co`` = the lineage's bidirectional co-attention (text self-attends then attends
  vision, vision self-attends then attends text, both from the layer's input); ``merged`` = one softmax over
  the union of both streams with a modality embedding; ``concat`` = no hybrid attention (the ablation): the
  fusion layers self-attend within each stream only, then each token's features are concatenated with its
  segment's visual token (late fusion) and projected back to d_model.
- ``vision=False``: the text-only baseline: no image tower, the fusion layers are text self-attention layers
  (same depth), the visual outputs are zeros.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pretrainkit.errors import ConfigError

COORD = 1001  # box coordinates are ints in 0-1000


@dataclass
class ModelConfig:
    vocab_size: int = 4000
    d_model: int = 128
    n_heads: int = 4
    text_layers: int = 2
    fusion_layers: int = 1
    ffn: int = 512
    dropout: float = 0.1
    max_tokens: int = 256  # including the leading [CLS]
    max_segments: int = 64
    image_size: int = 256
    cnn_channels: tuple[int, ...] = (32, 64, 96, 128)  # one stride-2 stage each: 4 stages = a 1/16 map
    attention: Literal["co", "merged", "concat"] = "co"
    vision: bool = True  # False: text-only (no image tower, no cross-modal layer)
    layout: Literal["word", "segment"] = "word"  # "segment": every token gets its segment's box (LayoutLMv3)
    segment_order: bool = True

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model {self.d_model} is not divisible by model.n_heads {self.n_heads}"
            )
        if self.image_size % (2 ** len(self.cnn_channels)):
            raise ConfigError(
                f"model.image_size {self.image_size} must be divisible by 2^{len(self.cnn_channels)}"
            )
        if self.max_tokens < 2 or self.max_segments < 1:
            raise ConfigError("model.max_tokens must be >= 2 and model.max_segments >= 1")


PRESETS: dict[str, dict] = {
    # a few million parameters: pre-trains on 2 CPU cores in minutes
    "cpu": {},
    # GeoLayoutLM/VLDoc-base-like sizes (12 x 768 text tower, 768^2 pages, 150 segments) for a GPU
    "base": dict(
        vocab_size=16000,
        d_model=768,
        n_heads=12,
        text_layers=12,
        fusion_layers=2,
        ffn=3072,
        max_tokens=512,
        max_segments=150,
        image_size=768,
        cnn_channels=(64, 128, 256, 384, 512),
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}'; allowed: {', '.join(PRESETS)}")
    cfg = ModelConfig(**{**PRESETS[name], **overrides})
    cfg.validate()
    return cfg


# ---- the batch ---------------------------------------------------------------------------------------------
@dataclass
class DocBatch:
    """A padded batch of pages. Token tensors are (B, L), segment tensors (B, S); token 0 is [CLS].

    ``seg_index`` is each token's segment (-1 for [CLS] and padding); ``word_index`` the page word a token
    starts (-1 for later sub-words, [CLS] and padding), so labels and predictions map back to words.
    The pre-training targets (``mlm_labels``, ``tipa_*``, ``itm_label``) are set by the pre-training stream.
    """

    input_ids: torch.Tensor
    boxes: torch.Tensor  # (B, L, 4) long, what the model sees (hidden TIPA boxes are 0 here)
    attention_mask: torch.Tensor  # (B, L) bool
    seg_index: torch.Tensor
    in_seg_pos: torch.Tensor
    word_index: torch.Tensor
    seg_boxes: torch.Tensor  # (B, S, 4) long: where each visual token is pooled from the image
    seg_mask: torch.Tensor  # (B, S) bool
    images: torch.Tensor  # (B, 1, H, W) float
    labels: torch.Tensor | None = None  # (B, L) long, -100 = not scored
    mlm_labels: torch.Tensor | None = None
    tipa_hidden: torch.Tensor | None = None  # (B, S) bool: segments whose text-side box is hidden
    tipa_target: torch.Tensor | None = None  # (B, S, 4) long: the true boxes
    itm_label: torch.Tensor | None = None  # (B,) float: 1 = the page's own image, 0 = another page's
    wpa_labels: torch.Tensor | None = (
        None  # (B, L) long: 1 = the token's image patch was blanked, -100 = unscored
    )
    page_ids: tuple[str, ...] = ()

    def to(self, device) -> DocBatch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def replace(self, **changes) -> DocBatch:
        return dataclasses.replace(self, **changes)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class DocFeatures:
    """The fused output: ``text`` (B, L, d) per token, ``vis_global`` (B, d), ``vis_seg`` (B, S, d)."""

    text: torch.Tensor
    vis_global: torch.Tensor
    vis_seg: torch.Tensor


# ---- towers ------------------------------------------------------------------------------------------------
class TextLayoutEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Embedding(cfg.max_tokens, d)
        self.box = BoxEmbedding(d)
        if cfg.segment_order:
            self.seg_rank = nn.Embedding(cfg.max_segments + 1, d)  # 0 = no segment ([CLS], padding)
            self.in_seg = nn.Embedding(64, d)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, b: DocBatch) -> torch.Tensor:
        pos = torch.arange(b.input_ids.shape[1], device=b.input_ids.device)
        e = self.tok(b.input_ids) + self.pos(pos)[None] + self.box(b.boxes)
        if self.cfg.segment_order:
            e = e + self.seg_rank(b.seg_index + 1) + self.in_seg(b.in_seg_pos.clamp(max=63))
        return self.drop(self.norm(e))


class BoxEmbedding(nn.Module):
    """Sum of x0, y0, x1, y1, width and height embeddings of int boxes in 0-1000 (LayoutLMv1's form)."""

    def __init__(self, d: int):
        super().__init__()
        self.x, self.y, self.w, self.h = (nn.Embedding(COORD, d) for _ in range(4))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = boxes.unbind(-1)
        return (
            self.x(x0)
            + self.y(y0)
            + self.x(x1)
            + self.y(y1)
            + self.w((x1 - x0).clamp(0, 1000))
            + self.h((y1 - y0).clamp(0, 1000))
        )


class ImageTower(nn.Module):
    """Strided conv-GroupNorm-ReLU stages to a 1/2^k map, projected to d_model, with a learned grid embedding.
    GroupNorm, not BatchNorm: batches are a handful of pages, and it keeps no running statistics."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers, c_in = [], 1
        for c in cfg.cnn_channels:
            groups = 8 if c % 8 == 0 else 1
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(groups, c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.GroupNorm(groups, c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.stages = nn.Sequential(*layers)
        self.grid = cfg.image_size // 2 ** len(cfg.cnn_channels)
        self.proj = nn.Conv2d(c_in, cfg.d_model, 1)
        self.pos = nn.Parameter(torch.zeros(1, cfg.d_model, self.grid, self.grid))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stages(images)) + self.pos


def box_pool_weights(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, S, grid, grid) weights: each box's fractional overlap with each cell of a grid over 0-1000,
    normalised to sum 1 (a zero-area box still covers the cell it lies in)."""
    b = boxes.float()
    edges = torch.linspace(0, 1000, grid + 1, device=boxes.device)
    lo, hi = edges[:-1], edges[1:]
    x0, y0, x1, y1 = b.unbind(-1)
    x1, y1 = torch.maximum(x1, x0 + 1), torch.maximum(y1, y0 + 1)
    ox = (torch.minimum(x1[..., None], hi) - torch.maximum(x0[..., None], lo)).clamp(min=0)  # (B, S, G)
    oy = (torch.minimum(y1[..., None], hi) - torch.maximum(y0[..., None], lo)).clamp(min=0)
    w = oy[..., :, None] * ox[..., None, :]
    return w / w.sum((-1, -2), keepdim=True).clamp(min=1e-6)


# ---- fusion ------------------------------------------------------------------------------------------------
class _Attn(nn.Module):
    """Pre-norm residual multi-head attention of ``q`` over ``kv``."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor | None, kv_pad: torch.Tensor) -> torch.Tensor:
        h = self.norm(q)
        k = h if kv is None else kv
        return q + self.attn(h, k, k, key_padding_mask=kv_pad, need_weights=False)[0]


class _FFN(nn.Module):
    def __init__(self, d: int, ffn: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class CoAttentionLayer(nn.Module):
    """Bidirectional co-attention: T' = FFN(CrossAttn(SelfAttn(T), V)), V' = FFN(CrossAttn(SelfAttn(V), T)),
    both streams reading the other's input to this layer (the lineage's two decoder blocks)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h, p = cfg.d_model, cfg.n_heads, cfg.dropout
        self.t_self, self.t_cross, self.t_ffn = _Attn(d, h, p), _Attn(d, h, p), _FFN(d, cfg.ffn, p)
        self.v_self, self.v_cross, self.v_ffn = _Attn(d, h, p), _Attn(d, h, p), _FFN(d, cfg.ffn, p)

    def forward(self, t, v, t_pad, v_pad):
        t_in, v_in = t, v
        t = self.t_ffn(self.t_cross(self.t_self(t_in, None, t_pad), v_in, v_pad))
        v = self.v_ffn(self.v_cross(self.v_self(v_in, None, v_pad), t_in, t_pad))
        return t, v


class MergedAttentionLayer(nn.Module):
    """One softmax over both streams: every token (text or visual) attends the union [T; V]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h, p = cfg.d_model, cfg.n_heads, cfg.dropout
        self.attn, self.ffn = _Attn(d, h, p), _FFN(d, cfg.ffn, p)

    def forward(self, t, v, t_pad, v_pad):
        n = t.shape[1]
        x = self.ffn(self.attn(torch.cat([t, v], 1), None, torch.cat([t_pad, v_pad], 1)))
        return x[:, :n], x[:, n:]


class StreamSelfLayer(nn.Module):
    """No cross-modal attention: each stream self-attends and runs its FFN on its own (``concat`` and the
    text-only model); the same parameter count per stream as a co-attention layer minus the cross blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h, p = cfg.d_model, cfg.n_heads, cfg.dropout
        self.t_self, self.t_ffn = _Attn(d, h, p), _FFN(d, cfg.ffn, p)
        if cfg.vision:
            self.v_self, self.v_ffn = _Attn(d, h, p), _FFN(d, cfg.ffn, p)

    def forward(self, t, v, t_pad, v_pad):
        t = self.t_ffn(self.t_self(t, None, t_pad))
        if v is not None:
            v = self.v_ffn(self.v_self(v, None, v_pad))
        return t, v


class BiVLDocModel(nn.Module):
    """``forward(batch: DocBatch) -> DocFeatures``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = TextLayoutEmbedding(cfg)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.ffn, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.text = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        if cfg.attention not in ("co", "merged", "concat"):
            raise ConfigError(f"unknown model.attention '{cfg.attention}'; allowed: co, merged, concat")
        if cfg.vision:
            self.image = ImageTower(cfg)
            self.vis_box = BoxEmbedding(d)
            self.vis_global = nn.Parameter(torch.zeros(d))
        if cfg.attention == "merged" and cfg.vision:
            self.modality = nn.Parameter(torch.zeros(2, d))
        if not cfg.vision or cfg.attention == "concat":
            fusion = StreamSelfLayer
        else:
            fusion = MergedAttentionLayer if cfg.attention == "merged" else CoAttentionLayer
        self.fusion = nn.ModuleList(fusion(cfg) for _ in range(cfg.fusion_layers))
        if cfg.vision and cfg.attention == "concat":
            self.late = nn.Linear(2 * d, d)  # [token; its segment's visual token] -> d
        self.norm_t, self.norm_v = nn.LayerNorm(d), nn.LayerNorm(d)

    def visual_tokens(self, b: DocBatch) -> torch.Tensor:
        """(B, 1 + S, d): the global token, then one token per segment box."""
        fmap = self.image(b.images)  # (B, d, G, G)
        weights = box_pool_weights(b.seg_boxes, fmap.shape[-1])
        seg = torch.einsum("bsyx,bdyx->bsd", weights, fmap) + self.vis_box(b.seg_boxes)
        glob = fmap.mean((-1, -2)) + self.vis_global
        return torch.cat([glob[:, None], seg], 1)

    def forward(self, b: DocBatch) -> DocFeatures:
        t_pad = ~b.attention_mask
        v_pad = torch.cat([torch.zeros_like(b.seg_mask[:, :1]), ~b.seg_mask], 1)
        t = self.text(self.embed(b), src_key_padding_mask=t_pad)
        if not self.cfg.vision:
            for layer in self.fusion:
                t, _ = layer(t, None, t_pad, v_pad)
            zeros = t.new_zeros(len(b), b.seg_boxes.shape[1] + 1, t.shape[-1])
            return DocFeatures(text=self.norm_t(t), vis_global=zeros[:, 0], vis_seg=zeros[:, 1:])
        v = self.visual_tokens(b)
        if self.cfg.attention == "merged":
            t, v = t + self.modality[0], v + self.modality[1]
        for layer in self.fusion:
            t, v = layer(t, v, t_pad, v_pad)
        if self.cfg.attention == "concat":
            # late fusion: each token beside its segment's visual token ([CLS]/padding: the global token)
            idx = (b.seg_index + 1).clamp(min=0)[..., None].expand(-1, -1, v.shape[-1])
            t = self.late(torch.cat([t, torch.gather(v, 1, idx)], -1))
        t, v = self.norm_t(t), self.norm_v(v)
        return DocFeatures(text=t, vis_global=v[:, 0], vis_seg=v[:, 1:])


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- encoded pages and the collator ------------------------------------------------------------------------
@dataclass
class EncodedPage:
    """One page as the model reads it (built once per page by ``encoding.encode_page``, then cached)."""

    page_id: str
    input_ids: torch.Tensor  # (L,) with [CLS] first
    boxes: torch.Tensor  # (L, 4)
    seg_index: torch.Tensor  # (L,)
    in_seg_pos: torch.Tensor
    word_index: torch.Tensor
    labels: torch.Tensor  # (L,) -100 where not scored
    seg_boxes: torch.Tensor  # (S, 4)
    image: torch.Tensor  # (1, H, W) uint8, ink = high
    n_words: int  # words on the page
    n_words_kept: int  # words that fit in max_tokens / max_segments
    first_word: int = 0  # a window of a long page starts at this word


def collate(pages: list[EncodedPage], layout: str = "word") -> DocBatch:
    """Pad ``pages`` into one ``DocBatch`` (to the longest page's tokens and segments in the batch).
    ``layout="segment"``: every token carries its segment's box instead of its word's."""
    n, L = len(pages), max(len(p.input_ids) for p in pages)
    S = max(max(len(p.seg_boxes) for p in pages), 1)
    ids = torch.zeros(n, L, dtype=torch.long)
    boxes = torch.zeros(n, L, 4, dtype=torch.long)
    att = torch.zeros(n, L, dtype=torch.bool)
    seg_index = torch.full((n, L), -1, dtype=torch.long)
    in_seg = torch.zeros(n, L, dtype=torch.long)
    word_index = torch.full((n, L), -1, dtype=torch.long)
    labels = torch.full((n, L), -100, dtype=torch.long)
    seg_boxes = torch.zeros(n, S, 4, dtype=torch.long)
    seg_mask = torch.zeros(n, S, dtype=torch.bool)
    for i, p in enumerate(pages):
        m, s = len(p.input_ids), len(p.seg_boxes)
        ids[i, :m], att[i, :m], seg_index[i, :m] = p.input_ids, True, p.seg_index
        in_seg[i, :m], word_index[i, :m], labels[i, :m] = p.in_seg_pos, p.word_index, p.labels
        seg_boxes[i, :s], seg_mask[i, :s] = p.seg_boxes, True
        if layout == "segment":
            has = p.seg_index >= 0
            boxes[i, :m][has] = p.seg_boxes[p.seg_index[has]]
        else:
            boxes[i, :m] = p.boxes
    images = torch.stack([p.image for p in pages]).float() / 255.0
    return DocBatch(
        input_ids=ids,
        boxes=boxes,
        attention_mask=att,
        seg_index=seg_index,
        in_seg_pos=in_seg,
        word_index=word_index,
        seg_boxes=seg_boxes,
        seg_mask=seg_mask,
        images=images,
        labels=labels,
        page_ids=tuple(p.page_id for p in pages),
    )
