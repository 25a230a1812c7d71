"""Inference on the best device: the one device and precision policy (each forced choice, and the
selection logic under a faked CUDA availability), the Predictor's token-budget batches (same
answers as one row at a time, in input order whatever the order given), and `mtl predict`
streaming its output and resuming after a SIGKILL with no row lost or repeated."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.evaluation.device import DeviceError, inference_device, inference_dtype
from training.task_spec import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
TASKS = [TaskSpec(name="pos", type="token_classification", labels=["DET", "NOUN", "VERB", "ADJ", "PUNCT"]),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"]),
         TaskSpec(name="sts", type="sequence_regression", labels=[])]
LABEL_TASKS = ["--tasks", "pos,sst2"]
WORDS = ("the a cat dog sat ran on under mat house quickly slowly big small green red it was and then "
         "unbelievably extraordinary circumstances tokenization .").split()


@pytest.fixture(autouse=True)
def no_policy_env(monkeypatch):
    """The developer's own MTL_DEVICE / MTL_PRECISION must not steer these tests."""
    monkeypatch.delenv("MTL_DEVICE", raising=False)
    monkeypatch.delenv("MTL_PRECISION", raising=False)


def fake_cuda(monkeypatch, devices: int = 1, bf16: bool = True) -> None:
    """This process 'sees' CUDA devices: only the selection logic runs, nothing is placed on them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


# ---------------------------------------------------------------------------------------------------
# the policy


def test_auto_takes_cuda_when_present_with_bf16_where_the_gpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_device() == torch.device("cpu") == inference_device("auto")
    assert inference_dtype(torch.device("cpu")) == torch.float32
    fake_cuda(monkeypatch, bf16=True)
    assert inference_device() == torch.device("cuda")
    assert inference_dtype(torch.device("cuda")) == torch.bfloat16
    fake_cuda(monkeypatch, bf16=False)  # a GPU before Ampere: fp32, not slow emulated bf16
    assert inference_dtype(torch.device("cuda")) == torch.float32
    assert inference_dtype(torch.device("cpu")) == torch.float32  # the CPU stays fp32 unless asked


def test_an_explicit_choice_wins_over_the_environment_which_wins_over_auto(monkeypatch):
    fake_cuda(monkeypatch, devices=2)
    assert inference_device("cpu") == torch.device("cpu")
    assert inference_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("MTL_DEVICE", "cpu")
    assert inference_device() == torch.device("cpu") == inference_device("auto")  # auto defers to the env
    assert inference_device("cuda") == torch.device("cuda")  # a flag or config key beats the env
    monkeypatch.setenv("MTL_PRECISION", "fp32")
    assert inference_dtype(torch.device("cuda")) == torch.float32
    assert inference_dtype(torch.device("cuda"), "fp16") == torch.float16
    assert inference_dtype(torch.device("cpu"), "bf16") == torch.bfloat16  # bf16 on the CPU when asked


def test_a_device_or_precision_this_machine_lacks_is_refused_naming_where_it_came_from(monkeypatch):
    fake_cuda(monkeypatch, devices=0)
    with pytest.raises(DeviceError, match=r"--device='cuda': this process sees no CUDA device.*give cpu or auto"):
        inference_device("cuda", what="--device")
    monkeypatch.setenv("MTL_DEVICE", "cuda:0")
    with pytest.raises(DeviceError, match=r"MTL_DEVICE='cuda:0': this process sees no CUDA device"):
        inference_device()
    fake_cuda(monkeypatch, devices=2, bf16=False)
    with pytest.raises(DeviceError, match=r"sees 2 CUDA device\(s\), cuda:0 to cuda:1"):
        inference_device("cuda:2")
    with pytest.raises(DeviceError, match=r"device='gpu': not a device; give auto, cpu, cuda or cuda:N"):
        inference_device("gpu")
    with pytest.raises(DeviceError, match=r"--precision='bf16': this GPU has no native bf16"):
        inference_dtype(torch.device("cuda"), "bf16", what="--precision")
    with pytest.raises(DeviceError, match=r"fp16 autocast is for CUDA devices"):
        inference_dtype(torch.device("cpu"), "fp16")
    monkeypatch.setenv("MTL_PRECISION", "int8")
    with pytest.raises(DeviceError, match=r"MTL_PRECISION='int8': not a precision"):
        inference_dtype(torch.device("cpu"))


def test_the_config_field_takes_the_policy_choices_only():
    from pydantic import ValidationError

    from training.config import TrainingConfig

    assert TrainingConfig().eval_device == "auto"
    assert TrainingConfig(eval_device="cuda:1").eval_device == "cuda:1"
    with pytest.raises(ValidationError, match="eval_device"):
        TrainingConfig(eval_device="gpu")


# ---------------------------------------------------------------------------------------------------
# a tiny export; the Predictor's batches


@pytest.fixture(scope="module")
def export(tiny_encoder, tmp_path_factory) -> Path:
    """Random weights (no training: the answers only have to agree between batchings); max_length
    16, so long sentences are cut into windows."""
    from transformers import AutoTokenizer

    from training.model.export import write_export
    from training.model.multitask import build_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    torch.manual_seed(0)
    model = build_model(str(tiny_encoder), TASKS, "hard", 0.1).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return write_export(tmp_path_factory.mktemp("device") / "model", state, model, tokenizer,
                        {"sharing": "hard", "dropout": 0.1, "max_length": 16})


def sentences(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 30]))] for _ in range(count)]


def test_token_batches_keep_the_budget_and_cover_every_row_once():
    from training.evaluation.predict import token_batches

    rng = random.Random(1)
    lengths = [rng.randint(1, 40) for _ in range(300)]
    for budget, rows in ((64, None), (200, 7), (10, None)):
        plan = token_batches(lengths, budget, rows)
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
        for batch in plan:
            widest = max(lengths[i] for i in batch)
            assert len(batch) == 1 or widest * len(batch) <= budget  # a row over the budget goes alone
            assert rows is None or len(batch) <= rows
        assert [lengths[b[0]] for b in plan] == sorted((lengths[b[0]] for b in plan), reverse=True)


def test_token_budget_batches_answer_as_one_row_at_a_time_in_input_order(export):
    from training.evaluation.predict import Predictor

    words = sentences(60, seed=2)
    texts = [" ".join(w) for w in words]
    one_by_one = Predictor(export, batch_size=1, device="cpu")
    budget = Predictor(export, max_tokens=64, device="cpu")
    want = one_by_one.predict(texts, words=words)
    got = budget.predict(texts, words=words)
    assert got == near(want)
    assert any(len(w) > 14 for w in words)  # some sentences are cut into windows (max_length 16)
    order = list(range(len(words)))
    random.Random(3).shuffle(order)
    shuffled = budget.predict([texts[i] for i in order], words=[words[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(words))] == near(want)


def near(rows: list[dict]) -> list[dict]:
    """Labels exactly; the regression value up to float noise (padding changes the matmul shapes)."""
    return [{**row, "sts": pytest.approx(row["sts"], abs=1e-4)} for row in rows]


def test_the_predictor_runs_where_the_policy_says(export, monkeypatch):
    from training.evaluation.predict import Predictor

    monkeypatch.setenv("MTL_PRECISION", "bf16")
    predictor = Predictor(export, device="cpu")
    assert (predictor.device, predictor.dtype) == (torch.device("cpu"), torch.bfloat16)
    [row] = predictor.predict(["the cat sat ."])
    assert len(row["pos"]) == 4 and row["sst2"] in ("0", "1")
    monkeypatch.delenv("MTL_PRECISION")
    assert Predictor(export).dtype == torch.float32


def test_evaluation_refuses_a_device_it_cannot_use_naming_the_config_key(export, monkeypatch):
    from training.evaluation.evaluate import evaluate_export

    fake_cuda(monkeypatch, devices=0)
    with pytest.raises(DeviceError, match=r"training.eval_device='cuda'"):
        evaluate_export(str(export), TASKS, {}, 8, device="cuda")


# ---------------------------------------------------------------------------------------------------
# mtl predict: streaming, progress, resume


def write_inputs(path: Path, count: int, seed: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "tokens": w}) + "\n" for i, w in enumerate(sentences(count, seed))))
    return path


def test_mtl_predict_resumes_after_a_sigkill_with_no_row_lost_or_repeated(export, tmp_path, capsys):
    from flows.cli import main

    inputs = write_inputs(tmp_path / "in.jsonl", 300, seed=4)
    whole = tmp_path / "whole.jsonl"
    # label tasks only: a regression value's last digits depend on the batch it came in
    assert main(["predict", str(export), str(inputs), "--out", str(whole), "--device", "cpu", *LABEL_TASKS]) == 0
    want = whole.read_text().splitlines()
    assert [json.loads(line)["id"] for line in want] == list(range(300))

    out = tmp_path / "part" / "out.jsonl"
    marker = out.with_name(out.name + ".resume.json")
    # one row per step, so the kill lands in the middle of the stream
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "predict", str(export), str(inputs), "--out",
                             str(out), "--chunk-rows", "1", *LABEL_TASKS], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 10):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no rows written in time"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    written = out.read_bytes().count(b"\n")
    assert proc.returncode == -signal.SIGKILL and 10 <= written < 300 and marker.is_file()
    with open(out, "a", encoding="utf-8") as handle:
        handle.write('{"id": 12, "pos": ["DE')  # a torn last write, as a crash mid-line leaves

    other = write_inputs(tmp_path / "other.jsonl", 300, seed=5)
    before = out.read_bytes()
    assert main(["predict", str(export), str(other), "--out", str(out), *LABEL_TASKS]) == 2
    err = capsys.readouterr().err
    assert "holds the first predictions of an interrupted run over" in err and "is another input" in err
    assert out.read_bytes() == before  # refused: nothing written

    assert main(["predict", str(export), str(inputs), "--out", str(out), "--device", "cpu", *LABEL_TASKS]) == 0
    err = capsys.readouterr().err
    done = out.read_text().splitlines()
    assert "resuming: " in err and f"of 300 predictions already in {out}" in err
    assert done == want  # every row once, in order, the same answers
    assert not marker.exists() and sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]
    assert "rows/s" not in err  # stderr is not a terminal here: no progress line


def test_mtl_predict_returns_integer_ids_of_a_table_as_integers(export, tmp_path, capsys):
    from flows.cli import main

    table = tmp_path / "in.tsv"
    table.write_text("id\ttext\n1\tthe cat sat .\n007\ta dog ran\n-3\tit was green\nx9\tthen\n")
    assert main(["predict", str(export), str(table), "--tasks", "sst2"]) == 0
    ids = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert ids == [1, "007", -3, "x9"]


def test_progress_shows_rows_rate_and_time_left_only_on_a_terminal():
    from training.release.serving import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    meter = Progress(1000, done=200, stream=screen)
    meter.started -= 10.0  # 10 s ago
    meter.update(400)
    meter.close()
    assert screen.getvalue() == "\r600/1,000 rows  40.0 rows/s  0:00:10 left\n"
    piped = io.StringIO()
    quiet = Progress(1000, stream=piped)
    quiet.update(1000)
    quiet.close()
    assert piped.getvalue() == ""


def test_evaluating_an_export_scores_every_task_and_counts_each_classifiers_confusion(export, tmp_path):
    """evaluate_export and evaluate_model on the tiny export: each task's metrics, the confusion
    counts of the same predictions for the label tasks (none for regression), and the metrics alone."""
    from data_prep.examples import Example
    from training.evaluation.evaluate import evaluate_export, evaluate_model

    rows = {"pos": [Example("d", 1, tokens=["the", "cat", "sat"], tags=["DET", "NOUN", "VERB"])],
            "sst2": [Example("d", 1, text="a big cat", label="1"), Example("d", 2, text="it ran", label="0")],
            "sts": [Example("d", 1, text="a cat", text_pair="the cat", label="4.0"),
                    Example("d", 2, text="red", text_pair="it ran", label="1.0"),
                    Example("d", 3, text="dog", text_pair="dog", label="5.0")]}
    dev = {}
    for name, examples in rows.items():
        dev[name] = str(tmp_path / f"{name}.jsonl")
        Path(dev[name]).write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))
    found = evaluate_export(str(export), TASKS, dev, 8, device="cpu")
    assert {name: sorted(t.metrics) for name, t in found.items()} == {
        "pos": ["accuracy"], "sst2": ["accuracy", "macro_f1"], "sts": ["neg_mse", "pearson", "spearman"]}
    assert found["pos"].confusion["labels"] == TASKS[0].labels
    assert sum(map(sum, found["pos"].confusion["counts"])) == 3
    assert sum(map(sum, found["sst2"].confusion["counts"])) == 2 and found["sts"].confusion is None
    assert evaluate_model(str(export), TASKS, dev, 8, device="cpu") == {n: t.metrics for n, t in found.items()}
