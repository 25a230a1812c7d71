"""`uncertainty`: homoscedastic task uncertainty (Kendall, Gal & Cipolla, "Multi-Task Learning
Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

Each task t has a learned s_t = log sigma_t^2; its loss becomes exp(-s_t) L_t + s_t / 2, so a
task's weight exp(-s_t) follows its learned variance. The s_t are model parameters (a plain
module the model applies in its forward), so the optimizer, ZeRO partitioning and checkpoints
handle them like any other weight; the export leaves them out.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from training.trainer.weighting.base import Weighting, WeightingParams


class UncertaintyParams(WeightingParams):
    lr_scale: float = Field(10.0, gt=0, description="s = lr_scale * raw: Adam moves s lr_scale times faster "
                                                    "than the encoder's learning rate would")


class UncertaintyLoss(nn.Module):
    def __init__(self, tasks: list[str], lr_scale: float) -> None:
        super().__init__()
        self.index = {t: i for i, t in enumerate(tasks)}
        self.lr_scale = lr_scale
        self.raw_log_var = nn.Parameter(torch.zeros(len(tasks)))

    def log_vars(self) -> torch.Tensor:
        return self.lr_scale * self.raw_log_var

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_vars()[self.index[task]]
        return torch.exp(-s) * loss + 0.5 * s


class UncertaintyWeighting(Weighting):
    Params: ClassVar[type[WeightingParams]] = UncertaintyParams

    def __init__(self, tasks: list[str], seed: int = 0, **params: object) -> None:
        super().__init__(tasks, seed, **params)
        self._module = UncertaintyLoss(self.tasks, self.params.lr_scale)  # type: ignore[attr-defined]

    def module(self) -> nn.Module:
        return self._module

    def weight(self, task: str) -> float:
        """The model applies exp(-s_t) itself; the step must not scale the loss again."""
        return 1.0

    def combine(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        return torch.ones(len(self.tasks))

    def weights(self) -> dict[str, float]:
        """exp(-s_t) for logging (empty if ZeRO-3 partitioned s away from this process)."""
        s = self._module.log_vars().detach().float()
        if s.numel() != len(self.tasks):
            return {}
        return {t: float(torch.exp(-s[i])) for i, t in enumerate(self.tasks)}
