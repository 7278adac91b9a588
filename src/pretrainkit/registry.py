"""Name -> class registries, so a new task or adapter is one class plus a decorator and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pretrainkit.errors import PretrainkitError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of constructors with a clear error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            allowed = ", ".join(sorted(self._items)) or "(none registered)"
            raise PretrainkitError(f"unknown {self.kind} '{name}'; allowed: {allowed}")
        return self._items[name]

    def build(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
