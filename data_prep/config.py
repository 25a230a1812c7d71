"""Sub-configs consumed by data_prep: one task's data source and reader settings."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TaskType = Literal["token_classification", "sequence_classification", "sequence_pair_classification"]
Column = int | str


class TaskDataConfig(BaseModel):
    """Where one task's data lives and how to read it.

    Relative paths resolve against the data directory (`MTL_DATA_DIR`, the config's
    `data_dir`, or `../shared/data` when it exists).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="task name: letters, digits, _")
    type: TaskType
    format: str = Field(description="reader name: conllu, conll or tsv")
    train: str = Field(description="train split file")
    dev: str = Field(description="dev split file, used for evaluation and the promotion gate")
    token_column: Column = Field(0, description="conll: column of the word")
    tag_column: Column = Field(-1, description="conll: column of the tag (negative counts from the end)")
    text_column: Column = Field("sentence", description="tsv: column of the text (name with header, else index)")
    text_pair_column: Column | None = Field(None, description="tsv: column of the second text for pair tasks")
    label_column: Column = Field("label", description="tsv: column of the label")
    header: bool = Field(True, description="tsv: first line names the columns")
    delimiter: str = "\t"
    encoding: str = "utf-8"
    encoding_errors: Literal["strict", "replace"] = Field(
        "strict", description="strict refuses undecodable bytes; replace substitutes U+FFFD"
    )
    label_scheme: Literal["plain", "bio"] = Field(
        "plain", description="bio: tags are B-/I-/O entity tags, scored with entity-level F1"
    )
    bio_repair: bool = Field(
        False, description="bio: turn an I-X that follows O or another type into B-X instead of refusing it"
    )
    max_train_examples: int | None = Field(None, gt=0, description="subsample train to this many (seeded)")
    max_dev_examples: int | None = Field(None, gt=0, description="subsample dev to this many (seeded)")
    sample_seed: int = 13
