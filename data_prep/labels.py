"""Label maps that stay stable across retrains: old labels keep their ids, new ones are appended."""
from __future__ import annotations

from collections.abc import Iterable


def build_label_list(observed: Iterable[str], previous: list[str] | None = None) -> list[str]:
    labels = list(previous or [])
    known = set(labels)
    for label in sorted(set(observed) - known):
        labels.append(label)
    return labels
