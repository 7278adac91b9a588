"""Parameter-efficient adaptation of a frozen backbone: LoRA, (IA)^3, L2M's modulation pool, prompt pools,
and continual-learning regularisers. All usable from plain PyTorch.

Adapters wrap Linear, Conv1d/2d/3d and Embedding modules; PyG's HeteroDictLinear / HeteroLinear wrappers
(``adapt.pyg``) register themselves once torch_geometric is imported."""

from pretrainkit.adapt.base import (
    ADAPTERS,
    AdapterFamily,
    AdapterLayer,
    AdapterState,
    adapter_layers,
    adapter_state_dict,
    find_modules,
    inject,
    load_adapter,
    merge,
    register_adapter,
    save_adapter,
    trainable_parameters,
)
from pretrainkit.adapt.ia3 import IA3Conv, IA3Linear
from pretrainkit.adapt.lora import LoRAConv, LoRAEmbedding, LoRALayer, LoRALinear
from pretrainkit.adapt.modulation import ModulatedLinear, ModulationPool, Selection
from pretrainkit.adapt.prompts import PromptHook, PromptPool, PromptSelection, extend_mask, prepend
from pretrainkit.adapt.regularisers import EWC, L2Anchor

__all__ = [
    "ADAPTERS",
    "EWC",
    "AdapterFamily",
    "AdapterLayer",
    "AdapterState",
    "IA3Conv",
    "IA3Linear",
    "L2Anchor",
    "LoRAConv",
    "LoRAEmbedding",
    "LoRALayer",
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
    "find_modules",
    "inject",
    "load_adapter",
    "merge",
    "prepend",
    "register_adapter",
    "save_adapter",
    "trainable_parameters",
]
