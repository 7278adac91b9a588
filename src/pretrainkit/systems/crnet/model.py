"""A LLaMA-style decoder in one file: RMSNorm, rotary positions, SwiGLU, causal attention.

The seven projections of each block are built by ``layers.build_projection`` according to ``LlamaConfig.method``
(full, lowrank, cola, lora, relora, crnet). For CR-Net each block receives the previous block's projection outputs
and returns its own (a dict by projection name), so ``Y_l = c * Y_{l-1} + X_l A_l B_l`` can be formed.

Module names follow Hugging Face's ``LlamaForCausalLM`` (``layers.N.self_attn.q_proj`` ...), and the rotary
embedding uses its "rotate half" convention, so full-rank weights move to and from HF without permutation
(``to_hf_state_dict``, ``from_hf_state_dict``, ``save_hf``, ``load_hf`` at the end of this file).

Labels are aligned with the inputs (nanoGPT style): ``labels[:, t]`` is the target for position ``t``; the model does
not shift. Positions with label -100 are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretrainkit.core.losses import TokenCrossEntropy
from pretrainkit.errors import ConfigError
from pretrainkit.systems.crnet.layers import (
    CRNET_ANCHORS,
    CRNET_INITS,
    METHODS,
    PROJECTIONS,
    Chain,
    CRNetLinear,
    LoRALinear,
    build_projection,
    layer_ranks,
)
from pretrainkit.systems.crnet.recompute import crnet_recompute

RECOMPUTE = ("none", "checkpoint", "crnet")
_TOKEN_CE, _TOKEN_CE_SUM = TokenCrossEntropy(), TokenCrossEntropy(reduction="sum")


# --------------------------------------------------------------------------------------------------- config
@dataclass
class LlamaConfig:
    """Model shape, projection method and recomputation. Defaults are GaLore's 60M config with full rank."""

    vocab_size: int = 32000
    hidden: int = 512
    intermediate: int = 1376
    n_heads: int = 8
    n_layers: int = 8
    max_seq_len: int = 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    init_std: float = 0.02
    # How the 7 projections are built: full | lowrank | cola | lora | relora | crnet.
    method: str = "full"
    # Uniform rank or one per layer (for crnet, layer 1's entry is unused while crnet_anchor is "full").
    rank: int | list[int] | None = None
    crnet_init: str = "zero_b"  # see layers.init_crnet
    crnet_beta_init: float = 1.0
    crnet_eps: float = 1e-6
    crnet_anchor: str = "full"  # layer 1: "full" (paper) or "lowrank" (the paper's ablation)
    lora_alpha: float = 32.0  # GaLore's LoRA / ReLoRA baseline
    lora_dropout: float = 0.05
    # Activation memory: none | checkpoint (torch.utils.checkpoint per block) | crnet (chain inversion).
    recompute: str = "none"
    checkpoint_every: int = 8  # crnet recompute keeps full outputs of every k-th layer and the last

    def __post_init__(self):
        def allowed(key: str, value, options):
            if value not in options:
                raise ConfigError(f"unknown {key} '{value}'; allowed: {', '.join(options)}")

        allowed("method", self.method, METHODS)
        allowed("recompute", self.recompute, RECOMPUTE)
        allowed("crnet_init", self.crnet_init, CRNET_INITS)
        allowed("crnet_anchor", self.crnet_anchor, CRNET_ANCHORS)
        for key in (
            "vocab_size",
            "hidden",
            "intermediate",
            "n_heads",
            "n_layers",
            "max_seq_len",
            "checkpoint_every",
        ):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key} must be a positive integer, got {v!r}")
        if self.hidden % self.n_heads or (self.hidden // self.n_heads) % 2:
            raise ConfigError(f"hidden {self.hidden} must split into {self.n_heads} heads of even size")
        if self.recompute == "crnet" and self.method != "crnet":
            raise ConfigError(
                f"recompute 'crnet' needs method 'crnet' (got '{self.method}'); use 'checkpoint'"
            )
        if self.crnet_beta_init == 0 or self.crnet_eps <= 0:
            raise ConfigError(
                "crnet_beta_init must be non-zero (|beta| has no gradient at 0) and crnet_eps > 0"
            )
        if self.method in ("lora", "relora") and not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.rank, tuple):
            self.rank = list(self.rank)
        self.ranks = layer_ranks(self.rank, self.n_layers, self.method)
        limit = min(self.hidden, self.intermediate)  # the narrowest side of any projection
        for i, r in enumerate(self.ranks):
            if self.method == "full" or (self.method == "crnet" and i == 0 and self.crnet_anchor == "full"):
                continue  # full-rank layer: its rank entry is unused
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= limit:
                raise ConfigError(
                    f"rank {r!r} for layer {i + 1} must be an integer in 1..{limit} "
                    f"(min of hidden {self.hidden} and intermediate {self.intermediate})"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> LlamaConfig:
        """A named size (``PRESETS``) with fields overridden, e.g. ``preset("60m", method="crnet")``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset '{name}'; allowed: {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# GaLore/CoLA sizes (configs/llama_*.json, vocab 32000; rank = the papers' r) and small CPU sizes (rank h/4).
_PRESET_KEYS = ("hidden", "intermediate", "n_heads", "n_layers", "rank", "vocab_size", "max_seq_len")
# fmt: off
PRESETS: dict[str, dict] = {name: dict(zip(_PRESET_KEYS, row)) for name, row in {
    "tiny":      (64,   176,   4,  4,  16,   512,   256),
    "cpu-small": (128,  352,   4,  4,  32,   4096,  512),
    "cpu-base":  (256,  688,   4,  6,  64,   4096,  512),
    "60m":       (512,  1376,  8,  8,  128,  32000, 1024),
    "130m":      (768,  2048,  12, 12, 256,  32000, 1024),
    "350m":      (1024, 2736,  16, 24, 256,  32000, 1024),
    "1b":        (2048, 5461,  32, 24, 512,  32000, 1024),
    "7b":        (4096, 11008, 32, 32, 1024, 32000, 2048),
}.items()}
# fmt: on


# --------------------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 like HF LLaMA so bf16 runs stay stable."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE tables with HF's layout: frequencies repeated over the two halves of each head (rotate_half)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return self.cos[:seq_len].to(dtype), self.sin[:seq_len].to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    cos, sin = rope
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Multi-head causal self-attention (scaled_dot_product_attention) with rotary positions."""

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        h, r = cfg.hidden, cfg.ranks[layer]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, build_projection(cfg.method, h, h, r, layer, name, cfg))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], chain: Chain) -> Tensor:
        B, T, C = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

        q = apply_rope(heads(chain("q_proj", self.q_proj, x)), rope)
        k = apply_rope(heads(chain("k_proj", self.k_proj, x)), rope)
        v = heads(chain("v_proj", self.v_proj, x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)
        return chain("o_proj", self.o_proj, y)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        h, f, r, m = cfg.hidden, cfg.intermediate, cfg.ranks[layer], cfg.method
        self.gate_proj = build_projection(m, h, f, r, layer, "gate_proj", cfg)
        self.up_proj = build_projection(m, h, f, r, layer, "up_proj", cfg)
        self.down_proj = build_projection(m, f, h, r, layer, "down_proj", cfg)

    def forward(self, x: Tensor, chain: Chain) -> Tensor:
        # CR-Net chains the linear outputs gate, up and down, not silu(gate) * up.
        hidden = F.silu(chain("gate_proj", self.gate_proj, x)) * chain("up_proj", self.up_proj, x)
        return chain("down_proj", self.down_proj, hidden)


class Block(nn.Module):
    """Pre-norm decoder block. Takes and returns the CR-Net chain state (projection name -> previous output)."""

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, layer)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        prev: dict[str, Tensor] | None = None,
        low: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``prev``: previous layer's projection outputs (None if the method does not chain); ``low`` (optional)
        collects the rank-r intermediates for the recomputation. Returns (output, this layer's projection outputs)."""
        chain = Chain(prev, low)
        x = x + self.self_attn(self.input_layernorm(x), rope, chain)
        x = x + self.mlp(self.post_attention_layernorm(x), chain)
        return x, chain.out

    def projections(self) -> dict[str, nn.Module]:
        return {
            n: getattr(self.self_attn if n in ("q_proj", "k_proj", "v_proj", "o_proj") else self.mlp, n)
            for n in PROJECTIONS
        }


# --------------------------------------------------------------------------------------------------- model
class LlamaLM(nn.Module):
    """Decoder-only language model: embeddings, ``n_layers`` blocks, final norm, LM head."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # N(0, init_std) for embeddings and plain linear maps (GaLore/HF LLaMA); factored layers init themselves,
        # and so do the frozen Linears inside LoRA layers (drawing them again would shift every later draw).
        lora_bases = {id(m.base) for m in self.modules() if isinstance(m, LoRALinear)}
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)) and id(m) not in lora_bases:
                nn.init.normal_(m.weight, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @property
    def chained(self) -> bool:
        return self.cfg.method == "crnet"

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        """Final-norm hidden states (B, T, hidden): the backbone output the LM head reads."""
        T = input_ids.shape[1]
        if T > self.cfg.max_seq_len:
            raise ConfigError(
                f"sequence length {T} exceeds the model's context max_seq_len={self.cfg.max_seq_len}"
            )
        x = self.embed_tokens(input_ids)
        rope = self.rope(T, x.dtype)
        recompute = self.cfg.recompute if torch.is_grad_enabled() else "none"
        if recompute == "crnet":
            x = crnet_recompute(self.layers, x, rope, self.cfg.checkpoint_every)
        else:
            prev = {} if self.chained else None
            for block in self.layers:
                if recompute == "checkpoint":
                    x, prev = checkpoint(block, x, rope, prev, use_reentrant=False)
                else:
                    x, prev = block(x, rope, prev)
                prev = prev if self.chained else None
        return self.norm(x)

    def forward(
        self, input_ids: Tensor | Mapping[str, Tensor], labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Return (logits (B, T, vocab), mean cross-entropy over labels != -100 or None without labels).

        A batch mapping stands for its ``input_ids`` (what a TaskMix passes); its labels are the task's to score.
        """
        if isinstance(input_ids, Mapping):
            input_ids = input_ids["input_ids"].long()
        logits = self.lm_head(self.hidden_states(input_ids))
        if labels is None:
            return logits, None
        return logits, _TOKEN_CE(logits.float(), labels)

    def loss_sum_and_count(self, input_ids: Tensor, labels: Tensor) -> tuple[Tensor, int]:
        """Summed token NLL (float64) and the number of scored tokens, for exact perplexity over many batches."""
        logits = self.lm_head(self.hidden_states(input_ids))
        nll, count = _TOKEN_CE_SUM(logits.float(), labels)
        return nll.double(), int(count)

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Parameter count (a tied embedding counted once); ``trainable_only`` skips frozen LoRA bases."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def param_groups(
        self,
        weight_decay: float,
        lr: float | None = None,
        block_lr_scale: float = 1.0,
        beta_lr_scale: float | None = None,
    ) -> list[dict]:
        """Optimizer groups: weight decay on matrices, none on norms and CR-Net's beta scalars. With
        ``block_lr_scale`` != 1 the blocks' projections (and CR-Net's betas) train at ``lr`` times it while
        embeddings, head and norms keep ``lr`` -- the lr structure GaLore's scale gives its arm.
        ``beta_lr_scale``: the betas at ``lr`` times this instead (None: with the projections)."""
        beta_scale = block_lr_scale if beta_lr_scale is None else beta_lr_scale
        buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}  # (decays, lr multiplier) -> params
        for name, p in self.named_parameters():
            if p.requires_grad:
                in_block = name.startswith("layers.") and "layernorm" not in name  # projections and betas
                scale = beta_scale if name.endswith(".beta") else block_lr_scale if in_block else 1.0
                buckets.setdefault((p.ndim >= 2, scale), []).append(p)
        if lr is None and any(scale != 1.0 for _, scale in buckets):
            raise ValueError("param_groups: block_lr_scale / beta_lr_scale need the base lr")
        return [
            {"params": ps, "weight_decay": weight_decay if decays else 0.0}
            | ({"lr": lr * scale} if scale != 1.0 else {})
            for (decays, scale), ps in buckets.items()
        ]

    def betas(self) -> dict[str, float]:
        """CR-Net's beta per (layer, projection), e.g. ``{"layers.1.q_proj": 0.98}``, for logging."""
        return {
            f"layers.{i}.{n}": float(p.beta.detach())
            for i, b in enumerate(self.layers)
            for n, p in b.projections().items()
            if isinstance(p, CRNetLinear)
        }

    def merge_and_reset(self) -> list[nn.Parameter]:
        """ReLoRA's step: fold every LoRA product into its frozen weight and restart A, B.

        Returns the restarted parameters; the trainer should clear their optimizer state (ReLoRA resets it)."""
        if self.cfg.method not in ("lora", "relora"):
            raise ConfigError(f"merge_and_reset needs method 'relora' or 'lora', not '{self.cfg.method}'")
        restarted = []
        for m in self.modules():
            if isinstance(m, LoRALinear):
                m.merge_and_reset()
                restarted += [m.lora_A, m.lora_B]
        return restarted

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append ``max_new_tokens`` tokens: greedy, or sampled from the top-k softmax at ``temperature``.

        Recomputes the whole (cropped) context each step: simple and exact, fine for short samples."""
        ids = input_ids
        for _ in range(max_new_tokens):
            logits, _ = self(ids[:, -self.cfg.max_seq_len :])
            logits = logits[:, -1, :].float()
            if greedy or temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
        return ids


# --------------------------------------------------------------------------------------------------- HF layout
def _check_full(cfg: LlamaConfig) -> None:
    if cfg.method != "full":
        raise ConfigError(
            f"the Hugging Face LLaMA layout holds full-rank models only, not method '{cfg.method}'"
        )


def to_hf_state_dict(model: LlamaLM) -> dict[str, Tensor]:
    """Our weights under HF ``LlamaForCausalLM`` names (``model.`` prefix; ``lm_head`` dropped when tied)."""
    _check_full(model.cfg)
    sd = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            if not model.cfg.tie_embeddings:
                sd[k] = v
        else:
            sd["model." + k] = v
    return sd


def from_hf_state_dict(sd: dict[str, Tensor], config: LlamaConfig) -> LlamaLM:
    """Build a full-rank model from an HF LLaMA state dict (names as in ``to_hf_state_dict``)."""
    _check_full(config)
    model = LlamaLM(config)
    ours = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue  # old HF checkpoints store the RoPE table; we rebuild it
        ours[k.removeprefix("model.")] = v
    if config.tie_embeddings:
        ours.pop("lm_head.weight", None)
        ours["lm_head.weight"] = ours["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"HF state dict does not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model


def hf_config(cfg: LlamaConfig, **extra) -> dict:
    """The HF ``config.json`` fields of a full-rank LlamaConfig (``extra`` adds e.g. bos/eos token ids)."""
    _check_full(cfg)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "num_hidden_layers": cfg.n_layers,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers >= 5
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        **extra,
    }


def config_from_hf(hf: dict, **overrides) -> LlamaConfig:
    """LlamaConfig from an HF LLaMA ``config.json`` dict; grouped-query attention and biases are not supported."""
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise ConfigError(
            "grouped-query attention (num_key_value_heads != num_attention_heads) is not supported"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError("LLaMA configs with attention_bias or mlp_bias are not supported")
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        hidden=hf["hidden_size"],
        intermediate=hf["intermediate_size"],
        n_heads=hf["num_attention_heads"],
        n_layers=hf["num_hidden_layers"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
        **overrides,
    )


def save_hf(model: LlamaLM, folder: str | Path, **extra_config) -> Path:
    """Write ``model.safetensors`` and ``config.json`` that ``LlamaForCausalLM.from_pretrained(folder)`` reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in to_hf_state_dict(model).items()}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config(model.cfg, **extra_config)
    cfg["torch_dtype"] = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


def load_hf(folder: str | Path, **overrides) -> LlamaLM:
    """Read a folder written by ``save_hf`` (or by HF ``save_pretrained`` with one safetensors file)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ConfigError(
            f"{folder} needs config.json and model.safetensors (a single-file HF LLaMA checkpoint)"
        )
    cfg = config_from_hf(json.loads(cfg_path.read_text()), **overrides)
    return from_hf_state_dict(load_file(str(weights)), cfg)


def count_parameters(cfg: LlamaConfig, trainable_only: bool = True) -> int:
    """Parameter count of ``cfg`` without allocating memory (the model is built on the meta device)."""
    with torch.device("meta"):
        return LlamaLM(cfg).num_parameters(trainable_only)
