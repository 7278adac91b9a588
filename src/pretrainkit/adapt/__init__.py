"""Parameter-efficient adaptation of a frozen backbone: LoRA, (IA)^3, L2M's modulation pool, prompt pools,
and continual-learning regularisers. All usable from plain PyTorch."""

from pretrainkit.adapt.base import (
    ADAPTERS,
    AdapterLayer,
    AdapterState,
    adapter_layers,
    adapter_state_dict,
    inject,
    load_adapter,
    merge,
    register_adapter,
    save_adapter,
    trainable_parameters,
)
from pretrainkit.adapt.ia3 import IA3Linear
from pretrainkit.adapt.lora import LoRALinear
from pretrainkit.adapt.modulation import ModulatedLinear, ModulationPool, Selection
from pretrainkit.adapt.prompts import PromptHook, PromptPool, PromptSelection, extend_mask, prepend
from pretrainkit.adapt.regularisers import EWC, L2Anchor

__all__ = [
    "ADAPTERS",
    "EWC",
    "AdapterLayer",
    "AdapterState",
    "IA3Linear",
    "L2Anchor",
    "LoRALinear",
    "ModulatedLinear",
    "ModulationPool",
    "PromptHook",
    "PromptPool",
    "PromptSelection",
    "Selection",
    "adapter_layers",
    "adapter_state_dict",
    "extend_mask",
    "inject",
    "load_adapter",
    "merge",
    "prepend",
    "register_adapter",
    "save_adapter",
    "trainable_parameters",
]
