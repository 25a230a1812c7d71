"""What a launched worker is handed: the training sub-configs and artifact paths of one stage,
never the pipeline's root config."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_serializer

from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.task_spec import TaskSpec


class WorkerSpec(BaseModel):
    encoder: EncoderConfig
    training: TrainingConfig
    deepspeed: DeepSpeedConfig
    tasks: list[TaskSpec]
    features: dict[str, str]
    dev: dict[str, str] = Field(default_factory=dict, description="validated dev examples per evaluated task "
                                "(evaluation during training)")
    checkpoint_dir: str = Field(description="local folder or fsspec URL (s3://...) of this stage's checkpoints")
    checkpoint_staging_dir: str | None = Field(None, description="node-local folder for a remote checkpoint_dir")
    export_dir: str
    joint_export_dir: str | None = Field(None, description="where to write the newest checkpoint with every task "
                                         "on one shared encoder, when per-task selection gives tasks their own")
    metrics_file: str
    init_from: str | None = Field(None, description="an export whose weights the model starts from (warm start)")
    init_task: str | None = Field(None, description="the task of init_from whose own weights the model starts from")
    init_source: dict[str, str | None] | None = Field(
        None, description="where the run's weights started when it warm-starts from a registered model or another "
                          "run's export (uri, model_name, version, run_id), written on the model card as init_from")
    stage: str = Field("", description="the schedule stage this run is, for the model card")

    @field_serializer("deepspeed")
    def _deepspeed_as_given(self, deepspeed: DeepSpeedConfig) -> dict[str, Any]:
        # only the fields set explicitly: a field written out at its default would count as set in
        # the worker and override what deepspeed.config_file says (its stage, its precision)
        return deepspeed.model_dump(exclude_unset=True)
