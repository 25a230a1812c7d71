"""Training worker: the entry point each launched process runs.

    deepspeed --num_gpus 2 --module training.trainer.worker --spec RUN/train_spec.json
    torchrun --nproc_per_node 2 -m training.trainer.worker --spec RUN/train_spec.json

It gets the training sub-configs and artifact paths (never the pipeline's root config),
resumes from the newest complete checkpoint, and exports the consolidated model on rank 0: the
last step's, or with evaluation during training the selected steps' (`training.evaluation.selection`).
Auxiliary tasks are trained but left out of the export.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from training.config import TrainingConfig
from training.launch.spec import WorkerSpec


def set_threads(train: TrainingConfig, local_world: int) -> None:
    threads = train.threads_per_process or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build_parts(spec: WorkerSpec, rank: int, world: int, pad_id: int) -> tuple[Any, Any, Any, Any]:
    """What this rank trains with, built from the spec alone: its task batches, the task sampler,
    the loss weighting and the model (tests/test_config_reachability.py checks every setting arrives
    here through this same function)."""
    from training.lookup import lookup
    from training.model.multitask import build_model
    from training.trainer.batches import TaskBatches, load_features
    from training.trainer.sampling import SAMPLERS
    from training.trainer.weighting import WEIGHTINGS

    cfg, gas = spec.training, spec.deepspeed.resolved().gradient_accumulation_steps
    data = TaskBatches({t: load_features(p) for t, p in spec.features.items()}, cfg.micro_batch_size,
                       rank, world, cfg.seed, pad_id, cfg.group_by_length, cfg.length_bucket_batches, cfg.max_tokens)
    sampler = lookup(SAMPLERS, cfg.sampler, "sampler")(
        data.sizes(), cfg.seed, total_draws=cfg.steps * gas, temperature=cfg.sampler_temperature,
        final_alpha=cfg.sampler_final_alpha)
    weighting = lookup(WEIGHTINGS, cfg.weighting, "loss weighting")(sorted(spec.features), cfg.seed,
                                                                    **cfg.weighting_params)
    model = build_model(spec.encoder.name_or_path, spec.tasks, cfg.sharing, spec.encoder.dropout,
                        cfg.sharing_params, weighting.module(), spec.encoder.attn_implementation)
    return data, sampler, weighting, model


def train(spec: WorkerSpec) -> None:
    """Set up this process's part of the run, run the loop, export on rank 0."""
    import deepspeed
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from training.launch.launcher import release_own_shm_buffer
    from training.model.export import export_weights
    from training.model.multitask import load_matching, resolve_encoder_path
    from training.model.sharing.multi_encoder import task_view
    from training.trainer.checkpointer import Checkpointer, RandomState
    from training.trainer.checkpoints import CheckpointStore, tag_for
    from training.trainer.deepspeed_fixes import check_version
    from training.trainer.engine import Engine, local_world
    from training.trainer.loop import MetricsLog, train_loop

    rank, world, local = local_world()
    cfg, gas = spec.training, spec.deepspeed.resolved().gradient_accumulation_steps
    set_threads(cfg, local)
    deepspeed.init_distributed()
    dist.barrier()  # every local rank has mapped its peers' shared-memory buffers by now
    release_own_shm_buffer(dist.get_rank())
    seed_everything(cfg.seed + rank)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(spec.encoder.name_or_path))
    data, sampler, weighting, model = build_parts(spec, rank, world, tokenizer.pad_token_id)
    if spec.init_from:
        start = export_weights(spec.init_from)
        if spec.init_task:  # a fine-tuning stage: its task's own weights where the export has them
            start = task_view(spec.init_task, start)
        # new label rows and new tasks' heads keep the initialisation they got under the seed above
        # (the engine starts every rank from rank 0's weights), so a rerun starts them the same
        matched = load_matching(model, start)
        if rank == 0 and (matched.fresh_heads or matched.grown):
            print(f"warm start from {spec.init_from}: fresh heads for {matched.fresh_heads}; label rows kept and "
                  f"new ones appended for {matched.grown}", flush=True)
    engine = Engine(model, spec.deepspeed, cfg)
    if rank == 0:
        if warning := check_version():
            print(warning, flush=True)
        print("engine " + json.dumps(engine.describe()), flush=True)
    store = CheckpointStore(spec.checkpoint_dir, spec.checkpoint_staging_dir)
    log = MetricsLog(spec.metrics_file, rank)
    states: dict[str, Any] = {"batches": data, "weighting": weighting}
    evaluator = dev_evaluator(spec, engine, tokenizer, log)
    if evaluator is not None:
        states["selection"] = evaluator  # a resumed run keeps its best steps so far
    checkpointer = Checkpointer(engine, store, cfg.keep_checkpoints, states=states,
                                rank_states={"rng": RandomState()},
                                pinned=evaluator.pinned if evaluator is not None else set)
    try:
        last = train_loop(cfg, gas, engine, model, data, sampler, weighting, checkpointer, log, world, evaluator)
        if evaluator is None:
            export(spec, engine, store, tag_for(last), model, tokenizer)
        else:
            export_selected(spec, engine, store, evaluator.selection, model, tokenizer, evaluator.samples)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def dev_evaluator(spec: WorkerSpec, engine: Any, tokenizer: Any, log: Any) -> Any:
    """Evaluation during training, when `training.eval_every` asks for it (else None)."""
    from training.model.multitask import build_model_skeleton, resolve_encoder_path
    from training.trainer.evaluator import DevEvaluator

    cfg = spec.training
    if cfg.eval_every is None:
        return None
    encoder_path = resolve_encoder_path(spec.encoder.name_or_path)

    def skeleton() -> torch.nn.Module:
        return build_model_skeleton(encoder_path, spec.tasks, cfg.sharing, spec.encoder.dropout, cfg.sharing_params)

    return DevEvaluator(cfg, spec.tasks, spec.dev, engine, skeleton, tokenizer, spec.encoder.max_length, log)


def export(spec: WorkerSpec, engine: Any, store: Any, tag: str, model: torch.nn.Module, tokenizer: Any) -> None:
    """Consolidate the final ZeRO checkpoint to fp32 and write the model folder (rank 0)."""
    state = engine.consolidated_state_dict(store, tag)
    if state is None:
        return
    write_model(spec, state, model, tokenizer, spec.training.sharing, spec.training.sharing_params, {})


def export_selected(spec: WorkerSpec, engine: Any, store: Any, selection: Any, model: torch.nn.Module,
                    tokenizer: Any, samples: dict[str, dict[str, Any]]) -> None:
    """Each task's weights from its selected step's checkpoint (rank 0): one step for all tasks is
    the usual model, several a multi_encoder model (see `training.evaluation.selection`). `samples`:
    the dev sample each task was scored on (`DevEvaluator.samples`), recorded on the card so scores
    of two stages are compared only when they come from the same examples."""
    import torch.distributed as dist

    from training.evaluation.selection import assemble
    from training.trainer.checkpoints import tag_for

    dist.barrier()
    if engine.rank != 0:
        return
    steps = selection.steps()
    states = {step: engine.checkpoint_weights(store, tag_for(step)) for step in sorted(set(steps.values()))}
    state, own = assemble(states, steps)
    cfg = spec.training
    if own and spec.joint_export_dir:  # first: a stage with its export is never run again
        export_joint(spec, engine, store, states, model, tokenizer)
    sharing, params = ("multi_encoder", {"task_encoders": own}) if own else (cfg.sharing, cfg.sharing_params)
    write_model(spec, state, model, tokenizer, sharing, params,
                {"selection": {**selection.card(), "eval_every": cfg.eval_every,
                               "eval_max_examples": cfg.eval_max_examples, "dev_samples": samples}})
    print(f"selected steps {steps}" + (f"; own encoders for {own}" if own else ""), flush=True)


def export_joint(spec: WorkerSpec, engine: Any, store: Any, loaded: dict[int, dict[str, torch.Tensor]],
                 model: torch.nn.Module, tokenizer: Any) -> None:
    """The newest checkpoint as a model with one encoder shared by every task (rank 0): where
    per-task selection gave tasks encoder copies of their own, a step on one task moves no other
    task's loss in the export, so the task affinity is measured on this instead. `loaded`: the
    selected steps' weights, already read (the newest step is often one of them)."""
    from training.trainer.checkpoints import step_of

    tag = store.latest()
    step = step_of(tag)
    state = loaded[step] if step in loaded else engine.checkpoint_weights(store, tag)
    cfg = spec.training
    write_model(spec, state, model, tokenizer, cfg.sharing, cfg.sharing_params, {"joint_step": step},
                export_dir=spec.joint_export_dir)


def write_model(spec: WorkerSpec, state: dict[str, torch.Tensor], model: Any, tokenizer: Any, sharing: str,
                params: dict[str, Any], extra: dict[str, Any], export_dir: str | None = None) -> None:
    """Write the export of the exported (not auxiliary) tasks with the given strategy."""
    from training.model.export import state_for, write_export
    from training.model.multitask import build_model_skeleton, resolve_encoder_path
    from training.task_spec import exported

    cfg = spec.training
    tasks = exported(spec.tasks)
    if len(tasks) < len(spec.tasks) or sharing != cfg.sharing:  # the trained model's shape is not the export's
        model = build_model_skeleton(resolve_encoder_path(spec.encoder.name_or_path), tasks, sharing,
                                     spec.encoder.dropout, params)
        state = state_for(model, state)
    card = {"sharing": sharing, "sharing_params": params, "dropout": spec.encoder.dropout,
            "max_length": spec.encoder.max_length,
            "steps": cfg.steps, "stage": spec.stage, "init_from": spec.init_source,
            "head_stage": {t.name: spec.stage or "multitask" for t in tasks}, **extra}
    export_dir = export_dir or spec.export_dir
    write_export(export_dir, state, model, tokenizer, card)
    print(f"exported model to {export_dir}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    from training.trainer.deepspeed_fixes import skip_unused_imports

    skip_unused_imports()  # this process's own start-up: it never logs to MLflow itself
    train(WorkerSpec.model_validate_json(Path(args.spec).read_text()))


if __name__ == "__main__":
    main()
