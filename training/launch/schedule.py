"""Schedules: how a run is cut into launched training stages, planned as data before anything runs.

- `single`: one stage over every task (the default).
- `mtdnn` (Liu, He, Chen & Gao, "Multi-Task Deep Neural Networks for Natural Language
  Understanding", ACL 2019): a multi-task stage from the pretrained encoder, then, per task, a
  single-task fine-tuning stage that starts from the multi-task export (warm start through
  `init_from`, kept apart from resume: each stage resumes only its own checkpoints). The assembly
  writes one export: the multi-task encoder for tasks not fine-tuned, and each fine-tuned task's
  own encoder and head (`multi_encoder` sharing), with every stage's provenance on the card.
  Auxiliary tasks train in the multi-task stage only. With `eval_every`, the multi-task stage
  selects by `training.selection` (per task by default: each task's fine-tuning starts from the
  encoder and head of its own best multi-task step), each fine-tuning stage exports its task's best
  step, and the assembly keeps, per task, whichever of the two scored higher on the same dev
  sample (the fine-tuned one on ties): fine-tuning that does not help never replaces the
  multi-task weights. That comparison leans towards the multi-task weights, whose score is the
  best of every evaluation of a long stage on those examples against a short fine-tuning's one
  or two; `multitask_fallback: false` keeps every fine-tuned task's own weights (MT-DNN's rule).

A warm start (`training.init_from`) is not a stage: `train_model` starts every stage without an
`init_from` of its own (the single stage, mtdnn's multi-task stage) from that model, and the
fine-tuning stages from the multi-task stage as before.

Contract of a schedule: `Params` (pydantic), `config_problems(training, tasks, auxiliary)`,
`plan(training, tasks, auxiliary) -> [Stage]` and `assemble(training, stages, exports, out_dir, log) ->
export folder`. One registry: `SCHEDULES`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.config import TrainingConfig
from training.launch.layout import SINGLE

Log = Callable[[str], None]


class Stage(BaseModel):
    """One launched training run of a schedule."""

    name: str = Field(description="folder name under <run>/stages ('' for a one-stage run)")
    role: str = Field(description="what the stage is for, written on the model card")
    tasks: list[str]
    training: TrainingConfig
    init_from: str | None = Field(None, description="an earlier stage whose export this one starts from (none: "
                                  "the base encoder, or the warm start's model when training.init_from is set)")
    init_task: str | None = Field(None, description="start from this task's own weights in that export (its "
                                  "encoder copy where the export keeps one per task); none: the export as a whole")


def params_problems(model: type[BaseModel], params: dict[str, Any]) -> list[str]:
    try:
        model.model_validate(params)
    except ValidationError as exc:
        return [f"training.schedule_params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return []


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SingleSchedule:
    Params: ClassVar[type[BaseModel]] = NoParams

    @classmethod
    def config_problems(cls, training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> list[str]:
        return params_problems(cls.Params, training.schedule_params)

    @staticmethod
    def plan(training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> list[Stage]:
        return [Stage(name=SINGLE, role="multitask", tasks=list(tasks), training=training)]

    @staticmethod
    def assemble(training: TrainingConfig, stages: list[Stage], exports: dict[str, str], out_dir: Path,
                 log: Log) -> str:
        return exports[SINGLE]


class MtdnnParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    multitask_learning_rate: float | None = Field(
        None, gt=0, description="the multi-task stage's peak learning rate (default: training.learning_rate, which "
                                "the fine-tuning stages keep): a lower one can keep a task that peaks early in that "
                                "stage, such as a small NER corpus, from being worn down by the others")
    finetune_tasks: list[str] | None = Field(None, description="tasks fine-tuned in stage 2 (default: all)")
    finetune_steps: int | None = Field(None, gt=0, description="stage-2 steps per task (default: steps / tasks)")
    finetune_learning_rates: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="a stage-2 peak learning rate per task, for the tasks named (default: "
                                          "training.learning_rate): a small task such as RTE often wants a lower one")
    finetune_task_steps: dict[str, Annotated[int, Field(gt=0)]] = Field(
        default_factory=dict, description="stage-2 steps for the tasks named (default: finetune_steps): a task the "
                                          "multi-task stage left far from converged, such as a parser, wants more")
    multitask_fallback: bool = Field(
        True, description="keep a fine-tuned task's multi-task weights where they scored higher on the selection "
                          "sample; false exports every fine-tuned task's own weights. The multi-task score is the "
                          "best of all that stage's evaluations of the same examples, so it reads high against a "
                          "short fine-tuning's one or two")


def fine_tuned_tasks(named: list[str] | None, tasks: list[str], auxiliary: list[str]) -> list[str]:
    """The tasks MT-DNN's second stage fine-tunes: those named in `finetune_tasks`, else every main task."""
    return list(named) if named else [t for t in tasks if t not in auxiliary]


class MtdnnSchedule:
    Params: ClassVar[type[BaseModel]] = MtdnnParams

    @classmethod
    def config_problems(cls, training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> list[str]:
        problems = params_problems(cls.Params, training.schedule_params)
        named = set(training.schedule_params.get("finetune_tasks") or [])
        if unknown := named - set(tasks):
            problems.append(f"training.schedule_params.finetune_tasks: unknown task(s) {sorted(unknown)}; "
                            f"tasks are {tasks}")
        if helpers := named & set(auxiliary):
            problems.append(f"training.schedule_params.finetune_tasks: {sorted(helpers)} auxiliary, never exported, "
                            f"so never fine-tuned; remove them there")
        tuned = set(fine_tuned_tasks(list(named), tasks, auxiliary))
        for key in ("finetune_learning_rates", "finetune_task_steps"):
            per_task = training.schedule_params.get(key) or {}
            if isinstance(per_task, dict) and (untuned := set(per_task) - tuned):
                problems.append(f"training.schedule_params.{key}: {sorted(untuned)} not fine-tuned "
                                f"(fine-tuned tasks: {sorted(tuned)}); remove them there")
        if training.sharing != "hard":
            problems.append(f"training.sharing: the mtdnn schedule fine-tunes each task from the multi-task "
                            f"stage's shared encoder, which needs sharing: hard in that stage ({training.sharing!r} "
                            f"keeps task-specific parts the fine-tuning stage would drop)")
        return problems

    @classmethod
    def plan(cls, training: TrainingConfig, tasks: list[str], auxiliary: list[str]) -> list[Stage]:
        params = MtdnnParams(**training.schedule_params)
        # per-task selection here gives each fine-tuning stage its task's own best multi-task weights
        first = training.model_copy(update={"schedule": "single", "schedule_params": {},
                                            "learning_rate": params.multitask_learning_rate or training.learning_rate})
        stages = [Stage(name="multitask", role="multitask", tasks=list(tasks), training=first)]
        main = [t for t in tasks if t not in auxiliary]
        tuned_tasks = fine_tuned_tasks(params.finetune_tasks, tasks, auxiliary)
        default_steps = params.finetune_steps or max(1, training.steps // len(main))
        for task in tuned_tasks:
            steps = params.finetune_task_steps.get(task, default_steps)
            own = training.model_copy(update={
                "schedule": "single", "schedule_params": {}, "weighting": "equal", "weighting_params": {},
                "sampler": "proportional", "steps": steps,
                "learning_rate": params.finetune_learning_rates.get(task, training.learning_rate),
                "warmup_steps": max(1, min(training.warmup_steps, steps // 10)),  # DeepSpeed refuses 0
                "checkpoint_every": min(training.checkpoint_every, steps)})
            stages.append(Stage(name=f"finetune-{task}", role="finetune", tasks=[task], training=own,
                                init_from="multitask", init_task=task))
        return stages

    @staticmethod
    def kept(training: TrainingConfig, base: dict[str, Any], tuned_cards: dict[str, dict[str, Any]]) -> list[str]:
        """The fine-tuned tasks whose own weights the assembly exports, under this run's
        `multitask_fallback` (see `kept_finetuned`)."""
        return kept_finetuned(base, tuned_cards, MtdnnParams(**training.schedule_params).multitask_fallback)

    @staticmethod
    def assemble(training: TrainingConfig, stages: list[Stage], exports: dict[str, str], out_dir: Path,
                 log: Log) -> str:
        """The multi-task export with each fine-tuned task's encoder copy and head replaced by its
        stage's weights where that stage scored at least as well on dev, or everywhere without
        `multitask_fallback` (see `kept_finetuned`). Idempotent: an existing assembly is kept."""
        from transformers import AutoTokenizer

        from training.model.export import CARD, ENCODER_DIR, export_weights, read_card, write_export
        from training.model.multitask import build_model_skeleton
        from training.model.sharing.multi_encoder import carded_own_encoders, own_encoder_entries
        from training.task_spec import TaskSpec

        if (out_dir / CARD).is_file():
            return str(out_dir)
        base = exports["multitask"]
        folders = {s.tasks[0]: exports[s.name] for s in stages if s.role == "finetune"}
        card = read_card(base)
        tuned_cards = {t: read_card(f) for t, f in folders.items()}
        if problems := sample_mismatches(card, tuned_cards):
            raise ValueError("; ".join(problems))
        tuned = MtdnnSchedule.kept(training, card, tuned_cards)
        for task in sorted(below_multitask(card, tuned_cards)):
            log(f"kept the {'multi-task' if task not in tuned else 'fine-tuned'} weights of {task}: its fine-tuning "
                f"stage scored {tuned_cards[task]['selection']['tasks'][task]['score']:.4f} on dev, below the "
                f"multi-task stage's {card['selection']['tasks'][task]['score']:.4f}"
                + ("" if task not in tuned else " (multitask_fallback: false)"))
        tasks = [TaskSpec(**t) for t in card.pop("tasks")]
        state = dict(export_weights(base))
        for task in tuned:
            state.update(own_encoder_entries(task, export_weights(folders[task])))
        # tasks the multi-task stage already gave an encoder copy of their own (per-task selection) keep it
        own = carded_own_encoders(card)
        params = {"task_encoders": sorted(set(own) | set(tuned))}
        model = build_model_skeleton(Path(base) / ENCODER_DIR, tasks, "multi_encoder", card.get("dropout", 0.1), params)
        if missing := set(model.state_dict()) - set(state):
            raise ValueError(f"stage exports do not cover the assembled model: missing {sorted(missing)[:5]}")
        card.update({"sharing": "multi_encoder", "sharing_params": params,
                     "head_stage": {t.name: f"finetune-{t.name}" if t.name in tuned else "multitask" for t in tasks},
                     "schedule": {"name": "mtdnn", "stages": [stage_card(s, exports[s.name]) for s in stages]}})
        if "selection" in card:
            card["selection"] = assembled_selection(card["selection"], tuned_cards, tuned)
        tokenizer = AutoTokenizer.from_pretrained(str(Path(base) / "tokenizer"))
        write_export(out_dir, {k: v.to(torch.float32) for k, v in state.items()}, model, tokenizer, card)
        log(f"assembled the mtdnn model at {out_dir}: fine-tuned weights for {sorted(tuned)}")
        return str(out_dir)


def kept_finetuned(base: dict[str, Any], tuned_cards: dict[str, dict[str, Any]], fallback: bool = True) -> list[str]:
    """The fine-tuned tasks whose stage export replaces the multi-task weights: every one without
    evaluation during training or without `fallback`; otherwise those whose fine-tuning stage's
    selected dev score is at least the multi-task stage's for that task (both on the same seeded
    dev sample)."""
    return sorted(set(tuned_cards) - (below_multitask(base, tuned_cards) if fallback else set()))


def below_multitask(base: dict[str, Any], tuned_cards: dict[str, dict[str, Any]]) -> set[str]:
    """The fine-tuned tasks whose fine-tuning stage scored below the multi-task stage on the same
    dev sample (none without evaluation during training)."""
    if "selection" not in base:
        return set()
    return {t for t, card in tuned_cards.items()
            if card["selection"]["tasks"][t]["score"] < base["selection"]["tasks"][t]["score"]}


def sample_mismatches(base: dict[str, Any], tuned_cards: dict[str, dict[str, Any]]) -> list[str]:
    """Fine-tuned tasks whose stage chose its weights on other dev examples than the multi-task
    stage did: their scores cannot decide which weights to keep. A run's stages share one seed and
    `eval_max_examples`, so only stages reused from runs with other settings differ. Cards written
    before the sample was recorded are not checked."""
    if "dev_samples" not in base.get("selection", {}):
        return []
    problems = []
    for task, card in sorted(tuned_cards.items()):
        ours, theirs = base["selection"]["dev_samples"].get(task), card["selection"].get("dev_samples", {}).get(task)
        if ours is not None and theirs is not None and ours != theirs:
            problems.append(f"stage finetune-{task} chose its weights on another dev sample of {task} "
                            f"({sample_words(theirs)}) than stage multitask ({sample_words(ours)}), so their "
                            f"scores cannot be compared: run every stage with the same training.seed and "
                            f"training.eval_max_examples (remove the stage folder stages/finetune-{task} to "
                            f"train it again with the multi-task stage's settings)")
    return problems


def sample_words(sample: dict[str, Any]) -> str:
    return (f"{sample['examples']} examples drawn with seed {sample['seed']}" if sample["seed"] is not None
            else f"the whole split, {sample['examples']} examples")


def assembled_selection(base: dict[str, Any], tuned_cards: dict[str, dict[str, Any]],
                        kept: list[str]) -> dict[str, Any]:
    """Per task, the stage and step its weights come from and the dev score that chose them; a task
    whose fine-tuning was not kept also records that stage's best score, and one whose fine-tuning
    was kept below the multi-task stage's score (no `multitask_fallback`) records that score."""
    chosen = {t: {**entry, "stage": "multitask"} for t, entry in base["tasks"].items()}
    below = below_multitask({"selection": base}, tuned_cards)
    for task, card in tuned_cards.items():
        entry = card["selection"]["tasks"][task]
        if task in kept:
            chosen[task] = {**entry, "stage": f"finetune-{task}"} | (
                {"multitask_score": base["tasks"][task]["score"]} if task in below else {})
        else:
            chosen[task]["finetune_score"] = entry["score"]
    return {**base, "tasks": chosen}


def stage_card(stage: Stage, export: str) -> dict[str, Any]:
    """A stage's provenance on the model card."""
    return {"name": stage.name, "role": stage.role, "tasks": stage.tasks, "steps": stage.training.steps,
            "learning_rate": stage.training.learning_rate,
            "sharing": stage.training.sharing, "weighting": stage.training.weighting,
            "init_from": stage.init_from, "init_task": stage.init_task, "export": export}


SCHEDULES: dict[str, Any] = {"single": SingleSchedule, "mtdnn": MtdnnSchedule}
