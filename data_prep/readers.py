"""Format readers. Each turns decoded text into canonical examples and reports problems
with file, line and field. One registry: `READERS`."""
from __future__ import annotations

import csv
from typing import Callable, Protocol

from data_prep.config import Column, TaskDataConfig
from data_prep.errors import IssueCollector
from data_prep.examples import Example


class Reader(Protocol):
    def __call__(self, text: str, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]: ...


def read_conllu(text: str, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """CoNLL-U: word form in column 2, UPOS in column 4; multiword ranges and empty nodes skipped."""
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                examples.append(Example(file, start, tokens=tokens, tags=tags))
            tokens, tags, start = [], [], number + 1
            continue
        if line.startswith("#"):
            if not tokens:
                start = number + 1
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            issues.add(file, number, "columns", f"expected 10 tab-separated columns, found {len(cols)}",
                       "CoNLL-U lines have ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC")
            continue
        if "-" in cols[0] or "." in cols[0]:
            continue  # multiword range or empty node: not a word of the sentence
        if not tokens:
            start = number
        tokens.append(cols[1])
        tags.append(cols[3])
    if tokens:
        examples.append(Example(file, start, tokens=tokens, tags=tags))
    return examples


def _column_index(column: Column, width: int) -> int:
    if isinstance(column, str):
        raise ValueError("conll columns are indices, not names")
    return column if column >= 0 else width + column


def read_conll(text: str, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """CoNLL column files (CoNLL-2003, WNUT): one token per line, blank (or whitespace-only)
    line between sentences, `-DOCSTART-` lines are document breaks."""
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for number, raw in enumerate(text.splitlines(), start=1):
        cols = raw.split()
        if not cols or cols[0] == "-DOCSTART-":
            if tokens:
                examples.append(Example(file, start, tokens=tokens, tags=tags))
            tokens, tags, start = [], [], number + 1
            continue
        try:
            tok_i = _column_index(cfg.token_column, len(cols))
            tag_i = _column_index(cfg.tag_column, len(cols))
        except ValueError as exc:
            issues.add(file, number, "token_column/tag_column", str(exc), "give column numbers, 0-based")
            return examples
        if not (0 <= tok_i < len(cols) and 0 <= tag_i < len(cols)) or tok_i == tag_i:
            issues.add(file, number, "tag_column", f"line has {len(cols)} columns; token column "
                       f"{cfg.token_column} and tag column {cfg.tag_column} do not fit",
                       "set token_column and tag_column to existing, different columns")
            continue
        if not tokens:
            start = number
        tokens.append(cols[tok_i])
        tags.append(cols[tag_i])
    if tokens:
        examples.append(Example(file, start, tokens=tokens, tags=tags))
    return examples


def _resolve(column: Column | None, header: list[str] | None, file: str, key: str,
             issues: IssueCollector) -> int | None:
    if column is None:
        return None
    if isinstance(column, int):
        return column
    if header is None:
        issues.add(file, 1, key, f"column {column!r} is a name but the file has no header",
                   "set header: true or give a 0-based column number")
        return None
    if column not in header:
        issues.add(file, 1, key, f"column {column!r} does not exist; header has {header}",
                   f"set {key} to one of {header}")
        return None
    return header.index(column)


def read_tsv(text: str, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """Delimited text: one text (or a text pair) and a label column per row."""
    rows = list(csv.reader(text.splitlines(), delimiter=cfg.delimiter, quoting=csv.QUOTE_NONE))
    header = [h.strip() for h in rows[0]] if cfg.header and rows else None
    pair_needed = cfg.type == "sequence_pair_classification"
    if pair_needed and cfg.text_pair_column is None:
        issues.add(file, None, "text_pair_column", "a pair task needs a second text column",
                   "set text_pair_column")
    found = [_resolve(c, header, file, k, issues) for k, c in
             (("text_column", cfg.text_column), ("label_column", cfg.label_column),
              ("text_pair_column", cfg.text_pair_column if pair_needed else None))]
    if found[0] is None or found[1] is None or (pair_needed and found[2] is None):
        return []
    text_i, label_i, pair_i = found
    width = len(header) if header else None
    examples: list[Example] = []
    first = 2 if header else 1
    for number, cols in enumerate(rows[first - 1:], start=first):
        if not cols or (len(cols) == 1 and not cols[0].strip()):
            continue
        if width is not None and len(cols) != width:
            issues.add(file, number, "columns", f"expected {width} columns, found {len(cols)}",
                       "check for a stray delimiter or a missing field")
            continue
        needed = max(i for i in (text_i, label_i, pair_i) if i is not None)
        if len(cols) <= needed:
            issues.add(file, number, "columns", f"row has {len(cols)} columns, column {needed} is needed",
                       "check the column settings")
            continue
        examples.append(Example(file, number, text=cols[text_i].strip(), label=cols[label_i].strip(),
                                text_pair=cols[pair_i].strip() if pair_i is not None else None))
    return examples


READERS: dict[str, Reader] = {
    "conllu": read_conllu,
    "conll": read_conll,
    "tsv": read_tsv,
}

TOKEN_FORMATS = {"conllu", "conll"}


def get_reader(name: str) -> Callable[..., list[Example]]:
    if name not in READERS:
        raise KeyError(f"unknown format {name!r}; valid formats: {sorted(READERS)}")
    return READERS[name]
