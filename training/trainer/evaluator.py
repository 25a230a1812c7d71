"""Evaluation during training (`training.eval_every`): every process predicts its share of each
task's dev sample with the model being trained (the project's Predictor and metrics, no export),
the labels are gathered so every process scores the same metrics and takes the same decisions, and
the `Selection` decides which steps' checkpoints to keep and when to stop. Rank 0 logs one row per
evaluation: `{"step", "eval": {task: {metric: value}}, "best": {task: step}, ...}`."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch import nn

from data_prep.stage import read_examples
from training.config import TrainingConfig
from training.evaluation.evaluate import dev_sample, evaluate_sharded
from training.evaluation.predict import Predictor
from training.evaluation.selection import Selection
from training.task_spec import TaskSpec, exported
from training.trainer.engine import Engine
from training.trainer.loop import MetricsLog


def gather(value: Any) -> list[Any]:
    """Every process's `value`, in rank order, on every process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class DevEvaluator:
    def __init__(self, cfg: TrainingConfig, tasks: list[TaskSpec], dev_files: dict[str, str], engine: Engine,
                 skeleton: Callable[[], nn.Module], tokenizer: Any, max_length: int, log: MetricsLog) -> None:
        """`skeleton` builds a plain copy of the model, for ZeRO-3 (see `Engine.inference_model`)."""
        if cfg.eval_every is None:
            raise ValueError("DevEvaluator needs training.eval_every")
        self.every, self.last, self.batch_size = cfg.eval_every, cfg.steps, cfg.eval_batch_size
        self.tasks = exported(tasks)
        if missing := [t.name for t in self.tasks if t.name not in dev_files]:
            raise ValueError(f"training.eval_every needs each task's dev split; none given for {missing}")
        self.examples, self.samples = {}, {}
        for t in self.tasks:
            split = read_examples(dev_files[t.name])
            self.examples[t.name] = dev_sample(split, cfg.eval_max_examples, cfg.seed, t.name)
            # which examples scored the task: the seed drew them unless the whole split was used
            sampled = len(self.examples[t.name]) < len(split)
            self.samples[t.name] = {"examples": len(self.examples[t.name]), "seed": cfg.seed if sampled else None}
        self.selection = Selection({t.name: t.primary_metric for t in self.tasks}, cfg.selection, cfg.patience)
        self.engine, self.skeleton, self.log = engine, skeleton, log
        self.tokenizer, self.max_length = tokenizer, max_length

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def evaluate(self, step: int) -> bool:
        """Evaluate every task at `step`; True when this step's checkpoint must be kept."""
        started = time.time()
        model = self.engine.inference_model(self.skeleton)
        try:
            predictor = Predictor.for_model(model, self.tokenizer, self.max_length, self.batch_size)
            rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
            metrics = {t.name: evaluate_sharded(predictor, t, self.examples[t.name], rank, world, gather)
                       for t in self.tasks}
        finally:
            self.engine.train()
        keep = self.selection.update(step, metrics)
        row = {"step": step, "time": round(time.time(), 3), "eval_s": round(time.time() - started, 3),
               "eval": metrics, "best": self.selection.steps()}
        self.log.write(row)
        if self.engine.rank == 0:
            print(json.dumps(row), flush=True)
            if self.selection.stopped_at == step:
                print(f"early stop at step {step}: no task improved its best dev score in the last "
                      f"{self.selection.since_improved} evaluations (patience {self.selection.patience}); "
                      f"exporting the best steps {self.selection.steps()}", flush=True)
        return keep

    @property
    def stopped(self) -> bool:
        return self.selection.stopped

    def pinned(self) -> set[int]:
        return self.selection.pinned()

    def state_dict(self) -> dict[str, Any]:
        return self.selection.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selection.load_state_dict(state)
