"""What the model and the evaluator need to know of a task: its type and label list."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from data_prep.cache import ArtifactCache
from data_prep.config import TaskDataConfig, TaskType, TokenizeConfig, is_regression
from data_prep.stage import ingest_cached, tokenize_cached


class TaskSpec(BaseModel):
    name: str
    type: TaskType
    labels: list[str]
    label_scheme: Literal["plain", "bio"] = "plain"
    auxiliary: bool = False  # trained to help the others; never exported, evaluated, gated or registered

    @property
    def num_labels(self) -> int:
        """Outputs of the head: one per label, or the single predicted value of a regression."""
        return 1 if is_regression(self.type) else len(self.labels)

    @property
    def primary_metric(self) -> str:
        if is_regression(self.type):
            return "pearson"
        if self.label_scheme == "bio":
            return "entity_f1"
        return "accuracy"


def spec_for(task: TaskDataConfig, labels: list[str]) -> TaskSpec:
    """The training view of a task's data config, once its label list is known."""
    return TaskSpec(name=task.name, type=task.type, labels=labels, label_scheme=task.label_scheme,
                    auxiliary=task.auxiliary)


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
        prepared.specs.append(spec_for(task, ingested["labels"]))
    return prepared
