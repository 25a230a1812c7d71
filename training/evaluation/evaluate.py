"""Evaluate a model on each task's dev split: an exported model after training, or the model being
trained (every process predicting its share of each split)."""
from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from data_prep.config import is_pair_task, is_regression, is_token_task
from data_prep.examples import Example
from data_prep.stage import read_examples
from training.evaluation.metrics import METRICS, Labels, metrics_for
from training.evaluation.predict import Predictor
from training.task_spec import TaskSpec, exported

# one object from this process in, every process's object out (in rank order)
Gather = Callable[[Any], list[Any]]


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


def score(task: TaskSpec, gold: Labels, pred: Labels) -> dict[str, float]:
    return {name: METRICS[name](gold, pred) for name in metrics_for(task.type, task.label_scheme)}


def evaluate_task(predictor: Predictor, task: TaskSpec, examples: list[Example]) -> dict[str, float]:
    return score(task, *predict_split(predictor, task, examples))


def evaluate_model(export_dir: str, tasks: list[TaskSpec], dev_files: dict[str, str],
                   batch_size: int) -> dict[str, dict[str, float]]:
    """Every exported task's metrics (auxiliary tasks are not in the export)."""
    predictor = Predictor(export_dir, batch_size=batch_size)
    return {t.name: evaluate_task(predictor, t, read_examples(dev_files[t.name])) for t in exported(tasks)}


def dev_sample(examples: list[Example], limit: int | None, seed: int, task: str) -> list[Example]:
    """At most `limit` examples, the same ones on every process and every run with this seed (kept
    in file order); the whole split when it is not larger."""
    if limit is None or len(examples) <= limit:
        return examples
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return [examples[i] for i in sorted(rng.choice(len(examples), limit, replace=False))]


def shard(examples: list[Example], rank: int, world: int) -> list[Example]:
    """This process's contiguous share: the shares in rank order are the split in order."""
    bounds = [len(examples) * r // world for r in range(world + 1)]
    return examples[bounds[rank]:bounds[rank + 1]]


def evaluate_sharded(predictor: Predictor, task: TaskSpec, examples: list[Example], rank: int, world: int,
                     gather: Gather) -> dict[str, float]:
    """Each process predicts its share; the shares' labels are gathered in split order and scored
    on every process, so all processes hold the same metrics (F1 and correlations do not average
    over shares, so labels travel, not metrics)."""
    mine = shard(examples, rank, world)
    local = predict_split(predictor, task, mine) if mine else ([], [])
    gold: Labels = []
    pred: Labels = []
    for part_gold, part_pred in gather(local):
        gold += part_gold
        pred += part_pred
    return score(task, gold, pred)
