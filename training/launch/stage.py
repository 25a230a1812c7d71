"""Launch one training stage: write the worker spec, start the launcher in its own process group,
stream its output, and return the stage's export. A stage whose export exists is not run again;
one that stopped resumes from its newest complete checkpoint (the worker's job)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from data_prep.stage import atomic_write_text
from training.config import DeepSpeedConfig, EncoderConfig
from training.launch.launcher import (free_port, launch_command, remove_shm_buffers, remove_stale_build_locks,
                                     run_launcher, write_hostfile)
from training.launch.layout import RunLayout
from training.launch.schedule import Stage
from training.launch.spec import WorkerSpec
from training.model.export import CARD
from training.task_spec import TaskSpec


def launcher_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed compiles its ops (shared-memory comm on CPU, CPU Adam) on first use: keep them beside
    # the environment, as `make` does, so every worker of this installation finds them built
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    # the workers run `-m training.trainer.worker` from the launcher's working directory: make sure
    # they import this very package (not another installed copy) whatever that directory is
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def launch_stage(encoder: EncoderConfig, deepspeed: DeepSpeedConfig, tasks: list[TaskSpec],
                 features: dict[str, str], layout: RunLayout, stage: Stage, log: Callable[[str], None],
                 init_from: str | None = None, dev: dict[str, str] | None = None,
                 init_source: dict[str, str | None] | None = None) -> str:
    """Run `stage` (this node's part of it); returns its export folder (written by node 0). `dev`:
    each task's validated dev examples, for evaluation during training. `init_from`: an export
    the model starts from; `init_source`: its provenance when it is a warm start's source (for the card)."""
    training = stage.training
    export_dir = layout.stage_export(stage.name)
    if (export_dir / CARD).is_file():
        log(f"stage {stage.name or 'train'}: model already exported at {export_dir}; nothing to train")
        return str(export_dir)
    if deepspeed.config_file:  # the workers may start elsewhere: pin the file the config named
        deepspeed = deepspeed.model_copy(update={"config_file": str(Path(deepspeed.config_file).resolve())})
    checkpoints, staging = layout.checkpoints(stage.name, training.checkpoint_uri)
    spec = WorkerSpec(encoder=encoder, training=training, deepspeed=deepspeed,
                      tasks=[t for t in tasks if t.name in stage.tasks],
                      features={t: features[t] for t in stage.tasks},
                      dev={t: d for t, d in (dev or {}).items() if t in stage.tasks}, checkpoint_dir=checkpoints,
                      checkpoint_staging_dir=staging, export_dir=str(export_dir),
                      joint_export_dir=str(layout.joint_export(stage.name)),
                      metrics_file=str(layout.metrics_file(stage.name)), init_from=init_from,
                      init_task=stage.init_task, init_source=init_source, stage=stage.name)
    spec_path = layout.spec_file(stage.name)
    atomic_write_text(spec_path, spec.model_dump_json(indent=2))
    hostfile = training.hostfile
    if training.nodes > 1 and hostfile is None:
        hostfile = write_hostfile(layout.hostfile(stage.name), training.nodes, training.processes)
    port = training.master_port or free_port()
    cmd = launch_command(training, str(spec_path), port, hostfile)
    env = launcher_env()
    ops = Path(env["TORCH_EXTENSIONS_DIR"])
    for lock in remove_stale_build_locks(ops):
        log(f"removed a stale build lock {lock} (no process holds it: a run killed while building or "
            "loading a DeepSpeed op left it, and every later run would wait for it)")
    if not any(ops.rglob("*.so")):
        log(f"DeepSpeed builds its ops into {ops} on first use: the first run of this installation waits "
            "for the compiler (1-2 min), later runs reuse them")
    log("launching: " + " ".join(cmd))
    try:
        run_launcher(cmd, env, training.timeout_s, log, shm_port=port)
    finally:  # the workers release their buffers once started; this covers a run killed before
        if removed := remove_shm_buffers(port):
            log(f"removed {removed} shared-memory buffer(s) a stopped run left behind")
    if training.node_rank > 0:
        return str(export_dir)  # node 0 exports; this node's part is done
    if not (export_dir / CARD).is_file():
        raise RuntimeError(f"training finished but wrote no model to {export_dir}")
    return str(export_dir)
