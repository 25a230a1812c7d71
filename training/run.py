"""The train and evaluate steps, as the flow's tasks call them."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from data_prep.stage import atomic_write_text, read_examples
from training.checkpoints import is_remote
from training.config import (DeepSpeedConfig, EncoderConfig, TrainingConfig, batching_problems,
                             deepspeed_problems, training_problems)
from training.evaluate import evaluate_task
from training.export import CARD
from training.launcher import free_port, launch_command, remove_shm_buffers, run_launcher, write_hostfile
from training.predict import Predictor
from training.registries import lookup
from training.sharing import SHARING
from training.tasks import TaskSpec
from training.worker import WorkerSpec


def launcher_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    # the workers run `-m training.worker` from the launcher's working directory: make sure they
    # import this very package (not another installed copy) whatever that directory is
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def checkpoint_location(training: TrainingConfig, run: Path) -> tuple[str, str | None]:
    """(store URI, node-local staging folder or None) of this run's checkpoints."""
    if training.checkpoint_uri is None:
        return str(run / "checkpoints"), None
    uri = training.checkpoint_uri.rstrip("/") + "/" + run.name
    return (uri, str(run / "checkpoint-staging")) if is_remote(uri) else (uri, None)


def train_model(encoder: EncoderConfig, training: TrainingConfig, deepspeed: DeepSpeedConfig,
                tasks: list[TaskSpec], features: dict[str, str], run_dir: str | Path,
                log: Callable[[str], None], init_from: str | None = None) -> str:
    """Launch distributed training (this node's part of it); resume from the newest complete
    checkpoint of this run if there is one. Returns the exported model folder (written by node 0).
    A staged strategy (e.g. `transfer`) runs its own stages, each through this function;
    `init_from` starts the model from an export's weights."""
    if problems := deepspeed_problems(deepspeed) + training_problems(training) + batching_problems(training, encoder):
        raise ValueError("; ".join(problems))
    stages = getattr(lookup(SHARING, training.sharing, "sharing strategy"), "train_stages", None)
    if stages is not None:
        return stages()(encoder, training, deepspeed, tasks, features, run_dir, log)
    run = Path(run_dir)
    export_dir = run / "model"
    if (export_dir / CARD).is_file():
        log(f"model already exported at {export_dir}; nothing to train")
        return str(export_dir)
    if deepspeed.config_file:  # the workers may start elsewhere: pin the file the config named
        deepspeed = deepspeed.model_copy(update={"config_file": str(Path(deepspeed.config_file).resolve())})
    checkpoints, staging = checkpoint_location(training, run)
    spec = WorkerSpec(encoder=encoder, training=training, deepspeed=deepspeed, tasks=tasks, features=features,
                      checkpoint_dir=checkpoints, checkpoint_staging_dir=staging, export_dir=str(export_dir),
                      metrics_file=str(run / "train_metrics.jsonl"), init_from=init_from)
    spec_path = run / "train_spec.json"
    atomic_write_text(spec_path, spec.model_dump_json(indent=2))
    hostfile = training.hostfile
    if training.nodes > 1 and hostfile is None:
        hostfile = write_hostfile(run / "hostfile", training.nodes, training.processes)
    port = training.master_port or free_port()
    cmd = launch_command(training, str(spec_path), port, hostfile)
    log("launching: " + " ".join(cmd))
    try:
        run_launcher(cmd, launcher_env(), training.timeout_s, log)
    finally:  # the workers release their buffers once started; this covers a run killed before
        if removed := remove_shm_buffers(port):
            log(f"removed {removed} shared-memory buffer(s) a stopped run left behind")
    if training.node_rank > 0:
        return str(export_dir)  # node 0 exports; this node's part is done
    if not (export_dir / CARD).is_file():
        raise RuntimeError(f"training finished but wrote no model to {export_dir}")
    return str(export_dir)


def evaluate_model(export_dir: str, tasks: list[TaskSpec], dev_files: dict[str, str],
                   batch_size: int) -> dict[str, dict[str, float]]:
    predictor = Predictor(export_dir, batch_size=batch_size)
    return {t.name: evaluate_task(predictor, t, read_examples(dev_files[t.name])) for t in tasks}
