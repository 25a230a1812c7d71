"""Single-task micro-batches, each rank holding distinct examples of the same task.

The k-th batch of a task is a pure function of (seed, task, k): shuffled once per epoch, the
global batch split across ranks. Only the per-task counters are state, so resuming is exact.

Length grouping (the "bucketing" of fairseq / HF `group_by_length`): each epoch's shuffled order
is cut into buckets of `bucket_batches` global batches, each bucket sorted by length and cut into
global batches, and the epoch's batches shuffled again. Batches then hold similar lengths (little
padding) while the batch order stays random. Ranks take interleaved rows of a sorted global batch,
so they also finish their micro-steps at about the same time.
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

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])

    batch = {
        "input_ids": pad("input_ids", pad_id),
        "token_type_ids": pad("token_type_ids", 0),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                        for r in rows]),
    }
    if isinstance(rows[0]["labels"], list):
        batch["labels"] = pad("labels", IGNORE)
    else:
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
    return batch


class TaskBatches:
    def __init__(self, features: dict[str, list[dict[str, Any]]], micro_batch: int, rank: int,
                 world: int, seed: int, pad_id: int, group_by_length: bool = False,
                 bucket_batches: int = 64) -> None:
        self.features = features
        self.micro_batch, self.rank, self.world = micro_batch, rank, world
        self.seed, self.pad_id = seed, pad_id
        self.global_batch = micro_batch * world
        self.group_by_length, self.bucket_batches = group_by_length, bucket_batches
        self.lengths = {name: np.array([len(r["input_ids"]) for r in rows]) for name, rows in features.items()}
        self._epoch_cache: dict[str, tuple[int, np.ndarray]] = {}
        for name, rows in features.items():
            if len(rows) < self.global_batch:
                raise ValueError(f"task {name!r} has {len(rows)} training examples, fewer than one global "
                                 f"batch ({self.global_batch}); lower micro_batch_size or processes")
        self.counters = {name: 0 for name in features}

    def sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.features.items()}

    def _epoch(self, task: str, epoch: int) -> np.ndarray:
        """All global batches of one epoch, shape [batches, global_batch]; pure in (seed, task, epoch)."""
        cached = self._epoch_cache.get(task)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rows = len(self.features[task])
        per_epoch = rows // self.global_batch
        rng = np.random.default_rng([self.seed, zlib.crc32(task.encode()), epoch])
        order = rng.permutation(rows)[:per_epoch * self.global_batch]
        if self.group_by_length:
            bucket = self.bucket_batches * self.global_batch
            lengths = self.lengths[task]
            # a stable sort keeps the shuffled order among equal lengths, so ties stay random
            order = np.concatenate([part[np.argsort(lengths[part], kind="stable")]
                                    for part in np.split(order, range(bucket, len(order), bucket))])
            batches = order.reshape(per_epoch, self.global_batch)[rng.permutation(per_epoch)]
        else:
            batches = order.reshape(per_epoch, self.global_batch)
        self._epoch_cache[task] = (epoch, batches)
        return batches

    def _indices(self, task: str, k: int) -> np.ndarray:
        epoch, position = divmod(k, len(self.features[task]) // self.global_batch)
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
