"""Dev-set metrics. One registry: `METRICS` (name -> function of gold and predicted labels, or of
gold and predicted values for regression)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import f1_score as entity_f1_score
from sklearn.metrics import f1_score

from data_prep.config import is_parsing, is_regression, is_token_task

Labels = list[list[Any]]


def token_accuracy(gold: Labels, pred: Labels) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    return sum(g == p for g, p in pairs) / max(1, len(pairs))


def entity_f1(gold: Labels, pred: Labels) -> float:
    """Entity-level F1 as conlleval counts it (seqeval's default mode). A word the model gave no
    tag (one the tokenizer turns into no subword at all, such as WNUT-17's lone emoji variation
    selectors U+FE0F) is outside every entity, O, as conlleval would read an empty tag column."""
    return float(entity_f1_score(gold, [["O" if p is None else p for p in ps] for ps in pred]))


def accuracy(gold: Labels, pred: Labels) -> float:
    return token_accuracy(gold, pred)


def macro_f1(gold: Labels, pred: Labels) -> float:
    return float(f1_score([g[0] for g in gold], [p[0] for p in pred], average="macro"))


def positive_f1(gold: Labels, pred: Labels, positive: str = "1") -> float:
    """F1 of one class against all others, the F1 GLUE reports for MRPC and QQP (of their class 1,
    paraphrase or duplicate); 0 when the class is never gold nor predicted (no evidence either way)."""
    g = [x[0] == positive for x in gold]
    p = [x[0] == positive for x in pred]
    return float(f1_score(g, p, zero_division=0.0)) if any(g) or any(p) else 0.0


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


def _attachments(gold: Labels, pred: Labels) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    return [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]


def _universal(deprel: Any) -> str:
    return str(deprel).split(":", 1)[0]


def uas(gold: Labels, pred: Labels) -> float:
    """Unlabelled attachment score: the share of words whose predicted head is the gold head.
    Each word is a `{"head": int, "deprel": str}` (a word without a prediction, None, counts as
    wrong). Every word counts, punctuation included, as in the CoNLL 2018 shared task's evaluation
    (conll18_ud_eval.py); gold words are the unit (the tokenization is the gold one)."""
    pairs = _attachments(gold, pred)
    return sum(p is not None and p["head"] == g["head"] for g, p in pairs) / max(1, len(pairs))


def las(gold: Labels, pred: Labels) -> float:
    """Labelled attachment score: the share of words with the gold head and the gold relation.
    As in the CoNLL 2018 shared task's evaluation: every word counts, punctuation included, and
    relations are compared without their language-specific subtype (`nmod:poss` counts as `nmod`;
    the model still predicts the full relation)."""
    pairs = _attachments(gold, pred)
    return sum(p is not None and p["head"] == g["head"] and _universal(p["deprel"]) == _universal(g["deprel"])
               for g, p in pairs) / max(1, len(pairs))


METRICS: dict[str, Callable[[Labels, Labels], float]] = {
    "accuracy": accuracy,
    "entity_f1": entity_f1,
    "macro_f1": macro_f1,
    "f1": positive_f1,  # of the task's positive_label ("1" when called without one)
    "pearson": pearson,
    "spearman": spearman,
    "neg_mse": neg_mse,
    "uas": uas,
    "las": las,
}


def metrics_for(task_type: str, label_scheme: str, positive_label: str | None = None) -> list[str]:
    """The metrics a task of this type reports on dev (a sentence classifier with a positive class
    also its F1, `f1`); the first is its default primary metric only for regression and parsing
    (see training/task_spec.py TaskSpec.default_primary_metric)."""
    if is_regression(task_type):
        return ["pearson", "spearman", "neg_mse"]
    if is_parsing(task_type):
        return ["las", "uas"]
    if is_token_task(task_type):
        return ["accuracy", "entity_f1"] if label_scheme == "bio" else ["accuracy"]
    return ["accuracy", "macro_f1"] + (["f1"] if positive_label is not None else [])


def task_scores(task_type: str, label_scheme: str, gold: Labels, pred: Labels,
                positive_label: str | None = None) -> dict[str, float]:
    """Every metric of `metrics_for` on one task's gold and predicted labels; `f1` of the task's
    positive class."""
    return {name: positive_f1(gold, pred, positive_label) if name == "f1" and positive_label is not None
            else METRICS[name](gold, pred) for name in metrics_for(task_type, label_scheme, positive_label)}
