"""The DeepSpeed engine: ZeRO, precision, offload and checkpoint I/O live here and nowhere else."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from training.config import DeepSpeedConfig, TrainingConfig

COMPLETE = "COMPLETE"
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def deepspeed_config(ds: DeepSpeedConfig, train: TrainingConfig) -> dict[str, Any]:
    """A DeepSpeed JSON config from the typed config (optionally on top of a JSON file)."""
    base: dict[str, Any] = json.loads(Path(ds.config_file).read_text()) if ds.config_file else {}
    zero = dict(base.get("zero_optimization", {}))
    zero["stage"] = ds.zero_stage
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    base.update({
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": train.learning_rate,
            "warmup_num_steps": train.warmup_steps, "total_num_steps": train.steps,
            "warmup_type": "linear"}},
    })
    if ds.offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's CPU Adam; otherwise a plain torch AdamW is handed in.
        base["optimizer"] = {"type": "AdamW", "params": {"lr": train.learning_rate,
                                                         "weight_decay": train.weight_decay}}
        base["zero_force_ds_cpu_optimizer"] = True
    return base


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Engine:
    def __init__(self, model: nn.Module, ds: DeepSpeedConfig, train: TrainingConfig) -> None:
        self.config = deepspeed_config(ds, train)
        self.zero_stage = ds.zero_stage
        groups = param_groups(model, train.weight_decay)
        optimizer = None if "optimizer" in self.config else torch.optim.AdamW(groups, lr=train.learning_rate)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=optimizer, config=self.config)

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def train_micro_step(self, task: str, batch: dict[str, torch.Tensor], weight: float) -> float:
        """Forward, backward and a (possibly accumulating) step on one single-task micro-batch."""
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        loss, _ = self.engine(task, **batch)
        self.engine.backward(loss * weight)
        self.engine.step()
        return float(loss.detach())

    def train(self) -> None:
        self.engine.train()

    # -- issue 5: one step over every task, combined by a loss weighting --
    def train_multitask_step(self, batches: dict[str, dict[str, torch.Tensor]], weighting: Any) -> dict[str, float]:
        """One micro-batch of each task in `weighting.tasks` order, then one backward of
        sum_t c_t L_t. When the weighting needs gradients, each task's gradient at the model's
        probe parameters (a few unpartitioned shared parameters) is taken with autograd.grad from
        the model's un-hooked `LossHandle` (a gradient through the returned, hooked loss would make
        DeepSpeed run a whole backward epilogue) and never fires ZeRO's gradient hooks; the
        gradients are averaged over processes, so every process computes the same coefficients.
        Returns each task's unweighted loss, averaged over processes."""
        losses, raws, handles = [], [], []
        for task in weighting.tasks:
            batch = {k: v.to(self.engine.device) for k, v in batches[task].items()}
            loss, _, raw, handle = self.engine(task, **batch, return_raw=True)
            losses.append(loss)
            raws.append(raw.float())
            handles.append(handle.loss)
        mean_raw = self._mean_over_ranks(torch.stack(raws))
        grads = None
        if weighting.needs_grads:
            probe = self.engine.module.sharing.probe_parameters()
            grads = self._mean_over_ranks(torch.stack([
                torch.cat([g.reshape(-1).float() for g in torch.autograd.grad(
                    loss, probe, retain_graph=True, allow_unused=True, materialize_grads=True)])
                for loss in handles]))
        coefficients = weighting.combine(mean_raw.cpu(), None if grads is None else grads.cpu())
        self.engine.backward(sum(float(c) * loss for c, loss in zip(coefficients, losses)))
        self.engine.step()
        return dict(zip(weighting.tasks, mean_raw.tolist()))

    def _mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and dist.get_world_size() > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= dist.get_world_size()
        return tensor

    # -- checkpoints: written by every rank, made visible by a marker once all ranks are done --
    def save(self, root: str, step: int, client_state: dict[str, Any], rank_state: dict[str, Any],
             keep: int) -> None:
        tag = f"step_{step:08d}"
        self.engine.save_checkpoint(root, tag=tag, client_state=client_state)
        torch.save(rank_state, Path(root) / tag / f"rank_state_{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            (Path(root) / tag / COMPLETE).write_text(json.dumps({"step": step}))
            prune_checkpoints(root, keep)
        dist.barrier()

    def load_latest(self, root: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        tag = latest_complete(root)
        if tag is None:
            return None
        _, client_state = self.engine.load_checkpoint(root, tag=tag)
        rank_state = torch.load(Path(root) / tag / f"rank_state_{self.rank}.pt", weights_only=False)
        return client_state or {}, rank_state

    def consolidated_state_dict(self, root: str, tag: str) -> dict[str, torch.Tensor] | None:
        """Full fp32 weights on rank 0 (None elsewhere), gathered from the ZeRO checkpoint."""
        dist.barrier()
        if self.rank != 0:
            return None
        if self.zero_stage == 0:
            return {k: v.detach().float().cpu() for k, v in self.engine.module.state_dict().items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
        return {k: v.float().contiguous() for k, v in state.items()}


def complete_tags(root: str) -> list[str]:
    path = Path(root)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if (p / COMPLETE).is_file())


def latest_complete(root: str) -> str | None:
    tags = complete_tags(root)
    return tags[-1] if tags else None


def prune_checkpoints(root: str, keep: int) -> None:
    for tag in complete_tags(root)[:-keep]:
        shutil.rmtree(Path(root) / tag, ignore_errors=True)
    # half-written checkpoints older than the newest complete one are debris of a crash
    newest = latest_complete(root)
    for path in Path(root).iterdir():
        if path.is_dir() and not (path / COMPLETE).exists() and newest and path.name < newest:
            shutil.rmtree(path, ignore_errors=True)


def local_world() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", 1))))
