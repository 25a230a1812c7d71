"""Evaluate an exported model on each task's dev split."""
from __future__ import annotations

from data_prep.config import is_pair_task, is_regression, is_token_task
from data_prep.examples import Example
from data_prep.stage import read_examples
from training.evaluation.metrics import METRICS, metrics_for
from training.evaluation.predict import Predictor
from training.task_spec import TaskSpec


def predict_split(predictor: Predictor, task: TaskSpec, examples: list[Example]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted labels, as lists per example (one label per word, or one per sentence)."""
    if is_token_task(task.type):
        pred = predictor.predict_words([ex.tokens or [] for ex in examples], [task.name])[task.name]
        return [list(ex.tags or []) for ex in examples], pred
    pairs = [ex.text_pair or "" for ex in examples] if is_pair_task(task.type) else None
    if pairs is None:
        # sentence tasks are scored on the same encoding the one-pass predictor uses
        pred = predictor.predict_words([(ex.text or "").split() for ex in examples], [task.name])[task.name]
    else:
        pred = predictor.predict_texts([ex.text or "" for ex in examples], pairs, [task.name])[task.name]
    gold = [float(ex.label or 0) if is_regression(task.type) else ex.label or "" for ex in examples]
    return [[g] for g in gold], [[p] for p in pred]


def evaluate_task(predictor: Predictor, task: TaskSpec, examples: list[Example]) -> dict[str, float]:
    gold, pred = predict_split(predictor, task, examples)
    return {name: METRICS[name](gold, pred) for name in metrics_for(task.type, task.label_scheme)}


def evaluate_model(export_dir: str, tasks: list[TaskSpec], dev_files: dict[str, str],
                   batch_size: int) -> dict[str, dict[str, float]]:
    predictor = Predictor(export_dir, batch_size=batch_size)
    return {t.name: evaluate_task(predictor, t, read_examples(dev_files[t.name])) for t in tasks}
