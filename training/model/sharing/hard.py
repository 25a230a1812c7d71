"""`hard`: hard parameter sharing (Caruana, "Multitask Learning", Machine Learning 28, 1997).
Every task reads the same final encoder states."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from training.model.sharing.common import NoParams, SharedEncoderModule, encode, param_problems
from training.task_spec import TaskSpec


class HardSharing(SharedEncoderModule):
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.params = self.Params(**params)
        self.encoder = encoder

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return encode(self.encoder, input_ids, attention_mask, token_type_ids), None

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = encode(self.encoder, input_ids, attention_mask, token_type_ids)
        return {task: hidden for task in tasks}

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        return param_problems(NoParams, params, "training.sharing_params")
