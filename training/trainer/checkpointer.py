"""Checkpoints of a training run as named stateful parts (torchtitan's `states={...}`): the engine
saves the model, optimizer and schedule; every other part that a resumed step depends on is one
entry here, saved beside them and restored from the same complete checkpoint. Adding state means
adding an entry, nowhere else."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from training.trainer.checkpoints import CheckpointStore, tag_for
from training.trainer.engine import Engine


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RandomState:
    """Every RNG a step may draw from (dropout above all), so a resumed step draws the same numbers.
    Per process: each rank has its own streams."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, engine: Engine, store: CheckpointStore, keep: int, states: dict[str, Stateful],
                 rank_states: dict[str, Stateful], pinned: Callable[[], set[int]] = set) -> None:
        """`states` are the same on every process (saved once, with the engine's client state);
        `rank_states` differ per process (one file per rank); `pinned` gives the steps whose
        checkpoints are kept besides the newest `keep` (the best steps of evaluation)."""
        self.engine, self.store, self.keep = engine, store, keep
        self.states, self.rank_states, self.pinned = states, rank_states, pinned

    def save(self, step: int) -> None:
        client = {"step": step, **{name: part.state_dict() for name, part in self.states.items()}}
        ranks = {name: part.state_dict() for name, part in self.rank_states.items()}
        self.store.pin({tag_for(s) for s in self.pinned()})
        self.engine.save(self.store, step, client, ranks, self.keep)

    def restore(self) -> int:
        """Restore every part from the newest complete checkpoint; the step to go on from (0: none)."""
        found = self.engine.load_latest(self.store)
        if found is None:
            return 0
        client, ranks = found
        for name, part in self.states.items():
            part.load_state_dict(client[name])
        for name, part in self.rank_states.items():
            part.load_state_dict(ranks[name])
        return int(client["step"])
