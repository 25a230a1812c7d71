"""Which weights a run exports when it evaluates during training (`training.eval_every`).

Every evaluation gives each task's primary dev metric. `per_task`: each task keeps the step where
its own metric was best; `mean`: all tasks keep the one step where the mean of the primary metrics
was best. Ties go to the later step (more training for the same dev score). The checkpoints of the
kept steps are never pruned, and at the end each task's weights come from its step: one step for
all tasks is the usual model; several give a `multi_encoder` model whose shared encoder is the step
most tasks chose (the later on ties) and whose other tasks get their own encoder copy and head.

Early stopping (`training.patience`): training ends once no criterion (a task, or the mean)
improved strictly for that many evaluations; a tie moves the kept step but is no improvement.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import torch

from training.model.sharing.multi_encoder import own_encoder_entries

Mode = Literal["per_task", "mean"]
MEAN = "mean"


class Selection:
    """The best step so far of each criterion, and the evaluations since one last improved. Stateful:
    saved with every checkpoint, so a resumed run keeps its best-so-far."""

    def __init__(self, primary: dict[str, str], mode: Mode, patience: int | None = None) -> None:
        """`primary`: each selected task's primary metric name."""
        self.primary, self.mode, self.patience = dict(primary), mode, patience
        self.best: dict[str, dict[str, float]] = {}  # criterion -> {"step", "score"}
        self.history: dict[int, dict[str, float]] = {}  # step -> task -> primary score
        self.since_improved = 0
        self.stopped_at: int | None = None

    def update(self, step: int, metrics: dict[str, dict[str, float]]) -> bool:
        """Record one evaluation; True when its step's weights must be kept (a best moved here)."""
        scores = {task: finite(metrics[task][metric]) for task, metric in self.primary.items()}
        self.history[step] = scores
        values = scores if self.mode == "per_task" else {MEAN: sum(scores.values()) / len(scores)}
        moved = improved = False
        for name, value in values.items():
            best = self.best.get(name)
            if best is None or value >= best["score"]:
                improved |= best is None or value > best["score"]
                moved = True
                self.best[name] = {"step": step, "score": value}
        self.since_improved = 0 if improved else self.since_improved + 1
        if self.patience is not None and self.since_improved >= self.patience:
            self.stopped_at = step
        return moved

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def steps(self) -> dict[str, int]:
        """The step each task's exported weights come from."""
        if self.mode == "mean":
            return {task: int(self.best[MEAN]["step"]) for task in self.primary}
        return {task: int(self.best[task]["step"]) for task in self.primary}

    def pinned(self) -> set[int]:
        return set(self.steps().values()) if self.best else set()

    def card(self) -> dict[str, Any]:
        """What the model card records: per task the chosen step, its metric and dev score."""
        steps = self.steps()
        out: dict[str, Any] = {
            "mode": self.mode, "stopped_early_at": self.stopped_at,
            "tasks": {t: {"step": s, "metric": self.primary[t], "score": self.history[s][t]} for t, s in steps.items()}}
        if self.mode == "mean":
            out["mean"] = self.best[MEAN]["score"]
        else:
            out["shared_step"] = shared_step(steps)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": self.history, "since_improved": self.since_improved,
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {k: dict(v) for k, v in state["best"].items()}
        self.history = {int(k): dict(v) for k, v in state["history"].items()}
        self.since_improved, self.stopped_at = int(state["since_improved"]), state["stopped_at"]


def finite(value: float) -> float:
    """A metric that could not be computed ranks below every real score."""
    return value if math.isfinite(value) else -math.inf


def shared_step(steps: dict[str, int]) -> int:
    """The step most tasks chose; the later one on ties."""
    counts = Counter(steps.values())
    return max(counts, key=lambda step: (counts[step], step))


State = dict[str, torch.Tensor]


def assemble(states: dict[int, State], steps: dict[str, int]) -> tuple[State, list[str]]:
    """The exported state dict from each step's full (hard-sharing) state dict, and the tasks that
    get their own encoder copy (empty: every task chose the same step, the usual model)."""
    shared = shared_step(steps)
    own = sorted(task for task, step in steps.items() if step != shared)
    state = dict(states[shared])
    taken: set[int] = set()
    for task in own:
        entries = own_encoder_entries(task, states[steps[task]])
        if steps[task] in taken:  # a second task at this step: its encoder copy needs memory of its own, as
            entries = {k: v.clone() for k, v in entries.items()}  # safetensors refuses tensors that share it
        taken.add(steps[task])
        state.update(entries)
    return state, own
