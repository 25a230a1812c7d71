"""Dev-set metrics. One registry: `METRICS` (name -> function of gold and predicted labels)."""
from __future__ import annotations

from collections.abc import Callable

from seqeval.metrics import f1_score as entity_f1_score
from sklearn.metrics import f1_score

Labels = list[list[str]]


def token_accuracy(gold: Labels, pred: Labels) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    return sum(g == p for g, p in pairs) / max(1, len(pairs))


def entity_f1(gold: Labels, pred: Labels) -> float:
    """Entity-level F1 as conlleval counts it (seqeval's default mode)."""
    return float(entity_f1_score(gold, pred))


def accuracy(gold: Labels, pred: Labels) -> float:
    return token_accuracy(gold, pred)


def macro_f1(gold: Labels, pred: Labels) -> float:
    return float(f1_score([g[0] for g in gold], [p[0] for p in pred], average="macro"))


METRICS: dict[str, Callable[[Labels, Labels], float]] = {
    "accuracy": accuracy,
    "entity_f1": entity_f1,
    "macro_f1": macro_f1,
}


def metrics_for(task_type: str, label_scheme: str) -> list[str]:
    if task_type == "token_classification":
        return ["accuracy", "entity_f1"] if label_scheme == "bio" else ["accuracy"]
    return ["accuracy", "macro_f1"]
