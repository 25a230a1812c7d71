"""What a served model is asked: the inputs `mtl predict` reads from a file and the pyfunc model
(behind `mlflow models serve`) gets as a DataFrame, checked by the same rules and predicted by
the same Predictor, every task in one call.

An input is a sentence (`text`), a pre-split sentence (`tokens`, a list of words) or a text pair
(`text` plus `text_pair`); `id` is carried along. Token tasks tag each word (the text split on
whitespace, or the tokens as given), sentence tasks read the same words, pair tasks the pair.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from data_prep.config import is_pair_task
from data_prep.errors import IssueCollector
from training.model.export import CARD, read_card

FIELDS = ("text", "tokens", "text_pair", "id")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
FIELDS_FIX = "each input has `text` (a string) or `tokens` (a list of strings); `text_pair` and `id` are optional"


class ServingError(ValueError):
    """A model URI or task choice that cannot be served; the message names it and the fix."""


@dataclass(frozen=True)
class ModelInput:
    words: list[str]
    text: str
    text_pair: str | None = None
    id: Any = None
    line: int | None = None  # where it came from, for errors found later (a pair task without a pair)


def _missing(value: Any) -> bool:
    """Absent in a JSON object, or a hole a DataFrame filled in (None, NaN, pandas' NA)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def parse_input(record: Mapping[str, Any], file: str, line: int, issues: IssueCollector) -> ModelInput | None:
    """One input from a record of fields; its problems go to `issues` (then None)."""
    before = len(issues.issues) + issues.dropped
    given = {k: v for k, v in record.items() if not _missing(v)}
    for key in given:
        if key not in FIELDS:
            issues.add(file, line, str(key), "unknown field", f"the fields are {', '.join(FIELDS)}")
    text, tokens, pair = given.get("text"), given.get("tokens"), given.get("text_pair")
    if text is not None and tokens is not None:
        issues.add(file, line, "tokens", "give `text` or `tokens`, not both", FIELDS_FIX)
    elif text is None and tokens is None:
        issues.add(file, line, "text", "missing", FIELDS_FIX)
    elif text is not None and (not isinstance(text, str) or not text.split()):
        issues.add(file, line, "text", f"must be a non-empty string, got {text!r:.60}")
    elif tokens is not None:
        words = list(tokens) if isinstance(tokens, (list, tuple)) or hasattr(tokens, "tolist") else None
        if not words:
            issues.add(file, line, "tokens", f"must be a non-empty list of strings, got {tokens!r:.60}")
        for i, word in enumerate(words or []):
            if not isinstance(word, str) or not word.strip():
                issues.add(file, line, f"tokens[{i}]", f"must be a non-empty string, got {word!r:.60}")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        issues.add(file, line, "text_pair", f"must be a non-empty string, got {pair!r:.60}")
    if len(issues.issues) + issues.dropped > before:
        return None
    words = [str(w) for w in tokens] if tokens is not None else str(text).split()
    return ModelInput(words, str(text) if text is not None else " ".join(words), pair, given.get("id"), line)


def inputs_from_records(records: Iterable[tuple[int, Mapping[str, Any]]], file: str) -> list[ModelInput]:
    """Every record's input, or one error listing every problem (file, line, field)."""
    issues = IssueCollector()
    inputs = [parse_input(record, file, line, issues) for line, record in records]
    issues.raise_if_any()
    return [i for i in inputs if i is not None]


def inputs_from_frame(frame: Any) -> list[ModelInput]:
    """The pyfunc model's input: a DataFrame (or what makes one) with the same fields as columns;
    rows are numbered from 1 in errors."""
    import pandas as pd

    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    return inputs_from_records(((i + 1, row) for i, row in enumerate(frame.to_dict(orient="records"))), "input")


def read_inputs(path: str | Path) -> list[ModelInput]:
    """Inputs from a JSONL file (an object per line; a bare string is a text, a bare list its tokens)
    or a CSV/TSV file with a header of fields; blank lines are skipped."""
    file, issues = str(path), IssueCollector()
    kind = FORMATS.get(Path(file).suffix.lower())
    if kind is None:
        issues.add(file, None, "format", f"unknown extension {Path(file).suffix!r}", "use .jsonl, .csv or .tsv")
    elif not Path(file).is_file():
        issues.add(file, None, "path", "no such file")
    issues.raise_if_any()
    try:
        text = Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        issues.add(file, None, "encoding", f"not UTF-8 ({exc.reason} at byte {exc.start})", "save it as UTF-8")
        issues.raise_if_any()
    records = _jsonl_records(text, file, issues) if kind == "jsonl" else _table_records(text, file, kind, issues)
    inputs = [parse_input(record, file, line, issues) for line, record in records]
    if not records and not issues.issues:
        issues.add(file, None, "inputs", "the file holds no input")
    issues.issues.sort(key=lambda issue: issue.line or 0)  # in file order, whichever check found them
    issues.raise_if_any()
    return [i for i in inputs if i is not None]


def json_problem(exc: json.JSONDecodeError, whole: bool = False) -> str:
    """json's message and where it stopped: the column (of a JSONL line) or, for a `whole` document,
    line, column and character. Some of json's messages already end in "at" ("Unterminated string
    starting at", "Invalid control character at"): those take the place without another "at"."""
    where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})" if whole else f"column {exc.colno}"
    return f"{exc.msg} {where}" if exc.msg.endswith(" at") else f"{exc.msg} at {where}"


def _jsonl_records(text: str, file: str, issues: IssueCollector) -> list[tuple[int, Mapping[str, Any]]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.add(file, number, "json", f"not valid JSON ({json_problem(exc)})")
            continue
        if isinstance(value, str):
            value = {"text": value}
        elif isinstance(value, list):
            value = {"tokens": value}
        if not isinstance(value, dict):
            issues.add(file, number, "json", f"expected an object, a string or a list, got {value!r:.60}",
                       FIELDS_FIX)
            continue
        records.append((number, value))
    return records


def _table_records(text: str, file: str, kind: str, issues: IssueCollector) -> list[tuple[int, Mapping[str, Any]]]:
    """Rows of a delimited file with a header; an empty cell is an absent field."""
    reader = csv.reader(io.StringIO(text), delimiter="\t" if kind == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if not header:
        issues.add(file, 1, "header", f"missing: the first line names the columns ({', '.join(FIELDS)})")
        return []
    if "tokens" in header:
        issues.add(file, 1, "tokens", f"not a {kind.upper()} column: words are the text split on whitespace",
                   "name the column `text`, or use JSONL for token lists")
    records = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            issues.add(file, reader.line_num, "row", f"{len(row)} fields, the header has {len(header)}")
            continue
        records.append((reader.line_num, {k: v for k, v in zip(header, row) if v.strip() and k != "tokens"}))
    return records


def choose_tasks(card: Mapping[str, Any], wanted: list[str] | None, source: str) -> list[str]:
    """The tasks to predict: all the model's, or those asked for (each must exist)."""
    names = [t["name"] for t in card["tasks"]]
    if not wanted:
        return names
    if unknown := [t for t in wanted if t not in names]:
        raise ServingError(f"{source}: unknown task(s) {unknown}; the model's tasks are {names}")
    return list(dict.fromkeys(wanted))


def check_pairs(inputs: list[ModelInput], card: Mapping[str, Any], tasks: list[str], file: str) -> None:
    """A pair task needs a `text_pair` in every input: refused before the model loads."""
    types = {t["name"]: t["type"] for t in card["tasks"]}
    paired = [t for t in tasks if is_pair_task(types[t])]
    if not paired:
        return
    issues = IssueCollector()
    for n, item in enumerate(inputs):
        if item.text_pair is None:
            issues.add(file, item.line if item.line is not None else n + 1, "text_pair",
                       f"missing: pair task(s) {paired} need one",
                       "give every input a text_pair, or leave the pair tasks out with --tasks")
    issues.raise_if_any()


def predict_inputs(predictor: Any, inputs: list[ModelInput], tasks: list[str] | None = None) -> list[dict[str, Any]]:
    """Every chosen task for every input, in one call of the Predictor."""
    pairs = [i.text_pair for i in inputs] if any(i.text_pair is not None for i in inputs) else None
    return predictor.predict([i.text for i in inputs], pairs, tasks, words=[i.words for i in inputs])


# ---------------------------------------------------------------------------------------------------
# mtl predict: a model URI and a file of inputs -> JSONL


def resolve_export(model_uri: str, tracking_uri: str | None, workdir: str) -> Path:
    """The export folder behind an export folder, an MLflow model folder, or an MLflow URI
    (`models:/name@alias`, `models:/name/version`, `runs:/id/model`, ...) downloaded into `workdir`."""
    local = Path(model_uri)
    if local.is_dir():
        return _export_in(local, model_uri)
    if "://" not in model_uri and not model_uri.startswith(("models:/", "runs:/")):
        raise ServingError(f"{model_uri}: no such folder, and not a models:/ or runs:/ URI "
                           "(give an export folder, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model)")
    import mlflow

    check_store(model_uri, tracking_uri)
    from contextlib import nullcontext

    from training.release.registry import pinned_uris

    # download_artifacts resolves a models:/ URI through the process-wide registry URI whatever
    # registry_uri it is given: pin both for the call, then put them back
    try:
        with pinned_uris(tracking_uri) if tracking_uri else nullcontext():
            found = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=workdir,
                                                        tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise ServingError(f"{model_uri}: {exc.message}") from None
    return _export_in(Path(found), model_uri)


def check_store(model_uri: str, tracking_uri: str | None) -> None:
    """A sqlite store that is not there is refused: MLflow would create an empty one and then
    answer that the model does not exist."""
    if tracking_uri and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise ServingError(f"{model_uri}: no MLflow store at {tracking_uri} (pass --tracking-uri or set "
                           "MLFLOW_TRACKING_URI)")


def _export_in(folder: Path, source: str) -> Path:
    if (folder / CARD).is_file():
        return folder
    if (folder / "MLmodel").is_file():
        import yaml

        conf = yaml.safe_load((folder / "MLmodel").read_text()) or {}
        artifact = conf.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get("model_dir", {})
        if artifact.get("path") and (folder / artifact["path"] / CARD).is_file():
            return folder / artifact["path"]
    raise ServingError(f"{source}: not a multi-task model: no {CARD} there, nor an MLflow model with a "
                       "'model_dir' artifact (the pipeline's registered models have one)")


def predict_file(model_uri: str, input_path: str, out: str | None = None, tasks: list[str] | None = None,
                 tracking_uri: str | None = None, chunk: int = 512) -> int:
    """Predict every chosen task for every input of a file; JSONL (one line per input, in order,
    `id` first when given) to `out` (written atomically) or stdout. The input file, the tasks and
    the pairs they need are checked before the model loads. Returns the number of inputs."""
    from training.evaluation.predict import Predictor

    inputs = read_inputs(input_path)
    with tempfile.TemporaryDirectory(prefix="mtl-predict-") as work:
        export = resolve_export(model_uri, tracking_uri, work)
        card = read_card(export)
        chosen = choose_tasks(card, tasks, "--tasks")
        check_pairs(inputs, card, chosen, input_path)
        predictor = Predictor(export)  # weights and tokenizer in memory: the download may go
    with _output(out) as handle:
        for start in range(0, len(inputs), chunk):
            part = inputs[start:start + chunk]
            for item, result in zip(part, predict_inputs(predictor, part, chosen)):
                row = ({"id": item.id} if item.id is not None else {}) | result
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(inputs)


class _output:
    """stdout, or a file that appears whole (a temp name renamed into place) or not at all."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.tmp: Path | None = None

    def __enter__(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.handle = open(self.tmp, "w", encoding="utf-8")
        return self.handle

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self.path is None or self.tmp is None:
            sys.stdout.flush()
            return
        self.handle.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
