"""Format readers. Each turns one file's bytes into canonical examples and reports problems with
file, line (or row) and field. One registry: `READERS`."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from data_prep.config import Column, TaskDataConfig, is_pair_task, is_parsing, is_token_task
from data_prep.errors import IssueCollector
from data_prep.examples import Example
from data_prep.tagcheck import Verdict, describe, judge, offending

BOM = "\ufeff"


class Reader(Protocol):
    def __call__(self, data: str | bytes, file: str, cfg: TaskDataConfig,
                 issues: IssueCollector) -> list[Example]: ...


def decode(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> str:
    """Text of a file: strict by default (a bad byte is reported with its line), or lenient
    (`encoding_errors: replace`) when the task asks for it. A leading byte order mark (editors
    on Windows write one) is dropped: it says how the file is encoded and is no part of the
    first field."""
    text = data if isinstance(data, str) else _decode_bytes(data, file, cfg, issues)
    return text[1:] if text.startswith(BOM) else text


def _decode_bytes(data: bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> str:
    try:
        return data.decode(cfg.encoding, errors="strict")
    except UnicodeDecodeError as exc:
        if cfg.encoding_errors == "replace":
            return data.decode(cfg.encoding, errors="replace")
        line = data[: exc.start].count(b"\n") + 1
        issues.add(file, line, "encoding", f"byte {data[exc.start:exc.start + 1]!r} is not valid {cfg.encoding}",
                   "fix the file, or set encoding_errors: replace (or another encoding) for this task")
        return ""


def text_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: split at line feeds (CR LF too; CR alone in a file
    without any LF). Not `str.splitlines`, which also splits at form feeds and U+2028,
    characters a JSON string or a sentence may hold, and would shift every line number after."""
    separator = "\n" if "\n" in text or "\r" not in text else "\r"
    lines = text.split(separator)
    if lines and not lines[-1]:
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


HEAD_FIX = "HEAD is the ID of the word's head (a whole number), or 0 for the root of the sentence"


@dataclass
class _ConlluSentence:
    """The words of the sentence being read; for parsing also each word's ID, its HEAD as written
    and the line it is on (a HEAD is checked once the whole sentence is known)."""

    start: int
    tokens: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    heads: list[tuple[int, int]] = field(default_factory=list)  # (HEAD as written, line)


def read_conllu(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """CoNLL-U: word form in column 2 and, as the tag, UPOS (column 4); for dependency_parsing the
    tag is DEPREL (column 8) and HEAD (column 7) goes into `heads`. Multiword ranges (`3-4`) and
    empty nodes (`8.1`) are skipped: they are not words of the sentence. A HEAD names a word ID,
    which is mapped to the word's 1-based position among the words read, so nothing a skipped
    line does to the numbering can shift a head."""
    parsing = is_parsing(cfg.type)
    examples: list[Example] = []
    sentence = _ConlluSentence(1)
    for number, line in enumerate(text_lines(decode(data, file, cfg, issues)), start=1):
        if not line.strip():
            _close_sentence(sentence, file, parsing, issues, examples)
            sentence = _ConlluSentence(number + 1)
            continue
        if line.startswith("#"):
            if not sentence.tokens:
                sentence.start = number + 1
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            issues.add(file, number, "columns", f"expected 10 tab-separated columns, found {len(cols)}",
                       "CoNLL-U lines have ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC")
            continue
        if "-" in cols[0] or "." in cols[0]:
            continue  # multiword range or empty node: not a word of the sentence
        if not _conllu_word_ok(cols, file, number, issues, parsing):
            continue
        if not sentence.tokens:
            sentence.start = number
        sentence.tokens.append(cols[1])
        sentence.tags.append(cols[7] if parsing else cols[3])
        if parsing:
            head = cols[6].strip()
            if not head.isdigit():
                issues.add(file, number, "HEAD (column 7)", f"{cols[6]!r} is not a word ID", HEAD_FIX)
            sentence.ids.append(int(cols[0]))
            sentence.heads.append((int(head) if head.isdigit() else -1, number))
    _close_sentence(sentence, file, parsing, issues, examples)
    return examples


def _close_sentence(sentence: _ConlluSentence, file: str, parsing: bool, issues: IssueCollector,
                    examples: list[Example]) -> None:
    """Append the sentence read so far; a parse whose heads do not all point into it is reported
    (each HEAD on its own line) and left out."""
    if not sentence.tokens:
        return
    if not parsing:
        examples.append(Example(file, sentence.start, tokens=sentence.tokens, tags=sentence.tags))
        return
    position = {word_id: i + 1 for i, word_id in enumerate(sentence.ids)}
    if len(position) < len(sentence.ids):
        twice = sorted({w for w in sentence.ids if sentence.ids.count(w) > 1})
        issues.add(file, sentence.start, "ID (column 1)", f"word ID(s) {twice} occur more than once in the sentence",
                   "number the words of a sentence 1, 2, 3, ... (each once)")
        return
    heads: list[int] = []
    for index, (head, number) in enumerate(sentence.heads):
        if head < 0:
            continue  # not a number: reported where it was read
        if head != 0 and head not in position:
            issues.add(file, number, "HEAD (column 7)",
                       f"{head} points outside the sentence (its word IDs are {min(position)} to {max(position)})",
                       f"point HEAD at one of the sentence's word IDs, or 0 for the root; {HEAD_FIX}")
        elif head != 0 and position[head] == index + 1:
            issues.add(file, number, "HEAD (column 7)", f"{head} is the word's own ID: a word cannot head itself",
                       f"point HEAD at the word it depends on, or 0 for the root; {HEAD_FIX}")
        else:
            heads.append(0 if head == 0 else position[head])
    if len(heads) == len(sentence.tokens):
        examples.append(Example(file, sentence.start, tokens=sentence.tokens, tags=sentence.tags, heads=heads))


def _conllu_word_ok(cols: list[str], file: str, number: int, issues: IssueCollector, parsing: bool = False) -> bool:
    """A word line needs an index, a form and its tag (UPOS, or DEPREL for parsing); reported
    here, where the exact line is known, instead of becoming a class named '' or '_'."""
    word = cols[1]
    tag, name, fix = ((cols[7], "DEPREL (column 8)",
                       "every word needs its dependency relation in column 8 (nsubj, obj, root, ...)") if parsing
                      else (cols[3], "UPOS", "every word needs a UPOS tag in column 4 (NOUN, VERB, ...)"))
    if not cols[0].isdigit():
        issues.add(file, number, "ID", f"{cols[0]!r} is not a word index",
                   "IDs are 1, 2, ... (a range 1-2 for a multiword token, 1.1 for an empty node)")
    elif not word.strip():
        issues.add(file, number, "FORM", "empty", "every word needs its form in column 2")
    elif not tag.strip() or tag == "_":
        shown = "'_' (unannotated)" if tag == "_" else "empty"
        issues.add(file, number, name, shown, fix)
    elif tag != tag.strip() or " " in tag:
        issues.add(file, number, name, f"{tag!r} holds a space",
                   f"a {name.split()[0]} tag is one word: remove the spaces")
    else:
        return True
    return False


def _column_index(column: Column, width: int) -> int:
    if isinstance(column, str):
        raise ValueError(f"conll columns are 0-based numbers, not names like {column!r}")
    return column if column >= 0 else width + column


def read_conll(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """CoNLL column files (CoNLL-2003, WNUT): one token per line, blank (or whitespace-only)
    line between sentences, `-DOCSTART-` lines are document breaks. A tag column that does not
    hold what the task's scheme expects refuses the file (one problem, not one per token)."""
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    token_column = 0 if cfg.token_column is None else cfg.token_column
    tag_column = -1 if cfg.tag_column is None else cfg.tag_column
    seen: Counter[str] = Counter()
    first: dict[str, tuple[int, int]] = {}  # a tag value's first line and column, to point at
    lines = text_lines(decode(data, file, cfg, issues))
    for number, raw in enumerate(lines, start=1):
        cols = raw.split()
        if _is_break(cols):
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
        seen[cols[tag_i]] += 1
        first.setdefault(cols[tag_i], (number, tag_i))
    if tokens:
        examples.append(Example(file, start, tokens=tokens, tags=tags))
    if seen and _wrong_tag_column(lines, seen, first, file, cfg, issues):
        return []
    return examples


def _is_break(cols: list[str]) -> bool:
    return not cols or cols[0] == "-DOCSTART-"


def _wrong_tag_column(lines: list[str], seen: Counter[str], first: dict[str, tuple[int, int]], file: str,
                      cfg: TaskDataConfig, issues: IssueCollector) -> bool:
    """Reports a tag column whose values do not look like the scheme's tags, pointing at the
    first offending line and at a column that looks right where there is one."""
    verdict = judge(seen, cfg.label_scheme, named=cfg.tag_column is not None)
    if verdict == "ok":
        return False
    number, tag_i = min(first[v] for v in seen if offending(v, verdict))
    tag_column = -1 if cfg.tag_column is None else cfg.tag_column
    named = f"column {tag_i}" + (f" (tag_column {tag_column})" if tag_column != tag_i else "")
    issues.add(file, number, "tag_column", f"{named} {describe(seen, verdict)}",
               _tag_column_fix(lines, tag_i, cfg, verdict))
    return True


def _tag_column_fix(lines: list[str], tag_i: int, cfg: TaskDataConfig, verdict: Verdict) -> str:
    """Which column to use instead: one whose values look right for the scheme, if any."""
    columns: dict[int, Counter[str]] = {}
    for raw in lines:
        cols = raw.split()
        if not _is_break(cols):
            for i, value in enumerate(cols):
                columns.setdefault(i, Counter())[value] += 1
    token_i = cfg.token_column if isinstance(cfg.token_column, int) and cfg.token_column >= 0 else 0
    fitting = [i for i, counts in sorted(columns.items()) if i != tag_i and judge(counts, cfg.label_scheme) == "ok"]
    others = [i for i in fitting if i != token_i]
    if others:
        return f"column(s) {others} look like the tags: set tag_column: {others[0]}"
    if fitting and verdict == "words":  # only the token column looks like tags: the two are swapped
        return (f"column {token_i} looks like the tags and column {tag_i} like the words: "
                f"set token_column: {tag_i} and tag_column: {token_i}")
    if verdict == "chunks":
        return (f"no column looks like entity tags: point at a file with them, or set tag_column: {tag_i} "
                "to train on these chunks")
    if verdict == "words":
        return f"set tag_column to the 0-based column of the tags (tag_column: {tag_i} if these are the tags)"
    return "set tag_column to the 0-based column of the B-/I-/O tags, or label_scheme: plain"


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


def _delimited_rows(text: str, file: str, delimiter: str, quoting: int,
                    issues: IssueCollector) -> list[tuple[int, list[str]]]:
    """Rows with the line each starts on (a quoted field may span lines); a line the csv module
    cannot split (a stray carriage return, a field past its size limit) is reported and skipped."""
    reader = csv.reader((line + "\n" for line in text_lines(text)), delimiter=delimiter, quoting=quoting)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            cols = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            issues.add(file, reader.line_num, "columns", f"cannot split the line: {exc}",
                       "check for a stray quote or carriage return")
        else:
            rows.append((start, cols))
        start = reader.line_num + 1


def _read_delimited(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector,
                    delimiter: str, quoting: int) -> list[Example]:
    rows = _delimited_rows(decode(data, file, cfg, issues), file, delimiter, quoting, issues)
    header = [h.strip() for h in rows[0][1]] if cfg.header and rows else None
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
    used = [i for i in (text_i, label_i, pair_i) if i is not None]
    examples: list[Example] = []
    for number, cols in rows[1:] if header else rows:
        if not cols or (len(cols) == 1 and not cols[0].strip()):
            continue
        if width is not None and len(cols) != width:
            issues.add(file, number, "columns", f"expected {width} columns, found {len(cols)}",
                       "check for a stray delimiter, a missing field or an unclosed quote")
            continue
        if not all(-len(cols) <= i < len(cols) for i in used):
            issues.add(file, number, "columns", f"row has {len(cols)} columns, columns {used} are needed",
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


def _field_text(value: Any, names: list[str] | None = None) -> str | None:
    """A record field as text, a class id named through `names` (hub ClassLabel features);
    None for a value that can be neither a text nor a label: an object, a list, a class id
    outside the names (the hub writes -1 for an unlabelled row)."""
    if isinstance(value, (dict, list)):
        return None
    if names and isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else None
    return _label_text(value)


def _why_not_text(value: Any, names: list[str] | None) -> str:
    if names and isinstance(value, int) and not isinstance(value, bool):
        return f"class id {value} has no name: the dataset names {len(names)} classes (-1 marks an unlabelled row)"
    return f"{type(value).__name__} {str(value)[:40]!r} is not a text or a label"


def _record_fields(cfg: TaskDataConfig, file: str, issues: IssueCollector) -> dict[str, Column] | None:
    """The config key -> field name of everything a record must hold for this task."""
    if is_token_task(cfg.type):
        return {"token_column": cfg.token_column or "tokens", "tag_column": cfg.tag_column or "tags"}
    fields: dict[str, Column] = {"text_column": cfg.text_column, "label_column": cfg.label_column}
    if is_pair_task(cfg.type):
        if cfg.text_pair_column is None:
            issues.add(file, None, "text_pair_column", "a pair task needs a second text field", "set text_pair_column")
            return None
        fields["text_pair_column"] = cfg.text_pair_column
    return fields


def records_to_examples(rows: Iterable[tuple[int, dict[str, Any]]], file: str, cfg: TaskDataConfig,
                        issues: IssueCollector, label_names: dict[str, list[str]] | None = None) -> list[Example]:
    """Field-mapped records (JSON lines, Parquet, hub datasets) to examples. `rows` pairs each
    record with its line (JSON lines) or 1-based row number; `label_names` turns integer class
    ids of a column into their names (hub ClassLabel features)."""
    fields = _record_fields(cfg, file, issues)
    if fields is None:
        return []
    examples: list[Example] = []
    for number, row in rows:
        missing = [f"{key} {col!r}" for key, col in fields.items() if str(col) not in row]
        if missing:
            issues.add(file, number, missing[0].split()[0], f"field(s) {', '.join(missing)} missing; "
                       f"the record has {sorted(row)}", "set the *_column options to existing fields")
            continue
        value = {key: row[str(col)] for key, col in fields.items()}
        names = {key: (label_names or {}).get(str(col)) for key, col in fields.items()}
        read = _token_record if is_token_task(cfg.type) else _sentence_record
        example = read(value, names, fields, file, number, issues)
        if example is not None:
            examples.append(example)
    return examples


def _token_record(value: dict[str, Any], names: dict[str, list[str] | None], fields: dict[str, Column],
                  file: str, number: int, issues: IssueCollector) -> Example | None:
    tokens, tags = value["token_column"], value["tag_column"]
    if not isinstance(tokens, list) or not isinstance(tags, list):
        issues.add(file, number, str(fields["token_column"]), "tokens and tags must be lists",
                   'write e.g. {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}')
        return None
    words = [None if t is None else _field_text(t) for t in tokens]
    labels = [_field_text(t, names["tag_column"]) for t in tags]
    for key, raw, texts, known in (("token_column", tokens, words, None), ("tag_column", tags, labels,
                                                                           names["tag_column"])):
        bad = next((i for i, text in enumerate(texts) if text is None), None)
        if bad is not None:
            issues.add(file, number, f"{fields[key]}[{bad}]", _why_not_text(raw[bad], known),
                       "write a list of words and a list of tags (strings)")
            return None
    return Example(file, number, tokens=[w or "" for w in words], tags=[t or "" for t in labels])


def _sentence_record(value: dict[str, Any], names: dict[str, list[str] | None], fields: dict[str, Column],
                     file: str, number: int, issues: IssueCollector) -> Example | None:
    texts = {key: _field_text(raw, names[key] if key == "label_column" else None) for key, raw in value.items()}
    for key, text in texts.items():
        if text is None:
            issues.add(file, number, str(fields[key]), _why_not_text(value[key], names[key]),
                       "write the text and the label as strings (or numbers)")
            return None
    return Example(file, number, text=texts["text_column"], label=texts["label_column"],
                   text_pair=texts.get("text_pair_column"))


def read_jsonl(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """JSON lines: one object per line, fields mapped by the *_column options."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text_lines(decode(data, file, cfg, issues)), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.add(file, number, "json", f"not valid JSON: {exc.msg} at column {exc.colno}",
                       "write one JSON object per line")
            continue
        except (ValueError, RecursionError) as exc:  # a number past Python's digit limit, deep nesting
            issues.add(file, number, "json", f"cannot read: {str(exc)[:120]}", "write one JSON object per line")
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
        rows = pq.read_table(io.BytesIO(raw)).to_pylist()
    except (pa.ArrowException, OSError) as exc:  # a damaged file fails in the footer, a page or a decoder
        issues.add(file, None, "parquet", f"not a readable Parquet file: {str(exc)[:200]}",
                   "write the file with pyarrow or pandas")
        return []
    except UnicodeDecodeError as exc:  # a string column's bytes are only decoded when rows are built
        issues.add(file, None, "parquet", f"a string value is not valid UTF-8: {exc.reason}",
                   "write the file again from clean text")
        return []
    return records_to_examples(enumerate(rows, start=1), file, cfg, issues)


def read_label_text(data: str | bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> list[Example]:
    """One example a line: the label, whitespace, then the text (TREC's `DESC:manner How did ...`).
    `label_separator` keeps only the label's part before it (TREC's coarse classes with `:`)."""
    examples: list[Example] = []
    for number, raw in enumerate(text_lines(decode(data, file, cfg, issues)), start=1):
        line = raw.strip()
        if not line:
            continue
        label, text = (line.split(None, 1) + [""])[:2]
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
