"""What a served model is asked: the inputs `mtl predict` reads from a file and the pyfunc model
(behind `mlflow models serve`) gets as a DataFrame, checked by the same rules and predicted by
the same Predictor, every task in one call.

An input is a sentence (`text`), a pre-split sentence (`tokens`, a list of words) or a text pair
(`text` plus `text_pair`); `id` is carried along. Token tasks tag each word (the text split on
whitespace, or the tokens as given), sentence tasks read the same words, pair tasks the pair.

`mtl predict` streams: the input file is checked in one pass (every problem reported before the
model loads, its SHA-256 taken on the way), then read again a chunk at a time, each chunk's JSONL
written and flushed before the next is read. A run that stops early leaves `<out>.resume.json`;
the same command again goes on after the rows already written.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from data_prep.config import is_pair_task
from data_prep.errors import DataIssue, DataValidationError, IssueCollector
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


@dataclass(frozen=True)
class InputFile:
    """An input file checked in one streaming pass: how many inputs it holds, the SHA-256 of its
    bytes (what a resumed `mtl predict` compares) and the lines of the inputs without a `text_pair`
    (the first IssueCollector.limit of them; `unpaired` counts them all)."""
    path: str
    kind: str
    inputs: int
    sha256: str
    unpaired_lines: tuple[int, ...]
    unpaired: int


def scan_inputs(path: str | Path) -> InputFile:
    """Check every input of a JSONL file (an object per line; a bare string is a text, a bare list its
    tokens) or a CSV/TSV file with a header of fields, reading it line by line (never whole); blank
    lines are skipped. One error lists every problem (file, line, field)."""
    file, issues = str(path), IssueCollector()
    kind = FORMATS.get(Path(file).suffix.lower())
    if kind is None:
        raise DataValidationError([DataIssue(file, None, "format", f"unknown extension {Path(file).suffix!r}",
                                             "use .jsonl, .csv or .tsv")])
    if not Path(file).is_file():
        raise DataValidationError([DataIssue(file, None, "path", "no such file")])
    sha, records, inputs, lines, unpaired = hashlib.sha256(), 0, 0, [], 0
    for line, record in _file_records(file, kind, issues, sha):
        records += 1
        item = parse_input(record, file, line, issues)
        if item is None:
            continue
        inputs += 1
        if item.text_pair is None:
            unpaired += 1
            if len(lines) < issues.limit:
                lines.append(line)
    if not records and not issues.issues:
        issues.add(file, None, "inputs", "the file holds no input")
    issues.issues.sort(key=lambda issue: issue.line or 0)  # in file order, whichever check found them
    issues.raise_if_any()
    return InputFile(file, kind, inputs, sha.hexdigest(), tuple(lines), unpaired)


def iter_inputs(scanned: InputFile, skip: int = 0) -> Iterator[ModelInput]:
    """The inputs of a scanned file, read again line by line, after the first `skip`."""
    issues = IssueCollector()
    seen = 0
    for line, record in _file_records(scanned.path, scanned.kind, issues, None):
        item = parse_input(record, scanned.path, line, issues)
        if issues.issues:
            raise ServingError(f"{scanned.path} changed while it was being read ({issues.issues[0]}); "
                               "predict from a file nothing else writes to")
        if item is not None:
            seen += 1
            if seen > skip:
                yield item


def read_inputs(path: str | Path) -> list[ModelInput]:
    """Every input of a file, checked first (see scan_inputs); for files that fit in memory."""
    return list(iter_inputs(scan_inputs(path)))


def _file_lines(file: str, issues: IssueCollector, sha: Any) -> Iterator[str]:
    """The file's lines as text, one at a time; `sha` (when given) sees every byte. A line that is
    not UTF-8 is an issue and skipped; a byte order mark (Windows editors write one) is dropped."""
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if sha is not None:
                sha.update(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                issues.add(file, number, "encoding", f"not UTF-8 ({exc.reason} at byte {exc.start} of the line)",
                           "save it as UTF-8")
                text = "\n"  # keeps the line count (and a CSV reader's line numbers) right
            yield text.removeprefix("\ufeff") if number == 1 else text


def _file_records(file: str, kind: str, issues: IssueCollector, sha: Any) -> Iterator[tuple[int, Mapping[str, Any]]]:
    lines = _file_lines(file, issues, sha)
    return _jsonl_records(lines, file, issues) if kind == "jsonl" else _table_records(lines, file, kind, issues)


def json_problem(exc: json.JSONDecodeError, whole: bool = False) -> str:
    """json's message and where it stopped: the column (of a JSONL line) or, for a `whole` document,
    line, column and character. Some of json's messages already end in "at" ("Unterminated string
    starting at", "Invalid control character at"): those take the place without another "at"."""
    where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})" if whole else f"column {exc.colno}"
    return f"{exc.msg} {where}" if exc.msg.endswith(" at") else f"{exc.msg} at {where}"


def _jsonl_records(lines: Iterable[str], file: str, issues: IssueCollector) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(lines, start=1):
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
        yield number, value


# an `id` cell that reads as an integer comes back as one (JSONL ids keep their JSON type); a
# leading zero or a plus sign marks a code ("007"), which stays a string
_INTEGER_ID = re.compile(r"-?(0|[1-9][0-9]*)")


def _table_records(lines: Iterable[str], file: str, kind: str,
                   issues: IssueCollector) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Rows of a delimited file with a header; an empty cell is an absent field."""
    reader = csv.reader(iter(lines), delimiter="\t" if kind == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if not header:
        issues.add(file, 1, "header", f"missing: the first line names the columns ({', '.join(FIELDS)})")
        return
    if "tokens" in header:
        issues.add(file, 1, "tokens", f"not a {kind.upper()} column: words are the text split on whitespace",
                   "name the column `text`, or use JSONL for token lists")
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            issues.add(file, reader.line_num, "row", f"{len(row)} fields, the header has {len(header)}")
            continue
        record: dict[str, Any] = {k: v for k, v in zip(header, row) if v.strip() and k != "tokens"}
        if isinstance(record.get("id"), str) and _INTEGER_ID.fullmatch(record["id"]):
            record["id"] = int(record["id"])
        yield reader.line_num, record


def choose_tasks(card: Mapping[str, Any], wanted: list[str] | None, source: str) -> list[str]:
    """The tasks to predict: all the model's, or those asked for (each must exist)."""
    names = [t["name"] for t in card["tasks"]]
    if not wanted:
        return names
    if unknown := [t for t in wanted if t not in names]:
        raise ServingError(f"{source}: unknown task(s) {unknown}; the model's tasks are {names}")
    return list(dict.fromkeys(wanted))


def check_pairs(scanned: InputFile, card: Mapping[str, Any], tasks: list[str]) -> None:
    """A pair task needs a `text_pair` in every input: refused before the model loads."""
    types = {t["name"]: t["type"] for t in card["tasks"]}
    paired = [t for t in tasks if is_pair_task(types[t])]
    if not paired or not scanned.unpaired:
        return
    issues = IssueCollector()
    for line in scanned.unpaired_lines:
        issues.add(scanned.path, line, "text_pair", f"missing: pair task(s) {paired} need one",
                   "give every input a text_pair, or leave the pair tasks out with --tasks")
    issues.dropped = scanned.unpaired - len(issues.issues)
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
        with pinned_uris(tracking_uri) if tracking_uri else nullcontext(), quiet_downloads():
            found = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=workdir,
                                                        tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise ServingError(f"{model_uri}: {exc.message}") from None
    return _export_in(Path(found), model_uri)


PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per downloaded artifact (a registered model is dozens of files, each
    a bar on stderr) unless the user set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR themselves."""
    if PROGRESS_BAR_ENV in os.environ:
        yield
        return
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_BAR_ENV, None)


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


# a run that stops before its last row leaves this beside --out: what it was predicting, so a rerun
# with the same --out goes on after the rows already there (and refuses another input)
RESUME_SUFFIX = ".resume.json"
CHUNK_ROWS = 1024


def predict_file(model_uri: str, input_path: str, out: str | None = None, tasks: list[str] | None = None,
                 tracking_uri: str | None = None, chunk: int = CHUNK_ROWS, device: str | None = None,
                 precision: str | None = None, progress: bool | None = None) -> int:
    """Predict every chosen task for every input of a file; JSONL (one line per input, in order,
    `id` first when given) to `out` or stdout, `chunk` inputs at a time: read, predicted, written
    and flushed, so neither file is ever whole in memory. The input file, the tasks and the pairs
    they need are checked before the model loads.

    With `out`, a run that stops early (a crash, a kill) leaves `<out>.resume.json`; the same call
    again goes on after the complete lines already in `out` (a torn last line is cut off) and
    refuses if the input file, the tasks or the model URI differ. Progress (rows, rows/s, time
    left) goes to stderr when it is a terminal (`progress`: force it on or off). `device`,
    `precision`: the inference policy's choices (training/evaluation/device.py). Returns the
    number of inputs."""
    from training.evaluation.device import DeviceError, inference_device, inference_dtype, precision_name
    from training.evaluation.predict import Predictor

    if chunk < 1:
        raise ServingError(f"--chunk-rows {chunk}: give at least 1")
    try:
        target = inference_device(device, what="--device")
        dtype = inference_dtype(target, precision, what="--precision")
    except DeviceError as exc:
        raise ServingError(str(exc)) from None
    sink = ResumableOutput(Path(out), Path(input_path)) if out else None
    scanned = scan_inputs(input_path)
    if sink is not None:
        sink.check_input(scanned)
    with tempfile.TemporaryDirectory(prefix="mtl-predict-") as work:
        export = resolve_export(model_uri, tracking_uri, work)
        card = read_card(export)
        chosen = choose_tasks(card, tasks, "--tasks")
        check_pairs(scanned, card, chosen)
        done = sink.rows_done(scanned, model_uri, chosen) if sink is not None else 0
        predictor: Any = None
        if done < scanned.inputs:
            # weights and tokenizer in memory: the download may go
            predictor = Predictor(export, device=target, precision=precision_name(dtype))
    if done:
        print(f"resuming: {done} of {scanned.inputs} predictions already in {out}", file=sys.stderr)
    meter = Progress(scanned.inputs, done, enabled=progress)
    with sink.open(scanned, model_uri, chosen, done) if sink is not None else _stdout() as handle:
        part: list[ModelInput] = []
        for item in iter_inputs(scanned, skip=done):
            part.append(item)
            if len(part) == chunk:
                _write_predictions(handle, predictor, part, chosen)
                meter.update(len(part))
                part = []
        if part:
            _write_predictions(handle, predictor, part, chosen)
            meter.update(len(part))
    meter.close()
    return scanned.inputs


def _write_predictions(handle: IO[str], predictor: Any, part: list[ModelInput], tasks: list[str]) -> None:
    """One chunk's lines, written and pushed to the file (or the pipe) before the next is read."""
    lines = []
    for item, result in zip(part, predict_inputs(predictor, part, tasks)):
        row = ({"id": item.id} if item.id is not None else {}) | result
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    handle.write("".join(lines))
    handle.flush()
    if handle is not sys.stdout:
        os.fsync(handle.fileno())  # the resume count trusts what is on disk, not in a cache


@contextmanager
def _stdout() -> Iterator[IO[str]]:
    yield sys.stdout
    sys.stdout.flush()


class ResumableOutput:
    """`--out`: JSONL written as it is predicted, beside a `<out>.resume.json` that says what it
    is for (the input's SHA-256, the tasks, the model URI) until the last row is written."""

    def __init__(self, path: Path, input_path: Path) -> None:
        if path.resolve() == input_path.resolve():
            raise ServingError(f"--out {path} is the input file: give another --out")
        self.path = path
        self.marker = path.with_name(path.name + RESUME_SUFFIX)

    def _recorded(self) -> dict[str, Any] | None:
        if not self.marker.is_file():
            return None
        try:
            found = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ServingError(f"{self.marker}: unreadable ({exc}): delete it and {self.path} to start over") from None
        return found if isinstance(found, dict) else {}

    def _start_over(self) -> str:
        return f"give another --out, or delete {self.path} and {self.marker} to start over"

    def check_input(self, scanned: InputFile) -> None:
        """An interrupted run's rows belong to its input: another input file is refused."""
        recorded = self._recorded()
        if recorded is None or recorded.get("input_sha256") == scanned.sha256:
            return
        raise ServingError(
            f"--out {self.path} holds the first predictions of an interrupted run over {recorded.get('input')} "
            f"(sha256 {str(recorded.get('input_sha256'))[:12]}); {scanned.path} is another input (sha256 "
            f"{scanned.sha256[:12]}), or that file changed since: {self._start_over()}")

    def rows_done(self, scanned: InputFile, model_uri: str, tasks: list[str]) -> int:
        """Complete lines an interrupted run of this same prediction left in `out` (0: none, or no
        interrupted run: an `out` without a marker is a finished file, written again)."""
        recorded = self._recorded()
        if recorded is None:
            return 0
        for key, now, what in (("tasks", tasks, "--tasks"), ("model_uri", model_uri, "the model URI")):
            if recorded.get(key) != now:
                raise ServingError(f"--out {self.path} holds the first predictions of an interrupted run with "
                                   f"{what} {recorded.get(key)}, not {now}: rerun with the same, or "
                                   f"{self._start_over()}")
        done = complete_lines(self.path) if self.path.is_file() else 0
        if done > scanned.inputs:
            raise ServingError(f"--out {self.path} has {done} lines, more than the {scanned.inputs} inputs of "
                               f"{scanned.path}: it was written by something else; {self._start_over()}")
        return done

    @contextmanager
    def open(self, scanned: InputFile, model_uri: str, tasks: list[str], done: int) -> Iterator[IO[str]]:
        """The file to append to (from `done` rows on); the marker goes once every row is in."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"input": str(Path(scanned.path).resolve()), "input_sha256": scanned.sha256,
                  "inputs": scanned.inputs, "model_uri": model_uri, "tasks": tasks}
        tmp = self.marker.with_name(f".{self.marker.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.marker)  # before the first row: a crash from here on can be resumed
        with open(self.path, "a" if done else "w", encoding="utf-8") as handle:
            yield handle
        self.marker.unlink()


def complete_lines(path: Path) -> int:
    """The number of newline-terminated lines in `path`; a torn last line (a write cut short by a
    crash) is cut off the file. Read in blocks: the file may be large."""
    count, end, offset = 0, 0, 0
    with open(path, "rb+") as handle:
        while block := handle.read(1 << 20):
            if (found := block.count(b"\n")) > 0:
                count += found
                end = offset + block.rindex(b"\n") + 1
            offset += len(block)
        if end < offset:
            handle.truncate(end)
    return count


class Progress:
    """Rows done, rows per second and time left, on one line of stderr rewritten in place; only
    when stderr is a terminal (a pipe or a log file gets nothing). Redrawn at most 5 times a second."""

    def __init__(self, total: int, done: int = 0, enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.first, self.done = total, done, done
        self.started = time.monotonic()
        self.drawn = -math.inf  # the first update draws
        self.width = 0

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.first) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "?" if left is None else _clock(left)
        return f"{self.done:,}/{self.total:,} rows  {rate:,.1f} rows/s  {eta} left"

    def update(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if self.enabled and (now - self.drawn >= 0.2 or self.done >= self.total):
            self.drawn = now
            text = self.line(now)
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def close(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
