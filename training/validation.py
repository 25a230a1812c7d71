"""Every check of the training sub-configs, in one place: registry names, engine settings this
machine cannot run, strategy and weighting parameters against the engine, the schedule. Each
problem names its config key and the fix, and all are found before any process starts."""
from __future__ import annotations

from pathlib import Path

from training.config import (RETIRED_SHARING, DeepSpeedConfig, EncoderConfig, TrainingConfig, batching_problems,
                             deepspeed_problems, engine_plan, init_from_kind, training_problems)
from training.launch.schedule import SCHEDULES
from training.lookup import lookup
from training.model.sharing import SHARING
from training.trainer.sampling import SAMPLERS
from training.trainer.weighting import WEIGHTINGS


def config_problems(training: TrainingConfig, deepspeed: DeepSpeedConfig, tasks: list[str],
                    auxiliary: list[str] | None = None, encoder: EncoderConfig | None = None) -> list[str]:
    """Every problem of the training and deepspeed sections for these task names (`auxiliary`: the
    ones that are trained but never exported; given the encoder section, batching against its input
    length too)."""
    aux = list(auxiliary or [])
    return (name_problems(training) + combination_problems(training, deepspeed, tasks)
            + schedule_problems(training, tasks, aux) + deepspeed_problems(deepspeed) + training_problems(training)
            + evaluation_problems(training) + auxiliary_problems(training, tasks, aux) + warm_start_problems(training)
            + (batching_problems(training, encoder) if encoder is not None else []))


def evaluation_problems(training: TrainingConfig) -> list[str]:
    """Evaluation during training and what it selects."""
    problems = []
    if training.patience is not None and training.eval_every is None:
        problems.append("training.patience: early stopping counts evaluations during training; set "
                        "training.eval_every too, or remove patience")
    if training.eval_every is not None and training.selection == "per_task" and training.sharing != "hard" \
            and training.schedule == "single":
        # only hard sharing exports exactly a shared encoder plus one head per task, so one task's
        # encoder and head can be taken from another step as a multi_encoder copy
        problems.append(f"training.selection: per_task selection exports each task's encoder and head from its own "
                        f"best step, which needs sharing: hard ({training.sharing!r} has task-specific parts "
                        f"inside the shared model); set training.selection: mean to export the one step with the "
                        f"best mean of the tasks' primary dev metrics")
    return problems


def warm_start_problems(training: TrainingConfig) -> list[str]:
    """A local `training.init_from` must be an export folder here; the registry forms are resolved
    (and their problems reported) when the flow fetches the model."""
    if training.init_from is None:
        return []
    kind, parts = init_from_kind(training.init_from)
    if kind != "folder":
        return []
    from training.model.export import CARD

    folder = Path(parts["path"]).expanduser()
    if not (folder / CARD).is_file():
        what = "no such folder" if not folder.exists() else f"no {CARD} there, so not an exported model"
        return [f"training.init_from: {training.init_from}: {what}; give an export folder (a run's model/ folder), "
                f"champion, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model, or remove init_from "
                f"to start from the base encoder"]
    return []


def auxiliary_problems(training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> list[str]:
    """Auxiliary tasks are trained but dropped from the export: something must remain, and the
    export without them must still be a model the strategy can rebuild."""
    if not auxiliary:
        return []
    problems = []
    if set(tasks) <= set(auxiliary):
        problems.append(f"tasks: every task is auxiliary ({sorted(auxiliary)}), so nothing would be exported; set "
                        f"auxiliary: false on the task(s) the model is for")
    if training.sharing == "adversarial":
        problems.append(f"training.sharing: adversarial's task discriminator has one output per task, so a model "
                        f"without the auxiliary task(s) {sorted(auxiliary)} cannot be exported; use hard, soft or "
                        f"attention sharing, or make them ordinary tasks")
    own: set[str] = set()
    if training.sharing == "multi_encoder":
        own = set(training.sharing_params.get("task_encoders") or []) & set(auxiliary)
    if own:
        problems.append(f"training.sharing_params.task_encoders: auxiliary task(s) {sorted(own)} are never exported "
                        f"and an encoder of their own shares nothing with the other tasks; remove them there")
    return problems


def name_problems(training: TrainingConfig) -> list[str]:
    if training.sharing in RETIRED_SHARING:
        problems = [RETIRED_SHARING[training.sharing]]
    else:
        problems = []
    for key, registry, kind in (("sharing", SHARING, "sharing strategy"), ("sampler", SAMPLERS, "sampler"),
                                ("weighting", WEIGHTINGS, "loss weighting"), ("schedule", SCHEDULES, "schedule")):
        if key == "sharing" and training.sharing in RETIRED_SHARING:
            continue
        try:
            lookup(registry, getattr(training, key), kind)
        except KeyError as exc:
            problems.append(f"training.{key}: {exc.args[0]}")
    return problems


def schedule_problems(training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> list[str]:
    if training.schedule not in SCHEDULES:
        return []  # reported by the name check
    return SCHEDULES[training.schedule].config_problems(training, tasks, auxiliary)


def combination_problems(training: TrainingConfig, deepspeed: DeepSpeedConfig, tasks: list[str]) -> list[str]:
    """Parameter and engine-compatibility problems of the chosen strategy and weighting
    (unknown names are reported by the registry check)."""
    problems: list[str] = []
    if deepspeed.config_file and not Path(deepspeed.config_file).is_file():
        return problems  # the missing file is reported on its own; nothing to combine with yet
    # a ZeRO stage or precision may come from the JSON file, an auto stage from the process count
    plan = engine_plan(deepspeed, training.processes * training.nodes)
    facts = (tasks, plan.zero_stage, plan.precision)
    if training.sharing in SHARING:
        problems += SHARING[training.sharing].config_problems(training.sharing_params, *facts)  # type: ignore[attr-defined]
    if training.weighting in WEIGHTINGS:
        problems += WEIGHTINGS[training.weighting].config_problems(training.weighting_params, *facts)
    return problems
