"""What the model and the evaluator need to know of a task: its type and label list."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from data_prep.config import TaskType, is_regression


class TaskSpec(BaseModel):
    name: str
    type: TaskType
    labels: list[str]
    label_scheme: Literal["plain", "bio"] = "plain"

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
