"""Evaluation during training, in this process: which steps the selection keeps (on recorded
scores), the assembled export, pinned checkpoints, the dev sample and its shards, the Predictor on a
live model, and the checks of the new keys and of auxiliary tasks."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from data_prep.examples import Example
from training.config import DeepSpeedConfig, TrainingConfig
from training.evaluation.evaluate import dev_sample, evaluate_sharded, evaluate_task, predict_split, shard
from training.evaluation.predict import Predictor
from training.evaluation.selection import Selection, assemble, shared_step
from training.model.export import state_for
from training.model.multitask import MultiTaskModel
from training.task_spec import TaskSpec
from training.trainer.checkpoints import COMPLETE, CheckpointStore, tag_for
from training.validation import config_problems

PRIMARY = {"pos": "accuracy", "ner": "entity_f1"}


def scores(pos: float, ner: float) -> dict[str, dict[str, float]]:
    return {"pos": {"accuracy": pos}, "ner": {"accuracy": 0.0, "entity_f1": ner}}


def test_per_task_selection_keeps_each_tasks_best_step_and_the_later_one_on_ties():
    selection = Selection(PRIMARY, "per_task")
    kept = [selection.update(2, scores(0.5, 0.3)), selection.update(4, scores(0.6, 0.2)),
            selection.update(6, scores(0.6, 0.25)), selection.update(8, scores(0.4, 0.1))]
    assert kept == [True, True, True, False]  # step 6: pos ties its best, which moves to the later step
    assert selection.steps() == {"pos": 6, "ner": 2} and selection.pinned() == {2, 6}
    card = selection.card()
    assert card["tasks"] == {"pos": {"step": 6, "metric": "accuracy", "score": 0.6},
                             "ner": {"step": 2, "metric": "entity_f1", "score": 0.3}}
    assert card["shared_step"] == 6 and card["stopped_early_at"] is None


def test_shared_encoder_is_the_step_most_tasks_chose_else_the_later():
    assert shared_step({"a": 2, "b": 2, "c": 6}) == 2
    assert shared_step({"a": 2, "b": 6}) == 6
    assert shared_step({"a": 8, "b": 2, "c": 4}) == 8


def test_mean_selection_keeps_one_step_for_every_task():
    selection = Selection(PRIMARY, "mean")
    for step, (pos, ner) in ((2, (0.5, 0.3)), (4, (0.6, 0.1)), (6, (0.45, 0.35)), (8, (0.3, 0.3))):
        selection.update(step, scores(pos, ner))
    assert selection.steps() == {"pos": 6, "ner": 6}  # 0.4 at steps 2 and 6: the later
    card = selection.card()
    assert card["mean"] == pytest.approx(0.4) and card["tasks"]["ner"] == {"step": 6, "metric": "entity_f1",
                                                                          "score": 0.35}


def test_patience_counts_evaluations_without_a_strict_improvement():
    selection = Selection(PRIMARY, "per_task", patience=2)
    selection.update(2, scores(0.5, 0.3))
    selection.update(4, scores(0.5, 0.3))  # ties move the kept step but improve nothing
    assert not selection.stopped and selection.steps() == {"pos": 4, "ner": 4}
    selection.update(6, scores(0.4, 0.2))
    assert selection.stopped and selection.stopped_at == 6 and selection.card()["stopped_early_at"] == 6
    again = Selection(PRIMARY, "per_task", patience=2)
    for step, pair in ((2, (0.5, 0.3)), (4, (0.5, 0.2)), (6, (0.4, 0.31))):  # ner improves at 6
        again.update(step, scores(*pair))
    assert not again.stopped


def test_selection_state_survives_a_checkpoint_round_trip(tmp_path):
    selection = Selection(PRIMARY, "per_task", patience=3)
    selection.update(2, scores(0.5, 0.3))
    selection.update(4, scores(0.4, 0.2))
    torch.save({"selection": selection.state_dict()}, tmp_path / "state.pt")
    resumed = Selection(PRIMARY, "per_task", patience=3)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False)["selection"])
    for sel in (selection, resumed):
        sel.update(6, scores(0.45, 0.1))
    assert resumed.steps() == selection.steps() == {"pos": 2, "ner": 2}
    assert resumed.since_improved == selection.since_improved == 2 and resumed.card() == selection.card()


def test_a_metric_that_could_not_be_computed_ranks_lowest():
    selection = Selection(PRIMARY, "per_task")
    selection.update(2, scores(float("nan"), 0.3))
    selection.update(4, scores(0.0, 0.3))
    assert selection.steps()["pos"] == 4 and selection.card()["tasks"]["pos"]["score"] == 0.0
    assert selection.history[2]["pos"] == -math.inf


TASKS = [TaskSpec(name="pos", type="token_classification", labels=["A", "B", "C"]),
         TaskSpec(name="ner", type="token_classification", labels=["O", "B-X", "I-X"], label_scheme="bio"),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"])]


def hard_model(tiny_encoder: Path, seed: int, tasks: list[TaskSpec] = TASKS) -> MultiTaskModel:
    torch.manual_seed(seed)
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_encoder), tasks, "hard", 0.0)
    with torch.no_grad():  # a different encoder per "step"
        for param in model.sharing.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 2000, (2, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def test_assembled_export_takes_each_tasks_encoder_and_head_from_its_step(tiny_encoder):
    """ner chose step 2, the others step 6: the shared encoder is step 6's, ner gets step 2's
    encoder copy and head, and the multi_encoder model predicts each task as its step did."""
    at = {2: hard_model(tiny_encoder, 2), 6: hard_model(tiny_encoder, 6)}
    states = {step: {k: v.clone() for k, v in m.state_dict().items()} for step, m in at.items()}
    state, own = assemble(states, {"pos": 6, "ner": 2, "sst2": 6})
    assert own == ["ner"]
    torch.manual_seed(0)
    out = MultiTaskModel(AutoModel.from_pretrained(tiny_encoder), TASKS, "multi_encoder", 0.0,
                         {"task_encoders": own})
    out.load_state_dict(state_for(out, state))
    out.eval()
    got = out.predict_logits(["pos", "ner", "sst2"], **batch())
    for task, step in (("pos", 6), ("ner", 2), ("sst2", 6)):
        torch.testing.assert_close(got[task], at[step].predict_logits([task], **batch())[task])
    same, none = assemble(states, {"pos": 2, "ner": 2, "sst2": 2})
    assert none == [] and all(torch.equal(same[k], states[2][k]) for k in states[2])


def test_two_tasks_that_chose_the_same_earlier_step_get_encoder_copies_that_save(tmp_path):
    """rte and mrpc both chose step 4000, most tasks the last step: each of the two gets its own
    copy of step 4000's encoder, in memory of its own, so the export's safetensors file is written
    (tensors that share memory are refused; a 9-task run once failed at its export so)."""
    from safetensors.torch import load_file, save_file

    def step_state(value: float) -> dict[str, torch.Tensor]:
        return {"sharing.encoder.layer.weight": torch.full((3, 2), value),
                **{f"heads.{t}.weight": torch.full((2,), value) for t in ("pos", "ner", "rte", "mrpc")}}

    states = {4000: step_state(4.0), 6000: step_state(6.0)}
    state, own = assemble(states, {"pos": 6000, "ner": 6000, "rte": 4000, "mrpc": 4000})
    assert own == ["mrpc", "rte"]
    pointers = [v.untyped_storage().data_ptr() for v in state.values()]
    assert len(set(pointers)) == len(pointers)
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert loaded["sharing.task_encoders.rte.layer.weight"].eq(4.0).all()
    assert loaded["sharing.task_encoders.mrpc.layer.weight"].eq(4.0).all()
    assert loaded["sharing.encoder.layer.weight"].eq(6.0).all() and loaded["heads.pos.weight"].eq(6.0).all()


def test_export_state_drops_an_auxiliary_tasks_head_and_refuses_a_shape_that_does_not_fit(tiny_encoder):
    trained = hard_model(tiny_encoder, 1)
    kept = hard_model(tiny_encoder, 1, TASKS[:2])
    state = state_for(kept, trained.state_dict())
    assert set(state) == set(kept.state_dict()) and not [k for k in state if k.startswith("heads.sst2.")]
    assert all(torch.equal(state[k], trained.state_dict()[k]) for k in state)
    other = hard_model(tiny_encoder, 1, [TASKS[0].model_copy(update={"labels": ["A", "B"]}), TASKS[1]])
    with pytest.raises(ValueError, match="wrong shape"):
        state_for(other, trained.state_dict())


def examples() -> list[Example]:
    words = ["the", "cat", "sat", "on", "a", "mat", "in", "Paris", "today", "."]
    return [Example(file="dev", line=i, tokens=words[: 3 + i % 7], tags=["A", "B", "C"] * 4)
            for i in range(23)]


def test_dev_sample_is_fixed_by_the_seed_kept_in_order_and_whole_when_small():
    split = examples()
    first = dev_sample(split, 10, 42, "pos")
    assert len(first) == 10 and first == dev_sample(split, 10, 42, "pos")
    assert [e.line for e in first] == sorted(e.line for e in first)
    assert first != dev_sample(split, 10, 43, "pos") and first != dev_sample(split, 10, 42, "ner")
    assert dev_sample(split, 23, 42, "pos") == split and dev_sample(split, None, 42, "pos") == split


def test_shards_cover_the_split_in_order():
    split = examples()
    for world in (1, 2, 3, 30):
        parts = [shard(split, rank, world) for rank in range(world)]
        assert [e for part in parts for e in part] == split


def test_live_predictor_predicts_like_the_export_and_sharded_scores_equal_one_process(tiny_encoder, tmp_path):
    from training.model.export import write_export

    model = hard_model(tiny_encoder, 4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    write_export(tmp_path / "m", model.state_dict(), model, tokenizer,
                 {"sharing": "hard", "dropout": 0.0, "max_length": 16})
    live, exported = Predictor.for_model(model, tokenizer, 16, batch_size=4), Predictor(tmp_path / "m", batch_size=4)
    task, split = TASKS[0], examples()
    assert predict_split(live, task, split) == predict_split(exported, task, split)
    whole = evaluate_task(exported, task, split)
    parts = [predict_split(live, task, shard(split, rank, 2)) for rank in range(2)]
    sharded = [evaluate_sharded(live, task, split, rank, 2, lambda local: parts) for rank in range(2)]
    assert sharded[0] == sharded[1] == whole


def test_pruning_keeps_pinned_checkpoints(tmp_path):
    local = CheckpointStore(str(tmp_path / "ckpt"))
    remote = CheckpointStore(f"memory://{tmp_path.name}/ckpt", staging_dir=str(tmp_path / "staging"))
    for step in range(1, 6):
        (tmp_path / "ckpt" / tag_for(step)).mkdir(parents=True)
        (tmp_path / "ckpt" / tag_for(step) / COMPLETE).write_text("{}")
        remote._fs().pipe_file(f"{remote.uri}/{tag_for(step)}/{COMPLETE}", b"{}")
    for store in (local, remote):
        store.pin({tag_for(1)})
        store.prune(keep=2)
        assert store.complete_tags() == [tag_for(1), tag_for(4), tag_for(5)]
        store.pin(set())
        store.prune(keep=2)
        assert store.complete_tags() == [tag_for(4), tag_for(5)]


def problems(tasks: list[str] = ["pos", "ner"], auxiliary: list[str] | None = None, **training) -> list[str]:
    return config_problems(TrainingConfig(**training), DeepSpeedConfig(), tasks, auxiliary)


def test_selection_patience_and_auxiliary_settings_are_checked():
    assert problems(eval_every=10) == [] and problems(eval_every=10, sharing="soft", selection="mean") == []
    (soft,) = problems(eval_every=10, sharing="soft")
    assert soft.startswith("training.selection: per_task selection") and "selection: mean" in soft
    assert problems(sharing="soft") == []  # selection means nothing without evaluation
    (patience,) = problems(patience=3)
    assert patience.startswith("training.patience:") and "eval_every" in patience
    (every,) = problems(auxiliary=["pos", "ner"])
    assert every.startswith("tasks: every task is auxiliary")
    assert problems(auxiliary=["ner"]) == []
    (adv,) = problems(auxiliary=["ner"], sharing="adversarial")
    assert adv.startswith("training.sharing: adversarial")
    (own,) = problems(auxiliary=["ner"], sharing="multi_encoder", sharing_params={"task_encoders": ["ner"]})
    assert own.startswith("training.sharing_params.task_encoders: auxiliary task(s) ['ner']")
    (tuned,) = problems(["pos", "ner", "chunk"], ["chunk"], schedule="mtdnn",
                        schedule_params={"finetune_tasks": ["pos", "chunk"]})
    assert tuned.startswith("training.schedule_params.finetune_tasks: ['chunk'] auxiliary")


def test_mtdnn_selects_the_multitask_stage_per_task_and_never_fine_tunes_an_auxiliary_task():
    from training.launch.schedule import MtdnnSchedule

    training = TrainingConfig(steps=90, eval_every=10, schedule="mtdnn")
    stages = MtdnnSchedule.plan(training, ["pos", "chunk", "ner"], ["chunk"])
    assert [s.name for s in stages] == ["multitask", "finetune-pos", "finetune-ner"]
    assert stages[0].tasks == ["pos", "chunk", "ner"] and stages[0].training.selection == "per_task"
    assert stages[1].training.steps == 45 and stages[1].training.eval_every == 10
    mean = MtdnnSchedule.plan(training.model_copy(update={"selection": "mean"}), ["pos", "ner"], [])
    assert mean[0].training.selection == "mean"


def test_mtdnn_fine_tunes_the_tasks_named_at_their_own_learning_rate():
    from training.launch.schedule import MtdnnSchedule

    training = TrainingConfig(steps=90, learning_rate=1e-4, schedule="mtdnn",
                              schedule_params={"finetune_learning_rates": {"rte": 3e-5}})
    stages = MtdnnSchedule.plan(training, ["pos", "rte", "snli"], ["snli"])
    assert {s.name: s.training.learning_rate for s in stages} == {
        "multitask": 1e-4, "finetune-pos": 1e-4, "finetune-rte": 3e-5}
    assert problems(["pos", "rte", "snli"], ["snli"], schedule="mtdnn",
                    schedule_params={"finetune_learning_rates": {"rte": 3e-5}}) == []
    (aux,) = problems(["pos", "rte", "snli"], ["snli"], schedule="mtdnn",
                      schedule_params={"finetune_learning_rates": {"snli": 3e-5}})
    assert aux.startswith("training.schedule_params.finetune_learning_rates: ['snli'] not fine-tuned")
    (untuned,) = problems(["pos", "rte"], schedule="mtdnn",
                          schedule_params={"finetune_tasks": ["rte"], "finetune_learning_rates": {"pos": 3e-5}})
    assert "['pos'] not fine-tuned (fine-tuned tasks: ['rte'])" in untuned
    (negative,) = problems(["pos", "rte"], schedule="mtdnn", schedule_params={"finetune_learning_rates": {"rte": 0}})
    assert negative.startswith("training.schedule_params.finetune_learning_rates.rte: Input should be greater than 0")
    # the multi-task stage's own rate; the fine-tuning stages keep training.learning_rate
    training = training.model_copy(update={"schedule_params": {"multitask_learning_rate": 5e-5,
                                                               "finetune_learning_rates": {"rte": 3e-5}}})
    assert {s.name: s.training.learning_rate for s in MtdnnSchedule.plan(training, ["pos", "rte", "snli"], ["snli"])} == {
        "multitask": 5e-5, "finetune-pos": 1e-4, "finetune-rte": 3e-5}
    (zero,) = problems(["pos", "rte"], schedule="mtdnn", schedule_params={"multitask_learning_rate": 0})
    assert zero.startswith("training.schedule_params.multitask_learning_rate: Input should be greater than 0")


def test_mtdnn_fine_tunes_the_tasks_named_for_their_own_number_of_steps():
    from training.launch.schedule import MtdnnSchedule

    training = TrainingConfig(steps=90, warmup_steps=30, checkpoint_every=40, schedule="mtdnn",
                              schedule_params={"finetune_steps": 20, "finetune_task_steps": {"deps": 60}})
    stages = {s.name: s.training for s in MtdnnSchedule.plan(training, ["pos", "deps", "snli"], ["snli"])}
    assert {n: t.steps for n, t in stages.items()} == {"multitask": 90, "finetune-pos": 20, "finetune-deps": 60}
    # warm-up and checkpoints follow each stage's own length
    assert (stages["finetune-pos"].warmup_steps, stages["finetune-deps"].warmup_steps) == (2, 6)
    assert (stages["finetune-pos"].checkpoint_every, stages["finetune-deps"].checkpoint_every) == (20, 40)
    assert problems(["pos", "deps"], schedule="mtdnn", schedule_params={"finetune_task_steps": {"deps": 60}}) == []
    (untuned,) = problems(["pos", "deps", "snli"], ["snli"], schedule="mtdnn",
                          schedule_params={"finetune_task_steps": {"snli": 60}})
    assert untuned.startswith("training.schedule_params.finetune_task_steps: ['snli'] not fine-tuned")
    (zero,) = problems(["pos", "deps"], schedule="mtdnn", schedule_params={"finetune_task_steps": {"deps": 0}})
    assert zero.startswith("training.schedule_params.finetune_task_steps.deps: Input should be greater than 0")


def test_the_mtdnn_assembly_keeps_fine_tuning_only_where_it_scored_at_least_the_multitask_stage():
    from training.launch.schedule import assembled_selection, kept_finetuned

    def card(**scores):
        return {"selection": {"mode": "per_task", "tasks": {t: {"step": 10, "metric": "accuracy", "score": v}
                                                           for t, v in scores.items()}}}

    base = card(pos=0.9, ner=0.8, rte=0.6)
    tuned = {"pos": card(pos=0.91), "ner": card(ner=0.8), "rte": card(rte=0.58)}
    assert kept_finetuned(base, tuned) == ["ner", "pos"]  # a tie goes to the fine-tuned weights
    assert kept_finetuned({}, tuned) == ["ner", "pos", "rte"]  # no evaluation: every stage is kept
    chosen = assembled_selection(base["selection"], tuned, ["ner", "pos"])["tasks"]
    assert {t: (c["stage"], c["score"]) for t, c in chosen.items()} == {
        "pos": ("finetune-pos", 0.91), "ner": ("finetune-ner", 0.8), "rte": ("multitask", 0.6)}
    assert chosen["rte"]["finetune_score"] == 0.58 and "finetune_score" not in chosen["pos"]
    # without the fallback every fine-tuned task keeps its own weights; the card keeps the
    # multi-task score each was below
    assert kept_finetuned(base, tuned, fallback=False) == ["ner", "pos", "rte"]
    chosen = assembled_selection(base["selection"], tuned, ["ner", "pos", "rte"])["tasks"]
    assert {t: (c["stage"], c["score"]) for t, c in chosen.items()} == {
        "pos": ("finetune-pos", 0.91), "ner": ("finetune-ner", 0.8), "rte": ("finetune-rte", 0.58)}
    assert chosen["rte"]["multitask_score"] == 0.6 and "multitask_score" not in chosen["ner"]


def test_the_mtdnn_assembly_compares_scores_only_on_the_same_dev_sample():
    from training.launch.schedule import sample_mismatches

    def card(**samples):
        return {"selection": {"tasks": {}, "dev_samples": samples}}

    drawn, whole = {"examples": 400, "seed": 42}, {"examples": 250, "seed": None}
    base = card(pos=drawn, rte=whole)
    assert sample_mismatches(base, {"pos": card(pos=drawn), "rte": card(rte=whole)}) == []
    (problem,) = sample_mismatches(base, {"pos": card(pos={"examples": 400, "seed": 43}), "rte": card(rte=whole)})
    assert problem.startswith("stage finetune-pos chose its weights on another dev sample of pos (400 examples drawn "
                              "with seed 43) than stage multitask (400 examples drawn with seed 42)")
    (problem,) = sample_mismatches(card(rte={"examples": 200, "seed": 42}), {"rte": card(rte=whole)})
    assert "(the whole split, 250 examples) than stage multitask (200 examples drawn with seed 42)" in problem
    # cards written before samples were recorded are not checked
    assert sample_mismatches({"selection": {"tasks": {}}}, {"pos": card(pos=drawn)}) == []
    assert sample_mismatches(base, {"pos": {"selection": {"tasks": {}}}}) == []


def test_a_fine_tuning_stage_starts_from_its_tasks_own_encoder_copy():
    from training.model.sharing.multi_encoder import own_encoder_entries, task_view

    hard = {"sharing.encoder.w": torch.zeros(2), "heads.pos.w": torch.ones(1), "heads.rte.w": torch.ones(1)}
    own = own_encoder_entries("rte", {"sharing.encoder.w": torch.full((2,), 7.0), "heads.rte.w": torch.ones(1)})
    multi = {**hard, **own}
    rte = task_view("rte", multi)
    assert set(rte) == set(hard) and torch.equal(rte["sharing.encoder.w"], torch.full((2,), 7.0))
    pos = task_view("pos", multi)
    assert set(pos) == set(hard) and torch.equal(pos["sharing.encoder.w"], torch.zeros(2))
    assert task_view("pos", hard) == hard


def test_an_auxiliary_task_reaches_its_spec_and_redoes_no_data_step(write):
    from data_prep.config import TaskDataConfig
    from data_prep.stage import ingest_key
    from training.task_spec import exported, spec_for

    train = write("train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    dev = write("dev.tsv", "sentence\tlabel\nfine\t1\n")
    cfg = TaskDataConfig(name="sst2", type="sequence_classification", format="tsv", train=str(train), dev=str(dev))
    helper = cfg.model_copy(update={"auxiliary": True})
    assert ingest_key(cfg, None, None, None) == ingest_key(helper, None, None, None)
    spec = spec_for(helper, ["0", "1"])
    assert spec.auxiliary and exported([spec, spec_for(cfg, ["0", "1"])]) == [spec_for(cfg, ["0", "1"])]


@pytest.fixture(scope="module")
def world_of_one():
    from training.launch.launcher import single_process_world

    with single_process_world():
        yield


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_an_earlier_steps_weights_come_back_from_its_pinned_checkpoint(world_of_one, tiny_encoder, tmp_path,
                                                                      zero_stage):
    """Steps 1-3 checkpointed with keep 1 and step 1 pinned: steps 1 and 3 stay, and each one's
    weights read back are what the evaluation saw at that step (under ZeRO-3 a copy gathered from
    the partitions, refreshed at every call)."""
    from training.model.multitask import build_model, build_model_skeleton
    from training.trainer.checkpointer import Checkpointer
    from training.trainer.engine import Engine
    from training.trainer.step import train_step
    from training.trainer.weighting import WEIGHTINGS

    tasks = TASKS[:2]
    torch.manual_seed(0)
    engine = Engine(build_model(str(tiny_encoder), tasks, "hard", 0.0), DeepSpeedConfig(zero_stage=zero_stage),
                    TrainingConfig(steps=3, micro_batch_size=2, warmup_steps=1, learning_rate=0.05, processes=1))
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    checkpointer = Checkpointer(engine, store, keep=1, states={}, rank_states={}, pinned=lambda: {1})
    skeleton = lambda: build_model_skeleton(tiny_encoder, tasks, "hard", 0.0)  # noqa: E731
    seen = {}
    for step in (1, 2, 3):
        engine.train()
        labels = torch.zeros(2, 6, dtype=torch.long)
        train_step(engine, WEIGHTINGS["equal"](["ner", "pos"]), {"pos": {**batch(), "labels": labels}})
        rng = torch.get_rng_state()
        seen[step] = {k: v.detach().clone().float() for k, v in engine.inference_model(skeleton).state_dict().items()}
        assert torch.equal(torch.get_rng_state(), rng), "evaluating changed the dropout draws of training"
        checkpointer.save(step)
    assert store.complete_tags() == [tag_for(1), tag_for(3)]
    assert not torch.equal(seen[1]["sharing.encoder.embeddings.word_embeddings.weight"],
                           seen[3]["sharing.encoder.embeddings.word_embeddings.weight"])
    for step in (1, 3):
        weights = engine.checkpoint_weights(store, tag_for(step))
        for key, value in seen[step].items():
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0)


def test_the_card_names_the_selection_mode():
    """The model card says how its steps were chosen (the mode), beside the steps themselves."""
    for mode in ("per_task", "mean"):
        selection = Selection(PRIMARY, mode)
        selection.update(2, scores(0.5, 0.3))
        assert selection.card()["mode"] == mode
