"""What every loss weighting shares. A weighting is built as `cls(tasks, seed, **params)` and
offers two ways to be used, both plain math without DeepSpeed:

- sampled steps (one task per micro-step): `weight(task)` scales that task's loss;
- all-task steps (one micro-batch of every task, one backward): `combine(losses, grads)` turns the
  tasks' mean losses `[tasks]` (and, when `needs_grads`, their gradients at the probe parameters
  `[tasks, probe]`, averaged over processes) into the coefficients of the summed loss.

`all_tasks_step` says which one the trainer runs; `coefficients` is the one call the training step
makes, either way. Weightings with learned parameters hand a
plain module to the model through `module()`, so the optimizer and ZeRO treat them like any
other parameter.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn


class WeightingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    all_tasks_step: bool | None = Field(None, description="one micro-batch of every task per step "
                                                         "(default: what the method needs)")


class Weighting:
    Params: ClassVar[type[WeightingParams]] = WeightingParams
    needs_grads: ClassVar[bool] = False
    needs_all_tasks: ClassVar[bool] = False

    def __init__(self, tasks: list[str], seed: int = 0, **params: Any) -> None:
        self.tasks = list(tasks)
        self.seed = seed
        self.params = self.Params(**params)
        chosen = self.params.all_tasks_step
        self.all_tasks_step = self.needs_all_tasks if chosen is None else chosen

    def weight(self, task: str) -> float:
        return self.weights()[task]

    def coefficients(self, tasks: list[str], losses: torch.Tensor | None,
                     grads: torch.Tensor | None) -> torch.Tensor:
        """The coefficient of each of `tasks`' losses in this micro-step's summed loss: `combine`
        over every task in an all-task step (losses and grads as `combine` takes them), the task's
        `weight` in a sampled step (no loss values needed, so none are read from the device)."""
        if self.all_tasks_step:
            return self.combine(losses, grads)
        return torch.tensor([self.weight(t) for t in tasks], dtype=torch.float32)

    def combine(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        return torch.tensor([self.weights()[t] for t in self.tasks], dtype=torch.float32)

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}

    def module(self) -> nn.Module | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore by default."""

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        try:
            parsed = cls.Params.model_validate(params)
        except ValidationError as exc:
            return [f"training.weighting_params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors()]
        problems = []
        if cls.needs_all_tasks and parsed.all_tasks_step is False:
            problems.append("training.weighting_params.all_tasks_step: this weighting compares every task "
                            "in each step; it cannot be false")
        if cls.needs_grads and zero_stage == 3:
            problems.append("deepspeed.zero_stage: a gradient-based weighting differentiates each task's loss "
                            "at the probe parameters before the real backward; under ZeRO-3 that partial "
                            "backward releases partitioned parameters the real backward still needs. "
                            "Use zero_stage 0, 1 or 2 (dwa, uncertainty, static and equal run under ZeRO-3)")
        if cls.needs_grads and precision == "fp16":
            problems.append("deepspeed.precision: fp16 probe gradients are not loss-scaled and underflow; "
                            "use bf16 or fp32 with a gradient-based weighting")
        return problems
