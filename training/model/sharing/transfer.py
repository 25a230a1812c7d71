"""`transfer`: the MT-DNN recipe (Liu, He, Chen & Gao, "Multi-Task Deep Neural Networks for
Natural Language Understanding", ACL 2019): multi-task training of a hard-shared encoder from the
pretrained one (stage 1), then per-task fine-tuning starting from the stage-1 checkpoint
(stage 2). The stages run in `training.launch.schedule.train_transfer`; this module is the assembled
model: one fine-tuned encoder copy per fine-tuned task, the stage-1 encoder for the others.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.model.sharing.common import SharedEncoderModule, encode, param_problems
from training.task_spec import TaskSpec


class TransferParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    finetune_tasks: list[str] | None = Field(None, description="tasks to fine-tune in stage 2 (default: all)")
    finetune_steps: int | None = Field(None, gt=0, description="stage-2 steps per task (default: steps / tasks)")
    finetuned: list[str] = Field([], description="written by the assembly: tasks with their own encoder")


class TransferSharing(SharedEncoderModule):
    Params: ClassVar[type[BaseModel]] = TransferParams

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.params = TransferParams(**params)
        self.encoder = encoder
        self.task_encoders = nn.ModuleDict({t: copy.deepcopy(encoder) for t in self.params.finetuned})

    def _encoder(self, task: str) -> nn.Module:
        return self.task_encoders[task] if task in self.task_encoders else self.encoder

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return encode(self._encoder(task), input_ids, attention_mask, token_type_ids), None

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One pass for all stage-1 tasks, one more per fine-tuned task."""
        shared = [t for t in tasks if t not in self.task_encoders]
        out = {}
        if shared:
            hidden = encode(self.encoder, input_ids, attention_mask, token_type_ids)
            out = {t: hidden for t in shared}
        for t in tasks:
            if t in self.task_encoders:
                out[t] = encode(self.task_encoders[t], input_ids, attention_mask, token_type_ids)
        return out

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        problems = param_problems(TransferParams, params, "training.sharing_params")
        unknown = set((params.get("finetune_tasks") or [])) - set(tasks)
        if unknown:
            problems.append(f"training.sharing_params.finetune_tasks: unknown task(s) {sorted(unknown)}; "
                            f"tasks are {tasks}")
        return problems

    @staticmethod
    def train_stages() -> Callable[..., str]:
        """The staged trainer `training.launch.stage.train_model` hands this strategy to."""
        from training.launch.schedule import train_transfer

        return train_transfer
