"""Tokenization with a fast tokenizer and label alignment.

Token tasks align each word's label to its first subword (the others get -100). A sentence
longer than `max_length` is split into consecutive chunks of whole words, so no word is ever
silently dropped; evaluation chunks the same way and stitches the words back together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_prep.examples import Example

IGNORE = -100


@dataclass
class WordChunk:
    """One encoder input covering words [start, start + len(word_ids_of_first_subwords)) of a sentence."""

    sentence: int
    input_ids: list[int]
    token_type_ids: list[int]
    # position -> index of the word (in the whole sentence) whose first subword sits there, else -1
    first_subword_word: list[int]


def _subword_counts(tokenizer: Any, sentences: list[list[str]]) -> list[list[int]]:
    enc = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    counts: list[list[int]] = []
    for i, words in enumerate(sentences):
        per_word = [0] * len(words)
        for wid in enc.word_ids(i):
            if wid is not None:
                per_word[wid] += 1
        counts.append(per_word)
    return counts


def _chunk_spans(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Greedy consecutive word spans whose subword total fits `budget` (a lone overlong word
    still gets a span of its own; its tail subwords are truncated, its first one is kept)."""
    spans: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, n in enumerate(counts):
        n = max(n, 1)
        if i > start and used + n > budget:
            spans.append((start, i))
            start, used = i, 0
        used += n
    spans.append((start, len(counts)))
    return spans


def encode_words(tokenizer: Any, sentences: list[list[str]], max_length: int) -> list[WordChunk]:
    """Encode pre-split sentences into chunks that each fit `max_length`."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    pieces: list[tuple[int, int, list[str]]] = []
    for s, counts in enumerate(_subword_counts(tokenizer, sentences)):
        for start, end in _chunk_spans(counts, budget):
            pieces.append((s, start, sentences[s][start:end]))
    if not pieces:
        return []
    enc = tokenizer([p[2] for p in pieces], is_split_into_words=True, truncation=True, max_length=max_length)
    chunks: list[WordChunk] = []
    for i, (sentence, start, _) in enumerate(pieces):
        first: list[int] = []
        seen: set[int] = set()
        for wid in enc.word_ids(i):
            if wid is None or wid in seen:
                first.append(-1)
            else:
                seen.add(wid)
                first.append(start + wid)
        types = enc["token_type_ids"][i] if "token_type_ids" in enc else [0] * len(first)
        chunks.append(WordChunk(sentence, enc["input_ids"][i], types, first))
    return chunks


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
    return tokenizer(texts, pairs, truncation=True, max_length=max_length)


def tokenize_examples(examples: list[Example], task_type: str, labels: list[str], tokenizer: Any,
                      max_length: int) -> list[dict[str, list[int] | int]]:
    """Training features: input_ids, token_type_ids and labels (a list for tokens, an int for sequences)."""
    label_id = {lab: i for i, lab in enumerate(labels)}
    if task_type == "token_classification":
        chunks = encode_words(tokenizer, [ex.tokens or [] for ex in examples], max_length)
        return [{"input_ids": c.input_ids, "token_type_ids": c.token_type_ids,
                 "labels": [IGNORE if w < 0 else label_id[examples[c.sentence].tags[w]]  # type: ignore[index]
                            for w in c.first_subword_word]} for c in chunks]
    pairs = [ex.text_pair or "" for ex in examples] if task_type == "sequence_pair_classification" else None
    enc = encode_texts(tokenizer, [ex.text or "" for ex in examples], pairs, max_length)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return [{"input_ids": ids, "token_type_ids": tt, "labels": label_id[ex.label]}  # type: ignore[index]
            for ids, tt, ex in zip(enc["input_ids"], types, examples)]
