"""The DeepSpeed engine: ZeRO, precision, offload and checkpoint I/O live here and nowhere else."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from training.checkpoints import CheckpointStore, tag_for
from training.config import DeepSpeedConfig, TrainingConfig, deepspeed_problems

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def deepspeed_config(ds: DeepSpeedConfig, train: TrainingConfig, num_params: int = 0) -> dict[str, Any]:
    """A DeepSpeed JSON config from the typed config, on top of `ds.config_file` when one is given
    (the file's other keys, e.g. bucket sizes, are kept; see `DeepSpeedConfig.resolved`)."""
    base = ds.file_config()
    eff = ds.resolved()
    zero = dict(base.get("zero_optimization", {}))
    zero["stage"] = eff.zero_stage
    # pinned host memory only helps (and only exists) with a CUDA device to copy to
    pin = torch.cuda.is_available()
    zero.pop("offload_optimizer", None)
    zero.pop("offload_param", None)
    if eff.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if eff.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    base.update({
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": eff.gradient_accumulation_steps,
        "gradient_clipping": eff.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": eff.precision == "bf16"},
        "fp16": {"enabled": eff.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": train.learning_rate,
            # DeepSpeed refuses 0 warm-up steps (and warms up over at least 2 whatever it is given)
            "warmup_num_steps": max(1, train.warmup_steps), "total_num_steps": train.steps,
            "warmup_type": "linear"}},
    })
    base.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch, accumulation and world
    if num_params:
        # DeepSpeed's default buckets (5e8 elements, 2 GB in fp32) are sized for big GPU models and
        # would dwarf a small model's own state; cap them at a quarter of the model, as the HF
        # integration's "auto" values scale them with the model. A file's explicit sizes win.
        # Rounded to a multiple of 1024: ZeRO-1/2 assert the all-gather bucket is a multiple of
        # their start alignment (a few elements, depending on the precision).
        bucket = int(min(5e8, max(1e6, num_params // 4))) // 1024 * 1024
        for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size"):
            zero.setdefault(key, bucket)
    if eff.offload_optimizer:
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's CPU Adam (a JIT-built op);
        # DeepSpeed builds it from this entry, so no torch optimizer is handed in.
        base["optimizer"] = {"type": "AdamW", "params": {"lr": train.learning_rate,
                                                         "weight_decay": train.weight_decay}}
        base["zero_force_ds_cpu_optimizer"] = True
    else:
        base.pop("optimizer", None)
    return base


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """torch's AdamW, fused (one kernel over every tensor) where the parameters' device has the
    fused kernel, CPU included: the default per-tensor loop took about a third of a MiniLM step on CPU."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr)


def fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(group.get("fused") for group in optimizer.param_groups)


def clip_gradients(parameters: list[nn.Parameter], max_norm: float,
                   fused_optimizer: torch.optim.Optimizer | None = None) -> float:
    """Clip gradients to a global L2 norm of at most `max_norm` with DeepSpeed's rule (coefficient
    max_norm / (norm + 1e-6), at most 1) and return the norm before clipping.

    With a fused torch optimizer the scaling is not a pass of its own: the coefficient goes to the
    optimizer's `grad_scale` (the hook torch's GradScaler uses), which divides each gradient by it
    inside the fused kernel that reads the gradients anyway; it holds for the next `step()` only
    (see `Engine._step`). Otherwise gradients are scaled in place, on CPU only when the coefficient
    is below 1 (reading the norm costs no device sync there)."""
    with_grads = [p for p in parameters if p.grad is not None]
    if not with_grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grads])
    if fused_optimizer is not None:
        coef = torch.clamp(max_norm / (norm.float() + 1e-6), max=1.0)
        fused_optimizer.grad_scale = (1.0 / coef).to(torch.float32)
    elif norm.device.type != "cpu" or float(norm) > max_norm:
        torch.nn.utils.clip_grads_with_norm_(with_grads, max_norm, norm)
    return float(norm)


def share_zero3_master_weights(optimizer: Any) -> int:
    """Let ZeRO-3's fp32 master partitions be the parameter partitions when those are fp32 already.

    ZeRO-3 keeps, per process, a partition of the parameters and an fp32 "master" copy of it that
    the optimizer updates. When the parameters are fp32 and nothing is offloaded, DeepSpeed means the
    partition to serve as its own master copy (no second one), but its check compares the tensor's
    `torch.device` with the accelerator's device name, a string, which is never equal: so it keeps
    two identical copies, half the model's size per process at 2 processes. This points each master
    tensor at its partition's memory (same values; the optimizer's state is keyed by the tensor
    object, which stays; DeepSpeed's copy back after each step becomes a no-op, as it expects for
    aliases) and frees the copy. Returns the bytes freed per process; 0 when there is nothing to do.
    """
    low = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    master = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if low is None or master is None or getattr(optimizer, "offload_optimizer", True) \
            or getattr(optimizer, "offload_param", True):
        return 0
    freed = 0
    for partition, copy in zip(low, master):
        if copy is partition or copy.untyped_storage().data_ptr() == partition.untyped_storage().data_ptr():
            continue
        if (copy.dtype, copy.device, copy.shape) != (partition.dtype, partition.device, partition.shape) \
                or not torch.equal(copy, partition):
            continue
        freed += copy.untyped_storage().nbytes()
        copy.data = partition.data
    return freed


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Engine:
    def __init__(self, model: nn.Module, ds: DeepSpeedConfig, train: TrainingConfig) -> None:
        problems = deepspeed_problems(ds)
        if problems:
            raise ValueError("; ".join(problems))
        self.config = deepspeed_config(ds, train, sum(p.numel() for p in model.parameters()))
        self.track_memory = train.log_memory
        self.peak_tensor_bytes = 0
        self.zero_stage = int(self.config["zero_optimization"]["stage"])
        self.precision = ds.resolved().precision
        groups = param_groups(model, train.weight_decay)
        optimizer = None if "optimizer" in self.config else adamw(groups, train.learning_rate)
        ds_config = dict(self.config)
        # ZeRO-0 in fp32 is the one case where DeepSpeed clips gradients with a Python loop over
        # every parameter (and an all-reduce of the norm, though gradients are already averaged):
        # ~7 % of a MiniLM step on CPU. Clip here instead, with the same rule, at the same point.
        self.clip, self.fused_optimizer = 0.0, None
        if self.zero_stage == 0 and self.precision == "fp32" and optimizer is not None:
            self.clip, ds_config["gradient_clipping"] = float(self.config["gradient_clipping"]), 0.0
            self.fused_optimizer = optimizer if fused(optimizer) else None
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=optimizer, config=ds_config)
        self.clipped_params = [p for p in self.engine.module.parameters() if p.requires_grad]
        self.master_bytes_shared = share_zero3_master_weights(self.engine.optimizer) if self.zero_stage == 3 else 0
        if self.zero_stage == 0 and self.engine.world_size == 1:
            # averaging gradients over a world of one changes nothing but costs a flatten, an
            # all-reduce and an unflatten of every gradient per step (~14 % of a MiniLM step on CPU);
            # ZeRO 1-3 reduce inside their optimizers and keep this path
            self.engine.enable_backward_allreduce = False

    def describe(self) -> dict[str, Any]:
        """What this engine runs, for the task log: stage, precision, offload, the optimizer that
        steps (DeepSpeed's CPU Adam under optimizer offload), where clipping happens."""
        zero = self.config["zero_optimization"]
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        return {
            "zero_stage": self.zero_stage,
            "precision": self.precision,
            "offload_optimizer": "offload_optimizer" in zero, "offload_params": "offload_param" in zero,
            "optimizer": type(inner).__name__ + (" (fused)" if getattr(inner, "defaults", {}).get("fused") else ""),
            "gradient_clipping": self.config["gradient_clipping"],
            "clipping_in": "fused optimizer step" if self.fused_optimizer is not None
            else "engine" if self.clip else "deepspeed" if self.config["gradient_clipping"] else "off",
            "zero3_master_bytes_shared": self.master_bytes_shared,
            "world_size": self.engine.world_size,
        }

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
        if self.track_memory:  # gradients and optimizer state both live: the peak of model state
            self.peak_tensor_bytes = max(self.peak_tensor_bytes, live_tensor_bytes())
        self._step()
        if self.track_memory:
            self.peak_tensor_bytes = max(self.peak_tensor_bytes, live_tensor_bytes())
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
        self._step()
        return dict(zip(weighting.tasks, mean_raw.tolist()))

    def _step(self) -> None:
        """The optimizer step (DeepSpeed's, which skips it between accumulation boundaries), after
        this engine's own clipping where it clips; gradients are averaged over ranks by then."""
        if not (self.clip and self.engine.is_gradient_accumulation_boundary()):
            self.engine.step()
            return
        clip_gradients(self.clipped_params, self.clip, self.fused_optimizer)
        try:
            self.engine.step()
        finally:
            if self.fused_optimizer is not None:
                self.fused_optimizer.grad_scale = None  # torch reads None as "no scale"

    def _mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and dist.get_world_size() > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= dist.get_world_size()
        return tensor

    # -- checkpoints: every rank writes its files, the store makes them visible with a marker --
    def save(self, store: CheckpointStore, step: int, client_state: dict[str, Any],
             rank_state: dict[str, Any], keep: int) -> None:
        tag = tag_for(step)
        self.engine.save_checkpoint(store.local, tag=tag, client_state=client_state)
        torch.save(rank_state, Path(store.local) / tag / f"rank_state_{self.rank}.pt")
        store.publish(tag, step, self.rank, local_rank(), dist.barrier, keep)

    def load_latest(self, store: CheckpointStore) -> tuple[dict[str, Any], dict[str, Any]] | None:
        tag = store.latest()
        if tag is None:
            return None
        if local_rank() == 0:
            store.fetch(tag)
        dist.barrier()
        _, client_state = self.engine.load_checkpoint(store.local, tag=tag)
        if client_state is None:
            raise RuntimeError(f"checkpoint {tag} in {store.uri} could not be loaded")
        if self.fused_optimizer is not None and not fused(self.fused_optimizer):
            # the optimizer's groups come from the checkpoint: one written by an unfused AdamW
            # keeps it unfused, and the unfused step takes no gradient scale
            self.fused_optimizer = None
        rank_state = torch.load(Path(store.local) / tag / f"rank_state_{self.rank}.pt", weights_only=False)
        return client_state, rank_state

    def consolidated_state_dict(self, store: CheckpointStore, tag: str) -> dict[str, torch.Tensor] | None:
        """Full fp32 weights on rank 0 (None elsewhere), gathered from the ZeRO checkpoint."""
        dist.barrier()
        if self.rank != 0:
            return None
        if self.zero_stage == 0:
            return {k: v.detach().float().cpu() for k, v in self.engine.module.state_dict().items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # on several nodes with a remote store, rank 0 holds only its own node's shards
        root = store.fetch(tag)
        state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
        return {k: v.float().contiguous() for k, v in state.items()}


def live_tensor_bytes() -> int:
    """Bytes held by all live CPU/GPU tensors of this process, each storage counted once. Called
    between steps, when activations are freed, it is the model + gradients + optimizer footprint
    (what ZeRO partitions); process RSS would drown that in interpreter and library memory."""
    import gc

    seen: dict[tuple[str, int], int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            if storage.nbytes():
                seen[(str(storage.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", 1))))
