"""The training loop each launched process runs, top to bottom: resume, then steps (which tasks,
their batches, one `train_step`), a log line every `log_every` steps, an evaluation every
`eval_every` (when set) and a checkpoint every `checkpoint_every`, or sooner when an evaluation found
a step worth keeping. Loss values are read back from the device on logged steps only."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from training.config import TrainingConfig
from training.trainer.batches import TaskBatches
from training.trainer.checkpointer import Checkpointer
from training.trainer.engine import Engine
from training.trainer.step import train_step
from training.trainer.weighting.base import Weighting


class MetricsLog:
    """Rank 0's per-step log (JSON lines). On resume, lines past the checkpoint are dropped."""

    def __init__(self, path: str, rank: int) -> None:
        self.path, self.rank = Path(path), rank

    def truncate_after(self, step: int) -> None:
        if self.rank != 0 or not self.path.exists():
            return
        kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        self.path.write_text("".join(l + "\n" for l in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.rank == 0:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


class Evaluator(Protocol):
    """Evaluation during training (`training.trainer.evaluator.DevEvaluator`)."""

    stopped: bool

    def due(self, step: int) -> bool: ...

    def evaluate(self, step: int) -> bool: ...


def gathered_ints(value: int) -> list[int]:
    """One integer from every rank, in rank order (on every rank)."""
    out = [0] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class Window:
    """Tokens and time since the last log line: throughput and padding efficiency."""

    def __init__(self) -> None:
        self.start, self.real, self.processed = time.time(), 0, 0

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        self.real += int(batch["attention_mask"].sum())
        self.processed += batch["attention_mask"].numel()

    def close(self, world: int) -> dict[str, Any]:
        """This rank's counts scaled by the world size (ranks share length-sorted batches)."""
        row = {"window_s": round(time.time() - self.start, 4), "tokens": self.processed * world,
               "real_tokens": self.real * world, "padding_efficiency": round(self.real / max(1, self.processed), 4)}
        return row


def train_loop(cfg: TrainingConfig, gas: int, engine: Engine, model: nn.Module, data: TaskBatches, sampler: Any,
               weighting: Weighting, checkpointer: Checkpointer, log: MetricsLog, world: int,
               evaluator: Evaluator | None = None) -> int:
    """Returns the last step trained (before `cfg.steps` when the evaluator stopped early)."""
    step = checkpointer.restore()
    if step:
        log.truncate_after(step)
        if engine.rank == 0:
            print(f"resumed from checkpoint at step {step}", flush=True)
    engine.train()
    started, window = time.time(), Window()
    losses: dict[str, torch.Tensor] = {}
    while step < cfg.steps and not (evaluator is not None and evaluator.stopped):
        for micro in range(gas):
            tasks = weighting.tasks if weighting.all_tasks_step else [sampler.sample(step * gas + micro)]
            batches = {task: data.next(task) for task in tasks}
            for batch in batches.values():
                window.add(batch)
            losses = train_step(engine, weighting, batches)
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.write(log_row(step, losses, engine, weighting, model, window, world, started, cfg.log_memory))
            window = Window()
        keep = evaluator is not None and evaluator.due(step) and evaluator.evaluate(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or keep:
            checkpointer.save(step)
    return step


def log_row(step: int, losses: dict[str, torch.Tensor], engine: Engine, weighting: Weighting, model: nn.Module,
            window: Window, world: int, started: float, log_memory: bool) -> dict[str, Any]:
    """One log line (printed on rank 0 too): the last micro-step's loss per task (`task` is "all"
    when it trained every task), learning rate, throughput, task weights, the strategy's metrics."""
    values = {task: float(loss) for task, loss in losses.items()}
    all_tasks = weighting.all_tasks_step
    row = {"step": step, "task": "all" if all_tasks else next(iter(values)),
           "loss": sum(values.values()) / len(values), "lr": engine.lr(),
           "time": round(time.time(), 3), "elapsed_s": round(time.time() - started, 2), **window.close(world),
           "task_weights": weighting.weights(), "task_losses": values if all_tasks else {},
           **model.sharing.metrics()}
    if log_memory:
        row["peak_tensor_bytes_per_rank"] = gathered_ints(engine.peak_tensor_bytes)
    if engine.rank == 0:
        print(json.dumps(row), flush=True)
    return row
