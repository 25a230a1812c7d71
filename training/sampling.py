"""Task samplers: which task the next micro-batch comes from. One registry: `SAMPLERS`.

A sampler is a pure function of (seed, step), so every rank picks the same task without
communication and a resumed run picks exactly the tasks an uninterrupted one would have.
"""
from __future__ import annotations

import numpy as np


class ProportionalSampler:
    """Tasks drawn with probability proportional to their training-set size."""

    def __init__(self, sizes: dict[str, int], seed: int) -> None:
        self.names = sorted(sizes)
        total = sum(sizes[n] for n in self.names)
        self.probs = np.array([sizes[n] / total for n in self.names])
        self.seed = seed

    def sample(self, step: int) -> str:
        rng = np.random.default_rng([self.seed, step])
        return self.names[int(rng.choice(len(self.names), p=self.probs))]

    def probabilities(self) -> dict[str, float]:
        return dict(zip(self.names, self.probs.tolist()))


SAMPLERS: dict[str, type] = {
    "proportional": ProportionalSampler,
}
