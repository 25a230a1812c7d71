"""Evaluate a model on each task's dev split: an exported model after training, or the model being
trained (every process predicting its share of each split)."""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_prep.config import is_pair_task, is_parsing, is_regression, is_token_task
from data_prep.examples import Example
from data_prep.stage import read_examples
from training.evaluation.device import inference_device
from training.evaluation.metrics import Labels, task_scores
from training.evaluation.predict import Predictor
from training.task_spec import TaskSpec, exported

# one object from this process in, every process's object out (in rank order)
Gather = Callable[[Any], list[Any]]


def predict_split(predictor: Predictor, task: TaskSpec, examples: list[Example]) -> tuple[Labels, Labels]:
    """Gold and predicted labels, as lists per example (one label per word, or one per sentence;
    for a parser one `{"head": int, "deprel": str}` per word)."""
    if is_parsing(task.type):
        pred = predictor.predict_words([ex.tokens or [] for ex in examples], [task.name])[task.name]
        return [[{"head": h, "deprel": d} for h, d in zip(ex.heads or [], ex.tags or [])] for ex in examples], pred
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
    return task_scores(task.type, task.label_scheme, gold, pred, task.positive_label)


def evaluate_task(predictor: Predictor, task: TaskSpec, examples: list[Example]) -> dict[str, float]:
    return score(task, *predict_split(predictor, task, examples))


def evaluate_model(export_dir: str, tasks: list[TaskSpec], dev_files: dict[str, str],
                   batch_size: int, device: str | None = None) -> dict[str, dict[str, float]]:
    """Every exported task's metrics (auxiliary tasks are not in the export)."""
    found = evaluate_export(export_dir, tasks, dev_files, batch_size, device)
    return {name: task.metrics for name, task in found.items()}


@dataclass
class TaskEvaluation:
    metrics: dict[str, float]
    confusion: dict[str, Any] | None  # {"labels": [...], "counts": [[gold x predicted]]}; None for regression


def evaluate_export(export_dir: str, tasks: list[TaskSpec], dev_files: dict[str, str],
                    batch_size: int, device: str | None = None) -> dict[str, TaskEvaluation]:
    """Every exported task's metrics and, for classification tasks, the confusion counts of the
    same predictions (a tag per word for token tasks, a relation per word for a parser). On the
    inference policy's device and precision (`device`: training.eval_device; None or auto:
    MTL_DEVICE, else CUDA when present);
    batches by the Predictor's token budget, at most `batch_size` rows each."""
    target = inference_device(device, what="training.eval_device")
    predictor = Predictor(export_dir, batch_size=batch_size, device=target)
    out = {}
    for task in exported(tasks):
        gold, pred = predict_split(predictor, task, read_examples(dev_files[task.name]))
        metrics = score(task, gold, pred)
        if is_parsing(task.type):  # the relations' confusion, whatever the heads
            gold, pred = ([[w["deprel"] for w in ws] for ws in gold],
                          [[None if w is None else w["deprel"] for w in ws] for ws in pred])
        counts = None if is_regression(task.type) else confusion(gold, pred, task.labels)
        out[task.name] = TaskEvaluation(metrics, counts)
    return out


def confusion(gold: Labels, pred: Labels, labels: list[str]) -> dict[str, Any]:
    """Counts of (gold, predicted) label pairs in the task's label order; a label that only the
    data or the model shows (none should) is appended rather than dropped."""
    order = list(labels)
    known = set(order)
    # a word the model gave no tag (cut off by max_length) counts as predicted "(none)"
    pairs = [(str(g), "(none)" if p is None else str(p)) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    order += [x for x in dict.fromkeys(v for pair in pairs for v in pair) if x not in known]
    index = {label: i for i, label in enumerate(order)}
    counts = [[0] * len(order) for _ in order]
    for g, p in pairs:
        counts[index[g]][index[p]] += 1
    return {"labels": order, "counts": counts}


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
