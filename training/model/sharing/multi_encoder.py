"""`multi_encoder`: the shared encoder for most tasks, and a whole encoder of its own for each task
named in `task_encoders`.

This is the shape of a model assembled by the `mtdnn` schedule (Liu, He, Chen & Gao, "Multi-Task
Deep Neural Networks for Natural Language Understanding", ACL 2019): each task fine-tuned in the
schedule's second stage keeps its fine-tuned encoder copy; the others use the multi-task encoder.
As a training strategy it gives the named tasks private encoders from the first step (no sharing
for them), which is the single-task baseline inside one model.
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.model.sharing.common import SharedEncoderModule, encode, param_problems
from training.task_spec import TaskSpec


class MultiEncoderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_encoders: list[str] = Field([], description="tasks with an encoder of their own")


class MultiEncoderSharing(SharedEncoderModule):
    Params: ClassVar[type[BaseModel]] = MultiEncoderParams

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.params = MultiEncoderParams(**params)
        self.encoder = encoder
        self.task_encoders = nn.ModuleDict({t: copy.deepcopy(encoder) for t in self.params.task_encoders})

    def _encoder(self, task: str) -> nn.Module:
        return self.task_encoders[task] if task in self.task_encoders else self.encoder

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return encode(self._encoder(task), input_ids, attention_mask, token_type_ids), None

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One pass for all tasks on the shared encoder, one more per task with its own."""
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
        problems = param_problems(MultiEncoderParams, params, "training.sharing_params")
        unknown = set(params.get("task_encoders") or []) - set(tasks)
        if unknown:
            problems.append(f"training.sharing_params.task_encoders: unknown task(s) {sorted(unknown)}; "
                            f"tasks are {tasks}")
        return problems


SHARED_PREFIX = "sharing.encoder."
OWN_PREFIX = "sharing.task_encoders."


def carded_own_encoders(card: dict[str, Any]) -> list[str]:
    """The tasks with an encoder copy of their own in an export, from its model card (none unless
    its sharing is multi_encoder)."""
    return list(card["sharing_params"].get("task_encoders", [])) if card["sharing"] == "multi_encoder" else []


def own_encoder_entries(task: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`task`'s encoder copy and head in a multi_encoder state dict, taken from a hard-sharing state
    dict (another run's or another step's): its shared encoder becomes the task's own encoder."""
    out = {}
    for key, value in state.items():
        if key.startswith(SHARED_PREFIX):
            out[f"{OWN_PREFIX}{task}.{key[len(SHARED_PREFIX):]}"] = value
        elif key.startswith(f"heads.{task}."):
            out[key] = value
    return out


def task_view(task: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hard-sharing weights `task` uses in a multi_encoder state dict (the inverse of
    `own_encoder_entries`): its own encoder copy, where it has one, as the shared encoder; every
    other task's copy left out. A hard-sharing state dict comes back as it is."""
    own = f"{OWN_PREFIX}{task}."
    mine = {SHARED_PREFIX + k[len(own):]: v for k, v in state.items() if k.startswith(own)}
    out = {k: v for k, v in state.items() if not k.startswith(OWN_PREFIX) and not (mine and k.startswith(SHARED_PREFIX))}
    return {**out, **mine}
