"""Format readers. Each turns one file's bytes into canonical examples and reports problems with
file, line (or row) and field. One registry: `READERS`."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any, Protocol

from data_prep.config import Column, TaskDataConfig, is_pair_task, is_token_task
from data_prep.errors import IssueCollector
from data_prep.examples import Example


class Reader(Protocol):
    def __call__(self, data: str | bytes, file: str, cfg: TaskDataConfig,
                 issues: IssueCollector) -> list[Example]: ...


def decode(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> str:
    """Text of a file: strict by default (a bad byte is reported with its line), or lenient
    (`encoding_errors: replace`) when the task asks for it."""
    if isinstance(data, str):
        return data
    try:
        return data.decode(cfg.encoding, errors="strict")
    except UnicodeDecodeError as exc:
        if cfg.encoding_errors == "replace":
            return data.decode(cfg.encoding, errors="replace")
        line = data[: exc.start].count(b"\n") + 1
        issues.add(file, line, "encoding", f"byte {data[exc.start:exc.start + 1]!r} is not valid {cfg.encoding}",
                   "fix the file, or set encoding_errors: replace (or another encoding) for this task")
        return ""


def read_conllu(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """CoNLL-U: word form in column 2, UPOS in column 4; multiword ranges and empty nodes skipped."""
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for number, raw in enumerate(decode(data, file, cfg, issues).splitlines(), start=1):
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
        raise ValueError(f"conll columns are 0-based numbers, not names like {column!r}")
    return column if column >= 0 else width + column


def read_conll(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """CoNLL column files (CoNLL-2003, WNUT): one token per line, blank (or whitespace-only)
    line between sentences, `-DOCSTART-` lines are document breaks."""
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    token_column = 0 if cfg.token_column is None else cfg.token_column
    tag_column = -1 if cfg.tag_column is None else cfg.tag_column
    for number, raw in enumerate(decode(data, file, cfg, issues).splitlines(), start=1):
        cols = raw.split()
        if not cols or cols[0] == "-DOCSTART-":
            if tokens:
                examples.append(Example(file, start, tokens=tokens, tags=tags))
            tokens, tags, start = [], [], number + 1
            continue
        try:
            tok_i = _column_index(token_column, len(cols))
            tag_i = _column_index(tag_column, len(cols))
        except ValueError as exc:
            issues.add(file, number, "token_column/tag_column", str(exc), "give column numbers, 0-based")
            return examples
        if not (0 <= tok_i < len(cols) and 0 <= tag_i < len(cols)) or tok_i == tag_i:
            issues.add(file, number, "tag_column", f"line has {len(cols)} columns; token column "
                       f"{token_column} and tag column {tag_column} do not fit",
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


def _read_delimited(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector,
                    delimiter: str, quoting: int) -> list[Example]:
    rows = list(csv.reader(decode(data, file, cfg, issues).splitlines(), delimiter=delimiter, quoting=quoting))
    header = [h.strip() for h in rows[0]] if cfg.header and rows else None
    pair_needed = is_pair_task(cfg.type)
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
    needed = max(i for i in (text_i, label_i, pair_i) if i is not None)
    examples: list[Example] = []
    first = 2 if header else 1
    for number, cols in enumerate(rows[first - 1:], start=first):
        if not cols or (len(cols) == 1 and not cols[0].strip()):
            continue
        if width is not None and len(cols) != width:
            issues.add(file, number, "columns", f"expected {width} columns, found {len(cols)}",
                       "check for a stray delimiter or a missing field")
            continue
        if len(cols) <= needed:
            issues.add(file, number, "columns", f"row has {len(cols)} columns, column {needed} is needed",
                       "check the column settings")
            continue
        examples.append(Example(file, number, text=cols[text_i].strip(), label=cols[label_i].strip(),
                                text_pair=cols[pair_i].strip() if pair_i is not None else None))
    return examples


def read_tsv(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """Tab-separated text; quotes are plain characters (GLUE files quote nothing and contain `"`)."""
    return _read_delimited(data, file, cfg, issues, cfg.delimiter or "\t", csv.QUOTE_NONE)


def read_csv(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """Comma-separated text with standard CSV quoting (a quoted field may hold the delimiter)."""
    return _read_delimited(data, file, cfg, issues, cfg.delimiter or ",", csv.QUOTE_MINIMAL)


def _label_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def records_to_examples(rows: Iterable[tuple[int, dict[str, Any]]], file: str, cfg: TaskDataConfig,
                        issues: IssueCollector, label_names: dict[str, list[str]] | None = None) -> list[Example]:
    """Field-mapped records (JSON lines, Parquet, hub datasets) to examples. `rows` pairs each
    record with its line (JSON lines) or 1-based row number; `label_names` turns integer class
    ids of a column into their names (hub ClassLabel features)."""
    names = label_names or {}
    if is_token_task(cfg.type):
        fields = {"token_column": cfg.token_column or "tokens", "tag_column": cfg.tag_column or "tags"}
    else:
        fields = {"text_column": cfg.text_column, "label_column": cfg.label_column}
        if is_pair_task(cfg.type):
            if cfg.text_pair_column is None:
                issues.add(file, None, "text_pair_column", "a pair task needs a second text field",
                           "set text_pair_column")
                return []
            fields["text_pair_column"] = cfg.text_pair_column
    examples: list[Example] = []
    for number, row in rows:
        missing = [f"{key} {col!r}" for key, col in fields.items() if str(col) not in row]
        if missing:
            issues.add(file, number, missing[0].split()[0], f"field(s) {', '.join(missing)} missing; "
                       f"the record has {sorted(row)}", "set the *_column options to existing fields")
            continue
        value = {key: row[str(col)] for key, col in fields.items()}
        if is_token_task(cfg.type):
            tokens, tags = value["token_column"], value["tag_column"]
            if not isinstance(tokens, list) or not isinstance(tags, list):
                issues.add(file, number, str(fields["token_column"]), "tokens and tags must be lists",
                           'write e.g. {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}')
                continue
            tag_names = names.get(str(fields["tag_column"]))
            examples.append(Example(file, number, tokens=[str(t) for t in tokens],
                                    tags=[tag_names[t] if tag_names and isinstance(t, int) else _label_text(t)
                                          for t in tags]))
        else:
            label = value["label_column"]
            label_list = names.get(str(fields["label_column"]))
            examples.append(Example(
                file, number, text=_label_text(value["text_column"]),
                label=label_list[label] if label_list and isinstance(label, int) and label >= 0 else _label_text(label),
                text_pair=_label_text(value["text_pair_column"]) if "text_pair_column" in value else None))
    return examples


def read_jsonl(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """JSON lines: one object per line, fields mapped by the *_column options."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(decode(data, file, cfg, issues).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.add(file, number, "json", f"not valid JSON: {exc.msg} at column {exc.colno}",
                       "write one JSON object per line")
            continue
        if not isinstance(row, dict):
            issues.add(file, number, "json", f"expected an object, found {type(row).__name__}",
                       "write one JSON object per line")
            continue
        rows.append((number, row))
    return records_to_examples(rows, file, cfg, issues)


def read_parquet(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """Parquet: one example per row (rows numbered from 1), fields mapped by the *_column options."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = data.encode() if isinstance(data, str) else data
    try:
        table = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowInvalid, OSError) as exc:
        issues.add(file, None, "parquet", f"not a readable Parquet file: {exc}", "write the file with pyarrow or pandas")
        return []
    return records_to_examples(enumerate(table.to_pylist(), start=1), file, cfg, issues)


def read_label_text(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """One example a line: the label, whitespace, then the text (TREC's `DESC:manner How did ...`).
    `label_separator` keeps only the label's part before it (TREC's coarse classes with `:`)."""
    examples: list[Example] = []
    for number, raw in enumerate(decode(data, file, cfg, issues).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        label, _, text = line.partition(" ")
        if not text.strip():
            issues.add(file, number, "text", f"line {line[:40]!r} has a label but no text",
                       "write the label, a space, then the text")
            continue
        if cfg.label_separator:
            label = label.split(cfg.label_separator, 1)[0]
        examples.append(Example(file, number, text=text.strip(), label=label))
    return examples


READERS: dict[str, Reader] = {
    "conllu": read_conllu,
    "conll": read_conll,
    "tsv": read_tsv,
    "csv": read_csv,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "label_text": read_label_text,
}

# formats whose files can only hold token tasks, or only sentence tasks; records hold either
TOKEN_FORMATS = {"conllu", "conll"}
SENTENCE_FORMATS = {"tsv", "csv", "label_text"}


def get_reader(name: str) -> Reader:
    if name not in READERS:
        raise KeyError(f"unknown format {name!r}; valid formats: {sorted(READERS)}")
    return READERS[name]
