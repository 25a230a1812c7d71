"""Label maps that stay stable across retrains: old labels keep their ids, new ones are appended.

The label list is stored with the model (the export's card); a retrain feeds the champion's
list back as `previous`, so a head's output i means the same label before and after."""
from __future__ import annotations

from collections.abc import Iterable


def build_label_list(observed: Iterable[str], previous: list[str] | None = None,
                     declared: list[str] | None = None) -> list[str]:
    """`previous` in its order (even labels no longer observed: dropping one would shift the ids
    after it), then the task's `declared` labels in their order, then labels seen for the first
    time, sorted so the order does not depend on the order of the data. A declared set is the
    whole set (ingest refuses any other value), so its unseen labels get ids too."""
    labels = list(dict.fromkeys(previous or []))  # a duplicated id in an old card cannot be kept twice
    known = set(labels)
    for label in declared or []:
        if label not in known:
            labels.append(label)
            known.add(label)
    for label in sorted(set(observed) - known):
        labels.append(label)
    return labels


def label_ids(labels: list[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}
