"""Single-task micro-batches, each rank holding distinct examples of the same task.

The k-th batch of a task is a pure function of (seed, task, k): shuffled once per epoch, the
global batch split across ranks. Only the per-task counters are state, so resuming is exact.

Length grouping (the "bucketing" of fairseq / HF `group_by_length`): each epoch's shuffled order
is cut into buckets of `bucket_batches` global batches, each bucket sorted by length and cut into
global batches, and the epoch's batches shuffled again. Batches then hold similar lengths (little
padding) while the batch order stays random. Ranks take interleaved rows of a sorted global batch,
so they also finish their micro-steps at about the same time.

Token budget (`max_tokens`, fairseq's `--max-tokens`): instead of a fixed number of rows, each
global batch takes as many rows per rank as keep rows x padded length within the budget, so short
rows come in larger batches and long ones in smaller. The cut is greedy over the epoch's
length-sorted buckets (a bucket is `bucket_batches` budget-sized global batches at the task's
median length) and, like the rows, a pure function of (seed, task, epoch): every rank cuts the
same batches, so all ranks take the same number of micro-batches per step, and the per-task
counter stays the only state.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

IGNORE = -100


def load_features(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)

    def pad(key: str, value: int | list[int]) -> torch.Tensor:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

    batch = {
        "input_ids": pad("input_ids", pad_id),
        "token_type_ids": pad("token_type_ids", 0),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                        for r in rows]),
    }
    first = rows[0]["labels"]
    if isinstance(first, list) and first and isinstance(first[0], list):
        # a label per position with several channels (dependency parsing: deprel, head, candidate)
        batch["labels"] = pad("labels", [IGNORE] * len(first[0]))
    elif isinstance(first, list):
        batch["labels"] = pad("labels", IGNORE)
    else:
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
    return batch


def budget_cut(order: np.ndarray, lengths: np.ndarray, world: int, max_tokens: int) -> list[np.ndarray]:
    """Cut `order` (a multiple of `world` rows) into global batches of whole groups of `world`
    consecutive rows (one row per rank each), as many groups as keep groups x longest row within
    `max_tokens`: the padded size of every rank's micro-batch."""
    group_max = lengths[order].reshape(-1, world).max(axis=1)
    cuts, start, longest = [], 0, 0
    for g, length in enumerate(group_max):
        longest = max(longest, int(length))
        if (g + 1 - start) * longest > max_tokens:
            cuts.append(g)
            start, longest = g, int(length)
    return np.split(order, [c * world for c in cuts])


class TaskBatches:
    def __init__(self, features: dict[str, list[dict[str, Any]]], micro_batch: int, rank: int,
                 world: int, seed: int, pad_id: int, group_by_length: bool = False,
                 bucket_batches: int = 64, max_tokens: int | None = None) -> None:
        self.features = features
        self.micro_batch, self.rank, self.world = micro_batch, rank, world
        self.seed, self.pad_id = seed, pad_id
        self.global_batch = micro_batch * world
        self.group_by_length, self.bucket_batches = group_by_length, bucket_batches
        self.max_tokens = max_tokens
        self.lengths = {name: np.array([len(r["input_ids"]) for r in rows]) for name, rows in features.items()}
        self._epoch_cache: dict[str, tuple[int, list[np.ndarray]]] = {}
        # budget batches per epoch vary: each task's epoch sizes, as far as they were counted
        self._epoch_sizes: dict[str, list[int]] = {name: [] for name in features}
        for name, rows in features.items():
            if max_tokens is None and len(rows) < self.global_batch:
                raise ValueError(f"task {name!r} has {len(rows)} training examples, fewer than one global "
                                 f"batch ({self.global_batch}); lower micro_batch_size or processes")
            if max_tokens is not None and len(rows) < world:
                raise ValueError(f"task {name!r} has {len(rows)} training examples, fewer than one per "
                                 f"process ({world}); lower processes")
            if max_tokens is not None and len(rows) and int(self.lengths[name].max()) > max_tokens:
                raise ValueError(f"training.max_tokens: task {name!r} has a row of {int(self.lengths[name].max())} "
                                 f"tokens, more than max_tokens ({max_tokens}); set max_tokens to at least "
                                 "encoder.max_length")
        self.counters = {name: 0 for name in features}

    def sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.features.items()}

    def _epoch(self, task: str, epoch: int) -> list[np.ndarray]:
        """All global batches of one epoch (row indices, ranks interleaved); pure in (seed, task, epoch)."""
        cached = self._epoch_cache.get(task)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rows, lengths = len(self.features[task]), self.lengths[task]
        unit = self.world if self.max_tokens is not None else self.global_batch
        rng = np.random.default_rng([self.seed, zlib.crc32(task.encode()), epoch])
        order = rng.permutation(rows)[:rows // unit * unit]
        if self.max_tokens is not None:
            per_rank = max(1, self.max_tokens // max(1, int(np.median(lengths))))
            bucket = self.bucket_batches * per_rank * self.world if self.group_by_length else len(order)
            parts = [self._sorted(part, lengths) if self.group_by_length else part
                     for part in np.split(order, range(bucket, len(order), bucket))]
            batches = [b for part in parts for b in budget_cut(part, lengths, self.world, self.max_tokens) if len(b)]
            batches = [batches[i] for i in rng.permutation(len(batches))] if self.group_by_length else batches
        elif self.group_by_length:
            bucket = self.bucket_batches * self.global_batch
            order = np.concatenate([self._sorted(part, lengths)
                                    for part in np.split(order, range(bucket, len(order), bucket))])
            batches = list(order.reshape(-1, self.global_batch)[rng.permutation(len(order) // self.global_batch)])
        else:
            batches = list(order.reshape(-1, self.global_batch))
        self._epoch_cache[task] = (epoch, batches)
        return batches

    @staticmethod
    def _sorted(part: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        # a stable sort keeps the shuffled order among equal lengths, so ties stay random
        return part[np.argsort(lengths[part], kind="stable")]

    def _locate(self, task: str, k: int) -> tuple[int, int]:
        """(epoch, position in it) of a task's k-th batch."""
        if self.max_tokens is None:
            return divmod(k, len(self.features[task]) // self.global_batch)
        sizes = self._epoch_sizes[task]
        epoch = 0
        while True:
            if epoch == len(sizes):
                sizes.append(len(self._epoch(task, epoch)))
            if k < sizes[epoch]:
                return epoch, k
            k -= sizes[epoch]
            epoch += 1

    def _indices(self, task: str, k: int) -> np.ndarray:
        epoch, position = self._locate(task, k)
        return self._epoch(task, epoch)[position][self.rank::self.world]

    def next(self, task: str) -> dict[str, torch.Tensor]:
        k = self.counters[task]
        self.counters[task] = k + 1
        rows = self.features[task]
        return collate([rows[i] for i in self._indices(task, k)], self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return dict(self.counters)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counters.update(state)


def padding_efficiency(batches: list[dict[str, torch.Tensor]]) -> float:
    """Real tokens / processed tokens (padding included) over some batches."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    processed = sum(b["attention_mask"].numel() for b in batches)
    return real / processed if processed else 1.0
