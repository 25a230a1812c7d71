"""Task heads: plain modules mapping shared features to logits. One registry: `HEADS`."""
from __future__ import annotations

import torch
from torch import nn


class TokenHead(nn.Module):
    """Per-token logits from the last hidden states."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))


class SequenceHead(nn.Module):
    """Sentence logits from the first ([CLS]) position, through a tanh projection (BERT pooler style)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(hidden[:, 0]))
        return self.out(self.dropout(pooled))


HEADS: dict[str, type[nn.Module]] = {
    "token_classification": TokenHead,
    "sequence_classification": SequenceHead,
    "sequence_pair_classification": SequenceHead,
    "sequence_regression": SequenceHead,  # one output: the value (TaskSpec.num_labels is 1)
    "sequence_pair_regression": SequenceHead,
}
