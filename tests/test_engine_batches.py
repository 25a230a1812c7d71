"""Length-grouped batches: less padding, still rank-distinct, deterministic and resumable."""
from __future__ import annotations

import numpy as np
import pytest

from training.trainer.batches import TaskBatches, padding_efficiency


def varied(n: int, seed: int = 0) -> list[dict]:
    lengths = np.random.default_rng(seed).integers(3, 60, size=n)
    return [{"input_ids": [101] + [1000 + i] * int(length - 2) + [102], "token_type_ids": [0] * int(length),
             "labels": i % 2} for i, length in enumerate(lengths)]


def ids(batch: dict) -> list[int]:
    return [int(x) for x in batch["input_ids"][:, 1]]


def test_grouping_cuts_padding_and_keeps_ranks_distinct_over_an_epoch():
    data = {"a": varied(640)}
    grouped = [TaskBatches(data, 8, r, 2, seed=5, pad_id=0, group_by_length=True, bucket_batches=10)
               for r in range(2)]
    plain = TaskBatches(data, 8, 0, 2, seed=5, pad_id=0)
    seen: list[int] = []
    kept: list[dict] = []
    for _ in range(40):  # one epoch: 640 / global batch 16
        pair = [r.next("a") for r in grouped]
        assert not set(ids(pair[0])) & set(ids(pair[1]))
        seen += ids(pair[0]) + ids(pair[1])
        kept += pair
    assert sorted(seen) == [1000 + i for i in range(640)]
    naive = padding_efficiency([plain.next("a") for _ in range(40)])
    assert padding_efficiency(kept) > 0.9 > naive + 0.2


def test_grouped_order_is_random_and_resumes_exactly():
    data = {"a": varied(320), "b": varied(160, seed=1)}
    make = lambda seed: TaskBatches(data, 4, 1, 2, seed=seed, pad_id=0,  # noqa: E731
                                    group_by_length=True, bucket_batches=8)
    full = make(3)
    tasks = "abaabbab" * 8  # crosses an epoch of b (20 global batches)
    batches = [full.next(t) for t in tasks]
    order = [ids(b) for b in batches]
    head = make(3)
    for t in tasks[:30]:
        head.next(t)
    resumed = make(3)
    resumed.load_state_dict(head.state_dict())
    assert [ids(resumed.next(t)) for t in tasks[30:]] == order[30:]
    other = make(4)
    assert [ids(other.next(t)) for t in tasks] != order
    # batch lengths are not sorted across the epoch: buckets and batches are shuffled
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def budget_batches(data: dict, rank: int, world: int, seed: int = 5, grouped: bool = True) -> TaskBatches:
    return TaskBatches(data, 8, rank, world, seed=seed, pad_id=0, group_by_length=grouped, bucket_batches=16,
                       max_tokens=160)


def test_token_budget_batches_stay_within_the_budget_and_cover_each_epoch_once():
    data = {"a": varied(640)}
    ranks = [budget_batches(data, r, 2) for r in range(2)]
    epochs = []
    for epoch in range(2):
        seen: list[int] = []
        rows: list[int] = []
        widths: list[int] = []
        for _ in range(len(ranks[0]._epoch("a", epoch))):
            pair = [r.next("a") for r in ranks]
            for batch in pair:
                assert batch["input_ids"].numel() <= 160  # rows x padded length
            assert len(ids(pair[0])) == len(ids(pair[1]))  # every rank takes the same number of rows
            assert not set(ids(pair[0])) & set(ids(pair[1]))
            seen += ids(pair[0]) + ids(pair[1])
            rows.append(len(ids(pair[0])))
            widths.append(pair[0]["input_ids"].shape[1])
        assert sorted(seen) == [1000 + i for i in range(640)]
        assert max(rows) > 2 * min(rows)  # short rows come in larger batches
        # batches are shuffled across the length-sorted buckets: widths go down often, not once a bucket
        assert sum(b < a for a, b in zip(widths, widths[1:])) > len(widths) // 4
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # each epoch its own order
    assert padding_efficiency([r.next("a") for r in ranks for _ in range(20)]) > 0.9
    ungrouped = budget_batches(data, 0, 1, grouped=False)
    assert all(ungrouped.next("a")["input_ids"].numel() <= 160 for _ in range(200))  # crosses epochs


def test_token_budget_batches_resume_exactly_across_epochs():
    data = {"a": varied(320), "b": varied(160, seed=1)}
    tasks = "abaabbab" * 12  # several epochs of b
    full = budget_batches(data, 1, 2, seed=3)
    order = [ids(full.next(t)) for t in tasks]
    head = budget_batches(data, 1, 2, seed=3)
    for t in tasks[:70]:
        head.next(t)
    resumed = budget_batches(data, 1, 2, seed=3)
    resumed.load_state_dict(head.state_dict())
    assert [ids(resumed.next(t)) for t in tasks[70:]] == order[70:]
    assert [ids(budget_batches(data, 1, 2, seed=4).next(t)) for t in tasks] != order


def test_a_row_longer_than_the_budget_is_refused():
    with pytest.raises(ValueError, match="training.max_tokens: task 'a' has a row of"):
        TaskBatches({"a": varied(40)}, 8, 0, 1, seed=0, pad_id=0, max_tokens=30)
