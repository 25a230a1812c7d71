"""Staged training for the `transfer` strategy (MT-DNN, Liu et al., ACL 2019): stage 1 trains a
hard-shared multi-task model from the pretrained encoder; stage 2 fine-tunes, per task, a
single-task model that starts from the stage-1 export. Each stage is an ordinary launched
training run in its own folder (its own checkpoints, metrics and export, so a retry resumes the
stage it died in); the assembly writes one export whose card says which stage each head is from.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.model.export import CARD, ENCODER_DIR, export_weights, read_card, write_export
from training.model.multitask import build_model_skeleton
from training.model.sharing.transfer import TransferParams
from training.task_spec import TaskSpec


def train_transfer(encoder: EncoderConfig, training: TrainingConfig, deepspeed: DeepSpeedConfig,
                   tasks: list[TaskSpec], features: dict[str, str], run_dir: str | Path,
                   log: Callable[[str], None]) -> str:
    from training.launch.stage import train_model

    run = Path(run_dir)
    params = TransferParams(**training.sharing_params)
    stage1_cfg = training.model_copy(update={"sharing": "hard", "sharing_params": {}})
    log("transfer stage 1: multi-task training")
    stage1 = train_model(encoder, stage1_cfg, deepspeed, tasks, features, run / "stage1", log)
    chosen = params.finetune_tasks or [t.name for t in tasks]
    steps = params.finetune_steps or max(1, training.steps // len(tasks))
    stage2: dict[str, str] = {}
    for task in (t for t in tasks if t.name in chosen):
        cfg = training.model_copy(update={
            "sharing": "hard", "sharing_params": {}, "weighting": "equal", "weighting_params": {},
            "steps": steps, "warmup_steps": max(1, min(training.warmup_steps, steps // 10)),  # DeepSpeed refuses 0
            "checkpoint_every": min(training.checkpoint_every, steps)})
        log(f"transfer stage 2: fine-tuning {task.name} from the stage-1 model")
        stage2[task.name] = train_model(encoder, cfg, deepspeed, [task], {task.name: features[task.name]},
                                        run / f"stage2-{task.name}", log, init_from=stage1)
    return assemble_transfer_export(stage1, stage2, run / "model")


def assemble_transfer_export(stage1: str, stage2: dict[str, str], out_dir: str | Path) -> str:
    """One export: the stage-1 encoder and heads, with each fine-tuned task's encoder copy and
    head replaced by its stage-2 weights. Idempotent: an existing assembly is kept."""
    if (Path(out_dir) / CARD).is_file():
        return str(out_dir)
    card = read_card(stage1)
    tasks = [TaskSpec(**t) for t in card["tasks"]]
    state = dict(export_weights(stage1))
    for task, folder in stage2.items():
        for key, value in export_weights(folder).items():
            if key.startswith("sharing.encoder."):
                state["sharing.task_encoders." + task + "." + key[len("sharing.encoder."):]] = value
            elif key.startswith(f"heads.{task}."):
                state[key] = value
    sharing_params = {"finetuned": sorted(stage2)}
    model = build_model_skeleton(Path(stage1) / ENCODER_DIR, tasks, "transfer", card.get("dropout", 0.1),
                                 sharing_params)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"stage exports do not cover the transfer model: missing {sorted(missing)[:5]}")
    card.update({"sharing": "transfer", "sharing_params": sharing_params,
                 "head_stage": {t.name: "finetune" if t.name in stage2 else "multitask" for t in tasks},
                 "stages": {"multitask": str(stage1), "finetune": dict(stage2)}})
    card.pop("tasks", None)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(stage1) / "tokenizer"))
    write_export(out_dir, {k: v.to(torch.float32) for k, v in state.items()}, model, tokenizer, card)
    return str(out_dir)
