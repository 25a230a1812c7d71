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
from pydantic import BaseModel, Field, field_serializer

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.tasks import TaskSpec


class WorkerSpec(BaseModel):
    encoder: EncoderConfig
    training: TrainingConfig
    deepspeed: DeepSpeedConfig
    tasks: list[TaskSpec]
    features: dict[str, str]
    checkpoint_dir: str = Field(description="local folder or fsspec URL (s3://...) of this run's checkpoints")
    checkpoint_staging_dir: str | None = Field(None, description="node-local folder for a remote checkpoint_dir")
    export_dir: str
    metrics_file: str
    init_from: str | None = None  # issue 5: an export whose weights the model starts from (stage 2)

    @field_serializer("deepspeed")
    def _deepspeed_as_given(self, deepspeed: DeepSpeedConfig) -> dict[str, Any]:
        # only the fields set explicitly: a field written out at its default would count as set in
        # the worker and override what deepspeed.config_file says (its stage, its precision)
        return deepspeed.model_dump(exclude_unset=True)


def set_threads(train: TrainingConfig, local_world: int) -> None:
    threads = train.threads_per_process or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)


def rank_state() -> dict[str, Any]:
    """Every RNG a step may draw from (dropout above all), so a resumed step draws the same numbers."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rank_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def gathered_ints(value: int) -> list[int]:
    """One integer from every rank, in rank order (on every rank)."""
    import torch.distributed as dist

    out = [0] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class Window:
    """Tokens and time since the last log line: throughput and padding efficiency."""

    def __init__(self) -> None:
        self.start, self.real, self.processed = time.time(), 0, 0

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        self.real += int(batch["attention_mask"].sum())
        self.processed += batch["attention_mask"].numel()

    def close(self, world: int) -> dict[str, Any]:
        """This rank's counts scaled by the world size (ranks share length-sorted batches)."""
        row = {"window_s": round(time.time() - self.start, 4), "tokens": self.processed * world,
               "real_tokens": self.real * world, "padding_efficiency": round(self.real / max(1, self.processed), 4)}
        return row


def resume(engine: Any, store: Any, data: Any, weighting: Any, log: MetricsLog) -> int:
    """Restore everything a step depends on from the newest complete checkpoint; the step to go on from."""
    resumed = engine.load_latest(store)
    if resumed is None:
        return 0
    client, ranks = resumed
    step = int(client["step"])
    data.load_state_dict(client["batches"])
    weighting.load_state_dict(client["weighting"])
    restore_rank_state(ranks)
    log.truncate_after(step)
    if engine.rank == 0:
        print(f"resumed from checkpoint at step {step}", flush=True)
    return step


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train(spec: WorkerSpec) -> None:
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from training.batches import TaskBatches, load_features
    from training.checkpoints import CheckpointStore, tag_for
    from training.engine import Engine, local_world
    from training.export import export_weights
    from training.launcher import release_own_shm_buffer
    from training.model import build_model, load_matching, resolve_encoder_path
    from training.registries import lookup
    from training.sampling import SAMPLERS
    from training.weighting import WEIGHTINGS

    rank, world, local = local_world()
    cfg, gas = spec.training, spec.deepspeed.resolved().gradient_accumulation_steps
    set_threads(cfg, local)
    deepspeed.init_distributed()
    dist.barrier()  # every local rank has mapped its peers' shared-memory buffers by now
    release_own_shm_buffer(dist.get_rank())
    seed_everything(cfg.seed + rank)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(spec.encoder.name_or_path))
    data = TaskBatches({t: load_features(p) for t, p in spec.features.items()}, cfg.micro_batch_size,
                       rank, world, cfg.seed, tokenizer.pad_token_id, cfg.group_by_length,
                       cfg.length_bucket_batches, cfg.max_tokens)
    sampler = lookup(SAMPLERS, cfg.sampler, "sampler")(
        data.sizes(), cfg.seed, total_draws=cfg.steps * gas, temperature=cfg.sampler_temperature,
        final_alpha=cfg.sampler_final_alpha)
    weighting = lookup(WEIGHTINGS, cfg.weighting, "loss weighting")(sorted(spec.features), cfg.seed,
                                                                    **cfg.weighting_params)
    model = build_model(spec.encoder.name_or_path, spec.tasks, cfg.sharing, spec.encoder.dropout,
                        cfg.sharing_params, weighting.module(), spec.encoder.attn_implementation)
    if spec.init_from:
        load_matching(model, export_weights(spec.init_from))
    engine = Engine(model, spec.deepspeed, cfg)
    if rank == 0:
        print("engine " + json.dumps(engine.describe()), flush=True)
    log = MetricsLog(spec.metrics_file, rank)
    store = CheckpointStore(spec.checkpoint_dir, spec.checkpoint_staging_dir)
    task_losses: dict[str, float] = {}
    try:
        step = resume(engine, store, data, weighting, log)
        engine.train()
        started, window = time.time(), Window()
        while step < cfg.steps:
            for micro in range(gas):
                if weighting.all_tasks_step:  # issue 5: every task in one step (gradient-based weightings)
                    batches = {t: data.next(t) for t in weighting.tasks}
                    for batch in batches.values():
                        window.add(batch)
                    task_losses = engine.train_multitask_step(batches, weighting)
                    task, loss = "all", sum(task_losses.values()) / len(task_losses)
                else:
                    task = sampler.sample(step * gas + micro)
                    batch = data.next(task)
                    window.add(batch)
                    loss = engine.train_micro_step(task, batch, weighting.weight(task))
                    weighting.observe(task, loss)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "task": task, "loss": loss, "lr": engine.lr(),
                       "elapsed_s": round(time.time() - started, 2), **window.close(world),
                       "task_weights": weighting.weights(), "task_losses": task_losses,  # issue 5
                       **model.sharing.metrics()}
                if cfg.log_memory:
                    row["peak_tensor_bytes_per_rank"] = gathered_ints(engine.peak_tensor_bytes)
                log.write(row)
                if rank == 0:
                    print(json.dumps(row), flush=True)
                window = Window()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                client = {"step": step, "batches": data.state_dict(), "weighting": weighting.state_dict()}
                engine.save(store, step, client, rank_state(), cfg.keep_checkpoints)
        export(spec, engine, store, tag_for(cfg.steps), model, tokenizer)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def export(spec: WorkerSpec, engine: Any, store: Any, tag: str, model: torch.nn.Module, tokenizer: Any) -> None:
    """Consolidate the final ZeRO checkpoint to fp32 and write the model folder (rank 0)."""
    from training.export import write_export

    state = engine.consolidated_state_dict(store, tag)
    if state is None:
        return
    cfg = spec.training
    card = {"sharing": cfg.sharing, "sharing_params": cfg.sharing_params, "dropout": spec.encoder.dropout,
            "max_length": spec.encoder.max_length,
            "steps": cfg.steps, "head_stage": {t.name: "multitask" for t in spec.tasks}}
    write_export(spec.export_dir, state, model, tokenizer, card)
    print(f"exported model to {spec.export_dir}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    train(WorkerSpec.model_validate_json(Path(args.spec).read_text()))


if __name__ == "__main__":
    main()
