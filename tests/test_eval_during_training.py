"""Evaluation during training with real DeepSpeed processes: dev rows in the training log, the
export assembled from each task's best step (checked against the logged scores and the consolidated
checkpoints), evaluation sharded over 2 processes scoring what 1 process scores on the same weights,
a resumed run keeping its best-so-far, early stopping, and an auxiliary task that is trained but
never exported, evaluated or registered."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from data_prep.config import TaskDataConfig
from data_prep.stage import read_examples
from engine_support import prepare_tasks
from helpers import quality_bench, tiny_config
from training.config import DeepSpeedConfig, EncoderConfig, TrainingConfig
from training.launch.train import train_model
from training.model.sharing.multi_encoder import carded_own_encoders
from training.trainer.checkpoints import tag_for

PRIMARY = {"pos": "accuracy", "ner": "entity_f1", "sst2": "accuracy"}
# a high learning rate makes the tiny model's dev scores go up and down between evaluations, so
# the tasks' best steps differ (the run is seeded: the same steps every time)
SELECTED = {"steps": 8, "eval_every": 2, "eval_max_examples": 30, "eval_batch_size": 1, "learning_rate": 0.02,
            "checkpoint_every": 100, "keep_checkpoints": 1, "log_every": 2}


@pytest.fixture(scope="module")
def demo(tiny_encoder, data_dir, tmp_path_factory) -> dict[str, Any]:
    """The demo tasks plus CoNLL-2003 part-of-speech tags as an auxiliary task, ingested and tokenized once."""
    raw = tiny_config(tiny_encoder, tmp_path_factory.mktemp("state"), data_dir)["tasks"]
    ptb = {**raw[1], "name": "ptb", "tag_column": 1, "label_scheme": "plain", "auxiliary": True}
    cfgs = [TaskDataConfig(**{**task, "max_train_examples": 64, "max_dev_examples": 40}) for task in raw + [ptb]]
    specs, features, dev = prepare_tasks(cfgs, tiny_encoder, data_dir, tmp_path_factory.mktemp("data"), 32)
    return {"specs": specs, "features": features, "dev": dev,
            "encoder": EncoderConfig(name_or_path=str(tiny_encoder), max_length=32)}


def train(demo: dict[str, Any], run_dir: Path, zero_stage: int, lines: list[str] | None = None,
          **training: Any) -> Path:
    cfg = TrainingConfig(**{"micro_batch_size": 4, "warmup_steps": 1, "processes": 2, "threads_per_process": 1,
                            **training})
    out = lines if lines is not None else []

    def log(line: str) -> None:
        print(line)  # shown by pytest on failure
        out.append(line)

    return Path(train_model(demo["encoder"], cfg, DeepSpeedConfig(zero_stage=zero_stage), demo["specs"],
                            demo["features"], run_dir, log, demo["dev"]))


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in (run_dir / "train_metrics.jsonl").read_text().splitlines()]


def best_steps(evals: list[dict[str, Any]]) -> dict[str, int]:
    """Each task's step with the best primary dev score in the log, the later one on ties."""
    return {task: max(evals, key=lambda r: (r["eval"][task][metric], r["step"]))["step"]
            for task, metric in PRIMARY.items()}


def checkpoint(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag_for(step))


@pytest.fixture(scope="module")
def selected(demo, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """2 processes under ZeRO-2, each evaluating its share of the dev samples. (ZeRO-3's gathered
    evaluation copy is checked in-process in test_selection.py; ZeRO-3 resume exactness in
    test_engine_resume_zero3.py.)"""
    run = tmp_path_factory.mktemp("selected")
    lines: list[str] = []
    return run, train(demo, run, 2, lines, **SELECTED), lines


def test_dev_metrics_are_logged_every_eval_every_steps_for_exported_tasks_only(selected, demo):
    run, _, _ = selected
    log = rows(run)
    assert [r["step"] for r in log if "eval" in r] == [2, 4, 6, 8]
    assert [r["step"] for r in log if "loss" in r] == [2, 4, 6, 8]
    for row in (r for r in log if "loss" in r):  # each task's mean over the 2 steps since the last line
        assert sum(row["task_steps"].values()) == 2 and set(row["task_losses"]) == set(row["task_steps"])
        assert row["loss"] == pytest.approx(sum(row["task_losses"][t] * n for t, n in row["task_steps"].items()) / 2)
    for row in (r for r in log if "eval" in r):
        assert set(row["eval"]) == {"pos", "ner", "sst2"}
        assert set(row["eval"]["ner"]) == {"accuracy", "entity_f1"}
        assert set(row["eval"]["sst2"]) == {"accuracy", "macro_f1"}
    # the quality bench describes a run from the spec its workers were handed
    assert quality_bench().run_settings(run, demo["specs"]) == (
        "schedule single {}, 8 steps x 4, lr 0.02, sharing hard, weighting equal, sampler proportional, eval_every 2 "
        f"on 30 dev examples, selection per_task, seed {TrainingConfig().seed}, auxiliary ['ptb']", 8)


def test_each_task_is_exported_from_its_best_logged_step(selected):
    run, export, _ = selected
    card = json.loads((export / "mtl_model.json").read_text())
    evals = [r for r in rows(run) if "eval" in r]
    steps = best_steps(evals)
    chosen = card["selection"]["tasks"]
    assert {t: c["step"] for t, c in chosen.items()} == steps
    by_step = {r["step"]: r["eval"] for r in evals}
    assert all(c["score"] == by_step[c["step"]][t][PRIMARY[t]] and c["metric"] == PRIMARY[t] for t, c in chosen.items())
    assert len(set(steps.values())) > 1, f"this seeded run's tasks chose different steps before: {steps}"
    shared = card["selection"]["shared_step"]
    own = sorted(t for t, s in steps.items() if s != shared)
    assert card["sharing"] == "multi_encoder" and card["sharing_params"] == {"task_encoders": own}
    weights = load_file(str(export / "model.safetensors"))
    states = {s: checkpoint(run, s) for s in set(steps.values())}
    for key, value in states[shared].items():
        if key.startswith("sharing.encoder."):
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    for task, step in steps.items():
        for key, value in states[step].items():
            if key.startswith(f"heads.{task}."):
                torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
            elif key.startswith("sharing.encoder.") and task in own:
                mine = "sharing.task_encoders." + task + "." + key[len("sharing.encoder."):]
                torch.testing.assert_close(weights[mine], value, rtol=0, atol=0)
    # the checkpoints of the chosen steps outlive keep_checkpoints: 1
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == sorted(
        tag_for(s) for s in set(steps.values()) | {8})


def test_the_auxiliary_task_is_trained_but_not_exported_evaluated_or_registered(selected, demo, tmp_path):
    from mlflow import MlflowClient

    from training.config import RegistryConfig
    from training.evaluation.evaluate import evaluate_model
    from training.release.registry import register_model, run_files

    run, export, _ = selected
    assert all("ptb" in r["task_weights"] for r in rows(run) if "loss" in r)  # trained and weighted
    card = json.loads((export / "mtl_model.json").read_text())
    assert [t["name"] for t in card["tasks"]] == ["pos", "ner", "sst2"]
    assert not [k for k in load_file(str(export / "model.safetensors")) if ".ptb." in k]
    metrics = evaluate_model(str(export), demo["specs"], demo["dev"], 8)
    assert set(metrics) == {"pos", "ner", "sst2"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts, logs = run_files(run, export)
    registered = register_model(RegistryConfig(experiment="eval", model_name="eval"), uri,
                                (tmp_path / "artifacts").as_uri(), "eval-run", str(export), {}, metrics,
                                artifacts, "challenger", None, logs)
    client = MlflowClient(uri)
    logged = client.get_run(registered.run_id).data.metrics
    assert not [k for k in logged if ".ptb." in k or k.startswith("dev.ptb")]
    assert [m.step for m in client.get_metric_history(registered.run_id, "train.dev.ner.entity_f1")] == [2, 4, 6, 8]


def test_sharded_evaluation_scores_what_one_process_scores_on_the_same_weights(selected, demo, tmp_path):
    """The last step's logged dev metrics (2 processes, each its half of the sample) against
    the Predictor on an export of that step's consolidated checkpoint, in this one process."""
    from transformers import AutoTokenizer

    from training.evaluation.evaluate import dev_sample, evaluate_task
    from training.evaluation.predict import Predictor
    from training.model.export import state_for, write_export
    from training.model.multitask import build_model_skeleton

    run, _, _ = selected
    tasks = [t for t in demo["specs"] if not t.auxiliary]
    model = build_model_skeleton(demo["encoder"].name_or_path, tasks, "hard", 0.1)
    tokenizer = AutoTokenizer.from_pretrained(demo["encoder"].name_or_path)
    write_export(tmp_path / "m", state_for(model, checkpoint(run, 8)), model, tokenizer,
                 {"sharing": "hard", "dropout": 0.1, "max_length": 32})
    predictor = Predictor(tmp_path / "m", batch_size=1)
    one = {t.name: evaluate_task(predictor, t, dev_sample(read_examples(demo["dev"][t.name]), 30, 42, t.name))
           for t in tasks}
    (logged,) = [r["eval"] for r in rows(run) if "eval" in r and r["step"] == 8]
    assert logged == one


def test_a_resumed_run_keeps_its_best_so_far(selected, demo, tmp_path):
    """The run again from its newest checkpoint before the end: the steps chosen before it are
    known only from the checkpoint's selection state, and the export is the same."""
    run, export, _ = selected
    card = json.loads((export / "mtl_model.json").read_text())
    steps = {t: c["step"] for t, c in card["selection"]["tasks"].items()}
    resume_at = max(s for s in steps.values() if s < 8)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "model")
    shutil.rmtree(copy / "checkpoints" / tag_for(8))
    lines: list[str] = []
    again = train(demo, copy, 2, lines, **SELECTED)
    assert f"resumed from checkpoint at step {resume_at}" in lines
    assert not [l for l in lines if l.startswith('{"step": 2,')], "evaluations before the checkpoint ran again"
    resumed = json.loads((again / "mtl_model.json").read_text())
    assert {t: c["step"] for t, c in resumed["selection"]["tasks"].items()} == steps
    assert [r["step"] for r in rows(copy) if "eval" in r] == [2, 4, 6, 8]
    before, after = load_file(str(export / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert set(before) == set(after)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=1e-4, atol=1e-5)


def test_patience_stops_training_early_and_exports_the_best_step(demo, tmp_path):
    """A learning rate too small to change any prediction: the second and third evaluations only tie
    the first, so with patience 2 training ends at step 6 of 12 (1 process, ZeRO-0)."""
    lines: list[str] = []
    export = train(demo, tmp_path, 0, lines, steps=12, eval_every=2, patience=2, learning_rate=1e-9,
                   checkpoint_every=100, log_every=2, processes=1)
    log = rows(tmp_path)
    assert [r["step"] for r in log if "eval" in r] == [2, 4, 6]
    assert max(r["step"] for r in log) == 6
    assert any(l.startswith("early stop at step 6: no task improved") for l in lines)
    card = json.loads((export / "mtl_model.json").read_text())
    assert card["selection"]["stopped_early_at"] == 6 and card["sharing"] == "hard"
    assert {t: c["step"] for t, c in card["selection"]["tasks"].items()} == {"pos": 6, "ner": 6, "sst2": 6}
    weights = load_file(str(export / "model.safetensors"))
    saved = torch.load(tmp_path / "checkpoints" / tag_for(6) / "mp_rank_00_model_states.pt",
                       weights_only=False)["module"]
    assert all(torch.equal(weights[k], saved[k].float()) for k in weights)


def test_a_split_export_comes_with_its_newest_step_on_one_encoder_where_the_task_affinity_is_measured(selected, demo):
    """Per-task selection gave tasks encoder copies of their own, so in the export a step on one
    task moves no other task's loss: the affinity there is zero off those tasks' diagonal. The
    worker also writes the newest checkpoint with every task on the one shared encoder, and the
    affinity is measured on that."""
    from training.evaluation.affinity import affinity_from_export
    from training.launch.layout import RunLayout
    from training.launch.train import affinity_export
    from training.model.export import read_card

    run, export, _ = selected
    own = read_card(export)["sharing_params"]["task_encoders"]
    joint = RunLayout(run).joint_export("")
    card = read_card(joint)
    assert (card["sharing"], card["joint_step"], [t["name"] for t in card["tasks"]]) == ("hard", 8, ["pos", "ner", "sst2"])
    weights, last = load_file(str(joint / "model.safetensors")), checkpoint(run, 8)
    assert weights and not [k for k in last if not k.startswith("heads.ptb.") and k not in weights]
    for key, value in weights.items():
        torch.testing.assert_close(value, last[key], rtol=0, atol=0)
    path, source = affinity_export(run, TrainingConfig(**SELECTED), demo["specs"])
    assert (path, source) == (str(joint), "the run, step 8: every task on one shared encoder")
    split = affinity_from_export(export, demo["features"], rounds=1, batch_size=4, device="cpu")["matrix"]
    shared = affinity_from_export(joint, demo["features"], rounds=1, batch_size=4, device="cpu")["matrix"]
    others = [(i, j) for i in ("pos", "ner", "sst2") for j in ("pos", "ner", "sst2") if i != j]
    assert all(split[i][j] == 0.0 for i, j in others if i in own or j in own)
    assert all(shared[i][j] != 0.0 for i, j in others)


def test_mtdnn_selects_per_task_in_each_stage_and_keeps_fine_tuning_only_where_it_scored_as_well(demo, tmp_path):
    """1 process, ZeRO-0: the multi-task stage (ptb auxiliary) exports each task's best step, sst2's
    fine-tuning stage (sst2's dev split only) starts from sst2's own multi-task weights and exports
    its best step, and the assembly keeps those only if they scored at least the multi-task stage's
    best for sst2; the card says per task which stage and step its weights come from."""
    stage_settings = {"steps": 6, "eval_every": 2, "eval_max_examples": 30, "processes": 1, "log_every": 2,
                      "learning_rate": 0.02, "schedule": "mtdnn",
                      "schedule_params": {"finetune_tasks": ["sst2"], "finetune_steps": 2}}
    export = train(demo, tmp_path, 0, **stage_settings)
    stages = tmp_path / "stages"
    spec = json.loads((stages / "finetune-sst2" / "train_spec.json").read_text())
    assert set(spec["dev"]) == {"sst2"} and [t["name"] for t in spec["tasks"]] == ["sst2"]
    multitask = [r for r in rows(stages / "multitask") if "eval" in r]
    assert [r["step"] for r in multitask] == [2, 4, 6] and all(set(r["eval"]) == {"pos", "ner", "sst2"}
                                                            for r in multitask)
    best = best_steps(multitask)
    stage_card = json.loads((stages / "multitask" / "model" / "mtl_model.json").read_text())
    assert stage_card["selection"]["mode"] == "per_task"
    assert {t: c["step"] for t, c in stage_card["selection"]["tasks"].items()} == best
    own = carded_own_encoders(stage_card)
    (tuned,) = [r for r in rows(stages / "finetune-sst2") if "eval" in r]
    multitask_sst2 = stage_card["selection"]["tasks"]["sst2"]["score"]
    kept = tuned["eval"]["sst2"]["accuracy"] >= multitask_sst2
    card = json.loads((export / "mtl_model.json").read_text())
    assert [t["name"] for t in card["tasks"]] == ["pos", "ner", "sst2"]
    assert card["sharing_params"] == {"task_encoders": sorted(set(own) | ({"sst2"} if kept else set()))}
    chosen = card["selection"]["tasks"]
    assert {t: (c["stage"], c["step"]) for t, c in chosen.items()} == {
        "pos": ("multitask", best["pos"]), "ner": ("multitask", best["ner"]),
        "sst2": ("finetune-sst2", 2) if kept else ("multitask", best["sst2"])}
    assert chosen["sst2"]["score"] == max(tuned["eval"]["sst2"]["accuracy"], multitask_sst2)
    assert not (stages / "finetune-ptb").exists()
    # the exported sst2 head is the chosen stage's
    weights = load_file(str(export / "model.safetensors"))
    source = load_file(str((stages / "finetune-sst2" if kept else stages / "multitask") / "model" / "model.safetensors"))
    assert all(torch.equal(weights[k], source[k]) for k in source if k.startswith("heads.sst2."))
    # each stage's card names the dev sample its scores come from (40 dev examples, 30 drawn)
    seed = TrainingConfig().seed
    tuned_card = json.loads((stages / "finetune-sst2" / "model" / "mtl_model.json").read_text())
    assert stage_card["selection"]["dev_samples"] == {t: {"examples": 30, "seed": seed} for t in ("pos", "ner", "sst2")}
    assert tuned_card["selection"]["dev_samples"] == {"sst2": {"examples": 30, "seed": seed}}
    # the quality bench describes the staged run from its card's stages, not from the config at hand
    line, steps = quality_bench().run_settings(tmp_path, demo["specs"])
    assert line.startswith("schedule mtdnn (multitask 6 steps at lr 0.02; finetune-sst2 2 steps at lr 0.02), x 4, "
                           "sharing hard, weighting equal, sampler proportional, eval_every 2 on 30 dev examples")
    assert steps == 8
    # the same stages with sst2's fine-tuning scored below its multi-task weights: the assembly
    # keeps the multi-task weights, and with multitask_fallback false the fine-tuned ones
    for fallback, source in ((True, "multitask"), (False, "finetune-sst2")):
        again = tmp_path / f"fallback-{fallback}"
        (again / "stages").mkdir(parents=True)
        (again / "stages" / "multitask").symlink_to(stages / "multitask")
        shutil.copytree(stages / "finetune-sst2", again / "stages" / "finetune-sst2", symlinks=True)
        lowered = json.loads((again / "stages" / "finetune-sst2" / "model" / "mtl_model.json").read_text())
        lowered["selection"]["tasks"]["sst2"]["score"] = multitask_sst2 - 0.1
        (again / "stages" / "finetune-sst2" / "model" / "mtl_model.json").write_text(json.dumps(lowered))
        params = {**stage_settings["schedule_params"], "multitask_fallback": fallback}
        assembled = train(demo, again, 0, **{**stage_settings, "schedule_params": params})
        sst2 = json.loads((assembled / "mtl_model.json").read_text())["selection"]["tasks"]["sst2"]
        assert sst2["stage"] == source and (sst2.get("multitask_score"), sst2.get("finetune_score")) == (
            (None, multitask_sst2 - 0.1) if fallback else (multitask_sst2, None))
        weights = load_file(str(assembled / "model.safetensors"))
        source_weights = load_file(str(again / "stages" / source / "model" / "model.safetensors"))
        assert all(torch.equal(weights[k], source_weights[k]) for k in source_weights if k.startswith("heads.sst2."))
    # a fine-tuning stage scored on another seed's sample (its run reused this multi-task stage) is
    # not compared with it: the assembly refuses, naming the stage and the fix
    other = tmp_path / "other-seed"
    (other / "stages").mkdir(parents=True)
    (other / "stages" / "multitask").symlink_to(stages / "multitask")
    with pytest.raises(ValueError, match=rf"stage finetune-sst2 chose its weights on another dev sample of sst2 "
                                         rf"\(30 examples drawn with seed {seed + 1}\) than stage multitask \(30 "
                                         rf"examples drawn with seed {seed}\).*same training.seed"):
        train(demo, other, 0, **{**stage_settings, "seed": seed + 1})
    assert not (other / "model").exists()
