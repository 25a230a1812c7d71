"""Task sampling and distributed single-task batches."""
from __future__ import annotations

from collections import Counter

import pytest

from training.trainer.batches import TaskBatches
from training.trainer.sampling import ProportionalSampler


def features(n: int, token: bool) -> list[dict]:
    return [{"input_ids": [101, 1000 + i, 102], "token_type_ids": [0, 0, 0],
             "labels": [-100, i % 3, -100] if token else i % 2} for i in range(n)]


def test_proportional_sampler_is_deterministic_and_proportional():
    sampler = ProportionalSampler({"a": 300, "b": 100}, seed=7)
    draws = [sampler.sample(step) for step in range(4000)]
    assert draws == [ProportionalSampler({"a": 300, "b": 100}, seed=7).sample(s) for s in range(4000)]
    share = Counter(draws)["a"] / len(draws)
    assert 0.72 < share < 0.78


def test_ranks_get_distinct_examples_of_the_same_task():
    data = {"a": features(40, token=True)}
    ranks = [TaskBatches(data, micro_batch=4, rank=r, world=2, seed=1, pad_id=0) for r in range(2)]
    seen: list[int] = []
    for _ in range(5):  # one epoch: 40 examples / global batch 8
        batches = [r.next("a") for r in ranks]
        ids = [int(x) for b in batches for x in b["input_ids"][:, 1]]
        assert len(set(ids)) == 8
        seen += ids
    assert sorted(seen) == [1000 + i for i in range(40)]


def test_resume_continues_the_same_order():
    data = {"a": features(40, token=False), "b": features(24, token=True)}
    full = TaskBatches(data, 4, 0, 1, seed=3, pad_id=0)
    order = [full.next(t)["input_ids"].tolist() for t in "abab"]
    head = TaskBatches(data, 4, 0, 1, seed=3, pad_id=0)
    head.next("a"), head.next("b")
    resumed = TaskBatches(data, 4, 0, 1, seed=3, pad_id=0)
    resumed.load_state_dict(head.state_dict())
    assert [resumed.next(t)["input_ids"].tolist() for t in "ab"] == order[2:]


def test_too_small_task_is_refused():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TaskBatches({"a": features(5, token=False)}, 4, 0, 2, seed=0, pad_id=0)


def test_padding_and_label_masking():
    rows = [{"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 0], "labels": [-100, 4, -100]},
            {"input_ids": [1, 2], "token_type_ids": [0, 0], "labels": [-100, 5]}]
    batch = TaskBatches({"a": rows}, 2, 0, 1, seed=0, pad_id=9).next("a")
    row = batch["input_ids"].tolist().index([1, 2, 9])
    assert batch["attention_mask"][row].tolist() == [1, 1, 0]
    assert batch["labels"][row].tolist() == [-100, 5, -100]


def test_collate_pads_each_channel_of_a_parsing_label_with_ignore():
    """A parsing row has several label channels per position: the padding fills every channel."""
    from training.trainer.batches import IGNORE, collate

    rows = [{"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 0], "labels": [[0, 1], [2, 3], [4, 5]]},
            {"input_ids": [1, 2], "token_type_ids": [0, 0], "labels": [[6, 7], [8, 9]]}]
    batch = collate(rows, pad_id=0)
    assert batch["labels"].tolist() == [[[0, 1], [2, 3], [4, 5]], [[6, 7], [8, 9], [IGNORE, IGNORE]]]
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 2, 0]]
