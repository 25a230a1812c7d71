"""Serving: `mtl predict` over a file, and the real `mlflow models serve` process answering
/invocations for every task in one request, on a tiny trained export registered in a real MLflow
store (sqlite). The expected answers come from the Predictor on the same export, in this process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import register_champion
from serve_support import running
from training.task_spec import TaskSpec

MODEL = "serve-mtl"
TASKS = [TaskSpec(name="pos", type="token_classification", labels=["DET", "NOUN", "VERB", "ADJ", "PUNCT"]),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"]),
         TaskSpec(name="rte", type="sequence_pair_classification", labels=["entailment", "not_entailment"])]
LABELS = {t.name: set(t.labels) for t in TASKS}
TOKENS = ["The", "cat", "sat", "."]
TEXT = "a gorgeous , witty , seductive movie ."
PAIR = ("A man is sleeping in his bed .", "A person rests .")


def _train_a_few_steps(model, tokenizer) -> None:
    """Six AdamW steps, two per task, in this process: weights a little away from the initialisation."""
    import torch

    from data_prep.examples import Example
    from data_prep.tokenize import tokenize_with_stats
    from training.trainer.batches import collate

    examples = {
        "pos": [Example("t", 1, tokens=TOKENS, tags=["DET", "NOUN", "VERB", "PUNCT"]),
                Example("t", 2, tokens=["A", "big", "dog", "."], tags=["DET", "ADJ", "NOUN", "PUNCT"])],
        "sst2": [Example("t", 1, text=TEXT, label="1"), Example("t", 2, text="dull and tired .", label="0")],
        "rte": [Example("t", 1, text=PAIR[0], text_pair=PAIR[1], label="entailment"),
                Example("t", 2, text=PAIR[0], text_pair="A cat flies .", label="not_entailment")]}
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for spec in TASKS * 2:
        rows, _ = tokenize_with_stats(examples[spec.name], spec.type, spec.labels, tokenizer, 32)
        loss = model(spec.name, **collate(rows, tokenizer.pad_token_id)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def export(tiny_encoder, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from training.model.export import write_export
    from training.model.multitask import build_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    model = build_model(str(tiny_encoder), TASKS, "hard", 0.1)
    _train_a_few_steps(model, tokenizer)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    card = {"sharing": "hard", "dropout": 0.1, "max_length": 32}
    return write_export(tmp_path_factory.mktemp("serve") / "model", state, model, tokenizer, card)


@pytest.fixture(scope="module")
def store(export, tmp_path_factory):
    """The export registered by the pipeline's own code as version 1, alias champion."""
    return register_champion(export, tmp_path_factory.mktemp("store"), MODEL, "serve")


@pytest.fixture(scope="module")
def expected(export):
    """What each input should get: the Predictor on the export, in this process."""
    from training.evaluation.predict import Predictor

    predictor = Predictor(export)
    [tokens] = predictor.predict([" ".join(TOKENS)], None, words=[TOKENS])
    [text] = predictor.predict([TEXT])
    [pair] = predictor.predict([PAIR[0]], [PAIR[1]])
    return {"tokens": tokens, "text": text, "pair": pair}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`mlflow models serve` on the champion, as a user starts it; stopped (its process group) at the end."""
    port, log = _free_port(), tmp_path_factory.mktemp("server") / "serve.log"
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{MODEL}@champion",
               "--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"]
    with open(log, "wb") as sink:
        # the server execs `uvicorn` by name: the environment's bin folder must be on PATH (as for
        # a user with the environment active; `make test` does not put it there)
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri, "PATH": path})
    url = f"http://127.0.0.1:{port}"
    with running(proc, url, log, "mlflow models serve"):
        yield url


def _strict(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON: a client in another language cannot read the answer")


def _invoke(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read(), parse_constant=_strict)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read(), parse_constant=_strict)


def _check_shapes(row: dict, words: int | None, pair: bool) -> None:
    assert list(row) == ["pos", "sst2", "rte"]
    assert len(row["pos"]) == words and set(row["pos"]) <= LABELS["pos"]
    assert row["sst2"] in LABELS["sst2"]
    assert (row["rte"] in LABELS["rte"]) if pair else row["rte"] is None


def test_the_server_answers_a_token_a_sentence_and_a_pair_input_with_every_task(server, expected):
    status, body = _invoke(server, {"dataframe_records": [
        {"tokens": TOKENS}, {"text": TEXT}, {"text": PAIR[0], "text_pair": PAIR[1]}]})
    assert status == 200, body
    tokens, text, pair = body["predictions"]
    _check_shapes(tokens, 4, pair=False)
    _check_shapes(text, len(TEXT.split()), pair=False)
    _check_shapes(pair, len(PAIR[0].split()), pair=True)
    assert tokens == {**expected["tokens"], "rte": None}
    assert text == {**expected["text"], "rte": None}
    assert pair == expected["pair"]


def test_the_server_takes_columns_and_leaves_pair_tasks_out_without_pairs(server, expected):
    status, body = _invoke(server, {"inputs": {"text": [TEXT, " ".join(TOKENS)]}})
    assert status == 200, body
    assert body["predictions"] == [expected["text"], expected["tokens"]]
    assert list(body["predictions"][0]) == ["pos", "sst2"]


def test_the_server_refuses_bad_input_naming_row_and_field(server):
    status, body = _invoke(server, {"dataframe_records": [{"text": TEXT}, {"txt": "typo"}, {"tokens": []}]})
    assert status == 400
    # MLflow puts the request's table in front of the model's message; the model's part has no trace
    message = body["message"].split("\nError: ", 1)[-1]
    # the signature's schema check drops columns it does not name before the model sees them, so
    # the server names the row's missing text (`mtl predict` also names the unknown `txt`)
    assert "input:2: text: missing" in message and "txt" not in message
    assert "input:3: tokens: must be a non-empty list of strings" in message and "stack_trace" not in body


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mtl_predict_reads_jsonl_from_the_registry_and_writes_the_chosen_tasks(store, expected, tmp_path, capsys):
    from flows.cli import main

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "a", "tokens": TOKENS}) + "\n\n" + json.dumps(TEXT) + "\n")
    out = tmp_path / "out" / "predictions.jsonl"
    want = [{"id": "a", "sst2": expected["tokens"]["sst2"], "pos": expected["tokens"]["pos"]},
            {"sst2": expected["text"]["sst2"], "pos": expected["text"]["pos"]}]
    for uri in (f"models:/{MODEL}/1", f"runs:/{store.run_id}/model"):
        assert main(["predict", uri, str(inputs), "--out", str(out), "--tracking-uri", store.tracking_uri,
                     "--tasks", "sst2,pos"]) == 0
        assert _lines(out) == want, uri
        assert "Downloading artifacts" not in capsys.readouterr().err  # no MLflow progress bar per file
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp file or resume marker left


def test_mtl_predict_reads_a_csv_of_pairs_with_an_export_folder_and_prints(export, expected, tmp_path, capsys):
    from flows.cli import main

    inputs = tmp_path / "pairs.csv"
    inputs.write_text(f'text,text_pair\n"{PAIR[0]}","{PAIR[1]}"\n')
    assert main(["predict", str(export), str(inputs)]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [expected["pair"]]


def test_mtl_predict_names_file_line_and_field_before_the_model_loads(export, tmp_path, capsys, monkeypatch):
    from flows.cli import main
    from training.evaluation import predict

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predict.Predictor, "__init__", no_loading)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "x", "label": 1}\n{"text": \n{"tokens": ["a", 3]}\n[]\n')
    assert main(["predict", str(export), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: label: unknown field" in err
    assert f"{bad}:3: json: not valid JSON" in err
    assert f"{bad}:4: tokens[1]: must be a non-empty string, got 3" in err
    assert f"{bad}:5: tokens: must be a non-empty list of strings" in err

    sentences = tmp_path / "sentences.tsv"
    sentences.write_text("id\ttext\n1\tA man sleeps .\n")
    assert main(["predict", str(export), str(sentences)]) == 2
    err = capsys.readouterr().err
    assert f"{sentences}:2: text_pair: missing: pair task(s) ['rte'] need one" in err and "--tasks" in err
    assert main(["predict", str(export), str(sentences), "--tasks", "pos,nope"]) == 2
    assert "unknown task(s) ['nope']; the model's tasks are ['pos', 'sst2', 'rte']" in capsys.readouterr().err


def test_mtl_predict_says_what_is_wrong_with_a_model_uri(store, tmp_path, capsys):
    from flows.cli import main

    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"A man sleeps ."\n')
    assert main(["predict", "models:/no-such-model@champion", str(inputs), "--tracking-uri", store.tracking_uri]) == 2
    assert "models:/no-such-model@champion:" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(inputs)]) == 2
    assert "not a multi-task model" in capsys.readouterr().err
    assert main(["predict", "models:/x/1", str(inputs), "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
