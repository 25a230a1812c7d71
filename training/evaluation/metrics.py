"""Dev-set metrics. One registry: `METRICS` (name -> function of gold and predicted labels, or of
gold and predicted values for regression)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import f1_score as entity_f1_score
from sklearn.metrics import f1_score

from data_prep.config import is_regression, is_token_task

Labels = list[list[Any]]


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


def _values(gold: Labels, pred: Labels) -> tuple[np.ndarray, np.ndarray]:
    return np.array([g[0] for g in gold], dtype=float), np.array([p[0] for p in pred], dtype=float)


def _correlation(fn: Callable[..., Any], gold: Labels, pred: Labels) -> float:
    g, p = _values(gold, pred)
    if len(g) < 2 or np.ptp(g) == 0 or np.ptp(p) == 0:
        return 0.0  # undefined for a constant column: no evidence of any correlation
    return float(fn(g, p)[0])


def pearson(gold: Labels, pred: Labels) -> float:
    return _correlation(pearsonr, gold, pred)


def spearman(gold: Labels, pred: Labels) -> float:
    return _correlation(spearmanr, gold, pred)


def neg_mse(gold: Labels, pred: Labels) -> float:
    """Minus the mean squared error, so that higher is better like every other metric here
    (the promotion gate compares metrics that way)."""
    g, p = _values(gold, pred)
    return -float(np.mean((g - p) ** 2)) if len(g) else 0.0


METRICS: dict[str, Callable[[Labels, Labels], float]] = {
    "accuracy": accuracy,
    "entity_f1": entity_f1,
    "macro_f1": macro_f1,
    "pearson": pearson,
    "spearman": spearman,
    "neg_mse": neg_mse,
}


def metrics_for(task_type: str, label_scheme: str) -> list[str]:
    if is_regression(task_type):
        return ["pearson", "spearman", "neg_mse"]
    if is_token_task(task_type):
        return ["accuracy", "entity_f1"] if label_scheme == "bio" else ["accuracy"]
    return ["accuracy", "macro_f1"]
