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
from training.launch.launcher import single_process_world
from training.launch.spec import WorkerSpec
from training.launch.train import train_model
from training.task_spec import TaskSpec
from training.task_spec import prepare_tasks as prepare

# Runs resumed from their middle checkpoint (test_engine_resume.py launched, test_worker_resume.py
# in process): a weighting whose state lives only in the checkpoint's client state (dwa: period 4
# and a checkpoint at step 6 leave one finished period and half of the next; its weights leave 1
# once the second period ends, past the checkpoint), and sampled single-task steps with learned
# loss weights and a sampler other than the default.
RESUME_SETTINGS: dict[str, Any] = {"steps": 12, "checkpoint_every": 6, "keep_checkpoints": 2, "log_every": 1,
                                   "seed": 5}
RESUME_RUNS: dict[str, dict[str, Any]] = {
    "dwa": {"weighting": "dwa", "weighting_params": {"period": 4, "temperature": 0.2}},
    "uncertainty-temperature": {"weighting": "uncertainty", "sampler": "temperature", "sampler_temperature": 3.0},
}
RESUME_FROM = "step_00000006"


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
    # torchrun starts the workers without the deepspeed runner's two extra interpreters that import
    # DeepSpeed (seconds per launch, ~50 launches a suite); the deepspeed launcher keeps its own
    # tests (the flow's end-to-end runs, multi-node, the rank SIGKILL) by passing launcher="deepspeed"
    settings = {"steps": 8, "micro_batch_size": 4, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 2,
                "processes": 2, "threads_per_process": 1, "launcher": "torchrun", **training}
    lines = log if log is not None else []
    return train_model(EncoderConfig(name_or_path=str(encoder), max_length=48, dropout=0.1),
                       TrainingConfig(**settings), DeepSpeedConfig(**(deepspeed or {})), tasks[0], tasks[1],
                       run_dir, lines.append, dev)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in (run_dir / "train_metrics.jsonl").read_text().splitlines() if l]


def resume_matches(reference: Path, resumed: Path) -> None:
    """The resumed run's log and export equal the uninterrupted run's from the checkpoint on."""
    import pytest
    import torch
    from safetensors.torch import load_file

    resumed_at = int(RESUME_FROM.split("_")[1])
    expected = [r for r in metrics(reference) if r["step"] > resumed_at]
    got = metrics(resumed)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(
        range(resumed_at + 1, RESUME_SETTINGS["steps"] + 1))
    assert [r["task"] for r in got] == [r["task"] for r in expected]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], rel=1e-5, abs=1e-6)
    for mine, theirs in zip(got, expected):
        assert mine["task_weights"] == pytest.approx(theirs["task_weights"], rel=1e-5)
        assert mine["task_losses"] == pytest.approx(theirs["task_losses"], rel=1e-5, abs=1e-6)
    weights = [load_file(run / "model" / "model.safetensors") for run in (reference, resumed)]
    assert sorted(weights[1]) == sorted(weights[0])
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def run_depends_on_resumed_state(name: str, reference: Path) -> None:
    """Without this a match could hold with the state lost: weights that never leave 1, or a
    sampler that always picks one task."""
    rows = metrics(reference)
    weights = [r["task_weights"] for r in rows]
    if name == "dwa":
        # logged after each step, so the weights the next step uses: two periods of 4 steps first
        assert all(w == {t: 1.0 for t in w} for w in weights[:7])
        assert all(abs(v - 1.0) > 1e-3 for w in weights[7:] for v in w.values())
        assert [r["task"] for r in rows] == ["all"] * len(rows)
    else:
        assert all(abs(v - 1.0) > 1e-4 for v in weights[-1].values())  # log-variances learned
        assert len({r["task"] for r in rows if r["step"] > int(RESUME_FROM.split("_")[1])}) > 1


def run_in_process(encoder: Path, tasks: Any, run: Path, deepspeed: dict[str, Any] | None = None,
                   **training: Any) -> None:
    """The worker's own loop (`training.trainer.worker.train`) in this process, a DeepSpeed world of
    one (`deepspeed` settings, ZeRO off by default), writing what a launched run writes into `run`."""
    import torch

    from training.trainer import worker

    spec = WorkerSpec(encoder=EncoderConfig(name_or_path=str(encoder), max_length=48, dropout=0.1),
                      training=TrainingConfig(micro_batch_size=4, warmup_steps=2, processes=1, threads_per_process=1,
                                              **training),
                      deepspeed=DeepSpeedConfig(**(deepspeed or {"zero_stage": 0})), tasks=tasks[0],
                      features=tasks[1], checkpoint_dir=str(run / "checkpoints"), export_dir=str(run / "model"),
                      metrics_file=str(run / "train_metrics.jsonl"))
    run.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        with single_process_world():
            worker.train(spec)
    finally:
        torch.set_num_threads(threads)  # the worker sets its own; this process goes on with others
