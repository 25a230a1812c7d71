"""Training worker: the entry point each launched process runs.

    deepspeed --num_gpus 2 --module training.worker --spec RUN/train_spec.json
    torchrun --nproc_per_node 2 -m training.worker --spec RUN/train_spec.json

It gets the training sub-configs and artifact paths (never the pipeline's root config),
resumes from the newest complete checkpoint, and exports the consolidated model on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.tasks import TaskSpec


class WorkerSpec(BaseModel):
    encoder: EncoderConfig
    training: TrainingConfig
    deepspeed: DeepSpeedConfig
    tasks: list[TaskSpec]
    features: dict[str, str]
    checkpoint_dir: str
    export_dir: str
    metrics_file: str
    init_from: str | None = None  # issue 5: an export whose weights the model starts from (stage 2)


def set_threads(train: TrainingConfig, local_world: int) -> None:
    threads = train.threads_per_process or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)


def rank_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rank_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class MetricsLog:
    """Rank 0's per-step log (JSON lines). On resume, lines past the checkpoint are dropped."""

    def __init__(self, path: str, rank: int) -> None:
        self.path, self.rank = Path(path), rank

    def truncate_after(self, step: int) -> None:
        if self.rank != 0 or not self.path.exists():
            return
        kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        self.path.write_text("".join(l + "\n" for l in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.rank == 0:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def train(spec: WorkerSpec) -> None:
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from training.batches import TaskBatches, load_features
    from training.engine import Engine, local_world
    from training.export import write_export
    from training.export import export_weights
    from training.model import build_model, load_matching, resolve_encoder_path
    from training.registries import lookup
    from training.sampling import SAMPLERS
    from training.weighting import WEIGHTINGS

    rank, world, local = local_world()
    set_threads(spec.training, local)
    deepspeed.init_distributed()
    cfg = spec.training
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(spec.encoder.name_or_path))
    data = TaskBatches({t: load_features(p) for t, p in spec.features.items()}, cfg.micro_batch_size,
                       rank, world, cfg.seed, tokenizer.pad_token_id)
    sampler = lookup(SAMPLERS, cfg.sampler, "sampler")(data.sizes(), cfg.seed)
    weighting = lookup(WEIGHTINGS, cfg.weighting, "loss weighting")(sorted(spec.features), cfg.seed,
                                                                    **cfg.weighting_params)
    model = build_model(spec.encoder.name_or_path, spec.tasks, cfg.sharing, spec.encoder.dropout,
                        cfg.sharing_params, weighting.module())
    if spec.init_from:
        load_matching(model, export_weights(spec.init_from))
    engine = Engine(model, spec.deepspeed, cfg)
    log = MetricsLog(spec.metrics_file, rank)
    step = 0
    resumed = engine.load_latest(spec.checkpoint_dir)
    if resumed is not None:
        client, ranks = resumed
        step = int(client["step"])
        data.load_state_dict(client["batches"])
        weighting.load_state_dict(client["weighting"])
        restore_rank_state(ranks)
        log.truncate_after(step)
        if rank == 0:
            print(f"resumed from checkpoint at step {step}", flush=True)
    gas = spec.deepspeed.gradient_accumulation_steps
    engine.train()
    started = time.time()
    task_losses: dict[str, float] = {}
    try:
        while step < cfg.steps:
            for micro in range(gas):
                if weighting.all_tasks_step:  # issue 5: every task in one step (gradient-based weightings)
                    task_losses = engine.train_multitask_step({t: data.next(t) for t in weighting.tasks}, weighting)
                    task, loss = "all", sum(task_losses.values()) / len(task_losses)
                else:
                    task = sampler.sample(step * gas + micro)
                    loss = engine.train_micro_step(task, data.next(task), weighting.weight(task))
                    weighting.observe(task, loss)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "task": task, "loss": loss, "lr": engine.lr(),
                       "elapsed_s": round(time.time() - started, 2),
                       "task_weights": weighting.weights(), "task_losses": task_losses,  # issue 5
                       **model.sharing.metrics()}
                log.write(row)
                if rank == 0:
                    print(json.dumps(row), flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                client = {"step": step, "batches": data.state_dict(), "weighting": weighting.state_dict()}
                engine.save(spec.checkpoint_dir, step, client, rank_state(), cfg.keep_checkpoints)
        final_tag = f"step_{cfg.steps:08d}"
        state = engine.consolidated_state_dict(spec.checkpoint_dir, final_tag)
        if state is not None:
            card = {"sharing": cfg.sharing, "sharing_params": cfg.sharing_params, "dropout": spec.encoder.dropout,
                    "max_length": spec.encoder.max_length, "steps": cfg.steps,
                    "head_stage": {t.name: "multitask" for t in spec.tasks}}
            write_export(spec.export_dir, state, model, tokenizer, card)
            print(f"exported model to {spec.export_dir}", flush=True)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    train(WorkerSpec.model_validate_json(Path(args.spec).read_text()))


if __name__ == "__main__":
    main()
