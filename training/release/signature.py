"""The pyfunc model's signature and input example, read off the export's card.

What a user sends (`pyfunc_model.MultiTaskPyfunc.predict`, rules in `serving.py`): a table with a
`text` column (a sentence) or a `tokens` column (a list of words), a `text_pair` column for the
sentence-pair tasks (optional: without it those tasks are skipped) and an optional `id`. Every
column is optional in the schema, so MLflow's schema check keeps each of them; which one a row
needs is checked by the model with the row named.
What comes back: one column per exported task: a list of tags (one per whitespace word) for a
token task, a label for a classification task, a number for a regression task, a
`{"head": int, "deprel": str}` per whitespace word for a dependency parser (head 0: the root).
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import AnyType, Array, Object, Property

from data_prep.config import is_pair_task, is_parsing, is_regression, is_token_task

EXAMPLE_TEXTS = ["EU rejects German call to boycott British lamb .", "a gorgeous , witty , seductive movie ."]
EXAMPLE_PAIRS = ["The EU turned down a German proposal .", "The film is dull ."]


def _has_pairs(card: dict[str, Any]) -> bool:
    return any(is_pair_task(t["type"]) for t in card["tasks"])


def _output(task: dict[str, Any]) -> ColSpec:
    if is_parsing(task["type"]):
        return ColSpec(Array(Object([Property("head", DataType.long), Property("deprel", DataType.string)])),
                       task["name"])
    if is_token_task(task["type"]):
        return ColSpec(Array(DataType.string), task["name"])
    return ColSpec(DataType.double if is_regression(task["type"]) else DataType.string, task["name"])


def model_signature(card: dict[str, Any]) -> ModelSignature:
    inputs = [ColSpec(DataType.string, "text", required=False),
              # Any, not Array(string): a row that sends text has no tokens (null), which an Array
              # column refuses
              ColSpec(AnyType(), "tokens", required=False)]
    if _has_pairs(card):
        inputs.append(ColSpec(DataType.string, "text_pair", required=False))
    inputs.append(ColSpec(AnyType(), "id", required=False))  # ids may be numbers or strings
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([_output(t) for t in card["tasks"]]))


def input_example(card: dict[str, Any]) -> pd.DataFrame:
    frame = {"text": EXAMPLE_TEXTS}
    if _has_pairs(card):
        frame["text_pair"] = EXAMPLE_PAIRS
    return pd.DataFrame(frame)
