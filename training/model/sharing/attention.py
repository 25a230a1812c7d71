"""`attention`: each task learns its own attention over the shared representations.

A per-task softmax mix over the embedding output and every encoder layer (the scalar mix of
Peters et al., "Deep contextualized word representations", NAACL 2018, as used per task by
Kondratyuk & Straka, "75 Languages, 1 Model", EMNLP 2019), and for sentence tasks a
task-specific attention pooling over tokens (Lin et al., "A Structured Self-Attentive Sentence
Embedding", ICLR 2017) whose summary is written at position 0, where sentence heads read.
The learned layer weights are exposed by `layer_weights()` and logged through `metrics()`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from data_prep.config import is_token_task
from training.model.sharing.common import NoParams, SharedEncoderModule, encode, param_problems
from training.task_spec import TaskSpec


class LayerMix(nn.Module):
    """softmax(a) . layers, times a learned scale gamma."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(layers))
        self.gamma = nn.Parameter(torch.ones(1))  # not 0-dim: DeepSpeed cannot broadcast those

    def forward(self, states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        weights = torch.softmax(self.logits, 0)
        return self.gamma * sum(w * h for w, h in zip(weights, states))


class AttentionPool(nn.Module):
    """A task query scores every token; the summary is the attention-weighted mean."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).masked_fill(attention_mask == 0, torch.finfo(hidden.dtype).min)
        return torch.einsum("bs,bsh->bh", torch.softmax(scores, -1), hidden)


class AttentionSharing(SharedEncoderModule):
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.params = NoParams(**params)
        self.encoder = encoder
        layers = encoder.config.num_hidden_layers + 1
        hidden = encoder.config.hidden_size
        self.mix = nn.ModuleDict({t.name: LayerMix(layers) for t in tasks})
        self.pool = nn.ModuleDict({t.name: AttentionPool(hidden) for t in tasks if not is_token_task(t.type)})

    def _features(self, task: str, states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
        mixed = self.mix[task](states)
        if task not in self.pool:
            return mixed
        summary = self.pool[task](mixed, attention_mask)
        return torch.cat([summary.unsqueeze(1), mixed[:, 1:]], dim=1)

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        states = encode(self.encoder, input_ids, attention_mask, token_type_ids, all_layers=True)
        return self._features(task, states, attention_mask), None

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        states = encode(self.encoder, input_ids, attention_mask, token_type_ids, all_layers=True)
        return {t: self._features(t, states, attention_mask) for t in tasks}

    def layer_weights(self) -> dict[str, list[float]]:
        """Each task's softmax weights over [embeddings, layer 1, ..., layer L]. Empty where the
        logits are partitioned away (ZeRO-3 keeps such small tensors whole by default)."""
        return {t: torch.softmax(m.logits.detach().float(), 0).tolist()
                for t, m in self.mix.items() if m.logits.numel() > 0}

    def metrics(self) -> dict[str, float]:
        return {f"layer_weight.{t}.{i}": round(w, 4) for t, ws in self.layer_weights().items()
                for i, w in enumerate(ws)}

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        return param_problems(NoParams, params, "training.sharing_params")
