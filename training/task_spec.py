"""What the model and the evaluator need to know of a task: its type and label list, the dev metric
that selects and gates it, and for regression the scale its head predicts on.

Regression targets are standardised: the head predicts (y - mean) / std with the train split's
mean and std, which the TaskSpec carries into the model card, and the model turns its output back
into target units (`TaskSpec.to_target`). Measured with a tiny encoder (2 layers, hidden 32) on 800
training rows each of STS-B, UD POS, CoNLL NER, SST-2 and TREC, trained round-robin: on raw 0-5
scores STS-B's mean squared error starts at 7.8 against 0.7-3.1 for the classifiers'
cross-entropy, its gradient on the shared encoder at 62 against 0.4-13, and after 200 rounds still
at 9.7 against 0.1-1.6, so the regression task steers the shared steps (and fills the clipping
norm); standardised it starts at 0.8 (gradient 4.2) and ends at 0.15, an MSE of 0.32 in score
units against 0.69 without (tests/test_many_tasks.py keeps the check at initialisation). A card
without the statistics (a model exported before) reads mean 0, std 1: its head's outputs are the
values, as they were trained."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pydantic import BaseModel, model_validator

from data_prep.cache import ArtifactCache
from data_prep.config import TaskDataConfig, TaskType, TokenizeConfig, is_parsing, is_regression
from data_prep.stage import ingest_cached, read_examples, tokenize_cached
from training.evaluation.metrics import metrics_for


class TaskSpec(BaseModel):
    name: str
    type: TaskType
    labels: list[str]
    label_scheme: Literal["plain", "bio"] = "plain"
    auxiliary: bool = False  # trained to help the others; never exported, evaluated, gated or registered
    positive_label: str | None = None  # sentence classification: the class whose F1 is the metric `f1`
    # the dev metric per-task selection and the promotion gate compare; "" (a card written before the
    # field existed, or a config that leaves it out): the type's default, filled in on validation
    primary_metric: str = ""
    target_mean: float = 0.0  # regression: the train split's target mean and std (see the module docstring)
    target_std: float = 1.0

    @model_validator(mode="after")
    def _metric_of_this_task(self) -> "TaskSpec":
        if not self.primary_metric:
            self.primary_metric = self.default_primary_metric(self.type, self.label_scheme)
        problem = primary_metric_problem(self.name, self.type, self.label_scheme, self.positive_label,
                                         self.primary_metric)
        if problem:
            raise ValueError(problem)
        if not self.target_std > 0:
            raise ValueError(f"task {self.name!r}: target_std {self.target_std} must be positive")
        return self

    @staticmethod
    def default_primary_metric(task_type: str, label_scheme: str) -> str:
        """The metric a task is selected and gated on when its config names none."""
        if is_regression(task_type):
            return "pearson"
        if is_parsing(task_type):
            return "las"
        if label_scheme == "bio":
            return "entity_f1"
        return "accuracy"

    @property
    def num_labels(self) -> int:
        """Outputs of the head: one per label, or the single predicted value of a regression."""
        return 1 if is_regression(self.type) else len(self.labels)

    def loss_targets(self, labels: Any) -> Any:
        """What the head is trained to output: a regression's standardised target, else the labels."""
        return (labels.float() - self.target_mean) / self.target_std if is_regression(self.type) else labels

    def to_target(self, outputs: Any) -> Any:
        """The head's outputs in the task's own units: a regression's value, else the logits as they are."""
        return outputs * self.target_std + self.target_mean if is_regression(self.type) else outputs


def primary_metric_problem(task: str, task_type: str, label_scheme: str, positive_label: str | None,
                           metric: str) -> str | None:
    """Why `metric` cannot be this task's primary metric (None: it can)."""
    choices = metrics_for(task_type, label_scheme, positive_label)
    if metric in choices:
        return None
    hint = "; f1 needs positive_label (the class it is the F1 of)" if metric == "f1" and positive_label is None else ""
    return (f"tasks.{task}.primary_metric: {metric!r} is not a metric of task {task!r} ({task_type}"
            f"{', bio' if label_scheme == 'bio' else ''}); choose one of {choices}{hint}")


def primary_metric_problems(tasks: list[TaskDataConfig]) -> list[str]:
    """Every task's `primary_metric` against its type's metrics, before any work starts."""
    problems = [primary_metric_problem(t.name, t.type, t.label_scheme, t.positive_label, t.primary_metric)
                for t in tasks if t.primary_metric is not None]
    return [p for p in problems if p]


def target_statistics(train_file: str | Path) -> tuple[float, float]:
    """Mean and standard deviation of a regression task's ingested train targets (std 1 when they are
    all equal: there is no scale to undo)."""
    values = np.array([float(ex.label or 0) for ex in read_examples(str(train_file))], dtype=np.float64)
    if not len(values):
        return 0.0, 1.0
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0


def spec_for(task: TaskDataConfig, labels: list[str], train_file: str | Path | None = None) -> TaskSpec:
    """The training view of a task's data config, once its label list is known; `train_file` (the
    ingested train split) gives a regression task the scale its head predicts on."""
    if task.positive_label is not None and task.positive_label not in labels:
        raise ValueError(f"task {task.name!r}: positive_label {task.positive_label!r} is not one of the labels of its "
                         f"train split {labels}; set tasks.{task.name}.positive_label to one of them")
    mean, std = target_statistics(train_file) if train_file is not None and is_regression(task.type) else (0.0, 1.0)
    return TaskSpec(name=task.name, type=task.type, labels=labels, label_scheme=task.label_scheme,
                    auxiliary=task.auxiliary, positive_label=task.positive_label,
                    primary_metric=task.primary_metric or "", target_mean=mean, target_std=std)


def exported(tasks: list[TaskSpec]) -> list[TaskSpec]:
    """The tasks a model is exported, evaluated, gated and registered with (auxiliary ones left out)."""
    return [t for t in tasks if not t.auxiliary]


@dataclass
class PreparedTasks:
    specs: list[TaskSpec]
    features: dict[str, str]  # task -> tokenized training features
    dev: dict[str, str]  # task -> validated dev examples


def prepare_tasks(tasks: list[TaskDataConfig], data_dir: str | None, encoder_path: str, max_length: int,
                  settings: TokenizeConfig, cache: ArtifactCache, out: Path, tokenizer: Any = None) -> PreparedTasks:
    """Ingest and tokenize tasks through the content-addressed cache, outside a flow (benchmarks,
    tests). The flow runs the same two steps as separate retried tasks."""
    prepared = PreparedTasks([], {}, {})
    for task in tasks:
        ingested = ingest_cached(task, data_dir, cache, out / "data")
        prepared.features[task.name] = tokenize_cached(task, ingested, encoder_path, max_length, settings, cache,
                                                       out / "data", tokenizer)["features"]
        prepared.dev[task.name] = ingested["splits"]["dev"]
        prepared.specs.append(spec_for(task, ingested["labels"], ingested["splits"]["train"]))
    return prepared
