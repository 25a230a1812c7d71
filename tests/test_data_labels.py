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


def test_declared_labels_order_the_ids_unless_the_champion_pins_them(write):
    data = write("train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n")
    cfg = TaskDataConfig(name="s", type="sequence_classification", format="tsv", train=str(data), dev=str(data),
                         labels=["pos", "neg", "neutral"])
    assert ingest_task(cfg, None).labels == ["pos", "neg", "neutral"], "declared order, unseen labels too"
    assert ingest_task(cfg, None, previous_labels=["neg", "pos"]).labels == ["neg", "pos", "neutral"]
    assert ingest_task(cfg, None, previous_labels=["gone", "pos"]).labels == ["gone", "pos", "neg", "neutral"]
    assert build_label_list(["b"], None, ["c", "b", "a"]) == ["c", "b", "a"]
