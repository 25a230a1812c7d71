"""Registration against a real `mlflow server` (sqlite backend, served artifacts) whose answer to
"create model version" is lost on the way back: a loopback TCP proxy in front of the server lets
the request through, waits for the server's answer (the version exists), then drops the
connection. Whatever retries (MLflow's HTTP client, or Prefect's retry of the register task),
exactly one version of the run must remain, tagged with the run key."""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient

from training.config import PromotionConfig, RegistryConfig
from training.release.registry import RUN_KEY, run_versions

CREATE_VERSION = b"POST /api/2.0/mlflow/model-versions/create "
PASSWORD = "s3cret-pw"  # in the tracking URI the tasks get: never in a link, param, tag or artifact


class LosingProxy:
    """Relays loopback TCP to `target`; `lose(n)` makes it swallow the answers to the next n
    create-model-version requests (the server gets and handles each one) and close the client's
    connection instead. `creates` counts the create requests that reached the server."""

    def __init__(self, target: int) -> None:
        self.target, self.to_lose, self.creates = target, 0, 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def lose(self, count: int) -> None:
        with self.lock:
            self.to_lose, self.creates = count, 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            doomed = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, doomed), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, doomed), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if CREATE_VERSION in data:
                    with self.lock:
                        self.creates += 1
                        if self.to_lose > 0:
                            self.to_lose -= 1
                            doomed.set()
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

    def _downstream(self, server: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if doomed.is_set():  # the server has answered the create: the answer is lost
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(server)

    def close(self) -> None:
        self.sock.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="module")
def proxy(mlflow_server):
    found = LosingProxy(mlflow_server)
    yield found
    found.close()


@pytest.fixture(scope="module")
def export(tiny_encoder, tmp_path_factory) -> str:
    from transformers import AutoTokenizer

    from training.model.export import write_export
    from training.model.multitask import build_model
    from training.task_spec import TaskSpec

    tasks = [TaskSpec(name="pos", type="token_classification", labels=["NOUN", "VERB"])]
    model = build_model(str(tiny_encoder), tasks, "hard", 0.1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    card = {"sharing": "hard", "dropout": 0.1, "max_length": 32}
    folder = tmp_path_factory.mktemp("export") / "model"
    return str(write_export(folder, state, model, AutoTokenizer.from_pretrained(tiny_encoder), card))


def register_in_a_flow(uri: str, state: Path, export: str, model_name: str) -> dict:
    """The flow's own register task (retry delay 0), in a flow of its own: returns its result,
    the flow run id and the task's attempts."""
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.tasks import register, run_key

    registry = RegistryConfig(tracking_uri=uri, experiment="faults", model_name=model_name)

    @flow(name="register-under-faults")
    def one_registration() -> dict:
        run_dir = state / "runs" / run_key("faults", flow_run.get_id())
        return {**register.with_options(retry_delay_seconds=0)(
            registry, PromotionConfig(), str(state), str(run_dir), export, {"data.pos.examples": 2},
            {"pos": {"accuracy": 0.5}}, {}), "flow_run_id": flow_run.get_id(), "run_key": run_dir.name}

    result = one_registration()
    result["attempts"] = task_attempts(result["flow_run_id"], "register")
    return result


def task_attempts(flow_run_id: str, task_name: str) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return max(r.run_count for r in runs if r.name.startswith(task_name))


def flow_run_artifacts(flow_run_id: str) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return {a.key: a.data for a in found if a.key}


def test_a_lost_create_version_answer_retried_by_the_mlflow_client_leaves_one_version(
        mlflow_server, proxy, export, tmp_path, prefect_engine):
    """MLflow's HTTP client retries the create whose answer it lost: the server made two
    versions of one run; registration keeps the first and deletes the second."""
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{proxy.port}"
    proxy.lose(1)
    result = register_in_a_flow(uri, tmp_path, export, "faults-client-retry")
    client = MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    versions = run_versions(client, "faults-client-retry", result["run_id"])
    figure = {"creates reaching the server": proxy.creates, "versions of the run": len(versions),
              "register attempts": result["attempts"]}
    assert figure == {"creates reaching the server": 2, "versions of the run": 1, "register attempts": 1}
    assert (versions[0].version, result["version"]) == ("1", "1")
    assert versions[0].tags[RUN_KEY] == result["run_key"]
    assert result["aliases"] == ["challenger"]
    # the links go to the server's pages, with the credentials of the tracking URI redacted
    links = flow_run_artifacts(result["flow_run_id"])
    assert links["mlflow-model-version"] == (f"[faults-client-retry v1](http://***@127.0.0.1:{proxy.port}"
                                             "/#/models/faults-client-retry/versions/1)")
    assert str(links["mlflow-run"]).count(result["run_id"]) == 2
    run = client.get_run(result["run_id"])
    shown = [str(v) for v in links.values()] + list(run.data.params.values()) + list(run.data.tags.values())
    assert not [s for s in shown if PASSWORD in s]


def test_a_lost_create_version_answer_retried_by_the_flow_task_leaves_one_version(
        mlflow_server, proxy, export, tmp_path, prefect_engine, monkeypatch):
    """With MLflow's own retries off, the lost answer fails the register task; Prefect's retry
    of the task finds the version the server made and creates none."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    proxy.lose(1)
    result = register_in_a_flow(f"http://127.0.0.1:{proxy.port}", tmp_path, export, "faults-task-retry")
    client = MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    versions = run_versions(client, "faults-task-retry", result["run_id"])
    figure = {"creates reaching the server": proxy.creates, "versions of the run": len(versions),
              "register attempts": result["attempts"]}
    assert figure == {"creates reaching the server": 1, "versions of the run": 1, "register attempts": 2}
    assert versions[0].tags[RUN_KEY] == result["run_key"]
    assert len(client.search_runs([client.get_experiment_by_name("faults").experiment_id],
                                  f"tags.`{RUN_KEY}` = '{result['run_key']}'")) == 1
