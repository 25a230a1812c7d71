"""`mtl serve`: a model server that follows a registry alias and answers errors a client can read.

The request bodies and the answer are MLflow's scoring server's (`POST /invocations` with
`dataframe_records`, `dataframe_split` or `inputs`; `{"predictions": [...]}` in the pyfunc model's
shape), the input rules and the Predictor those of `mtl predict` (serving.py). Beyond MLflow's server:

- `models:/NAME@ALIAS` is resolved again every `poll_s` seconds in a background thread; a new
  version is downloaded and loaded beside the one serving, then swapped in with one assignment.
  Requests in flight finish on the model they started with; a version that fails to load leaves the
  old one serving, and the log says why.
- A bad request is a 400 naming the row (from 1), the field and the problem, with no stack trace;
  an unexpected failure is a 500 saying "internal error" and a request id, the traceback under that
  id in the server's log only.
- `GET /version` says what is served: the URI, the version it resolved to, the run, when it was
  loaded and when the alias was last looked at.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from data_prep.errors import DataValidationError, IssueCollector
from training.release.serving import (FIELDS_FIX, ModelInput, ServingError, check_store, json_problem, parse_input,
                                      predict_inputs, resolve_export)

log = logging.getLogger("mtl.serve")
FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")
MAX_BODY_BYTES = 64 * 1024 * 1024
RETRY_FAILED_S = 300.0  # a version that failed to load is tried again after this long, not at every poll
SOURCE = "input"  # errors read `input:<row>: <field>: <problem>`, as the pyfunc model's do


class BadRequest(Exception):
    """A request refused with a message for the client (status 4xx)."""

    def __init__(self, message: str, status: int = 400, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.problems = message, status, problems

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error_code": "BAD_REQUEST", "message": self.message}
        return out | ({"problems": self.problems} if self.problems else {})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------
# what the model URI points at, and loading it


@dataclass(frozen=True)
class Target:
    """What a model URI points at now: the URI to download, the registry version (None for a run or
    a folder) and the run it came from (when known)."""
    uri: str
    version: str | None
    run_id: str | None


def alias_of(model_uri: str) -> tuple[str, str] | None:
    """(name, alias) of a `models:/NAME@ALIAS` URI, else None."""
    if not model_uri.startswith("models:/") or "@" not in model_uri:
        return None
    name, _, alias = model_uri[len("models:/"):].rpartition("@")
    return (name, alias) if name and alias else None


class Source:
    """A model URI and its store; `resolve()` says what it points at now."""

    def __init__(self, model_uri: str, tracking_uri: str | None) -> None:
        self.model_uri, self.tracking_uri = model_uri, tracking_uri
        self.alias = alias_of(model_uri)
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            from training.release.registry import client_for

            check_store(self.model_uri, self.tracking_uri)
            self._client = client_for(self.tracking_uri) if self.tracking_uri else MlflowClient()
        return self._client

    def resolve(self) -> Target:
        from mlflow.exceptions import MlflowException

        try:
            if self.alias is not None:
                found = self.client().get_model_version_by_alias(*self.alias)
                return Target(f"models:/{self.alias[0]}/{found.version}", str(found.version), found.run_id)
            return self._fixed()
        except MlflowException as exc:
            raise ServingError(f"{self.model_uri}: {exc.message}") from None

    def _fixed(self) -> Target:
        """A URI that always means the same model: a version, a run's model or a folder."""
        rest = self.model_uri[len("models:/"):] if self.model_uri.startswith("models:/") else ""
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return Target(self.model_uri, version, self.client().get_model_version(name, version).run_id)
        if self.model_uri.startswith("runs:/"):
            return Target(self.model_uri, None, self.model_uri[len("runs:/"):].split("/", 1)[0])
        return Target(self.model_uri, None, None)


@dataclass
class Loaded:
    """One model in memory and where it came from."""
    predictor: Any
    version: str | None
    run_id: str | None
    loaded_at: str = field(default_factory=_now)
    # one request at a time per model: a fast tokenizer refuses to be used from two threads at once
    # ("Already borrowed"), and on a CPU a forward pass already uses every core
    lock: threading.Lock = field(default_factory=threading.Lock)

    def predict(self, inputs: list[ModelInput]) -> list[dict[str, Any]]:
        if not inputs:
            return []
        with self.lock:
            return predict_inputs(self.predictor, inputs)


def load(target: Target, tracking_uri: str | None, device: str | None = None, precision: str | None = None) -> Loaded:
    """Download (into a folder that goes once the weights are in memory) and load the model on the
    inference policy's device and precision (None: MTL_DEVICE / MTL_PRECISION, else CUDA with bf16
    where the GPU has it, else the CPU in fp32)."""
    from training.evaluation.predict import Predictor

    with tempfile.TemporaryDirectory(prefix="mtl-serve-") as work:
        predictor = Predictor(resolve_export(target.uri, tracking_uri, work), device=device, precision=precision)
    return Loaded(predictor, target.version, target.run_id)


# ---------------------------------------------------------------------------------------------------
# the model being served, and following the alias


class ModelHolder:
    """The model being served, swapped by one assignment: a request takes `current` once and
    keeps that model to the end."""

    def __init__(self, source: Source, poll_s: float, device: str | None = None, precision: str | None = None) -> None:
        self.source, self.poll_s = source, poll_s
        self.device, self.precision = device, precision
        self.current: Loaded | None = None
        self.last_check: str | None = None
        self.last_error: str | None = None
        self.stop = threading.Event()
        self._failed: dict[str, float] = {}  # version -> when it failed to load (monotonic)

    def load_first(self) -> Loaded:
        target = self.source.resolve()
        try:
            self.current = load(target, self.source.tracking_uri, self.device, self.precision)
        except ServingError:
            raise
        except (ValueError, OSError) as exc:  # an export that does not match its card, a file that went away
            raise ServingError(f"{self.source.model_uri}: version {target.version} did not load: {exc}") from None
        self.last_check = _now()
        return self.current

    def check(self) -> None:
        """One look at the alias; a new version is loaded beside the old one, then swapped in."""
        target = self.source.resolve()
        self.last_check = _now()
        old = self.current
        if old is None or target.version == old.version:
            self.last_error = None
            return
        failed_at = self._failed.get(str(target.version))
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_S:
            return
        try:
            new = load(target, self.source.tracking_uri, self.device, self.precision)
        except Exception as exc:  # noqa: BLE001 - whatever breaks a load, the old model keeps serving
            self._failed[str(target.version)] = time.monotonic()
            self.last_error = f"version {target.version} did not load: {exc}"
            log.exception("%s: still serving version %s: version %s did not load (tried again in %.0f s)",
                          self.source.model_uri, old.version, target.version, RETRY_FAILED_S)
            return
        self.current = new
        self.last_error = None
        self._failed.pop(str(target.version), None)
        log.info("%s: now serving version %s (run %s), was version %s", self.source.model_uri, new.version,
                 new.run_id, old.version)

    def follow(self) -> None:
        """Check the alias every poll_s seconds until stopped; a failed check is logged and retried."""
        while not self.stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the registry may be away for a while; keep serving
                self.last_check = _now()
                self.last_error = f"checking the alias failed: {exc}"
                log.warning("%s: checking the alias failed, still serving version %s: %s", self.source.model_uri,
                            self.current.version if self.current else None, exc)

    def info(self) -> dict[str, Any]:
        model = self.current
        return {"model_uri": self.source.model_uri,
                "version": model.version if model else None,
                "run_id": model.run_id if model else None,
                "loaded_at": model.loaded_at if model else None,
                "last_check": self.last_check,
                "follows_alias": self.source.alias is not None,
                "poll_s": self.poll_s if self.source.alias is not None else None,
                "tasks": list(model.predictor.tasks) if model else [],
                "device": str(model.predictor.device) if model else self.device,
                "precision": self.precision,
                "last_error": self.last_error}


# ---------------------------------------------------------------------------------------------------
# requests: MLflow's bodies -> inputs, predictions -> JSON


def request_inputs(body: Any) -> list[ModelInput]:
    """The inputs of a scoring request (MLflow's formats), or BadRequest naming every problem."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body is a JSON {_kind(body)}; send an object with one of "
                         f"{', '.join(FORMATS)}, e.g. {{\"dataframe_records\": [{{\"text\": \"...\"}}]}}")
    given = [k for k in body if k in FORMATS]
    if other := [k for k in body if k not in FORMATS]:
        raise BadRequest(f"unknown key(s) {other} in the body: give one of {', '.join(FORMATS)}"
                         + (" (this model takes no params: every task is predicted)" if "params" in other else ""))
    if len(given) != 1:
        raise BadRequest(f"the body has {len(given) or 'none'} of {', '.join(FORMATS)}; give exactly one")
    issues = IssueCollector()
    records = _records(given[0], body[given[0]], issues)
    inputs = [parse_input(record, SOURCE, row, issues) for row, record in records]
    if issues.issues:
        issues.issues.sort(key=lambda issue: issue.line or 0)
        raise BadRequest(_problems_text(DataValidationError(issues.issues, dropped=issues.dropped)),
                         problems=[{"row": i.line, "field": i.field, "problem": i.problem, "fix": i.fix}
                                   for i in issues.issues])
    return [i for i in inputs if i is not None]


def _records(fmt: str, value: Any, issues: IssueCollector) -> list[tuple[int, Mapping[str, Any]]]:
    """(row from 1, fields) per input; a row that is not a record is an issue at its number."""
    if fmt == "dataframe_split":
        return _split(value, issues)
    if isinstance(value, dict) and fmt in ("inputs", "instances"):
        return _columns(fmt, value)
    if not isinstance(value, list):
        raise BadRequest(f"{fmt}: expected a list of inputs"
                         + (" or an object of columns" if fmt in ("inputs", "instances") else "")
                         + f", got a JSON {_kind(value)}")
    out: list[tuple[int, Mapping[str, Any]]] = []
    for row, item in enumerate(value, start=1):
        if isinstance(item, str) and fmt != "dataframe_records":
            item = {"text": item}  # as in `mtl predict`'s JSONL: a bare string is a text
        if isinstance(item, dict):
            out.append((row, item))
        else:
            issues.add(SOURCE, row, "row", f"expected an object, got a JSON {_kind(item)}", FIELDS_FIX)
    return out


def _split(value: Any, issues: IssueCollector) -> list[tuple[int, Mapping[str, Any]]]:
    """pandas' split orient: `{"columns": [field, ...], "data": [[value, ...], ...]}`."""
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
            or not isinstance(value.get("data"), list):
        raise BadRequest('dataframe_split: give {"columns": [field, ...], "data": [[value, ...], ...]}')
    columns = [str(c) for c in value["columns"]]
    out: list[tuple[int, Mapping[str, Any]]] = []
    for row, values in enumerate(value["data"], start=1):
        if not isinstance(values, list) or len(values) != len(columns):
            got = f"{len(values)} value(s)" if isinstance(values, list) else f"a JSON {_kind(values)}"
            issues.add(SOURCE, row, "row", f"{got}, `columns` names {len(columns)}")
        else:
            out.append((row, dict(zip(columns, values))))
    return out


def _columns(fmt: str, value: dict[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """`{"text": [...], "text_pair": [...]}`: a list per field, one value per input; all scalars is one input."""
    if all(not isinstance(v, list) for v in value.values()):
        return [(1, value)]
    lengths = {k: len(v) if isinstance(v, list) else 1 for k, v in value.items()}
    if len(set(lengths.values())) > 1:
        raise BadRequest(f"{fmt}: the columns have different lengths ({lengths}); give one value per input in each")
    count = next(iter(lengths.values()))
    return [(row + 1, {k: v[row] for k, v in value.items()}) for row in range(count)]


def _problems_text(error: DataValidationError, shown: int = 20) -> str:
    lines = [str(issue) for issue in error.issues[:shown]]
    if (more := len(error.issues) + error.dropped - len(lines)) > 0:
        lines.append(f"... and {more} more")
    return "\n".join(lines)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: a regression head that overflowed answers null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class Handler(BaseHTTPRequestHandler):
    server: "ModelHTTPServer"
    server_version = "mtl-serve"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/ping", "/health"):
            if self.server.holder.current is None:
                self._json(503, {"error_code": "NOT_READY", "message": "the model is still loading"})
            else:
                self._send(200, b"\n", "text/plain; charset=utf-8")
        elif path == "/version":
            self._json(200, self.server.holder.info())
        else:
            self._not_found(path)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path != "/invocations":
            self._not_found(path)
            return
        request_id = uuid.uuid4().hex[:12]
        try:
            inputs = request_inputs(self._read_json())
            model = self.server.holder.current  # this request's model, whatever is swapped in meanwhile
            if model is None:
                self._json(503, {"error_code": "NOT_READY", "message": "the model is still loading"})
                return
            self._json(200, {"predictions": _finite(model.predict(inputs))})
        except BadRequest as exc:
            self._json(exc.status, exc.body())
        except Exception:  # noqa: BLE001 - the client gets an id, the log the traceback
            log.exception("request %s: %s %s failed", request_id, self.command, path)
            self._json(500, {"error_code": "INTERNAL_ERROR",
                             "message": f"internal error (request id {request_id}; the server log has the details)",
                             "request_id": request_id})

    def _read_json(self) -> Any:
        mime, _, params = (self.headers.get("Content-Type") or "application/json").partition(";")
        if mime.strip().lower() != "application/json":
            raise BadRequest(f"Content-Type {mime.strip()!r} is not served: send application/json", status=415)
        charset = params.strip().lower().removeprefix("charset=").strip('"') if "charset=" in params.lower() else ""
        if charset not in ("", "utf-8", "utf8"):
            raise BadRequest(f"charset {charset!r} is not served: send UTF-8", status=415)
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise BadRequest("no Content-Length: send the body with its length", status=411)
        if int(length) > MAX_BODY_BYTES:
            raise BadRequest(f"the body is {int(length)} bytes, over {MAX_BODY_BYTES}: send fewer inputs per request",
                             status=413)
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {json_problem(exc, whole=True)}") from None

    def _not_found(self, path: str) -> None:
        self._json(404, {"error_code": "NOT_FOUND",
                         "message": f"no {self.command} {path}: the server answers POST /invocations, "
                                    "GET /ping and GET /version"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8"), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        # health checks come every few seconds: the access log keeps the requests worth reading
        if not self.path.startswith("/ping"):
            log.info("%s %s", self.address_string(), format % args)


class ModelHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], holder: ModelHolder) -> None:
        self.holder = holder
        super().__init__(address, Handler)


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001, poll_s: float = 30.0,
          tracking_uri: str | None = None, device: str | None = None, precision: str | None = None) -> int:
    """Listen on host:port at once (/ping answers 503 while the model loads), load the model, follow a
    `models:/NAME@ALIAS` URI every `poll_s` seconds; until SIGTERM or SIGINT. Returns 0; a model that
    cannot be loaded at the start, a device or precision this machine lacks or a port that cannot be
    bound raises ServingError. `device`, `precision`: as `mtl predict`'s (None: MTL_DEVICE, MTL_PRECISION,
    else the best this machine has)."""
    from training.evaluation.device import DeviceError, inference_device, inference_dtype, precision_name

    if not poll_s > 0:
        raise ServingError(f"--poll-s {poll_s}: give a number of seconds above 0")
    try:  # refused before the port is bound, and every version loads where the first did
        placed = inference_device(device, what="--device")
        dtype = inference_dtype(placed, precision, what="--precision")
    except DeviceError as exc:
        raise ServingError(str(exc)) from None
    _log_to_stderr()
    # a bar per download would fill the server's log with carriage returns at every swap
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    holder = ModelHolder(Source(model_uri, tracking_uri), poll_s, str(placed), precision_name(dtype))
    try:
        httpd = ModelHTTPServer((host, port), holder)
    except OSError as exc:
        raise ServingError(f"{host}:{port}: cannot listen ({exc.strerror}); pick another --port or --host") from None
    _stop_on_signals(holder.stop)
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    try:
        log.info("loading %s ...", model_uri)
        model = holder.load_first()
        following = f"; following the alias every {poll_s:g} s" if holder.source.alias else ""
        log.info("serving %s version %s (run %s) on http://%s:%d (%s, %s)%s", model_uri, model.version,
                 model.run_id, host, httpd.server_address[1], placed, precision_name(dtype), following)
        if holder.source.alias is not None:
            threading.Thread(target=holder.follow, name="alias-poll", daemon=True).start()
        while not holder.stop.wait(1.0):
            pass
        log.info("stopping")
    finally:
        holder.stop.set()
        httpd.shutdown()
        httpd.server_close()
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (a container stopping) and SIGINT (Ctrl-C) end the server cleanly; only the main
    thread may install handlers (a server started from a test thread keeps the defaults)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def _log_to_stderr() -> None:
    """The server's lines (swaps, failed loads, request ids with their tracebacks) reach stderr
    whatever else configured logging in this process."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
