"""The training loop each launched process runs, top to bottom: resume, then steps (which tasks,
their batches, one `train_step`), a log line every `log_every` steps, an evaluation every
`eval_every` (when set) and a checkpoint every `checkpoint_every`, or sooner when an evaluation found
a step worth keeping. Each task's loss is summed on the device between log lines and read back
on logged steps only."""
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
    """Tokens, time and each task's losses since the last log line: throughput, padding efficiency
    and per-task loss curves with a point per log line for every task trained in between (a sampled
    task's loss at the logged step alone leaves a rarely drawn task with no curve)."""

    def __init__(self) -> None:
        self.start, self.real, self.processed = time.time(), 0, 0
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.loss_counts: dict[str, int] = {}

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        self.real += int(batch["attention_mask"].sum())  # batches are still on the host here: no sync
        self.processed += batch["attention_mask"].numel()

    def add_losses(self, losses: dict[str, torch.Tensor]) -> None:
        """One micro-step's losses, summed where they are (no read back: steps that do not log stay
        free of host syncs)."""
        for task, loss in losses.items():
            loss = loss.detach().float()
            self.loss_sums[task] = self.loss_sums[task] + loss if task in self.loss_sums else loss
            self.loss_counts[task] = self.loss_counts.get(task, 0) + 1

    def task_losses(self) -> dict[str, float]:
        """Each trained task's mean loss over the window (one read back for all tasks)."""
        tasks = list(self.loss_sums)
        if not tasks:
            return {}
        sums = torch.stack([self.loss_sums[task] for task in tasks]).cpu().tolist()
        return {task: total / self.loss_counts[task] for task, total in zip(tasks, sums)}

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
            window.add_losses(losses)
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
    """One log line (printed on rank 0 too): `task_losses`, each task's mean loss over the micro-steps
    since the last line (tasks not trained in them absent), `task_steps`, how many micro-steps trained
    each, `loss`, the mean of all those losses, `task`, the task of the last micro-step ("all" when it
    trained every task), learning rate, throughput, task weights, the strategy's metrics."""
    values = window.task_losses()
    trained = sum(window.loss_counts.values())
    all_tasks = weighting.all_tasks_step
    row = {"step": step, "task": "all" if all_tasks else next(iter(losses)),
           "loss": sum(values[task] * window.loss_counts[task] for task in values) / max(1, trained),
           "lr": engine.lr(), "time": round(time.time(), 3), "elapsed_s": round(time.time() - started, 2),
           **window.close(world), "task_weights": weighting.weights(), "task_losses": values,
           "task_steps": dict(window.loss_counts), **model.sharing.metrics()}
    if log_memory:
        row["peak_tensor_bytes_per_rank"] = gathered_ints(engine.peak_tensor_bytes)
    if engine.rank == 0:
        print(json.dumps(row), flush=True)
    return row
