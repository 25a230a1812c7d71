"""Lookup with a helpful error: an unknown name lists the valid ones."""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def lookup(registry: dict[str, T], name: str, kind: str) -> T:
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; valid: {sorted(registry)}")
    return registry[name]
