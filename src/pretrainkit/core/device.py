"""The one place a device name becomes a ``torch.device`` and a precision becomes an autocast context."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from pretrainkit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA when torch sees a GPU, else CPU; ``cpu``; ``cuda`` or ``cuda:N`` (refused in one line
    when there is no GPU, rather than failing later inside a kernel)."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{name}' asked for but torch sees no CUDA device; use device=cpu or auto"
            )
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got '{name}'") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{name}' asked for but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got '{name}'")


def uses_bf16(device: torch.device, precision: str) -> bool:
    """``auto`` = bf16 autocast on CUDA and fp32 on CPU; ``bf16`` and ``fp32`` as named."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def autocast(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``uses_bf16``, else a context that does nothing."""
    device = torch.device(device)
    return (
        torch.autocast(device.type, dtype=torch.bfloat16) if uses_bf16(device, precision) else nullcontext()
    )
