"""Ingest one task: read both splits (from files, shards or the hub), validate every example,
cut or subsample, build the label map."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from data_prep.config import S3Config, TaskDataConfig, is_pair_task, is_parsing, is_regression, is_token_task
from data_prep.errors import DataValidationError, IssueCollector
from data_prep.examples import Example
from data_prep.labels import build_label_list
from data_prep.readers import READERS, SENTENCE_FORMATS, TOKEN_FORMATS, get_reader, records_to_examples
from data_prep.sources import expand, load_hub_split, read_bytes, resolve

SPLITS = ("train", "dev")


@dataclass
class TaskData:
    name: str
    type: str
    labels: list[str]
    splits: dict[str, list[Example]] = field(default_factory=dict)


def split_locations(cfg: TaskDataConfig, split: str, data_dir: str | None) -> list[str]:
    """The configured locations of a split, resolved against the data directory."""
    value = getattr(cfg, split)
    if value is None:
        return []
    return [resolve(v, data_dir) for v in ([value] if isinstance(value, str) else value)]


def split_files(cfg: TaskDataConfig, split: str, data_dir: str | None, s3: S3Config | None,
                issues: IssueCollector) -> list[str]:
    """Every file of a split, globs and folders expanded; a location that matches nothing is reported."""
    files: list[str] = []
    for location in split_locations(cfg, split, data_dir):
        found = expand(location, s3)
        if not found:
            issues.add(location, None, f"tasks.{cfg.name}.{split}", "file not found (or glob/folder matched no file)",
                       "check the path, or set MTL_DATA_DIR to the data directory")
        files += found
    return files


def check_task_config(cfg: TaskDataConfig, data_dir: str | None, issues: IssueCollector,
                      s3: S3Config | None = None) -> None:
    """Cheap checks that need no reading: format fits the task type, files exist."""
    if cfg.source == "hub":
        if is_parsing(cfg.type):
            _check_parsing_config(cfg, issues)
        return  # the hub is only reachable by loading; ingest reports what it cannot load
    if cfg.format not in READERS:
        issues.add(f"tasks.{cfg.name}", None, "format", f"unknown format {cfg.format!r}",
                   f"use one of {sorted(READERS)}")
        return
    token_task = is_token_task(cfg.type)
    if is_parsing(cfg.type):
        _check_parsing_config(cfg, issues)
    elif (token_task and cfg.format in SENTENCE_FORMATS) or (not token_task and cfg.format in TOKEN_FORMATS):
        issues.add(f"tasks.{cfg.name}", None, "format",
                   f"format {cfg.format!r} does not fit task type {cfg.type!r}",
                   "token tasks read conllu/conll/jsonl/parquet; sentence tasks read tsv/csv/jsonl/parquet/label_text")
    elif cfg.format == "label_text" and is_pair_task(cfg.type):
        issues.add(f"tasks.{cfg.name}", None, "format", "label_text lines hold one text, not a pair",
                   "use tsv, csv, jsonl or parquet with text_pair_column for pair tasks")
    for split in SPLITS:
        split_files(cfg, split, data_dir, s3, issues)


def _check_parsing_config(cfg: TaskDataConfig, issues: IssueCollector) -> None:
    """A parse needs each word's HEAD and DEPREL, which only CoNLL-U files hold, and scores arcs
    between the words' first subwords."""
    if cfg.source != "files" or cfg.format != "conllu":
        given = "source: hub" if cfg.source != "files" else f"format {cfg.format!r}"
        issues.add(f"tasks.{cfg.name}", None, "source" if cfg.source != "files" else "format",
                   f"{given} does not fit task type 'dependency_parsing': only CoNLL-U files hold the HEAD and "
                   "DEPREL columns a parse is trained on",
                   "set format: conllu and point train/dev at .conllu files (UD treebanks are CoNLL-U)")
    if cfg.label_alignment != "first":
        issues.add(f"tasks.{cfg.name}", None, "label_alignment",
                   f"{cfg.label_alignment!r} does not fit dependency_parsing: arcs are scored between the first "
                   "subwords of words", "remove label_alignment (or set it to first)")


def validate_examples(examples: list[Example], cfg: TaskDataConfig, issues: IssueCollector) -> None:
    for ex in examples:
        if is_token_task(cfg.type):
            if len(ex.tokens or []) != len(ex.tags or []):
                issues.add(ex.file, ex.line, "tags", f"{len(ex.tokens or [])} tokens but {len(ex.tags or [])} tags",
                           "every token needs exactly one tag")
            if not ex.tokens:
                issues.add(ex.file, ex.line, "tokens", "no tokens", "remove the record or fill in its tokens")
            for position, tag in enumerate(ex.tags or []):
                if not tag.strip():
                    issues.add(ex.file, _tag_line(ex, position, cfg), f"tags[{position}]", "empty tag",
                               "every token needs a tag")
            if cfg.label_scheme == "bio":
                _check_bio(ex, cfg, issues)
            if is_parsing(cfg.type) and len(ex.heads or []) != len(ex.tokens or []):
                issues.add(ex.file, ex.line, "heads", f"{len(ex.tokens or [])} words but {len(ex.heads or [])} heads",
                           "every word needs its HEAD (column 7 of a CoNLL-U file)")
        else:
            if not ex.text:
                issues.add(ex.file, ex.line, "text", "empty text", "remove the row or fill in the text")
            if is_pair_task(cfg.type) and not ex.text_pair:
                issues.add(ex.file, ex.line, "text_pair", "empty second text", "remove the row or fill it in")
            if not ex.label:
                issues.add(ex.file, ex.line, "label", "empty label", "every row needs a label")
            elif is_regression(cfg.type) and not _is_number(ex.label):
                issues.add(ex.file, ex.line, "label", f"{ex.label!r} is not a number",
                           f"{cfg.type} targets are real numbers (e.g. 3.8)")
        if cfg.labels is not None:
            _check_declared(ex, cfg, cfg.labels, issues)


def _check_declared(ex: Example, cfg: TaskDataConfig, declared: list[str], issues: IssueCollector) -> None:
    """A task that declares its label set refuses any other value (a typo would become a class)."""
    allowed = set(declared)
    shown = repr(declared) if len(declared) <= 20 else f"{declared[:20]!r} ... ({len(declared)} in all)"
    for position, label in enumerate(gold_labels(ex)):
        if label.strip() and label not in allowed:  # an empty one is reported as empty already
            line, name = (_tag_line(ex, position, cfg), f"tags[{position}]") if ex.tags is not None \
                else (ex.line, "label")
            issues.add(ex.file, line, name, f"{label!r} is not one of the declared labels {shown}",
                       "fix the value, or add it to the task's labels")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _check_bio(ex: Example, cfg: TaskDataConfig, issues: IssueCollector) -> None:
    """Refuse (or, with `bio_repair`, fix) tags that break BIO: an I-X must continue a B-X/I-X."""
    previous = "O"
    tags = ex.tags or []
    for position, tag in enumerate(tags):
        line = _tag_line(ex, position, cfg)
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


def _tag_line(ex: Example, position: int, cfg: TaskDataConfig) -> int:
    # a conll file has one token per line, so the tag's own line is exact there
    return ex.line + position if cfg.format == "conll" and cfg.source == "files" else ex.line


def gold_labels(ex: Example) -> list[str]:
    return list(ex.tags or []) if ex.tags is not None else [ex.label or ""]


def subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def cut_dev(examples: list[Example], ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out `ratio` of the examples as dev, chosen by a fixed seed; both keep file order."""
    count = max(1, round(len(examples) * ratio)) if len(examples) > 1 else 0
    held = set(random.Random(seed).sample(range(len(examples)), count))
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


def _hub_label_names(dataset: Any) -> dict[str, list[str]]:
    """Class names of ClassLabel columns (and sequences of them), so labels read as words."""
    names: dict[str, list[str]] = {}
    for column, feature in dataset.features.items():
        inner = getattr(feature, "feature", feature)  # Sequence(ClassLabel) or a list of ClassLabel
        if isinstance(inner, list) and inner:
            inner = inner[0]
        if hasattr(inner, "names") and inner.names:
            names[column] = list(inner.names)
    return names


def read_hub_split(cfg: TaskDataConfig, split: str, issues: IssueCollector) -> tuple[list[Example], int]:
    spec, hub = getattr(cfg, split), cfg.hub
    if hub is None:  # TaskDataConfig's validator refuses this already; kept for the type checker
        return [], 0
    where = f"hub:{hub.name}" + (f"/{hub.config}" if hub.config else "") + f"[{spec}]"
    try:
        dataset = load_hub_split(hub, str(spec))
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        issues.add(where, None, f"tasks.{cfg.name}.{split}", f"cannot load: {exc}",
                   "check hub.name, hub.config and the split name (or the network / HF_HUB_OFFLINE)")
        return [], 0
    rows = ((i, row) for i, row in enumerate(dataset, start=1))
    return records_to_examples(rows, where, cfg, issues, _hub_label_names(dataset)), len(dataset)


def read_split(cfg: TaskDataConfig, split: str, data_dir: str | None, issues: IssueCollector,
               s3: S3Config | None = None) -> list[Example]:
    """Every example of one split, from all its files; an empty split is reported."""
    reported = _count(issues)
    if cfg.source == "hub":
        examples, size = read_hub_split(cfg, split, issues)
        where = f"hub:{cfg.hub.name if cfg.hub else ''}[{getattr(cfg, split)}]"
    else:
        reader = get_reader(cfg.format or "")
        examples, size = [], 0
        files = split_files(cfg, split, data_dir, s3, issues)
        for file in files:
            raw = read_bytes(file, s3)
            size += len(raw.strip())
            examples += reader(raw, file, cfg, issues)
        where = files[0] if len(files) == 1 else ", ".join(split_locations(cfg, split, data_dir))
    if not size:
        issues.add(where, None, f"tasks.{cfg.name}.{split}", "the split is empty", "point at a file with data")
    elif not examples and reported == _count(issues):  # a reader that refused a file said why already
        issues.add(where, None, f"tasks.{cfg.name}.{split}", "no examples found",
                   f"check that the data is in {cfg.format or 'the configured'} format and the column settings")
    validate_examples(examples, cfg, issues)
    return examples


def _count(issues: IssueCollector) -> int:
    return len(issues.issues) + issues.dropped


def ingest_task(cfg: TaskDataConfig, data_dir: str | None, previous_labels: list[str] | None = None,
                issue_limit: int = 200, s3: S3Config | None = None) -> TaskData:
    """Read and validate both splits; raise `DataValidationError` with every problem found.

    `previous_labels` is the label list of the model being retrained (its champion): those
    labels keep their ids and new ones are appended, so old heads stay meaningful."""
    issues = IssueCollector(issue_limit)
    check_task_config(cfg, data_dir, issues, s3)
    issues.raise_if_any()
    splits = {"train": read_split(cfg, "train", data_dir, issues, s3)}
    if cfg.dev is not None:
        splits["dev"] = read_split(cfg, "dev", data_dir, issues, s3)
    issues.raise_if_any()
    if cfg.dev_ratio is not None:
        splits["train"], splits["dev"] = cut_dev(splits["train"], cfg.dev_ratio, cfg.split_seed)
    labels: list[str] = []  # a real-valued target has no label set to keep stable or to check dev against
    if not is_regression(cfg.type):
        labels = build_label_list((lab for ex in splits["train"] for lab in gold_labels(ex)), previous_labels,
                                  cfg.labels)
        known = set(labels)
        for ex in splits["dev"]:
            for position, lab in enumerate(gold_labels(ex)):
                if lab not in known:
                    line, name = (_tag_line(ex, position, cfg), f"tags[{position}]") if ex.tags is not None \
                        else (ex.line, "label")
                    issues.add(ex.file, line, name, f"{lab!r} does not occur in the train split",
                               "add training examples with this label or fix the label")
    issues.raise_if_any()
    splits["train"] = subsample(splits["train"], cfg.max_train_examples, cfg.sample_seed)
    splits["dev"] = subsample(splits["dev"], cfg.max_dev_examples, cfg.sample_seed)
    return TaskData(cfg.name, cfg.type, labels, splits)


def validate_tasks(cfgs: list[TaskDataConfig], data_dir: str | None, issue_limit: int = 200,
                   s3: S3Config | None = None) -> dict[str, TaskData]:
    """Ingest every task and raise one `DataValidationError` with the problems of all of them."""
    issues = IssueCollector(issue_limit)
    names = [c.name for c in cfgs]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        issues.add("tasks", None, "name", f"task name {dup!r} is used {names.count(dup)} times",
                   "give every task a unique name")
    loaded: dict[str, TaskData] = {}
    for cfg in cfgs:
        try:
            loaded[cfg.name] = ingest_task(cfg, data_dir, issue_limit=issue_limit, s3=s3)
        except DataValidationError as exc:
            issues.extend(exc.issues)
    issues.raise_if_any()
    return loaded
