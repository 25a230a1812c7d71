"""Loss weighting: how much each task's loss counts. One registry: `WEIGHTINGS`."""
from __future__ import annotations

from typing import Any


class EqualWeighting:
    """Every task's loss counts once: the plain sum of task losses."""

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = tasks

    def weight(self, task: str) -> float:
        return 1.0

    def observe(self, task: str, loss: float) -> None:
        """Equal weights learn nothing from the losses."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No state to restore."""


WEIGHTINGS: dict[str, type] = {
    "equal": EqualWeighting,
}
