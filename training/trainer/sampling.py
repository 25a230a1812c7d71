"""Task samplers: which task the next micro-batch comes from. One registry: `SAMPLERS`.

A sampler is a pure function of (seed, draw): every rank picks the same task without
communication, and a resumed run picks exactly the tasks an uninterrupted one would have,
because nothing but the draw index (derived from the restored step counter) is state.

Contract, shared by every sampler: `Sampler(sizes, seed, total_draws, temperature, final_alpha)`
with `sample(draw) -> task` and `probabilities(draw) -> {task: p}`. A sampler ignores the
arguments it does not need, so the worker builds any of them the same way.
"""
from __future__ import annotations

import numpy as np


def _draw(names: list[str], probs: np.ndarray, seed: int, draw: int) -> str:
    # a fresh generator per (seed, draw): no generator state to checkpoint
    rng = np.random.default_rng([seed, draw])
    return names[int(rng.choice(len(names), p=probs))]


def _power(sizes: np.ndarray, alpha: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        weights = sizes.astype(np.float64) ** alpha
        total = weights.sum()
    if np.isfinite(total):
        return weights / total
    # a small temperature overflows float64 (10000 ** (1 / 0.01)) and inf / inf is NaN, which
    # `rng.choice` refuses: the same ratios in log space (found by tests/test_properties.py)
    logs = alpha * np.log(sizes.astype(np.float64))
    weights = np.exp(logs - logs.max())
    return weights / weights.sum()


class _SizeSampler:
    """Shared bookkeeping: task names in a fixed (sorted) order and their training-set sizes."""

    def __init__(self, sizes: dict[str, int], seed: int, total_draws: int = 1, temperature: float = 2.0,
                 final_alpha: float = 0.0) -> None:
        if not sizes:
            raise ValueError("a sampler needs at least one task")
        self.names = sorted(sizes)
        self.sizes = np.array([sizes[n] for n in self.names], dtype=np.float64)
        self.seed, self.total_draws = seed, max(1, total_draws)
        self.temperature, self.final_alpha = temperature, final_alpha

    def _probs(self, draw: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, draw: int) -> str:
        return _draw(self.names, self._probs(draw), self.seed, draw)

    def probabilities(self, draw: int = 0) -> dict[str, float]:
        return dict(zip(self.names, self._probs(draw).tolist()))


class ProportionalSampler(_SizeSampler):
    """p(task) proportional to its training-set size (Caruana 1997; MT-DNN, Liu et al. 2019)."""

    def _probs(self, draw: int) -> np.ndarray:
        return _power(self.sizes, 1.0)


class TemperatureSampler(_SizeSampler):
    """p(task) proportional to size^(1/tau) (Arivazhagan et al. 2019, "Massively Multilingual NMT";
    also T5 and XLM-R): tau = 1 is proportional, large tau tends to uniform."""

    def _probs(self, draw: int) -> np.ndarray:
        return _power(self.sizes, 1.0 / self.temperature)


class AnnealedSampler(_SizeSampler):
    """Annealed sampling (Stickland & Murray 2019, "BERT and PALs", sec. 4): p proportional to
    size^alpha, with alpha falling linearly over training from 1 (proportional) to `final_alpha`
    (0 = uniform; the paper used 0.2). Big tasks dominate early, small ones catch up late."""

    def alpha(self, draw: int) -> float:
        progress = min(1.0, draw / max(1, self.total_draws - 1))
        return 1.0 - (1.0 - self.final_alpha) * progress

    def _probs(self, draw: int) -> np.ndarray:
        return _power(self.sizes, self.alpha(draw))


class UniformSampler(_SizeSampler):
    """Every task equally likely, whatever its size."""

    def _probs(self, draw: int) -> np.ndarray:
        return np.full(len(self.names), 1.0 / len(self.names))


class RoundRobinSampler(_SizeSampler):
    """Tasks in turn, in name order: exactly equal shares, no randomness at all."""

    def sample(self, draw: int) -> str:
        return self.names[draw % len(self.names)]

    def _probs(self, draw: int) -> np.ndarray:
        probs = np.zeros(len(self.names))
        probs[draw % len(self.names)] = 1.0
        return probs


SAMPLERS: dict[str, type[_SizeSampler]] = {
    "proportional": ProportionalSampler,
    "temperature": TemperatureSampler,
    "annealed": AnnealedSampler,
    "uniform": UniformSampler,
    "round_robin": RoundRobinSampler,
}
