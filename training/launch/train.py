"""The train step as the flow's task calls it: plan the run's stages with its schedule, launch
each (a retry skips exported stages and resumes the one that stopped), assemble the export."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.launch.layout import RunLayout
from training.launch.schedule import SCHEDULES
from training.launch.stage import launch_stage
from training.lookup import lookup
from training.task_spec import TaskSpec, exported
from training.validation import config_problems


Progress = Callable[[int, int], None]


def logged_step(line: str) -> int | None:
    """The step of a worker's per-step log line (rank 0 prints each as JSON), else None."""
    start = line.find('{"step"')
    if start < 0:
        return None
    try:
        row = json.loads(line[start:])
    except ValueError:
        return None
    return int(row["step"]) if isinstance(row, dict) and "loss" in row else None


def counting(log: Callable[[str], None], progress: Progress, done: int, total: int) -> Callable[[str], None]:
    """`log`, also reporting the steps done when a line is a step's log row."""
    def feed(line: str) -> None:
        log(line)
        if (step := logged_step(line)) is not None:
            progress(done + step, total)
    return feed


def train_model(encoder: EncoderConfig, training: TrainingConfig, deepspeed: DeepSpeedConfig,
                tasks: list[TaskSpec], features: dict[str, str], run_dir: str | Path,
                log: Callable[[str], None], dev: dict[str, str] | None = None,
                progress: Progress | None = None) -> str:
    """Train every stage of `training.schedule`; returns the run's export folder. `dev`: each task's
    validated dev examples, needed for evaluation during training (`training.eval_every`).
    `progress(steps done, steps in all stages)` is called at each logged step of every stage."""
    names = [t.name for t in tasks]
    auxiliary = [t.name for t in tasks if t.auxiliary]
    problems = config_problems(training, deepspeed, names, auxiliary, encoder)
    if training.eval_every is not None:
        if missing := [t.name for t in exported(tasks) if t.name not in (dev or {})]:
            problems.append(f"training.eval_every: evaluation during training needs each task's dev split; "
                            f"none given for {missing}")
    if problems:
        raise ValueError("; ".join(problems))
    schedule = lookup(SCHEDULES, training.schedule, "schedule")
    stages = schedule.plan(training, names, auxiliary)
    layout = RunLayout(Path(run_dir))
    exports: dict[str, str] = {}
    total, done = sum(s.training.steps for s in stages), 0
    for stage in stages:
        if len(stages) > 1:
            log(f"stage {stage.name} ({stage.role}): tasks {stage.tasks}, {stage.training.steps} steps"
                + (f", starting from stage {stage.init_from}" if stage.init_from else ""))
        init = exports[stage.init_from] if stage.init_from else None
        stage_log = log if progress is None else counting(log, progress, done, total)
        exports[stage.name] = launch_stage(encoder, deepspeed, tasks, features, layout, stage, stage_log, init, dev)
        done += stage.training.steps
        if progress is not None:
            progress(done, total)  # a stage exported earlier, or stopped early by patience, is done
    if training.node_rank > 0:
        return exports[stages[-1].name]
    return schedule.assemble(stages, exports, layout.model_dir, log)
