"""A Decision Transformer with per-dimension discretised actions, as in L2M's multi-domain DT.

Per timestep the sequence holds ``[rtg, s, a_1 .. a_A]`` (``rtg`` dropped when ``condition_on_rtg=False``).
Each action dimension is a token of its own (one of ``n_bins`` bins over [-1, 1]); under the causal mask the
state token predicts ``a_1`` and token ``a_j`` predicts ``a_{j+1}``, so one teacher-forced pass trains the
autoregressive factorisation ``p(a_1 | s, past) p(a_2 | a_1, s, past) ...`` and acting takes A passes.
Bins decode to their centres (L2M's code uses the lower edge: ``bin_decode="lower"`` for parity), or with
``bin_decode="mean"`` to the expectation of the bin centres under the predicted distribution (the greedy bin
of each dimension chatters between neighbours in closed loop; the mean does not).
The continuous option uses one action token and a tanh head on the state token (MSE).

Blocks are pre-LN GPT blocks with separate ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj`` and
``mlp.fc1`` / ``mlp.fc2`` ``nn.Linear`` modules, so adapters can target them by name
(``blocks.N.attn.q_proj``, ``blocks.N.attn.v_proj``, ``blocks.N.mlp.fc1``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pretrainkit.adapt.cross_layer import CrossLayerInfo, to_cross_layer
from pretrainkit.core.losses import TokenCrossEntropy
from pretrainkit.errors import ConfigError

Head = Literal["discrete", "continuous"]
BinDecode = Literal["center", "lower", "mean"]
BIN_DECODES = ("center", "lower", "mean")
BLOCK_PROJECTIONS = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc1", "mlp.fc2"]
_BIN_CE = TokenCrossEntropy()


@dataclass
class DTConfig:
    """Decision Transformer size and tokenisation. Defaults: the tiny CPU backbone of the paper note (sec. 7)."""

    state_dim: int = 39
    act_dim: int = 4
    d_model: int = 128
    n_layer: int = 3
    n_head: int = 4
    context: int = 5  # K timesteps
    max_timestep: int = 1000  # size of the timestep-embedding table (>= episode horizon)
    # Add a learned embedding of the step within the episode to every token (the DT paper's). Off: the policy
    # cannot key its phase on the clock; a delayed closed-loop rollout then still reads its phase off the state.
    timestep_embedding: bool = True
    n_bins: int = 64
    head: Head = "discrete"
    bin_decode: BinDecode = "center"
    condition_on_rtg: bool = True
    dropout: float = 0.1
    mlp_ratio: int = 4
    # > 0: blocks 1.. in CR-Net's cross-layer low-rank form at this rank (adapt.cross_layer: each listed
    # projection = beta * the same projection's output in the block before + X A B; block 0 stays full rank).
    cross_layer_rank: int = 0
    cross_layer_projections: list[str] = field(default_factory=lambda: list(BLOCK_PROJECTIONS))

    def __post_init__(self) -> None:
        if self.head not in ("discrete", "continuous"):
            raise ConfigError(f"head must be 'discrete' or 'continuous', got '{self.head}'")
        if self.bin_decode not in BIN_DECODES:
            raise ConfigError(f"bin_decode must be one of {list(BIN_DECODES)}, got '{self.bin_decode}'")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        for k in (
            "state_dim",
            "act_dim",
            "d_model",
            "n_layer",
            "n_head",
            "context",
            "max_timestep",
            "n_bins",
        ):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.cross_layer_rank < 0:
            raise ConfigError(f"cross_layer_rank must be >= 0 (0 = off), got {self.cross_layer_rank}")

    @property
    def tokens_per_step(self) -> int:
        return int(self.condition_on_rtg) + 1 + (self.act_dim if self.head == "discrete" else 1)

    @property
    def state_slot(self) -> int:
        """Index of the state token within a timestep (it predicts the first action dimension)."""
        return int(self.condition_on_rtg)


def encode_actions(actions: torch.Tensor, n_bins: int = 64) -> torch.Tensor:
    """Continuous actions in [-1, 1] -> bin indices in [0, n_bins); values outside are clamped to the end bins.

    A tiny epsilon keeps ``encode(decode(b)) == b`` for lower-edge decoding despite float rounding.
    """
    width = 2.0 / n_bins
    idx = torch.floor((actions.clamp(-1.0, 1.0) + 1.0) / width + 1e-4)
    return idx.clamp(0, n_bins - 1).long()


def decode_bins(bins: torch.Tensor, n_bins: int = 64, mode: BinDecode = "center") -> torch.Tensor:
    """Bin indices -> actions: bin centres (default and ``"mean"``; max error half a bin) or lower edges
    (L2M's code)."""
    width = 2.0 / n_bins
    offset = 0.0 if mode == "lower" else 0.5
    return (bins.float() + offset) * width - 1.0


def decode_logits(logits: torch.Tensor, n_bins: int = 64, mode: BinDecode = "center") -> torch.Tensor:
    """Per-bin logits ``[..., n_bins]`` -> actions: the greedy bin decoded by ``decode_bins``, or for ``"mean"``
    the expected bin centre under the softmax."""
    if mode != "mean":
        return decode_bins(logits.argmax(-1), n_bins, mode)
    centres = decode_bins(torch.arange(n_bins, device=logits.device), n_bins, "center")
    return logits.float().softmax(-1) @ centres


def action_loss_terms(
    pred: torch.Tensor,
    actions: torch.Tensor,
    mask: torch.Tensor | None,
    head: Head = "discrete",
    n_bins: int = 64,
    bin_decode: BinDecode = "center",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Behaviour-cloning loss on valid steps: CE over bins (discrete) or MSE on clamped actions (continuous).

    Metrics are detached 0-dim tensors: ``action_ce`` and ``bin_acc`` (discrete) or ``action_mse``, and
    ``action_mae`` (mean |decoded action - action|)."""
    valid = (
        torch.ones(actions.shape[:2], dtype=torch.bool, device=actions.device)
        if mask is None
        else mask.bool()
    )
    with torch.no_grad():
        if head == "discrete":
            target = encode_actions(actions, n_bins)
            decoded = decode_logits(pred, n_bins, bin_decode)
        else:
            decoded = pred
    if head == "discrete":
        loss = _BIN_CE(pred[valid].reshape(-1, n_bins), target[valid].reshape(-1))
        acc = (pred[valid].argmax(-1) == target[valid]).float().mean()
        metrics = {"action_ce": loss.detach(), "bin_acc": acc}
    else:
        loss = F.mse_loss(pred[valid], actions[valid].clamp(-1, 1))
        metrics = {"action_mse": loss.detach()}
    metrics["action_mae"] = (decoded[valid] - actions[valid]).abs().mean().detach()
    return loss, metrics


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention through SDPA, with separately named q/k/v/out projections."""

    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: dict | None = None
    ) -> torch.Tensor:
        """``cache`` (a dict, filled here) keeps keys/values so later calls can feed only new tokens."""
        B, L, d = x.shape
        h = self.n_head

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, L, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        p = self.dropout if self.training else 0.0
        if attn_mask is None and k.shape[2] != L:  # new tokens after a cached prefix see all of it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        elif attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.resid_drop(self.out_proj(y.transpose(1, 2).reshape(B, L, d)))


class MLP(nn.Module):
    def __init__(self, d: int, ratio: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d, ratio * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_head, cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio, cfg.dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: dict | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), attn_mask, cache)
        return x + self.mlp(self.ln2(x))


class DecisionTransformer(nn.Module):
    """Decision Transformer over K-step windows: ``embed`` -> ``forward_tokens`` -> ``predict``.

    Inputs everywhere: ``states [B, K, S]``, ``actions [B, K, A]`` (in [-1, 1]), ``rtg [B, K]``,
    ``timesteps [B, K]`` (long) and an optional ``mask [B, K]`` (False = left padding).
    """

    def __init__(self, cfg: DTConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = cfg or DTConfig()
        if overrides:
            cfg = DTConfig(**{**asdict(cfg), **overrides})
        self.cfg = cfg
        d = cfg.d_model
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_rtg = nn.Linear(1, d) if cfg.condition_on_rtg else None
        if cfg.head == "discrete":
            self.embed_action = nn.Embedding(cfg.n_bins, d)  # one table shared by all action dimensions
        else:
            self.embed_action = nn.Linear(cfg.act_dim, d)
        # Which slot of the timestep a token fills (rtg / state / action dim j): the GPT has no positions.
        self.embed_slot = nn.Embedding(cfg.tokens_per_step, d)
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d) if cfg.timestep_embedding else None
        self.embed_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.n_bins if cfg.head == "discrete" else cfg.act_dim)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: shrink residual-branch outputs with depth
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
        self.cross_layer: CrossLayerInfo | None = None
        if cfg.cross_layer_rank:
            # Applied from outside the block code, after the dense init (the low-rank factors get CR-Net's own
            # init there), so the same Block serves both forms and a saved config rebuilds either.
            self.cross_layer = to_cross_layer(
                self, "blocks", cfg.cross_layer_projections, cfg.cross_layer_rank
            )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    # ---- tokens -------------------------------------------------------------------------------------------
    def _time(self, timesteps: torch.Tensor) -> torch.Tensor:
        if self.embed_timestep is None:
            return self.embed_slot.weight.new_zeros(*timesteps.shape, self.cfg.d_model)
        return self.embed_timestep(timesteps.clamp(0, self.cfg.max_timestep - 1))

    def _state_tokens(self, states: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        te = self._time(timesteps)
        return self.embed_state(states) + te + self.embed_slot.weight[self.cfg.state_slot]

    def embed(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        rtg: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedded, layer-normed token sequence ``[B, K*T, d]`` and its token mask ``[B, K*T]`` (or None)."""
        cfg = self.cfg
        B, K = states.shape[:2]
        if K > cfg.context:
            raise ConfigError(f"window of {K} timesteps exceeds the model context {cfg.context}")
        te = self._time(timesteps)  # [B, K, d]
        parts = []
        if cfg.condition_on_rtg:
            parts.append(self.embed_rtg(rtg.unsqueeze(-1).to(te.dtype)).unsqueeze(2))
        parts.append(self.embed_state(states).unsqueeze(2))
        if cfg.head == "discrete":
            parts.append(self.embed_action(encode_actions(actions, cfg.n_bins)))  # [B, K, A, d]
        else:
            parts.append(self.embed_action(actions).unsqueeze(2))
        x = torch.cat(parts, dim=2) + te.unsqueeze(2) + self.embed_slot.weight  # [B, K, T, d]
        x = self.embed_ln(x).reshape(B, K * cfg.tokens_per_step, cfg.d_model)
        tmask = None if mask is None else mask.bool().repeat_interleave(cfg.tokens_per_step, dim=1)
        return x, tmask

    def state_query(self, tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """Masked mean of the state tokens of an ``embed`` output: L2M's query for the modulation pool."""
        T = self.cfg.tokens_per_step
        B, L, d = tokens.shape
        s = tokens.view(B, L // T, T, d)[:, :, self.cfg.state_slot]  # [B, K, d]
        if token_mask is None:
            return s.mean(dim=1)
        m = token_mask.view(B, L // T, T)[:, :, self.cfg.state_slot].unsqueeze(-1).to(s.dtype)
        return (s * m).sum(1) / m.sum(1).clamp_min(1.0)

    def state_embedding(
        self,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        detach: bool = True,
    ) -> torch.Tensor:
        """Mean embedded state token over the (valid) context, ``[B, d]``: the pool's query (L2M ``agg_token s``).

        Computes only the state tokens with the backbone's own (frozen) embedding + ``embed_ln``; equal to
        ``state_query(*embed(...))``. Detached by default: the query is a fixed function of the input.
        """
        s = self.embed_ln(self._state_tokens(states, timesteps))
        if mask is None:
            q = s.mean(dim=1)
        else:
            m = mask.unsqueeze(-1).to(s.dtype)
            q = (s * m).sum(1) / m.sum(1).clamp_min(1.0)
        return q.detach() if detach else q

    # ---- trunk and head -----------------------------------------------------------------------------------
    def forward_tokens(
        self,
        tokens: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        cache: list[dict] | None = None,
    ) -> torch.Tensor:
        """Run the GPT blocks on an embedded sequence; returns final-LN hidden states ``[B, L, d]``.

        With ``cache`` (one dict per block, from ``new_cache``) ``tokens`` continue the cached sequence and
        ``token_mask`` covers the whole sequence so far: the autoregressive decoder feeds one token at a time.
        """
        attn_mask = None
        L = tokens.shape[1]
        if token_mask is not None and not bool(token_mask.all()):
            total = token_mask.shape[1]
            pos_q = torch.arange(total - L, total, device=tokens.device)[:, None]
            pos_k = torch.arange(total, device=tokens.device)[None, :]
            # Valid queries never see padded keys; padded queries see only themselves (no empty softmax rows).
            attn_mask = (((pos_k <= pos_q) & token_mask[:, None, :]) | (pos_k == pos_q)).unsqueeze(1)
        x = self.drop(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, None if cache is None else cache[i])
        return self.ln_f(x)

    def new_cache(self) -> list[dict]:
        """An empty key/value cache for ``forward_tokens`` (one dict per block)."""
        return [{} for _ in self.blocks]

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> per-step action logits ``[B, K, A, n_bins]`` (discrete) or actions ``[B, K, A]``."""
        cfg = self.cfg
        B, L, d = hidden.shape
        h = hidden.view(B, L // cfg.tokens_per_step, cfg.tokens_per_step, d)
        s = cfg.state_slot
        if cfg.head == "discrete":
            return self.head(h[:, :, s : s + cfg.act_dim])  # state token -> a_1, token a_j -> a_{j+1}
        return torch.tanh(self.head(h[:, :, s]))

    def forward(
        self,
        states: torch.Tensor | Mapping[str, torch.Tensor],
        actions: torch.Tensor | None = None,
        rtg: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced predictions for every step of the window (see ``predict`` for shapes).

        ``states`` may be a whole ``ContextWindowDataset`` batch (what a TaskMix passes): its ``states``,
        ``actions``, ``rtg``, ``timesteps`` and optional ``mask`` are used.
        ``prefix [B, P, d]``: tokens (e.g. tuned prompts) put before the sequence; their outputs are dropped.
        """
        if isinstance(states, Mapping):
            b = states
            states, actions, rtg, timesteps, mask = (
                b["states"],
                b["actions"],
                b["rtg"],
                b["timesteps"],
                b.get("mask"),
            )
        tokens, tmask = self._with_prefix(*self.embed(states, actions, rtg, timesteps, mask), prefix)
        hidden = self.forward_tokens(tokens, tmask)
        return self.predict(hidden if prefix is None else hidden[:, prefix.shape[1] :])

    @staticmethod
    def _with_prefix(
        tokens: torch.Tensor, tmask: torch.Tensor | None, prefix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prefix is None:
            return tokens, tmask
        tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        if tmask is not None:
            tmask = torch.cat([tmask.new_ones(tmask.shape[0], prefix.shape[1]), tmask], dim=1)
        return tokens, tmask

    def action_loss(
        self, pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """CE over bins (discrete) or MSE (continuous) on valid steps; metrics (floats): bin accuracy and mean
        |error|. ``action_loss_terms`` is the same with tensor metrics (no host read per step)."""
        loss, metrics = action_loss_terms(
            pred, actions, mask, self.cfg.head, self.cfg.n_bins, self.cfg.bin_decode
        )
        return loss, {k: v.item() for k, v in metrics.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Behaviour-cloning loss on a ``ContextWindowDataset`` batch."""
        pred = self(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch.get("mask"))
        return self.action_loss(pred, batch["actions"], batch.get("mask"))

    # ---- acting -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self,
        states: torch.Tensor,
        rtgs: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Next action ``[B, A]`` for closed-loop control from the history so far (last K steps are used).

        ``actions[:, -1]`` is a placeholder for the action being chosen (its value is ignored); earlier rows
        are the actions taken. Discrete: greedy bins, one dimension at a time, decoded per
        ``cfg.bin_decode``; with ``use_cache`` the sequence up to the state token runs once and each later
        dimension feeds one new token through the key/value cache (~A times cheaper than A full passes).
        Continuous: one pass.
        """
        cfg = self.cfg
        K = cfg.context
        states, rtgs, timesteps = states[:, -K:], rtgs[:, -K:], timesteps[:, -K:]
        actions = actions[:, -K:].clone()
        mask = None if mask is None else mask[:, -K:]
        if cfg.head == "continuous":
            return self(states, actions, rtgs, timesteps, mask, prefix)[:, -1]
        actions[:, -1] = 0.0
        if not use_cache:
            for j in range(cfg.act_dim):
                # Causal mask: dimension j's logits never see the placeholder values of dims >= j.
                logits = self(states, actions, rtgs, timesteps, mask, prefix)[:, -1, j]
                actions[:, -1, j] = decode_logits(logits, cfg.n_bins, cfg.bin_decode)
            return actions[:, -1]
        cache = self.new_cache()
        tokens, tmask = self._with_prefix(*self.embed(states, actions, rtgs, timesteps, mask), prefix)
        end = tokens.shape[1] - cfg.tokens_per_step + cfg.state_slot + 1  # through the last state token
        h = self.forward_tokens(tokens[:, :end], None if tmask is None else tmask[:, :end], cache)
        for j in range(cfg.act_dim):
            actions[:, -1, j] = decode_logits(self.head(h[:, -1]), cfg.n_bins, cfg.bin_decode)
            if j + 1 < cfg.act_dim:  # embed the chosen bin as token a_j, which predicts a_{j+1}
                tok = self.embed(states[:, -1:], actions[:, -1:], rtgs[:, -1:], timesteps[:, -1:])[0]
                new = tok[:, cfg.state_slot + 1 + j : cfg.state_slot + 2 + j]
                h = self.forward_tokens(new, None if tmask is None else tmask[:, : end + j + 1], cache)
        return actions[:, -1]

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
