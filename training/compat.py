"""Which sharing strategies and loss weightings can run with which engine settings: every
problem is found at config validation, named by its key, before any process starts."""
from __future__ import annotations

from pathlib import Path

from training.config import DeepSpeedConfig, TrainingConfig, engine_plan
from training.sharing import SHARING
from training.weighting import WEIGHTINGS


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
