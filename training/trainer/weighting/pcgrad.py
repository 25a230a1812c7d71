"""`pcgrad`: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn,
"Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

For each task i, in a random order over the others j: if g_i . g_j < 0, remove the conflicting
component, g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j; the update is the sum of the projected g_i.
Every projected gradient is a linear combination of the task gradients, so the surgery runs on
the Gram matrix alone and yields one coefficient per task: a single backward of
sum_t c_t L_t then applies it to every shared parameter, under any ZeRO stage. The Gram matrix
comes from the probe parameters (the last shared layer), averaged over processes; the random
order is a function of (seed, step), identical on every process.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from training.trainer.weighting.base import Weighting


def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """C with projected g_i = sum_k C[i, k] g_k, from the Gram matrix of the task gradients."""
    tasks = gram.size(0)
    c = torch.eye(tasks, dtype=torch.float64)
    gram = gram.double()
    for i in range(tasks):
        for j in orders[i]:
            dot = c[i] @ gram[:, j]
            if j != i and dot < 0 and gram[j, j] > 0:
                c[i, j] -= dot / gram[j, j]
    return c


class PCGradWeighting(Weighting):
    needs_grads: ClassVar[bool] = True
    needs_all_tasks: ClassVar[bool] = True

    def __init__(self, tasks: list[str], seed: int = 0, **params: Any) -> None:
        super().__init__(tasks, seed, **params)
        self.steps = 0
        self.last = torch.ones(len(self.tasks))

    def combine(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        if grads is None:
            raise ValueError("pcgrad needs per-task gradients")
        g = grads.detach().double().cpu()
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)
        orders = [torch.randperm(len(self.tasks), generator=rng).tolist() for _ in self.tasks]
        self.steps += 1
        self.last = pcgrad_coefficients(g @ g.T, orders).sum(0).float()
        return self.last

    def weights(self) -> dict[str, float]:
        """The last step's effective coefficients (1 for every task when nothing conflicted)."""
        return {t: float(self.last[i]) for i, t in enumerate(self.tasks)}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
