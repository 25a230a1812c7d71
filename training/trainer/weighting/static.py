"""`static`: fixed per-task weights from the config, the hand-tuned baseline every multi-task
paper compares against (e.g. Kendall et al., CVPR 2018, Table 1)."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from training.trainer.weighting.base import Weighting, WeightingParams


class StaticParams(WeightingParams):
    weights: dict[str, float] = Field(default_factory=dict, description="task -> weight; unnamed tasks 1.0")


class StaticWeighting(Weighting):
    Params: ClassVar[type[WeightingParams]] = StaticParams

    def weights(self) -> dict[str, float]:
        given = self.params.weights  # type: ignore[attr-defined]
        return {t: float(given.get(t, 1.0)) for t in self.tasks}

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        problems = super().config_problems(params, tasks, zero_stage, precision)
        weights = params.get("weights") or {}
        if isinstance(weights, dict):
            if unknown := sorted(set(weights) - set(tasks)):
                problems.append(f"training.weighting_params.weights: unknown task(s) {unknown}; tasks are {tasks}")
            if any(isinstance(v, (int, float)) and v < 0 for v in weights.values()):
                problems.append("training.weighting_params.weights: weights must be >= 0")
        return problems
