"""`dwa`: Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, eq. 7).

lambda_k = K exp(w_k / T) / sum_i exp(w_i / T), with w_k = L_k(t-1) / L_k(t-2) the ratio of a
task's mean loss over the last two periods (the paper's epochs; here `period` all-task steps).
A task whose loss falls slowly gets more weight. Before two periods exist every weight is 1.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from training.trainer.weighting.base import Weighting, WeightingParams


class DwaParams(WeightingParams):
    temperature: float = Field(2.0, gt=0, description="T: larger is closer to equal weights")
    period: int = Field(10, gt=0, description="all-task steps averaged into one loss point")


class DwaWeighting(Weighting):
    Params: ClassVar[type[WeightingParams]] = DwaParams
    needs_all_tasks: ClassVar[bool] = True

    def __init__(self, tasks: list[str], seed: int = 0, **params: Any) -> None:
        super().__init__(tasks, seed, **params)
        self.history: list[list[float]] = []  # mean loss per finished period
        self.window: list[list[float]] = []

    def weights(self) -> dict[str, float]:
        if len(self.history) < 2:
            return {t: 1.0 for t in self.tasks}
        ratios = torch.tensor(self.history[-1]) / torch.tensor(self.history[-2]).clamp(min=1e-12)
        lam = len(self.tasks) * torch.softmax(ratios / self.params.temperature, 0)  # type: ignore[attr-defined]
        return {t: float(lam[i]) for i, t in enumerate(self.tasks)}

    def combine(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        coefficients = super().combine(losses, grads)
        self.window.append([float(x) for x in losses])
        if len(self.window) == self.params.period:  # type: ignore[attr-defined]
            self.history = (self.history + [torch.tensor(self.window).mean(0).tolist()])[-2:]
            self.window = []
        return coefficients

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(r) for r in self.history], "window": [list(r) for r in self.window]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [list(r) for r in state["history"]]
        self.window = [list(r) for r in state["window"]]
