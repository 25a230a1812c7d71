"""The DeepSpeed engine: ZeRO, precision, offload and checkpoint I/O live here and nowhere else.
What the training step does with it (which losses, which coefficients) is `training.trainer.step`;
where this code works around DeepSpeed itself is `training.trainer.deepspeed_fixes`."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from training.model.multitask import LossHandle, TaskOutput
from training.trainer.checkpoints import CheckpointStore, tag_for
from training.trainer.deepspeed_fixes import clear_zero3_gradient_partitions, clip_gradients, share_zero3_master_weights, \
    skip_world_of_one_allreduce
from training.config import DeepSpeedConfig, EnginePlan, TrainingConfig, deepspeed_problems, engine_plan

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def deepspeed_config(ds: DeepSpeedConfig, train: TrainingConfig, num_params: int = 0,
                     world_size: int | None = None) -> dict[str, Any]:
    """A DeepSpeed JSON config from the typed config, on top of `ds.config_file` when one is given
    (the file's other keys, e.g. bucket sizes, are kept; see `DeepSpeedConfig.resolved`). The ZeRO
    stage and the mixed-precision path are `engine_plan`'s for `world_size` processes (default:
    the training config's processes x nodes)."""
    base = ds.file_config()
    eff = ds.resolved()
    plan = engine_plan(ds, world_size or train.processes * train.nodes)
    zero = dict(base.get("zero_optimization", {}))
    zero["stage"] = plan.zero_stage
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
        **precision_sections(plan),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer is on by default and synchronises the device when a forward
        # starts and when a step ends: two host waits per step on a GPU, for a samples/s report
        # this pipeline never prints (steps_per_print above); it measures throughput itself
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
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


def precision_sections(plan: EnginePlan) -> dict[str, Any]:
    """DeepSpeed's precision switches: its own 16-bit optimizer, or autocast around the forward with
    fp32 parameters (the `torch_autocast` section: an autocast of our own around the engine's
    forward would be switched off inside it)."""
    deepspeed_path = plan.mixed_precision == "deepspeed"
    return {
        "bf16": {"enabled": deepspeed_path and plan.precision == "bf16"},
        "fp16": {"enabled": deepspeed_path and plan.precision == "fp16"},
        "torch_autocast": {"enabled": plan.mixed_precision == "autocast",
                           "dtype": "float16" if plan.precision == "fp16" else "bfloat16"},
    }


def adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """torch's AdamW, fused (one kernel over every tensor) where the parameters' device has the
    fused kernel, CPU included: the default per-tensor loop took about a third of a MiniLM step on CPU."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr)


def fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(group.get("fused") for group in optimizer.param_groups)


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
        world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
        self.plan = engine_plan(ds, world)
        self.config = deepspeed_config(ds, train, sum(p.numel() for p in model.parameters()), world)
        self.track_memory = train.log_memory
        self.peak_tensor_bytes = 0
        self.zero_stage = self.plan.zero_stage
        self.precision = self.plan.precision
        self.compiled = train.compile
        groups = param_groups(model, train.weight_decay)
        optimizer = None if "optimizer" in self.config else adamw(groups, train.learning_rate)
        ds_config = dict(self.config)
        # At ZeRO-0 with fp32 gradients (fp32, or bf16 autocast) DeepSpeed clips with a Python loop
        # over every parameter (and an all-reduce of the norm, though gradients are already
        # averaged): ~7 % of a MiniLM step on CPU. Clip here instead, with the same rule, at the same
        # point. Not under fp16 autocast: its gradients stay loss-scaled until DeepSpeed's GradScaler
        # unscales them, and the scaler sets the fused optimizer's grad_scale itself.
        self.clip, self.fused_optimizer = 0.0, None
        if self.zero_stage == 0 and self.plan.mixed_precision != "deepspeed" and self.precision != "fp16" \
                and optimizer is not None:
            self.clip, ds_config["gradient_clipping"] = float(self.config["gradient_clipping"]), 0.0
            self.fused_optimizer = optimizer if fused(optimizer) else None
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, optimizer=optimizer, config=ds_config)
        if train.compile:
            # nn.Module.compile: in place, so state-dict keys stay as they are; batch shapes vary step
            # to step (rows and padded length), so one graph with symbolic sizes from the start
            self.engine.compile(compile_kwargs={"dynamic": True})
        self.clipped_params = [p for p in self.engine.module.parameters() if p.requires_grad]
        self.master_bytes_shared = share_zero3_master_weights(self.engine.optimizer) if self.zero_stage == 3 else 0
        skip_world_of_one_allreduce(self.engine, self.zero_stage)

    def describe(self) -> dict[str, Any]:
        """What this engine runs, for the task log: stage, precision, offload, the optimizer that
        steps (DeepSpeed's CPU Adam under optimizer offload), where clipping happens."""
        zero = self.config["zero_optimization"]
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        encoder = getattr(self.engine.module, "encoder_config", None)
        return {
            "zero_stage": self.zero_stage,
            "zero_stage_reason": self.plan.zero_stage_reason,
            "precision": self.precision,
            "mixed_precision": self.plan.mixed_precision,
            "mixed_precision_reason": self.plan.mixed_precision_reason,
            "attention": getattr(encoder, "_attn_implementation", None),
            "compile": self.compiled,
            "offload_optimizer": "offload_optimizer" in zero, "offload_params": "offload_param" in zero,
            "optimizer": type(inner).__name__ + (" (fused)" if getattr(inner, "defaults", {}).get("fused") else ""),
            "gradient_clipping": self.config["gradient_clipping"],
            "clipping_in": "off" if not self.config["gradient_clipping"]
            else "fused optimizer step" if self.fused_optimizer is not None
            else "engine" if self.clip else "deepspeed",
            "zero3_master_bytes_shared": self.master_bytes_shared,
            "world_size": self.engine.world_size,
        }

    def close(self) -> None:
        """Remove DeepSpeed's gradient hooks: ZeRO's hold the model through the autograd graph,
        which the garbage collector cannot see, so an in-process run (bench, tests) that builds
        engines one after another would keep every model until the process ends."""
        self.engine.destroy()

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def forward(self, task: str, batch: dict[str, torch.Tensor]) -> TaskOutput:
        """The model's forward on one task's micro-batch, through DeepSpeed's wrapper."""
        return self.engine(task, **{k: v.to(self.engine.device, non_blocking=True) for k, v in batch.items()})

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        if self.track_memory:  # gradients and optimizer state both live: the peak of model state
            self.peak_tensor_bytes = max(self.peak_tensor_bytes, live_tensor_bytes())

    def step(self) -> None:
        """The optimizer step (DeepSpeed's, which skips it between accumulation boundaries), after
        this engine's own clipping where it clips; gradients are averaged over ranks by then."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        if self.clip and boundary:
            clip_gradients(self.clipped_params, self.clip, self.fused_optimizer)
            try:
                self.engine.step()
            finally:
                if self.fused_optimizer is not None:
                    self.fused_optimizer.grad_scale = None  # torch reads None as "no scale"
        else:
            self.engine.step()
        if boundary and self.zero_stage == 3:
            # else an unused parameter's stale gradient steps it again (and a resume was not exact)
            clear_zero3_gradient_partitions(self.engine.optimizer)
        if self.track_memory:
            self.peak_tensor_bytes = max(self.peak_tensor_bytes, live_tensor_bytes())

    def train(self) -> None:
        self.engine.train()

    def probe_gradients(self, handles: list[LossHandle]) -> torch.Tensor:
        """Each loss's gradient at the model's probe parameters (a few unpartitioned shared
        parameters), `[losses, probe]`, averaged over processes. Taken with autograd.grad from the
        un-hooked losses, so ZeRO's gradient hooks never fire (a gradient through a hooked loss
        would make DeepSpeed run a whole backward epilogue)."""
        probe = self.engine.module.sharing.probe_parameters()
        return self.mean_over_ranks(torch.stack([
            torch.cat([g.reshape(-1).float() for g in torch.autograd.grad(
                handle.loss, probe, retain_graph=True, allow_unused=True, materialize_grads=True)])
            for handle in handles]))

    def mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
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
        # each node's local rank 0 fetches and verifies; every rank loads the tag global rank 0 chose
        chosen = [store.latest_sound() if local_rank() == 0 else None]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(chosen, src=0)
        tag = chosen[0]
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

    def checkpoint_weights(self, store: CheckpointStore, tag: str) -> dict[str, torch.Tensor]:
        """Full fp32 weights of any complete checkpoint, read from its files by this process alone
        (no collective): the weights of an earlier, selected step."""
        root = store.fetch(tag)
        if self.zero_stage == 0:  # no partitions: the module's own state file holds every weight
            state = torch.load(Path(root) / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                               weights_only=False)["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
        return {k: v.float().contiguous() for k, v in state.items()}

    def inference_model(self, skeleton: Callable[[], nn.Module]) -> nn.Module:
        """The model with every weight on this process, in eval mode, to predict without collectives
        (each process evaluates its own share of a dev split): the engine's module below ZeRO-3.
        Under ZeRO-3 each process holds a partition, so a plain copy (built once by `skeleton`) is
        refreshed from the gathered weights: a collective, which every process calls at the same step.
        `train()` puts the engine's module back in training mode."""
        module = self.engine.module
        if self.zero_stage < 3:
            return module.eval()
        copy = getattr(self, "_inference_copy", None)
        if copy is None:
            # its random init must not draw from the training's streams: with evaluation or without,
            # resumed or not, training sees the same dropout masks
            with torch.random.fork_rng(devices=[]):
                copy = self._inference_copy = skeleton().to(self.engine.device).eval()
        own = dict(copy.named_parameters())
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            for name, param in module.named_parameters():
                if name in own:  # training-only parameters (learned loss weights) have no place there
                    own[name].data.copy_(param.data)
        return copy


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
