"""The train step as the flow's task calls it: plan the run's stages with its schedule, launch
each (a retry skips exported stages and resumes the one that stopped), assemble the export."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.launch.layout import RunLayout
from training.launch.schedule import SCHEDULES
from training.launch.stage import launch_stage
from training.lookup import lookup
from training.task_spec import TaskSpec, exported
from training.validation import config_problems


def train_model(encoder: EncoderConfig, training: TrainingConfig, deepspeed: DeepSpeedConfig,
                tasks: list[TaskSpec], features: dict[str, str], run_dir: str | Path,
                log: Callable[[str], None], dev: dict[str, str] | None = None) -> str:
    """Train every stage of `training.schedule`; returns the run's export folder. `dev`: each task's
    validated dev examples, needed for evaluation during training (`training.eval_every`)."""
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
    for stage in stages:
        if len(stages) > 1:
            log(f"stage {stage.name} ({stage.role}): tasks {stage.tasks}, {stage.training.steps} steps"
                + (f", starting from stage {stage.init_from}" if stage.init_from else ""))
        init = exports[stage.init_from] if stage.init_from else None
        exports[stage.name] = launch_stage(encoder, deepspeed, tasks, features, layout, stage, log, init, dev)
    if training.node_rank > 0:
        return exports[stages[-1].name]
    return schedule.assemble(stages, exports, layout.model_dir, log)
