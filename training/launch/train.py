"""The train step as the flow's task calls it: plan the run's stages with its schedule, launch
each (a retry skips exported stages and resumes the one that stopped), assemble the export."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig, init_from_kind
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


def warm_start(training: TrainingConfig, tasks: list[TaskSpec], init: str | Path | None,
               init_source: dict[str, str | None] | None) -> tuple[str | None, dict[str, str | None] | None]:
    """The export the run starts from and its provenance for the card: `init` as given (the flow
    fetched `training.init_from` from the registry), else a local `training.init_from`; (None, None)
    for a cold start. Its heads must line up with the tasks' label lists (see `label_row_problems`)."""
    from training.release.warm_start import WarmStartError, label_row_problems, source_tasks

    if init is None and training.init_from is not None:
        kind, parts = init_from_kind(training.init_from)
        if kind != "folder":
            raise WarmStartError([f"training.init_from: {training.init_from} names a registered model, which the "
                                  "flow downloads before training: pass its export folder as train_model(init=...) "
                                  "(training.release.warm_start.fetch_export), or give an export folder"])
        init = parts["path"]
    if init is None:
        return None, None
    folder = str(Path(init).expanduser().resolve())
    labels, types = source_tasks(folder)
    if problems := label_row_problems(labels, types, tasks):
        raise WarmStartError(problems)
    source = init_source or {"uri": folder, "model_name": None, "version": None, "run_id": None}
    return folder, source


def train_model(encoder: EncoderConfig, training: TrainingConfig, deepspeed: DeepSpeedConfig,
                tasks: list[TaskSpec], features: dict[str, str], run_dir: str | Path,
                log: Callable[[str], None], dev: dict[str, str] | None = None,
                progress: Progress | None = None, *, init: str | Path | None = None,
                init_source: dict[str, str | None] | None = None) -> str:
    """Train every stage of `training.schedule`; returns the run's export folder. `dev`: each task's
    validated dev examples, needed for evaluation during training (`training.eval_every`).
    `progress(steps done, steps in all stages)` is called at each logged step of every stage.
    `init`: a local export folder to warm-start from (`training.init_from` fetched by the caller;
    a local `training.init_from` is used without it), `init_source` its provenance for the model
    card (`WarmSource.card()`); the schedule's first stage starts from it, later stages from theirs."""
    names = [t.name for t in tasks]
    auxiliary = [t.name for t in tasks if t.auxiliary]
    problems = config_problems(training, deepspeed, names, auxiliary, encoder)
    if training.eval_every is not None:
        if missing := [t.name for t in exported(tasks) if t.name not in (dev or {})]:
            problems.append(f"training.eval_every: evaluation during training needs each task's dev split; "
                            f"none given for {missing}")
    if problems:
        raise ValueError("; ".join(problems))
    warm, warm_source = warm_start(training, tasks, init, init_source)
    schedule = lookup(SCHEDULES, training.schedule, "schedule")
    stages = schedule.plan(training, names, auxiliary)
    layout = RunLayout(Path(run_dir))
    exports: dict[str, str] = {}
    total, done = sum(s.training.steps for s in stages), 0
    for stage in stages:
        if len(stages) > 1:
            log(f"stage {stage.name} ({stage.role}): tasks {stage.tasks}, {stage.training.steps} steps"
                + (f", starting from stage {stage.init_from}" if stage.init_from else "")
                + (f", starting from {warm_source['uri']}" if warm_source and not stage.init_from else ""))
        elif warm_source:
            log(f"warm start from {warm_source['uri']}")
        # a stage chained to an earlier one starts from its export; the others from the warm start, if any
        start, source = (exports[stage.init_from], None) if stage.init_from else (warm, warm_source)
        stage_log = log if progress is None else counting(log, progress, done, total)
        exports[stage.name] = launch_stage(encoder, deepspeed, tasks, features, layout, stage, stage_log, start, dev,
                                           init_source=source)
        done += stage.training.steps
        if progress is not None:
            progress(done, total)  # a stage exported earlier, or stopped early by patience, is done
    if training.node_rank > 0:
        return exports[stages[-1].name]
    return schedule.assemble(training, stages, exports, layout.model_dir, log)


def affinity_export(run_dir: str | Path, training: TrainingConfig, tasks: list[TaskSpec]) -> tuple[str, str]:
    """The export the task affinity is measured on, and what it is. Tasks must share an encoder for
    a step on one to move another's loss: the run's export does not when per-task selection or a
    fine-tuning stage gave tasks encoders of their own (multi_encoder). So: the joint stage's
    newest checkpoint on one encoder (`joint-model`, written when selection split the encoder),
    else that stage's export, else the run's."""
    from training.model.export import CARD, read_card
    from training.model.sharing.multi_encoder import carded_own_encoders

    names = [t.name for t in tasks]
    stages = lookup(SCHEDULES, training.schedule, "schedule").plan(training, names, [t.name for t in tasks if t.auxiliary])
    joint = next(s for s in stages if s.role == "multitask")
    layout = RunLayout(Path(run_dir))
    where = f"stage {joint.name}" if joint.name else "the run"
    shared = layout.joint_export(joint.name)
    if (shared / CARD).is_file():
        return str(shared), f"{where}, step {read_card(shared)['joint_step']}: every task on one shared encoder"
    export = layout.stage_export(joint.name)
    if (export / CARD).is_file():
        own = carded_own_encoders(read_card(export))
        return str(export), f"{where}'s export" + (f" (own encoders for {own}: zero off their diagonal)" if own else "")
    return str(layout.model_dir), "the run's export"
