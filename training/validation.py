"""Every check of the training sub-configs, in one place: registry names, engine settings this
machine cannot run, strategy and weighting parameters against the engine, the schedule. Each
problem names its config key and the fix, and all are found before any process starts."""
from __future__ import annotations

from pathlib import Path

from training.config import (DeepSpeedConfig, EncoderConfig, TrainingConfig, batching_problems, deepspeed_problems,
                             engine_plan, training_problems)
from training.launch.schedule import SCHEDULES
from training.lookup import lookup
from training.model.sharing import SHARING
from training.trainer.sampling import SAMPLERS
from training.trainer.weighting import WEIGHTINGS

RETIRED_SHARING = {
    "transfer": "training.sharing: 'transfer' is no longer a sharing strategy: staged training is a schedule. "
                "Set training.schedule: mtdnn (its finetune_tasks and finetune_steps go under "
                "training.schedule_params) and training.sharing: hard for its multi-task stage",
}


def config_problems(training: TrainingConfig, deepspeed: DeepSpeedConfig, tasks: list[str],
                    encoder: EncoderConfig | None = None) -> list[str]:
    """Every problem of the training and deepspeed sections for these task names (and, given the
    encoder section, of batching against its input length)."""
    return (name_problems(training) + combination_problems(training, deepspeed, tasks)
            + schedule_problems(training, tasks) + deepspeed_problems(deepspeed) + training_problems(training)
            + (batching_problems(training, encoder) if encoder is not None else []))


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


def schedule_problems(training: TrainingConfig, tasks: list[str]) -> list[str]:
    if training.schedule not in SCHEDULES:
        return []  # reported by the name check
    return SCHEDULES[training.schedule].config_problems(training, tasks)


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
