"""CR-Net's memory-saving recomputation: rebuild activations in the backward pass by inverting the beta-chain.

Forward (no graph kept) stores, per layer l: its input x_l, the rank-r intermediates Z_l = X_l A_l of every
projection, and the full projection outputs Y_l only for the kept layers (every k-th layer and the last; never
layer 1). Backward walks l = L..1: a non-kept Y_{l-1} is rebuilt exactly from the layer above,

    Y_{l-1} = (Y_l - Z_l B_l) / (sign(beta_l)(|beta_l| + eps)),

then block l is re-run from (x_l, Y_{l-1}) with autograd on, and its gradients flow to x_l, Y_{l-1} and its
parameters. Plain per-block checkpointing (``recompute="checkpoint"``) must instead keep every Y_{l-1} as a block
input; no recomputation keeps every intermediate.

Limits: blocks must be deterministic (CR-Net has no dropout). Each block is one autograd Function whose inputs
include its parameters, which suits one device and DDP; under FSDP2 use ``recompute="checkpoint"``. In float32 and
float64 the rebuilt values match to rounding (tests: float64 gradients equal to 1e-9). Under bf16 autocast every
inverted layer adds one bf16 rounding of Y_l, so keep ``checkpoint_every`` modest (the paper keeps L/8 layers,
i.e. k = 8); beta's gradients, sums with cancellation, are the most sensitive.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pretrainkit.systems.crnet.layers import PROJECTIONS, CRNetLinear


def kept_layers(n_layers: int, every: int) -> list[int]:
    """0-based layers whose full outputs the forward keeps: 1-based l with l % every == 0, and the last; not 1."""
    keep = {i for i in range(n_layers) if (i + 1) % every == 0} | {n_layers - 1}
    return sorted(keep - {0}) if n_layers > 1 else []


@torch.no_grad()
def invert_chain(block: nn.Module, y: dict[str, Tensor], low: dict[str, Tensor]) -> dict[str, Tensor]:
    """The previous layer's projection outputs from this layer's outputs ``y`` and rank-r intermediates ``low``."""
    prev = {}
    for name, proj in block.projections().items():
        if not isinstance(proj, CRNetLinear):
            raise TypeError(f"cannot invert the chain through {name}: it is not a CR-Net projection")
        # Low-precision runs invert in float32 so the rebuilt value loses as little as possible.
        ct = torch.promote_types(y[name].dtype, torch.float32)
        zb = low[name].to(ct) @ proj.B.to(ct)
        prev[name] = ((y[name].to(ct) - zb) / proj.coef().to(ct)).to(y[name].dtype)
    return prev


class _ChainState:
    """Shared by the block nodes of one forward: the backward of block l+1 leaves Y_l here for block l."""

    def __init__(self):
        self.y: dict[str, Tensor] | None = None


class _CRNetBlock(torch.autograd.Function):
    """One decoder block as an autograd node that keeps only x_l, Z_l and, for kept layers, full outputs.

    Inputs: x_l, the previous layer's 7 outputs (none for layer 1), the block's trainable parameters.
    Outputs: x_{l+1} and this layer's 7 projection outputs (handed to the next block, not stored).
    """

    @staticmethod
    def forward(ctx, block, rope, state, keep_prev, is_last, x, *tensors):
        n_prev = len(PROJECTIONS) if keep_prev is not None else 0
        prev_list = list(tensors[:n_prev])
        prev = dict(zip(PROJECTIONS, prev_list))
        low: dict[str, Tensor] = {}  # filled by the CR-Net projections (empty for a full-rank layer 1)
        out_x, ys = block(x, rope, prev, low)
        y_list = [ys[p] for p in PROJECTIONS]
        ctx.block, ctx.rope, ctx.state, ctx.is_last = block, rope, state, is_last
        ctx.n_prev, ctx.keep_prev = n_prev, bool(keep_prev)
        ctx.low_names = [p for p in PROJECTIONS if p in low]
        dev = x.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(
            x,
            *(low[p] for p in ctx.low_names),
            *(prev_list if keep_prev else []),
            *(y_list if is_last else []),
        )
        ctx.set_materialize_grads(False)
        return (out_x, *y_list)

    @staticmethod
    def backward(ctx, g_x, *g_ys):
        block, state = ctx.block, ctx.state
        saved = list(ctx.saved_tensors)
        x = saved.pop(0)
        low = {p: saved.pop(0) for p in ctx.low_names}
        if ctx.is_last:
            y = dict(zip(PROJECTIONS, saved[-len(PROJECTIONS) :]))
        else:
            if state.y is None:
                raise RuntimeError(
                    "CR-Net recompute: the layer above did not leave its outputs (backward order?)"
                )
            y = state.y
        if ctx.n_prev == 0:
            prev = {}
        elif ctx.keep_prev:
            prev = dict(zip(PROJECTIONS, saved[: len(PROJECTIONS)]))  # kept: stops rounding error building up
        else:
            prev = invert_chain(block, y, low)
        state.y = prev
        params = [p for p in block.parameters() if p.requires_grad]
        dev, ac_on, ac_dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(dev, dtype=ac_dtype, enabled=ac_on):
            x_in = x.detach().requires_grad_()
            prev_in = {k: v.detach().requires_grad_() for k, v in prev.items()}
            out_x, out_y = block(x_in, rope=ctx.rope, prev=prev_in)
        outs, grads = [], []
        for t, g in zip([out_x, *(out_y[p] for p in PROJECTIONS)], [g_x, *g_ys]):
            if g is not None:
                outs.append(t)
                grads.append(g)
        gs = torch.autograd.grad(outs, [x_in, *prev_in.values(), *params], grads, allow_unused=True)
        return (None, None, None, None, None, *gs)


def crnet_recompute(
    blocks: Sequence[nn.Module], x: Tensor, rope: tuple[Tensor, Tensor], every: int
) -> Tensor:
    """Run the decoder blocks with CR-Net recomputation; returns the last block's output."""
    n = len(blocks)
    keep = set(kept_layers(n, every))
    state = _ChainState()
    prev: list[Tensor] = []
    for i, block in enumerate(blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        # keep_prev: None for layer 1 (no inputs from below), else whether layer i-1's outputs are kept.
        keep_prev = None if i == 0 else (i - 1) in keep
        x, *prev = _CRNetBlock.apply(block, rope, state, keep_prev, i == n - 1, x, *prev, *params)
    return x


# --------------------------------------------------------------------------------------------------- measuring
def _fwd_bwd(model: nn.Module, input_ids: Tensor, labels: Tensor) -> None:
    _, loss = model(input_ids, labels)
    loss.backward()


def peak_memory(model: nn.Module, input_ids: Tensor, labels: Tensor | None = None) -> int:
    """Peak bytes allocated above the starting level during one forward + backward: activations and temporaries.

    A warm-up step first creates every ``.grad`` so the measured step accumulates into them in place; grads are
    cleared before and after. GPU: ``torch.cuda.max_memory_allocated``; CPU: the profiler's allocation events."""
    labels = input_ids if labels is None else labels
    model.zero_grad(set_to_none=True)
    _fwd_bwd(model, input_ids, labels)
    try:
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _fwd_bwd(model, input_ids, labels)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        # Cyclic garbage collected mid-step (e.g. models kept alive by an earlier traceback) would show up as
        # frees of memory this step never allocated and lower the level: collect first, then keep GC out.
        gc.collect()
        gc.disable()
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                _fwd_bwd(model, input_ids, labels)
        finally:
            gc.enable()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        level = peak = 0
        for e in events:
            if e.device_type() == DeviceType.CPU:
                level += e.nbytes()
                peak = max(peak, level)
        return peak
    finally:
        model.zero_grad(set_to_none=True)


def step_seconds(model: nn.Module, input_ids: Tensor, labels: Tensor | None = None, steps: int = 3) -> float:
    """Median wall time of one forward + backward (after one warm-up step), for recompute cost comparisons."""
    labels = input_ids if labels is None else labels
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        _fwd_bwd(model, input_ids, labels)
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]
