"""`adversarial`: shared-private multi-task learning (Liu, Qiu & Huang, "Adversarial Multi-task
Learning for Text Classification", ACL 2017).

The shared encoder's states plus a small private extractor per task (one Transformer layer over
the shared embedding output, standing in for the paper's private LSTM) give each task's features.
A task discriminator reads the mean-pooled shared states through a gradient reversal layer
(Ganin & Lempitsky, ICML 2015), so the encoder is pushed toward task-invariant shared features;
an orthogonality loss ||S^T P||_F^2 keeps shared and private features apart. The
discriminator's accuracy is exposed through `metrics()`: it should fall toward chance (1/tasks).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from training.model.sharing.common import GradReverse, SharedEncoderModule, encode, masked_mean, param_problems
from training.task_spec import TaskSpec


class AdversarialParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adversarial_weight: float = Field(0.05, ge=0.0, description="weight of the discriminator loss")
    reversal_scale: float = Field(1.0, ge=0.0, description="gradient reversal strength")
    orthogonality_weight: float = Field(0.01, ge=0.0, description="weight of ||S^T P||_F^2")


class PrivateEncoder(nn.Module):
    """One small post-norm Transformer layer built from plain Linear modules only: ZeRO-3 gathers
    a module's parameters when its forward runs, and torch's MultiheadAttention reads its output
    projection's weight without calling that submodule."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn_in = nn.Linear(hidden, hidden)
        self.ffn_out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        keep = attention_mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, s, h)
        x = self.norm1(x + self.dropout(self.out(attended)))
        return self.norm2(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class AdversarialSharing(SharedEncoderModule):
    Params: ClassVar[type[BaseModel]] = AdversarialParams

    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], **params: Any) -> None:
        super().__init__()
        self.params = AdversarialParams(**params)
        self.encoder = encoder
        cfg = encoder.config
        hidden = cfg.hidden_size
        self.task_index = {t.name: i for i, t in enumerate(tasks)}
        self.private = nn.ModuleDict({t.name: PrivateEncoder(hidden, cfg.num_attention_heads, cfg.hidden_dropout_prob)
                                      for t in tasks})
        self.discriminator = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, len(tasks)))
        self._correct = 0
        self._seen = 0

    def _private(self, task: str, embedded: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.private[task](embedded, attention_mask)

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        states = encode(self.encoder, input_ids, attention_mask, token_type_ids, all_layers=True)
        shared, private = states[-1], self._private(task, states[0], attention_mask)
        if not self.training:
            return shared + private, None
        return shared + private, self._adversarial(task, shared, attention_mask) + self._orthogonality(
            shared, private, attention_mask)

    def _adversarial(self, task: str, shared: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = GradReverse.apply(masked_mean(shared, attention_mask), self.params.reversal_scale)
        logits = self.discriminator(pooled)
        target = torch.full((logits.size(0),), self.task_index[task], dtype=torch.long, device=logits.device)
        self._correct += int((logits.argmax(-1) == target).sum())
        self._seen += int(target.numel())
        return self.params.adversarial_weight * F.cross_entropy(logits.float(), target)

    def _orthogonality(self, shared: torch.Tensor, private: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """||S^T P||_F^2 over the batch's real tokens, rows L2-normalised so the loss is bounded
        by tokens^2 whatever the feature scale (the paper's raw form grows with the norms)."""
        mask = attention_mask.reshape(-1).bool()
        s = F.normalize(shared.reshape(-1, shared.size(-1))[mask].float(), dim=-1)
        p = F.normalize(private.reshape(-1, private.size(-1))[mask].float(), dim=-1)
        return self.params.orthogonality_weight * (s.T @ p).pow(2).sum() / mask.sum().clamp(min=1)

    def shared_pass(self, tasks: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        states = encode(self.encoder, input_ids, attention_mask, token_type_ids, all_layers=True)
        return {t: states[-1] + self._private(t, states[0], attention_mask) for t in tasks}

    def metrics(self) -> dict[str, float]:
        """Discriminator accuracy since the last call (on this process's batches)."""
        if self._seen == 0:
            return {}
        accuracy = self._correct / self._seen
        self._correct = self._seen = 0
        return {"discriminator_accuracy": round(accuracy, 4), "discriminator_chance": round(1 / len(self.task_index), 4)}

    @classmethod
    def config_problems(cls, params: dict[str, Any], tasks: list[str], zero_stage: int,
                        precision: str) -> list[str]:
        return param_problems(AdversarialParams, params, "training.sharing_params")
