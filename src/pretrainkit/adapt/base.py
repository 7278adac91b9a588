"""Adapter registry, injection by module-name pattern dispatched on module type, and save / load / merge.

An adapter family ("lora", "ia3", ...) holds one ``AdapterLayer`` subclass per base module type it can wrap
(PEFT's one-wrapper-per-layer-type shape), each registered with ``@register_adapter("lora", base=nn.Conv2d)``.
``inject`` finds the modules whose names match, picks each one's wrapper by type (the nearest registered class
in its MRO, so Linear subclasses count as Linear), swaps it in and freezes the backbone. ``save_adapter`` writes
only adapter tensors (safetensors) plus a JSON sidecar that lets ``load_adapter`` re-inject them into a fresh
copy of the backbone. A new base type is one wrapper class plus its registration; nothing else changes.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pretrainkit.core.io import atomic_write, file_sha256
from pretrainkit.errors import CheckpointError, ConfigError
from pretrainkit.registry import Registry

# /2: LoRA's alpha default became rank (was 2 * rank) and the saved options spell alpha out; /1 still loads.
SIDECAR_FORMAT = "pretrainkit-adapter/2"
SIDECAR_V1 = "pretrainkit-adapter/1"
READABLE_FORMATS = (SIDECAR_V1, SIDECAR_FORMAT)
EXTRA_PREFIX = "extra:"

# Wrappers for optional libraries: registered the first time injection runs after that library was imported
# (a model holding its modules has imported it), so nobody pays PyG's import time for a plain torch model.
OPTIONAL_WRAPPERS = {"torch_geometric": "pretrainkit.adapt.pyg"}


class AdapterFamily:
    """One adapter name's wrapper classes by the base module type each wraps."""

    def __init__(self, name: str):
        self.name = name
        self.wrappers: dict[type, type[AdapterLayer]] = {}

    def add(self, base: type, cls: type[AdapterLayer]) -> None:
        if not (isinstance(base, type) and issubclass(base, nn.Module)):
            raise TypeError(f"adapter '{self.name}': base {base!r} is not an nn.Module class")
        if self.wrappers.get(base, cls) is not cls:
            raise ValueError(
                f"adapter '{self.name}' already wraps {base.__name__} with {self.wrappers[base].__name__}"
            )
        self.wrappers[base] = cls

    def wrapper_for(self, module: nn.Module) -> type[AdapterLayer] | None:
        """The wrapper registered for the module's type or its nearest registered base class."""
        if isinstance(module, AdapterState):
            return None
        for t in type(module).__mro__:
            if t in self.wrappers:
                return self.wrappers[t]
        return None

    def base_names(self) -> list[str]:
        return [t.__name__ for t in self.wrappers]

    def __repr__(self) -> str:
        return f"AdapterFamily({self.name!r}, wraps {', '.join(self.base_names()) or 'nothing'})"


ADAPTERS: Registry[AdapterFamily] = Registry("adapter")


def register_adapter(name: str, base: type | Sequence[type] = nn.Linear):
    """Class decorator: ``@register_adapter("lora", base=nn.Conv2d) class LoRAConv(AdapterLayer): ...``.

    ``base``: the module type(s) the class wraps (default ``nn.Linear``). One name may have one wrapper per type.
    """
    bases = tuple(base) if isinstance(base, (list, tuple)) else (base,)

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, AdapterLayer)):
            raise TypeError(f"adapter '{name}' must subclass AdapterLayer")
        family = ADAPTERS.get(name) if name in ADAPTERS else ADAPTERS.register(name)(AdapterFamily(name))
        for b in bases:
            family.add(b, cls)
        cls.adapter_name = name
        return cls

    return deco


def register_optional_wrappers() -> None:
    """Import the wrapper modules of optional libraries that are already imported (idempotent)."""
    for lib, wrappers in OPTIONAL_WRAPPERS.items():
        if lib in sys.modules and wrappers not in sys.modules:
            importlib.import_module(wrappers)


class AdapterState(nn.Module):
    """A module whose whole state belongs to an adapter (e.g. a shared pool): saved with the adapter."""


class AdapterLayer(AdapterState):
    """Wraps one frozen base module (kept as ``self.base``); subclasses add trainable tensors."""

    adapter_name: ClassVar[str] = "adapter"

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.injection: dict[str, Any] = {}  # shared by the layers of one inject() call; saved in the sidecar

    def adapter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """This layer's own parameters and buffers, without the wrapped base module's."""
        for name, t in [*self.named_parameters(), *self.named_buffers()]:
            if not name.startswith("base."):
                yield name, t

    def merged(self) -> nn.Module:
        """A new plain base-type module computing the same function (self is left as is)."""
        raise ConfigError(f"adapter '{self.adapter_name}' cannot be merged into the base weights")

    @classmethod
    def wrap_all(cls, model: nn.Module, modules: dict[str, nn.Module], **options) -> tuple[dict, dict]:
        """Wrap each module; return ``(new layers by name, JSON-able options for the sidecar)``.

        Override to build state shared by all wrapped layers (see the modulation pool).
        """
        check_options(cls, options)
        layers = {}
        for n, m in modules.items():
            try:
                layers[n] = cls(m, **options)
            except ConfigError as e:
                raise ConfigError(f"module '{n}': {e}") from None
        return layers, dict(options)

    @classmethod
    def upgrade_options(cls, options: dict, fmt: str) -> dict:
        """Options read from a sidecar of an older ``fmt``, as today's constructor understands them."""
        return options


def check_options(cls: type, options: dict) -> None:
    """Refuse option names the adapter's constructor does not take, naming the allowed ones."""
    allowed = list(inspect.signature(cls.__init__).parameters)[2:]  # skip self, base
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for adapter '{cls.adapter_name}'; allowed: {allowed}")


def _matches(name: str, pattern: str) -> bool:
    """``re:<regex>`` is a full-match regex; anything else an fnmatch pattern on the whole name or a dotted tail."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def find_modules(
    model: nn.Module, targets: Sequence[str], family: AdapterFamily | Sequence[type] = (nn.Linear,)
) -> dict[str, nn.Module]:
    """Modules of a type ``family`` can wrap whose names match any pattern; every pattern must match one.

    ``family``: an adapter family, or plain module types. A pattern that names only modules of other types
    is refused with their type named; one that names nothing lists the modules that could be matched.
    """
    register_optional_wrappers()
    if not isinstance(family, AdapterFamily):
        types = tuple(family)
        family = AdapterFamily("/".join(t.__name__ for t in types))
        for t in types:
            family.wrappers[t] = AdapterLayer
    if isinstance(targets, str):
        targets = [targets]
    for pat in targets:
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as e:
                raise ConfigError(f"target {pat!r} is not a valid regex: {e}") from None
    inside_adapter: list[str] = [n for n, m in model.named_modules() if isinstance(m, AdapterState)]
    free = {
        n: m
        for n, m in model.named_modules()
        if n and not isinstance(m, AdapterState) and not any(n.startswith(a + ".") for a in inside_adapter)
    }
    candidates = {n: m for n, m in free.items() if family.wrapper_for(m) is not None}
    found = {n: m for n, m in candidates.items() if any(_matches(n, p) for p in targets)}
    unmatched = [p for p in targets if not any(_matches(n, p) for n in candidates)]
    kinds = ", ".join(family.base_names())
    for p in unmatched:
        other = [n for n in free if _matches(n, p)]
        if other:
            m = free[other[0]]
            raise ConfigError(
                f"target {p!r} matches module '{other[0]}' of type {type(m).__name__}, which adapter "
                f"'{family.name}' cannot wrap (it wraps {kinds})"
            )
    if unmatched or not targets:
        some = ", ".join(list(candidates)[:8]) or "(none)"
        raise ConfigError(
            f"no {kinds} module matches target pattern(s) {unmatched or list(targets)}; "
            f"{kinds} modules here include: {some} ({len(candidates)} in all); use fnmatch patterns or "
            "'re:<regex>'"
        )
    return found


def find_linears(model: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """Plain Linear modules whose names match any pattern (``find_modules`` for ``nn.Linear``)."""
    return find_modules(model, targets, (nn.Linear,))


def module_like(base: nn.Module, **tensors: torch.Tensor) -> nn.Module:
    """A copy of ``base`` (same type, options, device, frozen or not) holding the given parameter values."""
    new = copy.deepcopy(base)
    with torch.no_grad():
        for name, t in tensors.items():
            new.get_parameter(name).copy_(t)
    return new


def linear_with(base: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new Linear like ``base`` (device, dtype, frozen or not) holding the given weight and bias."""
    w = base.weight
    lin = nn.Linear(
        base.in_features, base.out_features, bias=bias is not None, device=w.device, dtype=w.dtype
    )
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin.requires_grad_(w.requires_grad)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter parameter and buffer in ``model`` by qualified name (shared tensors once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for mname, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            items = m.adapter_tensors()
        elif isinstance(m, AdapterState):
            items = [*m.named_parameters(), *m.named_buffers()]
        else:
            continue
        for tname, t in items:
            if id(t) not in seen:
                seen.add(id(t))
                out[f"{mname}.{tname}" if mname else tname] = t
    return out


def inject(
    model: nn.Module, adapter: str, targets: Sequence[str], freeze: bool = True, **options
) -> list[str]:
    """Wrap the modules matching ``targets`` in ``adapter``'s layer for their type; freeze everything else.

    Returns the replaced module names. ``targets``: fnmatch patterns (matched against the full
    module name or its dotted tail, so ``"attn.q"`` finds ``blocks.0.attn.q``) or ``"re:<regex>"``.
    """
    register_optional_wrappers()
    family = ADAPTERS.get(adapter)
    targets = [targets] if isinstance(targets, str) else list(targets)
    found = find_modules(model, targets, family)
    by_class: dict[type[AdapterLayer], dict[str, nn.Module]] = {}
    for name, module in found.items():
        by_class.setdefault(family.wrapper_for(module), {})[name] = module
    layers: dict[str, AdapterLayer] = {}
    saved_options: dict[str, Any] = {}
    for cls, modules in by_class.items():  # all built before any swap: an error leaves the model as it was
        new, saved = cls.wrap_all(model, modules, **options)
        layers.update(new)
        saved_options.update(saved)
    record = {"adapter": adapter, "targets": list(targets), "options": saved_options}
    names = [n for n in found if n in layers]
    for name in names:
        layers[name].injection = record
        _set_submodule(model, name, layers[name])
    if freeze:
        keep = {id(t) for t in adapter_tensors(model).values()}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
    return names


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """The injected adapter layers by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that still require gradients (after ``inject``: the adapter's, and any new head's)."""
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(
    model: nn.Module, extra_modules: dict[str, nn.Module] | None = None
) -> dict[str, torch.Tensor]:
    """Adapter tensors only (detached), plus ``extra_modules`` (new heads) under ``extra:<name>/``."""
    state = {k: t.detach() for k, t in adapter_tensors(model).items()}
    for ename, mod in (extra_modules or {}).items():
        for k, t in mod.state_dict().items():
            state[f"{EXTRA_PREFIX}{ename}/{k}"] = t.detach()
    return state


def merge(model: nn.Module) -> list[str]:
    """Fold every adapter into its base module and put plain base-type modules back; returns their names."""
    layers = adapter_layers(model)
    merged = {n: layer.merged() for n, layer in layers.items()}  # all or nothing: raises before any swap
    for n, lin in merged.items():
        _set_submodule(model, n, lin)
    return list(merged)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_adapter(
    model: nn.Module, path: str | os.PathLike, extra_modules: dict[str, nn.Module] | None = None
) -> Path:
    """Write adapter tensors to ``path`` (safetensors) and a JSON sidecar (same name, ``.json``) to re-inject them."""
    path = Path(path)
    layers = adapter_layers(model)
    if not layers and not any(isinstance(m, AdapterState) for m in model.modules()):
        raise ConfigError("the model has no adapter to save; call inject(model, adapter, targets) first")
    groups: dict[int, dict[str, Any]] = {}
    for name, layer in layers.items():
        rec = layer.injection
        if not rec:
            raise ConfigError(
                f"adapter layer '{name}' was not made by inject(), so it cannot be re-injected from a sidecar; "
                "save the model's state_dict instead"
            )
        groups.setdefault(id(rec), {**rec, "layers": []})["layers"].append(name)
    state = {k: t.contiguous().cpu() for k, t in adapter_state_dict(model, extra_modules).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(state, str(p)))
    meta = {
        "format": SIDECAR_FORMAT,
        "sha256": file_sha256(path),
        "groups": list(groups.values()),
        "extra_modules": sorted(extra_modules or {}),
    }
    try:
        text = json.dumps(meta, indent=1)
    except TypeError as e:
        raise ConfigError(f"adapter options must be JSON values to be saved: {e}") from None
    atomic_write(_sidecar(path), lambda p: p.write_text(text))
    return path


def _read_adapter_files(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    side = _sidecar(path)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read adapter sidecar {side}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{side} is not a pretrainkit adapter sidecar (format {SIDECAR_FORMAT})")
    try:
        if file_sha256(path) != meta.get("sha256"):
            raise CheckpointError(
                f"adapter file {path} is corrupted or was changed (checksum differs from {side})"
            )
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read adapter file {path}: {str(e).splitlines()[0]}") from None
    return meta, state


def _check_and_copy(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not fit this model: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{what}: '{k}' has shape {tuple(state[k].shape)}, model expects {tuple(t.shape)}"
            )
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(state[k].to(dtype=t.dtype, device=t.device))


def _upgrade(group: dict, fmt: str) -> dict:
    """A group's options as today's wrappers read them (format /1 knew Linear wrappers only)."""
    options = dict(group["options"])
    if fmt == SIDECAR_FORMAT or group["adapter"] not in ADAPTERS:
        return options
    cls = ADAPTERS.get(group["adapter"]).wrappers.get(nn.Linear)
    return options if cls is None else cls.upgrade_options(options, fmt)


def load_adapter(
    model: nn.Module, path: str | os.PathLike, extra_modules: dict[str, nn.Module] | None = None
) -> list[str]:
    """Re-inject a saved adapter into ``model`` (unless already injected) and load its tensors; strict."""
    path = Path(path)
    meta, state = _read_adapter_files(path)
    names: list[str] = []
    if not adapter_layers(model):
        register_optional_wrappers()
        for g in meta.get("groups", []):
            exact = ["re:" + re.escape(n) for n in g["layers"]]
            try:
                names += inject(model, g["adapter"], exact, **_upgrade(g, meta["format"]))
            except ConfigError as e:
                raise CheckpointError(f"adapter {path} does not fit this model: {e}") from None
            adapter_layers(model)[g["layers"][0]].injection["targets"] = g["targets"]
    else:
        names = list(adapter_layers(model))
    own = {k: v for k, v in state.items() if not k.startswith(EXTRA_PREFIX)}
    _check_and_copy(adapter_tensors(model), own, f"adapter {path}")
    for ename, mod in (extra_modules or {}).items():
        pre = f"{EXTRA_PREFIX}{ename}/"
        sub = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
        if not sub:
            raise CheckpointError(
                f"adapter {path} holds no extra module '{ename}'; it holds {meta.get('extra_modules')}"
            )
        _check_and_copy(dict(mod.state_dict(keep_vars=True)), sub, f"extra module '{ename}' in {path}")
    return names
