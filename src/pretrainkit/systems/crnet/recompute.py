"""CR-Net's memory-saving recomputation: rebuild activations in the backward pass by inverting the beta-chain.

Forward (no graph kept) stores, per layer l: its input x_l, the rank-r intermediates Z_l = X_l A_l of every
projection, and the full projection outputs Y_l only for the kept layers (every k-th layer and the last; never
layer 1). Backward walks l = L..1: a non-kept Y_{l-1} is rebuilt exactly from the layer above,

    Y_{l-1} = (Y_l - Z_l B_l) / (sign(beta_l)(|beta_l| + eps)),

then block l is re-run from (x_l, Y_{l-1}) with autograd on, and its gradients flow to x_l, Y_{l-1} and its
parameters. Plain per-block checkpointing (``recompute="checkpoint"``) must instead keep every Y_{l-1} as a block
input; no recomputation keeps every intermediate.

Limits: blocks must be deterministic (CR-Net has no dropout); the parameters are inputs of one autograd Function,
which suits one device and DDP; under FSDP2 use ``recompute="checkpoint"``.
"""

from __future__ import annotations

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
            raise RuntimeError(f"cannot invert the chain through {name}: it is not a CR-Net projection")
        # Low-precision runs invert in float32 so the rebuilt value loses as little as possible.
        ct = torch.promote_types(y[name].dtype, torch.float32)
        zb = low[name].to(ct) @ proj.B.to(ct)
        prev[name] = ((y[name].to(ct) - zb) / proj.coef().to(ct)).to(y[name].dtype)
    return prev


class _CRNetStack(torch.autograd.Function):
    """All decoder blocks as one autograd node that keeps x_l, Z_l and a few Y_l (see module docstring)."""

    @staticmethod
    def forward(ctx, blocks, rope, every, x, *params):
        n = len(blocks)
        keep = set(kept_layers(n, every))
        xs, lows, low_names, kept = [], [], [], {}
        prev: dict[str, Tensor] = {}
        for i, block in enumerate(blocks):
            xs.append(x)
            low: dict[str, Tensor] = {}  # filled by the CR-Net projections (empty for a full-rank layer 1)
            x, prev = block(x, rope, prev, low)
            low_names.append([p for p in PROJECTIONS if p in low])
            lows += [low[p] for p in low_names[-1]]
            if i in keep:
                kept[i] = [prev[p] for p in PROJECTIONS]
        ctx.blocks, ctx.rope, ctx.low_names, ctx.kept_index = blocks, rope, low_names, sorted(kept)
        dev = x.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(*xs, *lows, *(y for i in ctx.kept_index for y in kept[i]))
        return x

    @staticmethod
    def backward(ctx, grad_out):
        blocks, rope = ctx.blocks, ctx.rope
        n = len(blocks)
        saved = list(ctx.saved_tensors)
        xs, saved = saved[:n], saved[n:]
        lows = []
        for names in ctx.low_names:
            lows.append(dict(zip(names, saved[: len(names)])))
            saved = saved[len(names):]
        kept = {i: dict(zip(PROJECTIONS, saved[j * 7: (j + 1) * 7])) for j, i in enumerate(ctx.kept_index)}

        block_params = [[p for p in b.parameters() if p.requires_grad] for b in blocks]
        param_grads: list[Tensor | None] = []
        g_x, g_y = grad_out, {}  # gradients w.r.t. the block output and its projection outputs Y_l
        y_cur = kept.get(n - 1, {})  # values of Y_l for the layer being processed
        dev, ac_on, ac_dtype = ctx.autocast
        for i in reversed(range(n)):
            block = blocks[i]
            if i == 0:
                prev = {}
            elif i - 1 in kept:
                prev = kept[i - 1]  # a kept layer stops rounding error from building up along the chain
            else:
                prev = invert_chain(block, y_cur, lows[i])
            with torch.enable_grad(), torch.autocast(dev, dtype=ac_dtype, enabled=ac_on):
                x_in = xs[i].detach().requires_grad_()
                prev_in = {k: v.detach().requires_grad_() for k, v in prev.items()}
                out_x, out_y = block(x_in, rope, prev_in)
            outs = [out_x] + [out_y[k] for k in g_y]
            grads = [g_x] + [g_y[k] for k in g_y]
            inputs = [x_in, *prev_in.values(), *block_params[i]]
            gs = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
            g_x = gs[0]
            g_y = {k: g for k, g in zip(prev_in, gs[1: 1 + len(prev_in)]) if g is not None}
            param_grads = list(gs[1 + len(prev_in):]) + param_grads
            y_cur = prev
        return (None, None, None, g_x, *param_grads)


def crnet_recompute(blocks: Sequence[nn.Module], x: Tensor, rope: tuple[Tensor, Tensor], every: int) -> Tensor:
    """Run the decoder blocks with CR-Net recomputation; returns the last block's output."""
    params = [p for b in blocks for p in b.parameters() if p.requires_grad]
    return _CRNetStack.apply(blocks, rope, every, x, *params)


# --------------------------------------------------------------------------------------------------- measuring
def _fwd_bwd(model: nn.Module, input_ids: Tensor, labels: Tensor) -> None:
    _, loss = model(input_ids, labels)
    loss.backward()


def peak_memory(model: nn.Module, input_ids: Tensor, labels: Tensor | None = None) -> int:
    """Peak bytes allocated above the starting level during one forward + backward: activations and temporaries.

    A warm-up step first creates every ``.grad`` so the measured step accumulates into them in place; grads are
    cleared at the end. GPU: ``torch.cuda.max_memory_allocated``; CPU: the profiler's allocation events."""
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

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _fwd_bwd(model, input_ids, labels)
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
