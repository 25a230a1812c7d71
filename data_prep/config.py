"""Sub-configs consumed by data_prep: object-store access, one task's data source and reader
settings, and the tokenization settings."""
from __future__ import annotations

import codecs
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

TaskType = Literal["token_classification", "sequence_classification", "sequence_pair_classification",
                   "sequence_regression", "sequence_pair_regression", "dependency_parsing"]


def is_token_task(task_type: str) -> bool:
    """A label per word (a parse is one too: each word's DEPREL, plus its HEAD beside it)."""
    return task_type in ("token_classification", "dependency_parsing")


def is_parsing(task_type: str) -> bool:
    """Dependency parsing: per word a head (another word, or 0 for the root) and a relation label."""
    return task_type == "dependency_parsing"


def is_pair_task(task_type: str) -> bool:
    """A text pair per example (entailment, similarity)."""
    return task_type in ("sequence_pair_classification", "sequence_pair_regression")


def is_regression(task_type: str) -> bool:
    """One real-valued target per example, no label set."""
    return task_type in ("sequence_regression", "sequence_pair_regression")
# the readers' names (data_prep.readers.READERS; a test keeps the two equal), a choice in a form
ReaderFormat = Literal["conllu", "conll", "tsv", "csv", "jsonl", "parquet", "label_text"]
Column = int | str
LabelAlignment = Literal["first", "all", "last"]


class S3Config(BaseModel):
    """How to reach `s3://` data and caches. Anything left unset falls back to the usual AWS
    environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION), which botocore reads itself.

    Credentials are `SecretStr`: they print, dump and serialize as `**********`, so they never
    reach logs, MLflow params, Prefect artifacts or results."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000")
    region: str | None = Field(None, description="bucket region, e.g. us-east-1")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    def storage_options(self) -> dict[str, Any]:
        """s3fs keyword arguments; secrets are revealed only here, on their way to s3fs."""
        client: dict[str, Any] = {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client["endpoint_url"] = endpoint
        if self.region:
            client["region_name"] = self.region
        options: dict[str, Any] = {"client_kwargs": client, "use_listings_cache": False}
        for key, secret in (("key", self.access_key_id), ("secret", self.secret_access_key),
                            ("token", self.session_token)):
            if secret is not None:
                options[key] = secret.get_secret_value()
        return options


class HubSource(BaseModel):
    """A dataset read with `datasets.load_dataset(name, config, data_files=..., revision=...)`;
    the task's `train` and `dev` then name splits (slices like `train[:90%]` work too)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="hub dataset id (e.g. glue), a builder (parquet, json, csv) or a local folder")
    config: str | None = Field(None, description="dataset configuration (e.g. sst2)")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="files for a builder name such as parquet/json/csv")
    revision: str | None = Field(None, description="git revision of the hub dataset, for reproducible reads")


class TaskDataConfig(BaseModel):
    """Where one task's data lives and how to read it.

    Relative paths resolve against the data directory (`MTL_DATA_DIR`, the config's
    `data_dir`, or `../shared/data` when it exists). `train` and `dev` may be a file, a glob
    (`shards/train-*.jsonl`), a folder of shards, or a list of those; `s3://` works for all.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="task name: letters, digits, _")
    type: TaskType
    source: Literal["files", "hub"] = Field("files", description="files (local or s3://) or a datasets hub dataset")
    format: ReaderFormat | None = Field(None, description="files: the reader: conllu, conll, tsv, csv, jsonl, parquet "
                                                          "or label_text")
    hub: HubSource | None = Field(None, description="source hub: the dataset to load")
    train: str | list[str] = Field(description="train split: file, glob, folder or list (hub: split name)")
    dev: str | list[str] | None = Field(
        None, description="dev split (hub: split name); leave out and set dev_ratio to cut it from train")
    dev_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="fraction of train held out as dev")
    split_seed: int = Field(13, description="seed of the dev_ratio cut, fixed so retrains compare")
    token_column: Column | None = Field(
        None, description="conll: 0-based column of the word (default 0); records: field of the word list "
                          "(default tokens)")
    tag_column: Column | None = Field(
        None, description="conll: column of the tag, negative counts from the end (default -1); records: "
                          "field of the tag list (default tags)")
    text_column: Column = Field("sentence", description="tsv/csv/records: column of the text")
    text_pair_column: Column | None = Field(None, description="column of the second text for pair tasks")
    label_column: Column = Field("label", description="tsv/csv/records: column of the label")
    label_separator: str | None = Field(
        None, description="label_text: keep only the label's part before this (':' for TREC's coarse classes)")
    header: bool = Field(True, description="tsv/csv: first line names the columns")
    delimiter: str | None = Field(None, min_length=1, max_length=1, pattern=r'^[^"\r\n]$',
                                  description="tsv/csv: field separator, one character (default tab for tsv, "
                                              "comma for csv)")
    encoding: str = "utf-8"
    encoding_errors: Literal["strict", "replace"] = Field(
        "strict", description="strict refuses undecodable bytes; replace substitutes U+FFFD"
    )
    labels: list[str] | None = Field(
        None, min_length=1, description="the label (token tasks: tag) set; any other value in the data is refused, "
                                        "and a first model's label ids follow this order")
    label_scheme: Literal["plain", "bio"] = Field(
        "plain", description="bio: tags are B-/I-/O entity tags, scored with entity-level F1"
    )
    bio_repair: bool = Field(
        False, description="bio: turn an I-X that follows O or another type into B-X instead of refusing it"
    )
    label_alignment: LabelAlignment = Field(
        "first", description="token tasks: which subwords of a word carry its label in training")
    auxiliary: bool = Field(
        False, description="trained (sampled, weighted) to help the other tasks, but never exported, evaluated, "
                           "gated or registered")
    max_train_examples: int | None = Field(None, gt=0, description="subsample train to this many (seeded)")
    max_dev_examples: int | None = Field(None, gt=0, description="subsample dev to this many (seeded)")
    sample_seed: int = 13
    max_label_shift: float | None = Field(
        None, ge=0, le=1, description="refuse the run when train's label distribution moved further than this "
                                      "(total variation distance, 0 same to 1 disjoint) from the champion's "
                                      "training data; unset: reported, never refused")
    positive_label: str | None = Field(
        None, description="sentence (pair) classification: the positive class, whose F1 against the rest is "
                          "reported as the metric f1 (GLUE's MRPC and QQP: 1)")
    primary_metric: str | None = Field(
        None, description="the dev metric that selects this task's weights during training and that the "
                          "promotion gate compares (one of the task type's metrics, e.g. f1 with positive_label, "
                          "spearman); unset: pearson for regression, las for parsing, entity_f1 for bio, "
                          "else accuracy")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        # `labels: [0, 1]` in YAML means the classes a file writes as 0 and 1
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("positive_label", mode="before")
    @classmethod
    def _positive_label_as_text(cls, value: Any) -> Any:
        # `positive_label: 1` in YAML means the class a file writes as 1
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; use a Python codec name such as utf-8, "
                             "utf-8-sig, utf-16 or latin-1") from None
        return value

    @model_validator(mode="after")
    def _declared_labels(self) -> "TaskDataConfig":
        problems = declared_label_problems(self.labels or [], self.type, self.label_scheme)
        if problems:
            raise ValueError(f"task {self.name!r}: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _positive_label_of_a_classifier(self) -> "TaskDataConfig":
        # f1 is one class against the rest: only a sentence label has classes to pick one of
        if self.positive_label is None:
            return self
        if is_regression(self.type) or is_token_task(self.type):
            raise ValueError(f"task {self.name!r}: positive_label is for sentence (pair) classification, not "
                             f"{self.type}; remove positive_label")
        if self.labels is not None and self.positive_label not in self.labels:
            raise ValueError(f"task {self.name!r}: positive_label {self.positive_label!r} is not one of the declared "
                             f"labels {self.labels}; set it to one of them")
        return self

    @model_validator(mode="after")
    def _one_dev_source(self) -> "TaskDataConfig":
        # a dev split is the promotion gate's yardstick: it must come from exactly one place
        if self.dev is None and self.dev_ratio is None:
            raise ValueError(f"task {self.name!r}: set dev (a file) or dev_ratio (a fraction of train to hold out)")
        if self.dev is not None and self.dev_ratio is not None:
            raise ValueError(f"task {self.name!r}: set either dev or dev_ratio, not both")
        if self.source == "hub" and self.hub is None:
            raise ValueError(f"task {self.name!r}: source hub needs hub.name (and hub.config if the dataset has one)")
        if self.source == "files" and self.format is None:
            raise ValueError(f"task {self.name!r}: set format to one of conllu, conll, tsv, csv, jsonl, parquet, label_text")
        return self


BIO_TAG = re.compile(r"^(O|[BI]-.+)$")


def declared_label_problems(labels: list[str], task_type: str, scheme: str) -> list[str]:
    """What is wrong with a declared label set, the first problem first."""
    if labels and is_regression(task_type):
        return [f"labels: {task_type} targets are numbers, not a label set; remove labels"]
    problems: list[str] = []
    seen: set[str] = set()
    for label in labels:
        if not label.strip():
            problems.append("labels: an empty label cannot be a class; remove it")
        elif label in seen:
            problems.append(f"labels: {label!r} is declared twice; list every label once")
        elif scheme == "bio" and not BIO_TAG.match(label):
            problems.append(f"labels: {label!r} is not a BIO tag; a bio task declares O, B-TYPE and I-TYPE tags")
        seen.add(label)
    return problems


class TokenizeConfig(BaseModel):
    """How examples become encoder inputs."""

    model_config = ConfigDict(extra="forbid")

    stride: int = Field(16, ge=0, description="token tasks: subword tokens shared by consecutive windows "
                                             "of a sentence longer than max_length")
    num_proc: int = Field(1, ge=1, description="processes that tokenize in parallel (1: in this process)")
    batch_size: int = Field(1000, ge=1, description="examples per fast-tokenizer call")
