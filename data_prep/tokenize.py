"""Tokenization with a fast tokenizer, label alignment and overlapping windows.

Token tasks: each word's label goes to its first, last or every subword (`label_alignment`).
Dependency parsing: each word's first subword gets its DEPREL and the position of its head's first
subword (the leading special token stands for the root), see `_align_parse`.
A sentence longer than `max_length` is split into windows of whole words that overlap by about
`stride` subwords, so no word is dropped and every word also sees context on both sides. Each
word is *owned* by exactly one window, the one where it sits most centrally: training labels it
there only, and evaluation takes its prediction from there only (`first_subword_word` marks the
owned words), which merges the windows back into one prediction per word.
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from data_prep.config import LabelAlignment, is_pair_task, is_parsing, is_regression, is_token_task
from data_prep.examples import Example

IGNORE = -100
DEFAULT_STRIDE = 16


@dataclass
class WordChunk:
    """One encoder input (a window) of a sentence."""

    sentence: int
    input_ids: list[int]
    token_type_ids: list[int]
    # position -> index (in the whole sentence) of the word *owned by this window* whose first
    # subword sits there, else -1: the positions evaluation reads, one per word over all windows
    first_subword_word: list[int]
    # the same for the owned words' last subwords (for label_alignment: last)
    last_subword_word: list[int] = field(default_factory=list)
    # position -> word index for every subword in the window, owned or context; -1 for specials
    word_ids: list[int] = field(default_factory=list)


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a single sequence gets before and after its subwords ([CLS] / [SEP]
    for BERT, <s> / </s> for RoBERTa), found once so windows are built without re-tokenizing."""
    bare = tokenizer(["a"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    full = tokenizer(["a"], is_split_into_words=True)["input_ids"]
    start = next(i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare)
    return full[:start], full[start + len(bare):]


def window_spans(counts: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word spans [start, end) whose subwords fit `budget`, consecutive spans sharing at most
    `stride` subwords of whole words. A lone word longer than `budget` gets a span of its own
    (its tail subwords are truncated, its first one is kept)."""
    n = len(counts)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and (end == start or used + max(counts[end], 1) <= budget):
            used += max(counts[end], 1)
            end += 1
        spans.append((start, end))
        if end >= n:
            return spans
        # the next window starts as early as the overlap allows, but always moves forward
        nxt, shared = end, 0
        while nxt - 1 > start and shared + max(counts[nxt - 1], 1) <= stride:
            nxt -= 1
            shared += max(counts[nxt], 1)
        start = nxt


def owners(spans: list[tuple[int, int]], n_words: int) -> list[int]:
    """For each word, the window where it is most central (farthest from both window edges);
    ties go to the earlier window."""
    best = [-1] * n_words
    margin = [-1] * n_words
    for index, (start, end) in enumerate(spans):
        for w in range(start, end):
            m = min(w - start, end - 1 - w)
            if m > margin[w]:
                best[w], margin[w] = index, m
    return best


def _sentence_windows(sentence: int, word_ids: list[int | None], ids: list[int], max_length: int,
                      prefix: list[int], suffix: list[int], stride: int) -> list[WordChunk]:
    """Windows of one sentence from its full encoding (specials included)."""
    if len(ids) <= max_length:  # the common case: one window, the encoding as it is
        wids = [-1 if w is None else w for w in word_ids]
        first, last = [-1] * len(ids), [-1] * len(ids)
        for pos, w in enumerate(wids):
            if w >= 0:
                if pos == 0 or wids[pos - 1] != w:
                    first[pos] = w
                if pos + 1 == len(wids) or wids[pos + 1] != w:
                    last[pos] = w
        return [WordChunk(sentence, ids, [0] * len(ids), first, last, wids)]
    body = [(w, t) for w, t in zip(word_ids, ids) if w is not None]
    n_words = body[-1][0] + 1 if body else 0
    pieces: list[list[int]] = [[] for _ in range(n_words)]
    for w, t in body:
        pieces[w].append(t)
    budget = max_length - len(prefix) - len(suffix)
    spans = window_spans([len(p) for p in pieces], budget, stride)
    owner = owners(spans, n_words)
    chunks = []
    for index, (start, end) in enumerate(spans):
        sub = [(w, t) for w in range(start, end) for t in pieces[w]][:budget]
        wids = [-1] * len(prefix) + [w for w, _ in sub] + [-1] * len(suffix)
        input_ids = prefix + [t for _, t in sub] + suffix
        first, last = [-1] * len(wids), [-1] * len(wids)
        for pos, w in enumerate(wids):
            if w >= 0 and owner[w] == index:
                if pos == 0 or wids[pos - 1] != w:
                    first[pos] = w
                if pos + 1 == len(wids) or wids[pos + 1] != w:
                    last[pos] = w
        chunks.append(WordChunk(sentence, input_ids, [0] * len(input_ids), first, last, wids))
    return chunks


def encode_words(tokenizer: Any, sentences: list[list[str]], max_length: int,
                 stride: int = DEFAULT_STRIDE) -> list[WordChunk]:
    """Encode pre-split sentences into windows that each fit `max_length` (in sentence order)."""
    if not sentences:
        return []
    prefix, suffix = _special_frame(tokenizer)
    stride = min(stride, max(0, (max_length - len(prefix) - len(suffix)) // 2))  # keep windows moving
    # one batched call with specials: the same call a plain fast-tokenizer user makes
    enc = tokenizer(sentences, is_split_into_words=True)
    chunks: list[WordChunk] = []
    for s in range(len(sentences)):
        chunks += _sentence_windows(s, enc.word_ids(s), enc["input_ids"][s], max_length, prefix, suffix, stride)
    return chunks


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
    return tokenizer(texts, pairs, truncation=True, max_length=max_length)


@dataclass
class TokenizeStats:
    examples: int = 0
    inputs: int = 0
    tokens: int = 0
    windowed: int = 0  # token tasks: sentences split into more than one window
    # sentence tasks: texts cut at max_length; token tasks: words left without a labelled
    # position (a word the tokenizer turns into no subword at all)
    truncated: int = 0
    labels: Counter[str] = field(default_factory=Counter)

    def add(self, other: "TokenizeStats") -> None:
        self.examples += other.examples
        self.inputs += other.inputs
        self.tokens += other.tokens
        self.windowed += other.windowed
        self.truncated += other.truncated
        self.labels.update(other.labels)

    def as_dict(self) -> dict[str, Any]:
        return {"examples": self.examples, "inputs": self.inputs, "tokens": self.tokens,
                "windowed": self.windowed, "truncated": self.truncated,
                "label_distribution": dict(sorted(self.labels.items()))}


def _align(chunk: WordChunk, tags: list[str], label_id: dict[str, int], alignment: LabelAlignment) -> list[int]:
    if alignment == "first":
        return [IGNORE if w < 0 else label_id[tags[w]] for w in chunk.first_subword_word]
    if alignment == "last":
        return [IGNORE if w < 0 else label_id[tags[w]] for w in chunk.last_subword_word]
    owned = {w for w in chunk.first_subword_word if w >= 0}
    return [label_id[tags[w]] if w in owned else IGNORE for w in chunk.word_ids]


# dependency_parsing: the channels of each position's label, [DEPREL, HEAD, CANDIDATE]
DEPREL, HEAD, CANDIDATE = 0, 1, 2
ROOT_POSITION = 0  # the leading special token ([CLS], <s>) stands for the root


def word_starts(word_ids: list[int]) -> dict[int, int]:
    """Word index -> position of its first subword, for every word in a window (owned or context)."""
    starts: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w >= 0 and w not in starts:
            starts[w] = pos
    return starts


def _align_parse(chunk: WordChunk, ex: Example, label_id: dict[str, int]) -> list[list[int]]:
    """Per position `[deprel id, head position, candidate]`. An owned word's first subword gets its
    DEPREL and the position of its head's first subword in this window (ROOT_POSITION for the
    root); every other position gets IGNORE for both. `candidate` is 1 where a head may be: the
    root position and the first subword of every word of the window, 0 elsewhere. A word whose
    head lies outside its window (a sentence longer than max_length) is not trained on there."""
    if not chunk.word_ids or chunk.word_ids[ROOT_POSITION] >= 0:
        raise ValueError("dependency_parsing needs a tokenizer that puts a special token ([CLS], <s>) before the "
                         "words, to stand for the root; this one starts with a word: use an encoder whose tokenizer "
                         "adds one (BERT, RoBERTa and MiniLM tokenizers do)")
    starts = word_starts(chunk.word_ids)
    rows = [[IGNORE, IGNORE, 0] for _ in chunk.word_ids]
    rows[ROOT_POSITION][CANDIDATE] = 1
    for pos in starts.values():
        rows[pos][CANDIDATE] = 1
    heads, tags = ex.heads or [], ex.tags or []
    for pos, w in enumerate(chunk.first_subword_word):
        if w < 0:
            continue
        head = ROOT_POSITION if heads[w] == 0 else starts.get(heads[w] - 1)
        if head is not None:
            rows[pos][DEPREL], rows[pos][HEAD] = label_id[tags[w]], head
    return rows


def _token_features(examples: list[Example], label_id: dict[str, int], tokenizer: Any, max_length: int,
                    alignment: LabelAlignment, stride: int,
                    parsing: bool = False) -> tuple[list[dict[str, Any]], TokenizeStats]:
    stats = TokenizeStats(examples=len(examples))
    rows: list[dict[str, Any]] = []
    chunks = encode_words(tokenizer, [ex.tokens or [] for ex in examples], max_length, stride)
    per_sentence = Counter(c.sentence for c in chunks)
    for c in chunks:
        ex = examples[c.sentence]
        labels = _align_parse(c, ex, label_id) if parsing else _align(c, ex.tags or [], label_id, alignment)
        rows.append({"input_ids": c.input_ids, "token_type_ids": c.token_type_ids, "labels": labels})
        stats.tokens += len(c.input_ids)
    stats.inputs = len(rows)
    stats.windowed = sum(1 for n in per_sentence.values() if n > 1)
    if parsing:  # a word is trained on where its arc is: its head in the same window
        owned = sum(1 for row in rows for label in row["labels"] if label[HEAD] != IGNORE)
    else:
        owned = sum(1 for c in chunks for w in c.first_subword_word if w >= 0)
    stats.truncated = sum(len(ex.tokens or []) for ex in examples) - owned
    for ex in examples:
        stats.labels.update(ex.tags or [])
    return rows, stats


def _sequence_features(examples: list[Example], task_type: str, label_id: dict[str, int], tokenizer: Any,
                       max_length: int) -> tuple[list[dict[str, Any]], TokenizeStats]:
    pairs = [ex.text_pair or "" for ex in examples] if is_pair_task(task_type) else None
    texts = [ex.text or "" for ex in examples]
    # untruncated first, to count what truncation cuts; only the long ones are encoded again
    enc = tokenizer(texts, pairs)
    ids, types = enc["input_ids"], enc.get("token_type_ids") or [[0] * len(i) for i in enc["input_ids"]]
    long = [i for i, row in enumerate(ids) if len(row) > max_length]
    if long:
        cut = tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs else None, truncation=True,
                        max_length=max_length)
        for j, i in enumerate(long):
            ids[i] = cut["input_ids"][j]
            types[i] = cut["token_type_ids"][j] if "token_type_ids" in cut else [0] * len(ids[i])
    regression = is_regression(task_type)
    rows = [{"input_ids": i, "token_type_ids": t,
             "labels": float(ex.label or 0) if regression else label_id[ex.label or ""]}
            for i, t, ex in zip(ids, types, examples)]
    # a real-valued target has no label distribution worth a table
    stats = TokenizeStats(examples=len(examples), inputs=len(rows), tokens=sum(len(i) for i in ids),
                          truncated=len(long),
                          labels=Counter() if regression else Counter(ex.label or "" for ex in examples))
    return rows, stats


def _tokenize_batch(examples: list[Example], task_type: str, labels: list[str], tokenizer: Any, max_length: int,
                    alignment: LabelAlignment, stride: int) -> tuple[list[dict[str, Any]], TokenizeStats]:
    label_id = {lab: i for i, lab in enumerate(labels)}
    if is_token_task(task_type):
        return _token_features(examples, label_id, tokenizer, max_length, alignment, stride, is_parsing(task_type))
    return _sequence_features(examples, task_type, label_id, tokenizer, max_length)


def _batches(examples: list[Example], size: int) -> Iterator[list[Example]]:
    for start in range(0, len(examples), size):
        yield examples[start:start + size]


def tokenize_with_stats(examples: list[Example], task_type: str, labels: list[str], tokenizer: Any,
                        max_length: int, alignment: LabelAlignment = "first", stride: int = DEFAULT_STRIDE,
                        num_proc: int = 1, batch_size: int = 1000,
                        desc: str = "tokenize") -> tuple[list[dict[str, Any]], TokenizeStats]:
    """Training features (input_ids, token_type_ids, labels: a list for tokens, an int for
    sequences, a float for regression, a `[deprel, head, candidate]` list per position for
    dependency parsing, see `_align_parse`) in example order, and their statistics. Batches of
    `batch_size` go through the fast tokenizer; `num_proc` > 1 spreads the batches over worker processes."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    stats = TokenizeStats()
    args = (task_type, labels, tokenizer, max_length, alignment, stride)
    batches = list(_batches(examples, batch_size))
    # disable=None: a bar on a terminal, silence in logs and tests
    with tqdm(total=len(examples), desc=desc, unit="ex", disable=None) as bar:
        if num_proc > 1 and len(batches) > 1:
            # fork shares the loaded tokenizer; spawn would re-import transformers per worker
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method)) as pool:
                results = pool.map(_tokenize_batch, batches, *[[a] * len(batches) for a in args])
                for batch, (part, part_stats) in zip(batches, results):
                    rows += part
                    stats.add(part_stats)
                    bar.update(len(batch))
        else:
            for batch in batches:
                part, part_stats = _tokenize_batch(batch, *args)
                rows += part
                stats.add(part_stats)
                bar.update(len(batch))
    return rows, stats


def tokenize_examples(examples: list[Example], task_type: str, labels: list[str], tokenizer: Any,
                      max_length: int, alignment: LabelAlignment = "first",
                      stride: int = DEFAULT_STRIDE) -> list[dict[str, Any]]:
    """Training features only (see `tokenize_with_stats`)."""
    return tokenize_with_stats(examples, task_type, labels, tokenizer, max_length, alignment, stride)[0]
