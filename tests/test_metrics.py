"""The dev metrics the gate compares, on hand-made gold and predicted labels: what each counts
and what it divides by, so a metric that quietly changes meaning fails here."""
from __future__ import annotations

import pytest

from training.evaluation.metrics import METRICS, metrics_for


def test_token_accuracy_counts_tokens_not_sentences():
    gold = [["DET", "NOUN", "VERB"], ["PRON"]]
    pred = [["DET", "NOUN", "NOUN"], ["NOUN"]]
    assert METRICS["accuracy"](gold, pred) == pytest.approx(2 / 4)
    assert METRICS["accuracy"]([["a"], ["b"], ["b"]], [["a"], ["a"], ["b"]]) == pytest.approx(2 / 3)
    assert METRICS["accuracy"]([], []) == 0.0


def test_entity_f1_counts_whole_entities_as_conlleval_does():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # PER cut short (wrong), LOC right, ORG right, one spurious MISC
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    precision, recall = 2 / 4, 2 / 3
    assert METRICS["entity_f1"](gold, pred) == pytest.approx(2 * precision * recall / (precision + recall))
    # conlleval starts an entity at an I- tag after O: this prediction finds the PER entity
    assert METRICS["entity_f1"]([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]) == pytest.approx(1.0)
    # a token-level accuracy would call this mostly right; no entity is found whole
    assert METRICS["entity_f1"]([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "O"]]) == 0.0


def test_macro_f1_weighs_every_class_equally():
    gold = [["a"], ["a"], ["a"], ["b"]]
    pred = [["a"], ["a"], ["a"], ["a"]]
    f1_a = 2 * 0.75 * 1.0 / 1.75
    assert METRICS["macro_f1"](gold, pred) == pytest.approx((f1_a + 0.0) / 2)
    assert METRICS["accuracy"](gold, pred) == pytest.approx(0.75)


def test_regression_metrics_are_higher_is_better_and_defined_for_constants():
    gold = [[1.0], [2.0], [3.0]]
    assert METRICS["neg_mse"](gold, [[1.0], [2.0], [5.0]]) == pytest.approx(-4 / 3)
    assert METRICS["neg_mse"](gold, [[1.0], [2.0], [3.5]]) > METRICS["neg_mse"](gold, [[1.0], [2.0], [5.0]])
    assert METRICS["neg_mse"]([], []) == 0.0
    constant = [[2.0], [2.0], [2.0]]
    assert METRICS["pearson"](gold, constant) == 0.0 and METRICS["spearman"](gold, constant) == 0.0
    assert METRICS["pearson"]([[1.0]], [[1.0]]) == 0.0


@pytest.mark.parametrize("task_type,scheme,expected", [
    ("token_classification", "bio", ["accuracy", "entity_f1"]),
    ("token_classification", "plain", ["accuracy"]),
    ("sequence_classification", "plain", ["accuracy", "macro_f1"]),
    ("sequence_pair_classification", "plain", ["accuracy", "macro_f1"]),
    ("sequence_regression", "plain", ["pearson", "spearman", "neg_mse"]),
])
def test_metrics_for_each_task_type(task_type, scheme, expected):
    assert metrics_for(task_type, scheme) == expected


def test_f1_is_of_the_tasks_positive_label_and_las_compares_universal_relations():
    """`f1` scores the class the task names positive (not "1"); LAS counts `nmod:poss` against
    `nmod` as the same relation (CoNLL 2018), and a wrong head as wrong whatever the relation."""
    from training.evaluation.metrics import las, task_scores

    gold, pred = [["yes"], ["no"], ["yes"]], [["yes"], ["no"], ["no"]]
    assert task_scores("sequence_classification", "plain", gold, pred, "yes")["f1"] == pytest.approx(2 / 3)
    words = [[{"head": 0, "deprel": "root"}, {"head": 1, "deprel": "nmod:poss"}, {"head": 1, "deprel": "obj"}]]
    guess = [[{"head": 0, "deprel": "root"}, {"head": 1, "deprel": "nmod"}, {"head": 2, "deprel": "obj"}]]
    assert las(words, guess) == pytest.approx(2 / 3)
