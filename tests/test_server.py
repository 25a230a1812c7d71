"""`mtl serve`: the real CLI in its own process, serving models:/NAME@champion from a real sqlite MLflow
store with two registered versions (tiny exports with different heads), answering like the pyfunc
model, refusing bad requests with the row and the field, and following the alias when it moves.
Also MLflow's own scoring code on the pyfunc model: a bad input is a 400 without a stack trace."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from serve_support import http_get, invoke, post, served_version, serving, wait_for_version
from training.task_spec import TaskSpec

MODEL = "follow-mtl"
TASKS = [TaskSpec(name="pos", type="token_classification", labels=["DET", "NOUN", "VERB", "ADJ", "PUNCT"]),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"]),
         TaskSpec(name="rte", type="sequence_pair_classification", labels=["entailment", "not_entailment"])]
TOKENS = ["The", "cat", "sat", "on", "a", "big", "mat", "."]
TEXT = "a gorgeous , witty , seductive movie ."
PAIR = ("A man is sleeping in his bed .", "A person rests .")
RECORDS = [{"tokens": TOKENS}, {"text": TEXT}, {"text": PAIR[0], "text_pair": PAIR[1]}]


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


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`mtl serve models:/NAME@champion --poll-s 1`, the installed CLI in its own process group,
    stopped at the end; yields (url, log file)."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with serving(f"models:/{MODEL}@champion", store["uri"], log) as url:
        yield url, log


def test_it_serves_the_champion_and_says_whichserved_version(server, store):
    url, _ = server
    assert http_get(f"{url}/ping")[0] == 200
    info = served_version(url)
    assert info["model_uri"] == f"models:/{MODEL}@champion"
    assert (info["version"], info["run_id"]) == ("1", store["run1"])
    assert info["follows_alias"] and info["poll_s"] == 1 and info["tasks"] == ["pos", "sst2", "rte"]
    assert info["loaded_at"] and info["last_check"] and info["last_error"] is None


def test_it_answers_like_the_predictor_in_every_request_format(server, expected):
    url, _ = server
    assert invoke(url, {"dataframe_records": RECORDS}) == (200, {"predictions": expected["1"]})
    split = {"columns": ["text", "text_pair"], "data": [[TEXT, None], list(PAIR)]}
    assert invoke(url, {"dataframe_split": split}) == (200, {"predictions": expected["1"][1:]})
    # no pair in the request: the pair task is left out, as the pyfunc model does
    status, body = invoke(url, {"inputs": {"text": [TEXT]}})
    assert (status, body["predictions"]) == (200, [{"pos": expected["1"][1]["pos"], "sst2": expected["1"][1]["sst2"]}])


def test_a_bad_request_is_a_400_naming_row_field_and_problem_without_a_trace(server):
    url, _ = server
    status, body = invoke(url, {"dataframe_records": [{"text": TEXT}, {"txt": "typo"}, {"tokens": []}]})
    assert status == 400 and body["error_code"] == "BAD_REQUEST"
    message = body["message"]
    assert message.startswith("input:2: txt: unknown field (the fields are text, tokens, text_pair, id)")
    assert "input:2: text: missing (each input has `text`" in message
    assert "input:3: tokens: must be a non-empty list of strings, got []" in message
    assert "Traceback" not in message and "/" not in message and ".py" not in message
    assert {"row": 2, "field": "text", "problem": "missing"}.items() <= body["problems"][1].items()

    status, body = post(url, b'{"dataframe_records": [{"text": "a cat}]}')
    assert status == 400
    assert body["message"] == "the body is not valid JSON: Unterminated string starting at line 1 column 33 (char 32)"
    status, body = invoke(url, {"records": RECORDS})
    assert status == 400 and "unknown key(s) ['records']" in body["message"]
    assert "dataframe_records, dataframe_split, inputs" in body["message"]


def test_it_follows_the_alias_to_a_new_version_and_back(server, store, expected):
    from training.release.registry import client_for

    url, log = server
    client = client_for(store["uri"])
    client.set_registered_model_alias(MODEL, "champion", "2")
    assert wait_for_version(url, "2")["run_id"] == store["run2"]
    assert invoke(url, {"dataframe_records": RECORDS}) == (200, {"predictions": expected["2"]})

    client.set_registered_model_alias(MODEL, "champion", "1")  # a rollback
    assert wait_for_version(url, "1")["run_id"] == store["run1"]
    assert invoke(url, {"dataframe_records": RECORDS}) == (200, {"predictions": expected["1"]})
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


def test_a_field_of_the_wrong_kind_is_named_by_its_json_kind():
    from training.release.server import _kind

    assert [_kind(v) for v in ({}, [], "x", True, None, 3, 2.5)] == [
        "object", "array", "string", "boolean", "null", "number", "number"]


def test_the_access_log_leaves_health_checks_out(caplog):
    """Health checks come every few seconds: only the other requests reach the access log."""
    from training.release.server import Handler

    handler = Handler.__new__(Handler)  # the method alone: no socket, no server
    handler.client_address = ("127.0.0.1", 5000)
    with caplog.at_level("INFO", logger="mtl.serve"):
        for path in ("/ping", "/ping?x=1", "/invocations", "/version"):
            handler.path = path
            handler.log_message("%s", f"GET {path}")
    assert [r.getMessage() for r in caplog.records] == ["127.0.0.1 GET /invocations", "127.0.0.1 GET /version"]
