"""Ingest one task: read both splits, validate every example, subsample, build the label map."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from data_prep.config import TaskDataConfig
from data_prep.errors import DataValidationError, IssueCollector
from data_prep.examples import Example
from data_prep.labels import build_label_list
from data_prep.readers import READERS, TOKEN_FORMATS, get_reader
from data_prep.sources import exists, read_bytes, resolve

SPLITS = ("train", "dev")


@dataclass
class TaskData:
    name: str
    type: str
    labels: list[str]
    splits: dict[str, list[Example]] = field(default_factory=dict)


def check_task_config(cfg: TaskDataConfig, data_dir: str | None, issues: IssueCollector) -> None:
    """Cheap checks that need no reading: format fits the task type, files exist."""
    if cfg.format not in READERS:
        issues.add(f"tasks.{cfg.name}", None, "format", f"unknown format {cfg.format!r}",
                   f"use one of {sorted(READERS)}")
        return
    token_task = cfg.type == "token_classification"
    if token_task != (cfg.format in TOKEN_FORMATS):
        issues.add(f"tasks.{cfg.name}", None, "format",
                   f"format {cfg.format!r} does not fit task type {cfg.type!r}",
                   "token tasks read conllu/conll; sentence tasks read tsv")
    for split in SPLITS:
        location = resolve(getattr(cfg, split), data_dir)
        if not exists(location):
            issues.add(location, None, f"tasks.{cfg.name}.{split}", "file not found",
                       "check the path, or set MTL_DATA_DIR to the data directory")


def decode(raw: bytes, file: str, cfg: TaskDataConfig, issues: IssueCollector) -> str:
    try:
        return raw.decode(cfg.encoding, errors="strict")
    except UnicodeDecodeError as exc:
        if cfg.encoding_errors == "replace":
            return raw.decode(cfg.encoding, errors="replace")
        line = raw[: exc.start].count(b"\n") + 1
        issues.add(file, line, "encoding", f"byte {raw[exc.start:exc.start + 1]!r} is not valid {cfg.encoding}",
                   "fix the file, or set encoding_errors: replace (or another encoding) for this task")
        return ""


def validate_examples(examples: list[Example], cfg: TaskDataConfig, issues: IssueCollector) -> None:
    for ex in examples:
        if cfg.type == "token_classification":
            if len(ex.tokens or []) != len(ex.tags or []):
                issues.add(ex.file, ex.line, "tags", f"{len(ex.tokens or [])} tokens but {len(ex.tags or [])} tags",
                           "every token needs exactly one tag")
            if cfg.label_scheme == "bio":
                _check_bio(ex, cfg, issues)
        else:
            if not ex.text:
                issues.add(ex.file, ex.line, "text", "empty text", "remove the row or fill in the text")
            if cfg.type == "sequence_pair_classification" and not ex.text_pair:
                issues.add(ex.file, ex.line, "text_pair", "empty second text", "remove the row or fill it in")
            if not ex.label:
                issues.add(ex.file, ex.line, "label", "empty label", "every row needs a label")


def _check_bio(ex: Example, cfg: TaskDataConfig, issues: IssueCollector) -> None:
    """Refuse (or, with `bio_repair`, fix) tags that break BIO: an I-X must continue a B-X/I-X."""
    previous = "O"
    tags = ex.tags or []
    for position, tag in enumerate(tags):
        # a conll file has one token per line, so the tag's own line is exact there
        line = ex.line + position if cfg.format == "conll" else ex.line
        if tag != "O" and not (tag.startswith("B-") or tag.startswith("I-")):
            issues.add(ex.file, line, f"tags[{position}]", f"{tag!r} is not a BIO tag", "use O, B-TYPE or I-TYPE")
        elif tag.startswith("I-") and previous[2:] != tag[2:]:
            if cfg.bio_repair:
                tags[position] = tag = "B-" + tag[2:]
            else:
                issues.add(ex.file, line, f"tags[{position}]", f"{tag!r} follows {previous!r}",
                           f"an I- tag continues an entity of the same type: use B-{tag[2:]}, "
                           "or set bio_repair: true to convert such tags")
        previous = tag


def gold_labels(ex: Example) -> list[str]:
    return list(ex.tags or []) if ex.tags is not None else [ex.label or ""]


def subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def ingest_task(cfg: TaskDataConfig, data_dir: str | None, previous_labels: list[str] | None = None,
                issue_limit: int = 200) -> TaskData:
    """Read and validate both splits; raise `DataValidationError` with every problem found."""
    issues = IssueCollector(issue_limit)
    check_task_config(cfg, data_dir, issues)
    issues.raise_if_any()
    reader = get_reader(cfg.format)
    splits: dict[str, list[Example]] = {}
    for split in SPLITS:
        location = resolve(getattr(cfg, split), data_dir)
        text = decode(read_bytes(location), location, cfg, issues)
        examples = reader(text, location, cfg, issues)
        if not examples and text:
            issues.add(location, None, f"tasks.{cfg.name}.{split}", "no examples found",
                       f"check that the file is in {cfg.format} format")
        elif not text.strip():
            issues.add(location, None, f"tasks.{cfg.name}.{split}", "the split is empty", "point at a file with data")
        validate_examples(examples, cfg, issues)
        splits[split] = examples
    issues.raise_if_any()
    labels = build_label_list((lab for ex in splits["train"] for lab in gold_labels(ex)), previous_labels)
    known = set(labels)
    for ex in splits["dev"]:
        for position, lab in enumerate(gold_labels(ex)):
            if lab not in known:
                line, field = ex.line, "label"
                if ex.tags is not None:
                    line = ex.line + position if cfg.format == "conll" else ex.line
                    field = f"tags[{position}]"
                issues.add(ex.file, line, field, f"{lab!r} does not occur in the train split",
                           "add training examples with this label or fix the label")
    issues.raise_if_any()
    splits["train"] = subsample(splits["train"], cfg.max_train_examples, cfg.sample_seed)
    splits["dev"] = subsample(splits["dev"], cfg.max_dev_examples, cfg.sample_seed)
    return TaskData(cfg.name, cfg.type, labels, splits)


def validate_tasks(cfgs: list[TaskDataConfig], data_dir: str | None, issue_limit: int = 200) -> dict[str, TaskData]:
    """Ingest every task and raise one `DataValidationError` with the problems of all of them."""
    issues = IssueCollector(issue_limit)
    names = [c.name for c in cfgs]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        issues.add("tasks", None, "name", f"task name {dup!r} is used {names.count(dup)} times",
                   "give every task a unique name")
    loaded: dict[str, TaskData] = {}
    for cfg in cfgs:
        try:
            loaded[cfg.name] = ingest_task(cfg, data_dir, issue_limit=issue_limit)
        except DataValidationError as exc:
            issues.extend(exc.issues)
    issues.raise_if_any()
    return loaded
