"""One device and precision policy for every inference path: the flow's evaluation, the task
affinity, `mtl predict`, `mtl serve` and the MLflow pyfunc model behind `mlflow models serve`.

Device: CUDA when this process sees a GPU, else the CPU. A choice (`auto`, `cpu`, `cuda`,
`cuda:N`) comes, first found wins, from the caller's argument (`--device`, `training.eval_device`),
then the environment variable `MTL_DEVICE` (how a served model, which has no flags, is steered),
then `auto`.
Precision: bf16 autocast on a GPU that computes in bf16 natively (Ampere and newer), fp32
elsewhere; `fp32`, `bf16` or `fp16` from the argument (`--precision`), then `MTL_PRECISION`.
Autocast keeps the weights in fp32, so the same export loads anywhere and only the matmuls change.

Evaluation during training is not placed by this policy: it predicts with the model where the
trainer holds it (`Predictor.for_model`); only the precision comes from here.
"""
from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

DEVICE_ENV = "MTL_DEVICE"
PRECISION_ENV = "MTL_PRECISION"
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISION_CHOICES = "auto, fp32, bf16 or fp16"
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"  # what a config field accepts (training.eval_device)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


class DeviceError(ValueError):
    """A device or precision this process cannot use; the message names where the choice came from
    (the flag, the config key or the environment variable) and what to give instead."""


def _chosen(preference: str | None, env: str, what: str) -> tuple[str, str]:
    """(choice, where it came from): an explicit choice first, then the environment, then auto.
    `auto` (or nothing) given explicitly leaves the choice to the environment."""
    given = (preference or "").strip().lower()
    if given not in ("", "auto"):
        return given, what
    from_env = os.environ.get(env, "").strip().lower()
    if from_env not in ("", "auto"):
        return from_env, env
    return "auto", what


def inference_device(preference: str | torch.device | None = None, *, what: str = "device") -> torch.device:
    """The device to run inference on. `what` names the flag or config key the preference came
    from, for the error message (e.g. "--device", "training.eval_device")."""
    if isinstance(preference, torch.device):
        preference = str(preference)
    value, origin = _chosen(preference, DEVICE_ENV, what)
    if value == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::([0-9]+))?", value)
    if match is None:
        raise DeviceError(f"{origin}={value!r}: not a device; give {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"{origin}={value!r}: this process sees no CUDA device (torch {torch.__version__}, "
                          f"built for CUDA {torch.version.cuda or 'none'}); give cpu or auto, or check the driver "
                          "and CUDA_VISIBLE_DEVICES")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"{origin}={value!r}: this process sees {count} CUDA device(s), cuda:0 to "
                          f"cuda:{count - 1}; give one of those, cuda or auto")
    return torch.device("cuda", index)


def bf16_native() -> bool:
    """The visible GPU computes in bf16 itself (compute capability 8.0+); emulated bf16 on older
    GPUs is slower than fp32, so it does not count."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def inference_dtype(device: torch.device, preference: str | None = None, *, what: str = "precision") -> torch.dtype:
    """The autocast dtype for inference on `device` (torch.float32: no autocast)."""
    value, origin = _chosen(preference, PRECISION_ENV, what)
    if value == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_native() else torch.float32
    dtype = _DTYPES.get(value)
    if dtype is None:
        raise DeviceError(f"{origin}={value!r}: not a precision; give {PRECISION_CHOICES}")
    if dtype == torch.float16 and device.type != "cuda":
        raise DeviceError(f"{origin}={value!r}: fp16 autocast is for CUDA devices, this runs on {device}; "
                          "give fp32 or bf16 (or auto)")
    if dtype == torch.bfloat16 and device.type == "cuda" and not bf16_native():
        raise DeviceError(f"{origin}={value!r}: this GPU has no native bf16 (compute capability below 8.0); "
                          "give fp16 or fp32 (or auto)")
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[object]:
    """The context a forward pass runs in: autocast to `dtype`, or nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
