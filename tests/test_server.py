"""`mtl serve`: the real CLI in its own process, serving models:/NAME@champion from a real sqlite MLflow
store with two registered versions (tiny exports with different heads), answering like the pyfunc
model, refusing bad requests with the row and the field, and following the alias when it moves.
Also MLflow's own scoring code on the pyfunc model: a bad input is a 400 without a stack trace."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from training.task_spec import TaskSpec

MODEL = "follow-mtl"
TASKS = [TaskSpec(name="pos", type="token_classification", labels=["DET", "NOUN", "VERB", "ADJ", "PUNCT"]),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"]),
         TaskSpec(name="rte", type="sequence_pair_classification", labels=["entailment", "not_entailment"])]
TOKENS = ["The", "cat", "sat", "on", "a", "big", "mat", "."]
TEXT = "a gorgeous , witty , seductive movie ."
PAIR = ("A man is sleeping in his bed .", "A person rests .")
RECORDS = [{"tokens": TOKENS}, {"text": TEXT}, {"text": PAIR[0], "text_pair": PAIR[1]}]
SERVER_START_TIMEOUT_S = 300  # imports torch and transformers on a busy 2-core machine
SWAP_TIMEOUT_S = 30


def _write_export(encoder: Path, folder: Path, seed: int) -> Path:
    """An untrained model whose heads are drawn from `seed`: two seeds, two versions that answer differently."""
    import torch
    from transformers import AutoTokenizer

    from training.model.export import write_export
    from training.model.multitask import build_model

    tokenizer = AutoTokenizer.from_pretrained(encoder)
    torch.manual_seed(seed)
    model = build_model(str(encoder), TASKS, "hard", 0.1)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return write_export(folder, state, model, tokenizer, {"sharing": "hard", "dropout": 0.1, "max_length": 32})


@pytest.fixture(scope="module")
def exports(tiny_encoder, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("exports")
    return {"1": _write_export(tiny_encoder, base / "v1", seed=1), "2": _write_export(tiny_encoder, base / "v2", seed=2)}


@pytest.fixture(scope="module")
def expected(exports) -> dict[str, list[dict]]:
    """Each version's answer to RECORDS, from the Predictor on its export in this process, in the
    pyfunc model's shape (pair tasks null for an input without a pair)."""
    from training.evaluation.predict import Predictor

    out = {}
    for version, folder in exports.items():
        predictor = Predictor(folder)
        [tokens] = predictor.predict([" ".join(TOKENS)], None, words=[TOKENS])
        [text] = predictor.predict([TEXT])
        [pair] = predictor.predict([PAIR[0]], [PAIR[1]])
        out[version] = [{**tokens, "rte": None}, {**text, "rte": None}, pair]
    assert out["1"] != out["2"], "the two versions must answer differently for the swap to be seen in an answer"
    return out


@pytest.fixture(scope="module")
def store(exports, tmp_path_factory) -> dict[str, str]:
    """Versions 1 and 2 registered by the pipeline's own code; champion on version 1."""
    from training.config import RegistryConfig
    from training.release.registry import register_model, set_champion

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = RegistryConfig(model_name=MODEL, experiment="follow")
    runs = {}
    for version, export in exports.items():
        reg = register_model(cfg, uri, (folder / "artifacts").as_uri(), f"follow-run-{version}", str(export), {},
                             {"pos": {"accuracy": 0.5}}, {}, "challenger")
        assert reg.version == version
        runs[version] = reg.run_id
    set_champion(uri, MODEL, "1")
    return {"uri": uri, **{f"run{v}": r for v, r in runs.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _invoke(url: str, payload: dict) -> tuple[int, dict]:
    return _post(url, json.dumps(payload).encode())


def _version(url: str) -> dict:
    status, body = _get(f"{url}/version")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`mtl serve models:/NAME@champion --poll-s 1`, the installed CLI in its own process group,
    stopped at the end; yields (url, log file)."""
    port, log = _free_port(), tmp_path_factory.mktemp("server") / "serve.log"
    mtl = Path(sys.executable).with_name("mtl")
    command = [str(mtl)] if mtl.exists() else [sys.executable, "-m", "flows.cli"]
    command += ["serve", f"models:/{MODEL}@champion", "--poll-s", "1", "--port", str(port),
                "--tracking-uri", store["uri"]]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mtl serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get(f"{url}/ping")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on {url}/ping after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_it_serves_the_champion_and_says_which_version(server, store):
    url, _ = server
    assert _get(f"{url}/ping")[0] == 200
    info = _version(url)
    assert info["model_uri"] == f"models:/{MODEL}@champion"
    assert (info["version"], info["run_id"]) == ("1", store["run1"])
    assert info["follows_alias"] and info["poll_s"] == 1 and info["tasks"] == ["pos", "sst2", "rte"]
    assert info["loaded_at"] and info["last_check"] and info["last_error"] is None


def test_it_answers_like_the_predictor_in_every_request_format(server, expected):
    url, _ = server
    assert _invoke(url, {"dataframe_records": RECORDS}) == (200, {"predictions": expected["1"]})
    split = {"columns": ["text", "text_pair"], "data": [[TEXT, None], list(PAIR)]}
    assert _invoke(url, {"dataframe_split": split}) == (200, {"predictions": expected["1"][1:]})
    # no pair in the request: the pair task is left out, as the pyfunc model does
    status, body = _invoke(url, {"inputs": {"text": [TEXT]}})
    assert (status, body["predictions"]) == (200, [{"pos": expected["1"][1]["pos"], "sst2": expected["1"][1]["sst2"]}])


def test_a_bad_request_is_a_400_naming_row_field_and_problem_without_a_trace(server):
    url, _ = server
    status, body = _invoke(url, {"dataframe_records": [{"text": TEXT}, {"txt": "typo"}, {"tokens": []}]})
    assert status == 400 and body["error_code"] == "BAD_REQUEST"
    message = body["message"]
    assert message.startswith("input:2: txt: unknown field (the fields are text, tokens, text_pair, id)")
    assert "input:2: text: missing (each input has `text`" in message
    assert "input:3: tokens: must be a non-empty list of strings, got []" in message
    assert "Traceback" not in message and "/" not in message and ".py" not in message
    assert {"row": 2, "field": "text", "problem": "missing"}.items() <= body["problems"][1].items()

    status, body = _post(url, b'{"dataframe_records": [{"text": "a cat}]}')
    assert status == 400
    assert body["message"] == "the body is not valid JSON: Unterminated string starting at line 1 column 33 (char 32)"
    status, body = _invoke(url, {"records": RECORDS})
    assert status == 400 and "unknown key(s) ['records']" in body["message"]
    assert "dataframe_records, dataframe_split, inputs" in body["message"]


def _wait_for_version(url: str, version: str) -> dict:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while (info := _version(url))["version"] != version:
        if time.monotonic() > deadline:
            pytest.fail(f"/version still says {info} {SWAP_TIMEOUT_S} s after the alias moved to {version}")
        time.sleep(0.3)
    return info


def test_it_follows_the_alias_to_a_new_version_and_back(server, store, expected):
    from training.release.registry import client_for

    url, log = server
    client = client_for(store["uri"])
    client.set_registered_model_alias(MODEL, "champion", "2")
    assert _wait_for_version(url, "2")["run_id"] == store["run2"]
    assert _invoke(url, {"dataframe_records": RECORDS}) == (200, {"predictions": expected["2"]})

    client.set_registered_model_alias(MODEL, "champion", "1")  # a rollback
    assert _wait_for_version(url, "1")["run_id"] == store["run1"]
    assert _invoke(url, {"dataframe_records": RECORDS}) == (200, {"predictions": expected["1"]})
    swaps = [line for line in log.read_text().splitlines() if "now serving version" in line]
    assert len(swaps) == 2 and "version 2 (run" in swaps[0] and swaps[1].endswith("was version 2"), swaps


def test_mlflow_scoring_answers_a_bad_input_with_400_and_no_stack_trace(store, monkeypatch):
    """MLflow's own request handling (`invocations`, what `mlflow models serve` runs) on the registered
    pyfunc model: its MlflowException goes out as is, no stack trace in the body."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from training.release.registry import pinned_uris

    monkeypatch.setattr(sys, "path", list(sys.path))  # loading prepends the model's code folder for good
    with pinned_uris(store["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    body = json.dumps({"dataframe_records": [{"text": TEXT}, {"tokens": []}]})
    with pytest.raises(MlflowException) as caught:
        scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert caught.value.get_http_status_code() == 400
    answer = json.loads(caught.value.serialize_as_json())
    assert "input:2: tokens: must be a non-empty list of strings" in answer["message"]
    assert "stack_trace" not in answer and "Traceback" not in answer["message"]
