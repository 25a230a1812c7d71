"""Where the engine works around DeepSpeed itself, each with its reason. They reach into DeepSpeed's
internals as of the version below; `check_version` says so in the log when another is installed,
and each fix checks the attributes it relies on and does nothing when they are not there."""
from __future__ import annotations

import sys
import types
from typing import Any

import torch
from torch import nn

WRITTEN_FOR = "0.19.8"  # the DeepSpeed release these were written against and tested with


def check_version() -> str | None:
    """A line for the log when the installed DeepSpeed is not the one these fixes were written for."""
    import deepspeed

    if deepspeed.__version__ != WRITTEN_FOR:
        return (f"DeepSpeed {deepspeed.__version__} is installed; training.trainer.deepspeed_fixes was written "
                f"for {WRITTEN_FOR}: the ZeRO-3 master-weight aliasing, the clearing of ZeRO-3's gradient partitions "
                "(exact resume) and the engine's own clipping rely on "
                "its internals (each checks what it uses and stands down if it is missing)")
    return None


# Imported by DeepSpeed for features this project never uses. MLflow: `import deepspeed` imports its
# autotuner, which imports MLflow to log its own trials (~2.5 s of CPU). Muon: each ZeRO optimizer
# imports DeepSpeed's Muon modules to ask whether the optimizer is a Muon one, and defining Muon's
# kernels imports torch.compile's machinery (~2.3 s of CPU). Optimizers here are AdamW or
# DeepSpeedCPUAdam, never Muon.
UNUSED_BY_WORKERS = ("mlflow",)
MUON_MODULES = ("deepspeed.runtime.zero.muon.muon_optimizer", "deepspeed.runtime.zero.muon.original_muon")


class _NoMuon:
    """A class no optimizer of this project is an instance of (DeepSpeed's `isinstance` checks)."""


def _no_muon_update(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("Muon is not an optimizer of this project")


def skip_unused_imports() -> None:
    """Trim a training process's start-up (about 4.8 s of CPU per process, at every launch, retry
    and resume) of the imports above. For the processes the launcher starts, before DeepSpeed is
    imported; never in a process that uses MLflow (the flow logs to MLflow, workers never do)."""
    for name in UNUSED_BY_WORKERS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # `import mlflow` raises ImportError
    for name in MUON_MODULES:
        if name not in sys.modules:
            stand_in = types.ModuleType(name, "stand-in: this project never uses Muon")
            stand_in.MuonWithAuxAdam = _NoMuon  # type: ignore[attr-defined]
            stand_in.muon_update = stand_in.adam_update = _no_muon_update  # type: ignore[attr-defined]
            sys.modules[name] = stand_in


def skip_world_of_one_allreduce(engine: Any, zero_stage: int) -> None:
    """At ZeRO-0 DeepSpeed averages gradients after every backward even in a world of one, where it
    changes nothing but costs a flatten, an all-reduce and an unflatten of every gradient per step
    (~14 % of a MiniLM step on CPU). ZeRO 1-3 reduce inside their optimizers and keep this path."""
    if zero_stage == 0 and engine.world_size == 1 and hasattr(engine, "enable_backward_allreduce"):
        engine.enable_backward_allreduce = False


def clip_gradients(parameters: list[nn.Parameter], max_norm: float,
                   fused_optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """Clip gradients to a global L2 norm of at most `max_norm` with DeepSpeed's rule (coefficient
    max_norm / (norm + 1e-6), at most 1) and return the norm before clipping (a tensor: reading it
    would wait for the device).

    Used instead of DeepSpeed's own clipping at ZeRO-0 in fp32, where DeepSpeed loops over every
    parameter in Python and all-reduces a norm of gradients that are already averaged (~7 % of a
    MiniLM step on CPU).

    With a fused torch optimizer the scaling is not a pass of its own: the coefficient goes to the
    optimizer's `grad_scale` (the hook torch's GradScaler uses), which divides each gradient by it
    inside the fused kernel that reads the gradients anyway; it holds for the next `step()` only
    (see `Engine.step`). Otherwise gradients are scaled in place, on CPU only when the coefficient
    is below 1 (reading the norm costs no device sync there)."""
    with_grads = [p for p in parameters if p.grad is not None]
    if not with_grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm([p.grad for p in with_grads])
    if fused_optimizer is not None:
        coef = torch.clamp(max_norm / (norm.float() + 1e-6), max=1.0)
        fused_optimizer.grad_scale = (1.0 / coef).to(torch.float32)
    elif norm.device.type != "cpu" or float(norm) > max_norm:
        torch.nn.utils.clip_grads_with_norm_(with_grads, max_norm, norm)
    return norm


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




def clear_zero3_gradient_partitions(optimizer: Any) -> None:
    """Zero ZeRO-3's gradient partitions after an optimizer step, so a parameter that gets no
    gradient in the next accumulation window (a task head that step did not train) steps with a
    zero gradient instead of its last one.

    ZeRO-3 reduces each gradient into a persistent flat buffer (`grad_partitions_flat_buffer`; under
    optimizer offload then into the fp32 partitions' `.grad`), overwriting on a window's first
    micro-step and adding after it, but only for the parameters whose gradient hooks fired: the
    others' slices keep whatever they held, and the step (and the gradient norm for clipping) reads
    every slice. So an unused head moved again by its stale gradient, a head first used on a later
    micro-step added to it, and a resumed run, whose fresh buffer is zero, went its own way from the
    second step after the resume. ZeRO-1/2 give unused parameters zeros; this makes ZeRO-3 do the
    same. A memset of this process's gradient partition per optimizer step."""
    flat = getattr(optimizer, "grad_partitions_flat_buffer", None)
    if isinstance(flat, torch.Tensor):
        flat.zero_()
    if getattr(optimizer, "offload_optimizer", False):
        for partition in getattr(optimizer, "fp32_partitioned_groups_flat", None) or []:
            if isinstance(partition, torch.Tensor) and partition.grad is not None:
                partition.grad.zero_()
