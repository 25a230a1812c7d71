"""Helpers of the engine tests: tiny real tasks (through data_prep) and a direct call of the
train step, without the rest of the flow."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.cache import ArtifactCache
from data_prep.config import TaskDataConfig, TokenizeConfig
from helpers import tiny_config
from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.launch.train import train_model
from training.task_spec import TaskSpec
from training.task_spec import prepare_tasks as prepare


def prepare_tasks(cfgs: list[TaskDataConfig], encoder: Path, data_dir: Path, out: Path,
                  max_length: int = 48) -> tuple[list[TaskSpec], dict[str, str], dict[str, str]]:
    """Tasks ingested and tokenized by data_prep: (specs, train feature files, dev example files)."""
    prepared = prepare(cfgs, str(data_dir), str(encoder), max_length, TokenizeConfig(),
                       ArtifactCache(str(out / "cache")), out)
    return prepared.specs, prepared.features, prepared.dev


def tiny_tasks(encoder: Path, data_dir: Path, out: Path) -> tuple[list[TaskSpec], dict[str, str]]:
    """The demo's three real tasks, subsampled, ingested and tokenized by data_prep."""
    cfgs = [TaskDataConfig.model_validate(raw) for raw in tiny_config(encoder, out, data_dir)["tasks"]]
    return prepare_tasks(cfgs, encoder, data_dir, out)[:2]


def train(encoder: Path, tasks: tuple[list[TaskSpec], dict[str, str]], run_dir: Path,
          deepspeed: dict[str, Any] | None = None, log: list[str] | None = None,
          dev: dict[str, str] | None = None, **training: Any) -> str:
    """`dev`: each task's dev examples (prepare_tasks' third item), for training.eval_every."""
    settings = {"steps": 8, "micro_batch_size": 4, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 2,
                "processes": 2, "threads_per_process": 1, **training}
    lines = log if log is not None else []
    return train_model(EncoderConfig(name_or_path=str(encoder), max_length=48, dropout=0.1),
                       TrainingConfig(**settings), DeepSpeedConfig(**(deepspeed or {})), tasks[0], tasks[1],
                       run_dir, lines.append, dev)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in (run_dir / "train_metrics.jsonl").read_text().splitlines() if l]
