"""`gradnorm`: gradient normalisation (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm:
Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

With G_i = w_i ||grad_W L_i|| at the last shared layer W (here the probe parameters), the relative
inverse training rate r_i = (L_i(t)/L_i(0)) / mean_j(L_j(t)/L_j(0)) and the target
mean(G) r_i^alpha held constant, the weights take a gradient step on sum_i |G_i - target_i|,
then are renormalised to sum to the number of tasks. Tasks that train slower get larger weights.
The step on w is divided by the mean gradient norm so `lr` is a fraction of a weight whatever
the scale of the probe gradients (the paper leaves this to Adam).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from training.trainer.weighting.base import Weighting, WeightingParams


class GradNormParams(WeightingParams):
    alpha: float = Field(1.5, ge=0, description="restoring force toward equal training rates")
    lr: float = Field(0.025, gt=0, description="step size of the weights")


class GradNormWeighting(Weighting):
    Params: ClassVar[type[WeightingParams]] = GradNormParams
    needs_grads: ClassVar[bool] = True
    needs_all_tasks: ClassVar[bool] = True

    def __init__(self, tasks: list[str], seed: int = 0, **params: Any) -> None:
        super().__init__(tasks, seed, **params)
        self.w = torch.ones(len(self.tasks))
        self.initial: torch.Tensor | None = None

    def weights(self) -> dict[str, float]:
        return {t: float(self.w[i]) for i, t in enumerate(self.tasks)}

    def combine(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        if grads is None:
            raise ValueError("gradnorm needs per-task gradients")
        losses = losses.detach().float().cpu()
        norms = grads.detach().float().cpu().norm(dim=1)
        if self.initial is None:
            self.initial = losses.clamp(min=1e-12)
        used = self.w.clone()
        g = used * norms
        rate = losses / self.initial
        target = g.mean() * (rate / rate.mean()) ** self.params.alpha  # type: ignore[attr-defined]
        step = torch.sign(g - target) * norms / norms.mean().clamp(min=1e-12)
        w = (used - self.params.lr * step).clamp(min=1e-3)  # type: ignore[attr-defined]
        self.w = w * len(self.tasks) / w.sum()
        return used

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.tolist(), "initial": None if self.initial is None else self.initial.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = torch.tensor(state["w"])
        self.initial = None if state["initial"] is None else torch.tensor(state["initial"])
