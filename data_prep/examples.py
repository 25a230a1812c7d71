"""The canonical example every reader produces, whatever the source format."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Example:
    file: str
    line: int
    tokens: list[str] | None = None
    tags: list[str] | None = None
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    # dependency parsing: per word its head, 1-based over the sentence's words (0: the root)
    heads: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Example":
        return cls(**row)
