"""Label ids stay stable across retrains: the champion's labels keep their ids, new ones append."""
from __future__ import annotations

from data_prep.config import TaskDataConfig
from data_prep.ingest import ingest_task
from data_prep.labels import build_label_list


def test_old_labels_keep_ids_new_ones_are_appended_sorted():
    previous = ["O", "B-PER", "I-PER"]
    labels = build_label_list(["B-LOC", "O", "B-PER", "B-ORG"], previous)
    assert labels == ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    assert build_label_list(["b", "a"]) == ["a", "b"], "a first run does not depend on data order"
    assert build_label_list([], ["x", "x", "y"]) == ["x", "y"]


def test_retrain_on_changed_data_keeps_the_champions_ids(write):
    first = write("v1.conll", "EU B-ORG\nrejects O\n\nPeter B-PER\n")
    v1 = ingest_task(TaskDataConfig(name="ner", type="token_classification", format="conll", train=str(first),
                                    dev=str(first)), None)
    second = write("v2.conll", "Paris B-LOC\nis O\n\nAnna B-PER\n")  # B-ORG gone, B-LOC new
    cfg = TaskDataConfig(name="ner", type="token_classification", format="conll", train=str(second), dev=str(second))
    v2 = ingest_task(cfg, None, previous_labels=v1.labels)
    assert v1.labels == ["B-ORG", "B-PER", "O"]
    assert v2.labels[:3] == v1.labels and v2.labels[3:] == ["B-LOC"]
    fresh = ingest_task(cfg, None)
    assert fresh.labels == ["B-LOC", "B-PER", "O"], "without the champion's list ids would shift"
