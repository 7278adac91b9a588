"""Cross-layer low-rank projections (CR-Net's form) for any stack of transformer blocks.

CR-Net (Kong et al., ICLR 2026) keeps block 0's projections full rank (the "anchor") and rebuilds each chosen
projection P of block l >= 1 as a low-rank correction of the same projection's output in block l - 1::

    Y_l = sign(beta_l) * (|beta_l| + eps) * Y_{l-1} + (X_l @ A_l) @ B_l  (+ b_l)

``CRNetLinear`` is that chain step, shared with the CR-Net system (whose decoder threads ``Y_{l-1}`` itself).
``to_cross_layer`` applies it to a model whose code knows nothing of chains: block 0's Linears stay as they
are (a forward hook records their outputs), and each later block's Linear becomes a ``CrossLayerLinear`` that
reads the previous block's output from a ``CrossLayerChain`` shared by the model and writes its own for the next
block. Because a projection is token-wise, chaining works for any batch shape and also through a key/value
cache (an incremental pass feeds the same new tokens through every block in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pretrainkit.errors import ConfigError

INITS = ("zero_b", "cola")


def cola_std(h_in: int, h_out: int, rank: int) -> float:
    # CoLA's balanced init: A, B ~ N(0, 1) * r^-1/4 * (h_in + h_out)^-1/4, so A @ B has Xavier-like variance.
    return rank**-0.25 * (h_in + h_out) ** -0.25


class CRNetLinear(nn.Module):
    """CR-Net projection for layer l >= 2: Y_l = sign(beta)(|beta| + eps) * Y_{l-1} + (X_l @ A) @ B.

    ``low(x)`` gives the rank-r intermediate X @ A and ``combine(z, prev)`` finishes the output; the recomputation
    in CR-Net's ``recompute.py`` stores ``z`` and inverts ``combine``.
    """

    def __init__(
        self,
        h_in: int,
        h_out: int,
        rank: int,
        init: str = "zero_b",
        beta_init: float = 1.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.rank, self.init, self.beta_init, self.eps = rank, init, beta_init, eps
        self.A = nn.Parameter(torch.empty(h_in, rank))
        self.B = nn.Parameter(torch.empty(rank, h_out))
        # 1 element, not 0-d: FSDP2 cannot shard 0-d parameters.
        self.beta = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_crnet(self, self.init, self.beta_init)

    def coef(self) -> Tensor:
        """The chain coefficient sign(beta)(|beta| + eps); never zero, so the chain can be inverted."""
        # copysign treats beta = +0 as positive (torch.sign(0) would give 0 and break the inverse).
        return torch.copysign(self.beta.abs() + self.eps, self.beta)

    def low(self, x: Tensor) -> Tensor:
        return x @ self.A

    def combine(self, z: Tensor, prev: Tensor) -> Tensor:
        # One fused op for z @ B + coef * prev.
        return torch.addcmul(z @ self.B, prev, self.coef().to(prev.dtype))

    def forward(self, x: Tensor, prev: Tensor) -> Tensor:
        return self.combine(self.low(x), prev)


@torch.no_grad()
def init_crnet(proj: CRNetLinear, init: str, beta_init: float) -> None:
    """Initialise a CR-Net projection. The paper does not say how; two documented choices.

    ``"zero_b"`` (default): A ~ N(0, 1/h_in) so X @ A has unit scale, B = 0, beta = beta_init. At step 0 every later
    layer reproduces layer 1's projections (Y_l = beta^(l-1) * Y_1), the LoRA-style "start at the anchor" choice:
    the residual stream starts exactly like a model whose layers share layer 1's weights, and B learns at once.
    ``"cola"``: CoLA's balanced N(0, 1) * r^-1/4 (h_in + h_out)^-1/4 for both A and B; each layer then adds a fresh
    random Xavier-scale term, so Y_l's variance grows with depth (about l times layer 1's at beta = 1).
    Why "zero_b", beta 1 is the default (cpu-small shape, r 32, byte-level tinyshakespeare, 300 AdamW steps at lr 3e-3,
    held-out loss): zero_b/beta 1: 2.049, 2.032, 2.024 (3 seeds); zero_b/beta 0.5: 2.018, 2.065, 2.054;
    cola/beta 1: 2.146; cola/beta 0.5: 2.184 (1 seed each). Both zero_b settings trained stably; "cola" was worse.
    """
    h_in, rank = proj.A.shape
    h_out = proj.B.shape[1]
    if init == "zero_b":
        nn.init.normal_(proj.A, std=h_in**-0.5)
        nn.init.zeros_(proj.B)
    elif init == "cola":
        std = cola_std(h_in, h_out, rank)
        nn.init.normal_(proj.A, std=std)
        nn.init.normal_(proj.B, std=std)
    else:
        raise ConfigError(f"unknown crnet_init '{init}'; allowed: {', '.join(INITS)}")
    proj.beta.fill_(beta_init)


# ---- any model: the chain lives beside the model's code -----------------------------------------------------
class CrossLayerChain:
    """The latest output of each chained projection in the pass under way: name -> (block index, tensor).

    Block 0's projection starts a pass by overwriting its entry; block l takes block l - 1's entry (so nothing
    outlives the pass: the last block stores nothing) and leaves its own for block l + 1. A stale entry from an
    interrupted pass can never be read, because block l accepts only an entry written by block l - 1 after
    block 0 last ran.
    """

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, Tensor]] = {}

    def put(self, name: str, block: int, y: Tensor) -> None:
        self.latest[name] = (block, y)

    def take(self, name: str, block: int, where: str) -> Tensor:
        entry = self.latest.pop(name, None)
        if entry is None or entry[0] != block - 1:
            raise ConfigError(
                f"cross-layer projection {where} needs block {block - 1}'s '{name}' output from the same pass; "
                "run the blocks in order from block 0"
            )
        return entry[1]


class RecordAnchor:
    """Forward hook on block 0's (unchanged) Linear: its output starts the chain.

    A callable object rather than a closure so ``copy.deepcopy(model)`` gives the copy its own chain.
    """

    def __init__(self, chain: CrossLayerChain, name: str):
        self.chain, self.name = chain, name

    def __call__(self, module: nn.Module, args, output: Tensor) -> None:
        self.chain.put(self.name, 0, output)


class CrossLayerLinear(CRNetLinear):
    """Block l >= 1's projection: ``y = coef(beta) * Y_{l-1} + (x @ A) @ B (+ bias)``, Y_{l-1} from the chain.

    The bias (when the replaced Linear had one) starts at zero, so ``zero_b`` with ``beta = 1, eps = 0``
    starts exactly at ``Y_l = Y_{l-1}``.
    """

    def __init__(
        self,
        chain: CrossLayerChain,
        name: str,
        block: int,
        last: bool,
        h_in: int,
        h_out: int,
        rank: int,
        bias: bool,
        init: str = "zero_b",
        beta_init: float = 1.0,
        eps: float = 1e-6,
    ):
        super().__init__(h_in, h_out, rank, init, beta_init, eps)
        self.chain, self.name, self.block, self.last = chain, name, block, last
        self.in_features, self.out_features = h_in, h_out
        self.bias = nn.Parameter(torch.zeros(h_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]  # prev comes from the chain
        where = f"block {self.block} '{self.name}'"
        prev = self.chain.take(self.name, self.block, where)
        want = (*x.shape[:-1], self.out_features)
        if tuple(prev.shape) != want:
            raise ConfigError(
                f"cross-layer projection {where}: previous block's output is {tuple(prev.shape)}, "
                f"this block's would be {want}; consecutive blocks must see the same token shape"
            )
        y = self.combine(self.low(x), prev)
        if self.bias is not None:
            y = y + self.bias
        if not self.last:
            self.chain.put(self.name, self.block, y)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.name!r}, block={self.block}, in={self.in_features}, out={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


@dataclass
class ProjectionCount:
    """Parameters of one projection summed over all blocks, before and after the transformation."""

    before: int
    after: int
    trainable_before: int
    trainable_after: int


@dataclass
class CrossLayerInfo:
    """What ``to_cross_layer`` did: the blocks, rank and parameter counts (whole model and per projection)."""

    blocks: str
    n_blocks: int
    projections: list[str]
    rank: int
    params_before: int
    params_after: int
    trainable_before: int
    trainable_after: int
    per_projection: dict[str, ProjectionCount] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"cross-layer {self.blocks} ({self.n_blocks} blocks, rank {self.rank}): params "
            f"{self.params_before} -> {self.params_after}, trainable {self.trainable_before} -> "
            f"{self.trainable_after}"
        ]
        lines += [f"  {n}: {c.before} -> {c.after}" for n, c in self.per_projection.items()]
        return "\n".join(lines)


def _count(params) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _linear(block: nn.Module, name: str, where: str) -> nn.Linear:
    try:
        m = block.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{where} has no sub-module '{name}'") from None
    if isinstance(m, CrossLayerLinear) or not isinstance(m, nn.Linear):
        raise ConfigError(f"{where}.{name} is a {type(m).__name__}, not a plain nn.Linear")
    return m


def _check_rank(rank: int, lin: nn.Linear, where: str) -> None:
    limit = min(lin.in_features, lin.out_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ConfigError(
            f"rank {rank!r} for {where} must be an integer in 1..{limit} "
            f"(min of in {lin.in_features}, out {lin.out_features})"
        )


def _set(block: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, new)


def to_cross_layer(
    model: nn.Module,
    blocks: str,
    projections: Sequence[str],
    rank: int,
    init: str = "zero_b",
    beta_init: float = 1.0,
    eps: float = 1e-6,
) -> CrossLayerInfo:
    """Turn ``model.<blocks>`` (a ModuleList) into CR-Net form in place and return the parameter accounting.

    ``projections`` name Linears inside each block (``"attn.q_proj"``); block 0's stay full rank, block l >= 1's
    become ``CrossLayerLinear`` (their dense weights are dropped; new A, B, beta, zero bias drawn by ``init``).
    Every chosen projection must exist in every block with the same output width; ``rank`` is checked against
    each one. Raises a one-line ConfigError on any of these.
    """
    try:
        stack = model.get_submodule(blocks)
    except AttributeError:
        raise ConfigError(f"model has no sub-module '{blocks}' (the stack of blocks)") from None
    if not isinstance(stack, nn.ModuleList) or len(stack) < 2:
        raise ConfigError(
            f"'{blocks}' must be an nn.ModuleList of at least 2 blocks, got {type(stack).__name__}"
            + (f" of {len(stack)}" if isinstance(stack, nn.ModuleList) else "")
        )
    names = list(projections)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"projections must be distinct non-empty sub-module names, got {names!r}")
    if init not in INITS:
        raise ConfigError(f"unknown cross-layer init '{init}'; allowed: {', '.join(INITS)}")
    # Check everything before changing anything, so a bad call leaves the model as it was.
    linears = {n: [_linear(b, n, f"{blocks}.{i}") for i, b in enumerate(stack)] for n in names}
    for n, lins in linears.items():
        for i, lin in enumerate(lins):
            if lin.out_features != lins[0].out_features:
                raise ConfigError(
                    f"{blocks}.{i}.{n} has {lin.out_features} outputs, {blocks}.0.{n} has "
                    f"{lins[0].out_features}; a chain needs the same width in every block"
                )
            if i:
                _check_rank(rank, lin, f"{blocks}.{i}.{n}")
    total_before, trainable_before = _count(model.parameters())
    per = {}
    chain = CrossLayerChain()
    last = len(stack) - 1
    for n, lins in linears.items():
        before = _count(p for lin in lins for p in lin.parameters())
        lins[0].register_forward_hook(RecordAnchor(chain, n))
        new = [lins[0]]
        for i, lin in enumerate(lins[1:], start=1):
            w = lin.weight
            proj = CrossLayerLinear(
                chain,
                n,
                i,
                i == last,
                lin.in_features,
                lin.out_features,
                rank,
                lin.bias is not None,
                init,
                beta_init,
                eps,
            ).to(w.device, w.dtype)
            _set(stack[i], n, proj)
            new.append(proj)
        after = _count(p for m in new for p in m.parameters())
        per[n] = ProjectionCount(before[0], after[0], before[1], after[1])
    total_after, trainable_after = _count(model.parameters())
    return CrossLayerInfo(
        blocks, len(stack), names, rank, total_before, total_after, trainable_before, trainable_after, per
    )
