"""What the model and the evaluator need to know of a task: its type and label list."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from data_prep.config import TaskType


class TaskSpec(BaseModel):
    name: str
    type: TaskType
    labels: list[str]
    label_scheme: Literal["plain", "bio"] = "plain"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def primary_metric(self) -> str:
        if self.label_scheme == "bio":
            return "entity_f1"
        return "accuracy"
