"""Sharing strategies: how the shared encoder's states become each task's features.

Contract (plain `nn.Module`, no DeepSpeed): `forward(task, input_ids, attention_mask,
token_type_ids)` returns the task's features `[batch, seq, hidden]` and an auxiliary loss or
None; `shared_pass` returns features for several tasks from as few encoder passes as the
strategy allows. One registry: `SHARING`.
"""
from __future__ import annotations

import torch
from torch import nn

from training.tasks import TaskSpec


class HardSharing(nn.Module):
    """Hard parameter sharing (Caruana, "Multitask Learning", Machine Learning 28, 1997):
    every task reads the same final encoder states."""

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.encoder = encoder

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._encode(input_ids, attention_mask, token_type_ids), None

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = self._encode(input_ids, attention_mask, token_type_ids)
        return {task: hidden for task in tasks}


SHARING: dict[str, type[nn.Module]] = {
    "hard": HardSharing,
}
