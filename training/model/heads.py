"""Task heads: plain modules mapping shared features to logits. One registry: `HEADS`."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from data_prep.tokenize import CANDIDATE, DEPREL, HEAD, IGNORE, ROOT_POSITION
from training.model.mst import decode_tree


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


# masks an arc that may not be taken (a non-word position, the word itself); finite, so a row's
# softmax never divides by zero
NEG_SCORE = -1e9


def _mlp(hidden: int, size: int, dropout: float) -> nn.Sequential:
    """Dozat & Manning's reduction of each word's state to a role-specific vector (dependent or
    head, for arcs or for labels): dropout, a linear map, a leaky ReLU, dropout."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, size), nn.LeakyReLU(0.1), nn.Dropout(dropout))


class BiaffineArcs(nn.Module):
    """Arc scores `s[b, d, h] = dep_d U head_h + head_h . u`: the bilinear term scores a pair, the
    linear one how likely h is to head anything (the prior of Dozat & Manning's biaffine form; a
    term in dep_d alone would be the same for every candidate head and cancel in the softmax).
    Zero-initialised, as in their parser: every candidate head starts equally likely."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size, size))
        self.head_bias = nn.Parameter(torch.zeros(size))

    def forward(self, dep: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return torch.bmm(dep @ self.weight, head.transpose(1, 2)) + (head @ self.head_bias).unsqueeze(1)


class BiaffineLabels(nn.Module):
    """Relation scores of given (dependent, head) pairs, `[N, labels]`: a bilinear term, a linear
    term in both vectors and a bias. Every parameter has the label dimension first, so a label
    list that grows on retraining appends rows (training.model.multitask.load_matching)."""

    def __init__(self, size: int, num_labels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_labels, size, size))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.single = nn.Linear(2 * size, num_labels, bias=False)

    def forward(self, dep: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        # einsum, not nn.Bilinear: its trilinear kernel was 5x slower on the CPU for the same product
        pair = torch.einsum("nd,lde,ne->nl", dep, self.weight, head)
        return pair + self.single(torch.cat([dep, head], dim=-1)) + self.bias


class ParserHead(nn.Module):
    """Biaffine dependency parser head (Dozat & Manning, "Deep Biaffine Attention for Neural
    Dependency Parsing", ICLR 2017), as MaChAmp and spaCy put one on a Transformer encoder.

    Four MLPs reduce each position's state to its role as a dependent or a head, for arcs and for
    relations. Arc scores are biaffine over the positions of one encoder input, `[B, T(dependent),
    T(head)]`; a word is its first subword and the leading special token ([CLS]) stands for the
    root. Relations are scored only for the (dependent, head) pairs asked for: the gold heads in
    training (`loss`), the decoded heads at inference (`decode`), so `[B, T, T, labels]` never
    exists. Decoding is Chu-Liu/Edmonds with exactly one word under the root (non-projective,
    training.model.mst), per encoder input.

    `forward` gives the arc scores (what a caller without labels sees as the head's logits). Every
    method reaches the parameters only through the submodules' own forwards, where ZeRO-3 gathers
    a partitioned parameter."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        # UDify's sizes for BERT-base (768: arcs 768, relations 256), in proportion to the encoder
        arc, label = hidden, max(32, hidden // 3)
        self.arc_dep, self.arc_head = _mlp(hidden, arc, dropout), _mlp(hidden, arc, dropout)
        self.label_dep, self.label_head = _mlp(hidden, label, dropout), _mlp(hidden, label, dropout)
        self.arcs = BiaffineArcs(arc)
        self.labels = BiaffineLabels(label, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.arcs(self.arc_dep(hidden), self.arc_head(hidden))

    def loss(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(arc scores, detached; the loss): cross-entropy of each dependent's gold head among the
        candidate heads of its input (the root position and every word's first subword, itself
        excluded), plus cross-entropy of its gold relation scored at its gold head. `labels` is
        `[B, T, 3]`: deprel id, head position, candidate flag per position (data_prep.tokenize:
        IGNORE where a position is not a dependent)."""
        arcs = self.forward(hidden, attention_mask).float()
        heads, deprels = labels[..., HEAD], labels[..., DEPREL]
        batch, dep = (heads != IGNORE).nonzero(as_tuple=True)
        if batch.numel() == 0:  # no dependent in this micro-batch: a zero loss that still reaches every arc score
            return arcs.detach(), arcs.sum() * 0.0
        allowed = labels[..., CANDIDATE][batch] == 1
        allowed[torch.arange(len(dep), device=dep.device), dep] = False
        rows = arcs[batch, dep].masked_fill(~allowed, NEG_SCORE)
        gold = heads[batch, dep]
        arc_loss = F.cross_entropy(rows, gold)
        relations = self.labels(self.label_dep(hidden)[batch, dep], self.label_head(hidden)[batch, gold]).float()
        return arcs.detach(), arc_loss + F.cross_entropy(relations, deprels[batch, dep])

    @torch.no_grad()
    def decode(self, hidden: torch.Tensor, attention_mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """`[B, T, 2]` long: per word start (`candidates` True, the root position excluded) its
        head's position (0: the root) and its relation id; -1 elsewhere. `candidates`: `[B, T]`
        bool, True at the root position and at the first subword of every word of the input."""
        arcs = self.forward(hidden, attention_mask).float().cpu().numpy()
        # a diverged model's NaN scores still decode (to some tree) instead of failing evaluation
        arcs = np.nan_to_num(arcs, nan=-1e30, posinf=1e30, neginf=-1e30)
        starts = candidates.cpu().numpy()
        head_at = np.full(starts.shape, -1, dtype=np.int64)
        for b in range(starts.shape[0]):
            positions = np.flatnonzero(starts[b])
            if len(positions) < 2 or positions[0] != ROOT_POSITION:
                continue  # no word in this input (or no root position: nothing to attach to)
            tree = decode_tree(arcs[b][np.ix_(positions, positions)])
            head_at[b, positions[1:]] = positions[tree]
        heads = torch.from_numpy(head_at).to(hidden.device)
        out = torch.full((*heads.shape, 2), -1, dtype=torch.long, device=hidden.device)
        batch, dep = (heads >= 0).nonzero(as_tuple=True)
        if batch.numel():
            gold = heads[batch, dep]
            relations = self.labels(self.label_dep(hidden)[batch, dep], self.label_head(hidden)[batch, gold])
            out[batch, dep, 0] = gold
            out[batch, dep, 1] = relations.argmax(-1)
        return out


HEADS: dict[str, type[nn.Module]] = {
    "token_classification": TokenHead,
    "sequence_classification": SequenceHead,
    "sequence_pair_classification": SequenceHead,
    "sequence_regression": SequenceHead,  # one output: the value (TaskSpec.num_labels is 1)
    "sequence_pair_regression": SequenceHead,
    "dependency_parsing": ParserHead,  # scores its own loss and decodes trees (MultiTaskModel asks it)
}
