"""Each sharing strategy and each loss weighting acts, and acts in the direction it stands for, on
the code paths training takes: the real `Engine`'s step functions (DeepSpeed, a world of one in
this process) and the model's forward. The weightings' arithmetic on hand-made numbers is in
test_weighting.py; this file checks what they do to the update.

Most checks read gradients, not weights: the engine accumulates over ACCUMULATE micro-steps, so
inside that window the weights stay put and each micro-step adds its gradient to `param.grad`.
That contribution is compared with each task's own gradient at the same weights (the model's
forward, differentiated here), scaled by the coefficient the step was meant to apply and by
DeepSpeed's 1/ACCUMULATE. Encoders and heads run without dropout, so both sides are exact.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel

from training.config import DeepSpeedConfig, TrainingConfig
from training.trainer.engine import Engine
from training.launch.launcher import single_process_world
from training.model.multitask import IGNORE, MultiTaskModel
from training.model.sharing import adversarial
from training.task_spec import TaskSpec
from training.trainer.weighting import WEIGHTINGS
from training.trainer.step import train_step
from training.trainer.weighting.base import Weighting

SPECS = [TaskSpec(name="pos", type="token_classification", labels=[f"t{i}" for i in range(5)]),
         TaskSpec(name="cls", type="sequence_classification", labels=["a", "b", "c"])]
TASKS = ["cls", "pos"]  # a weighting's order, as the worker builds it (sorted)
ACCUMULATE = 8
TRAIN = TrainingConfig(steps=20, micro_batch_size=4, warmup_steps=1, learning_rate=1e-2, weight_decay=0.0,
                       processes=1, checkpoint_every=10**6)
Grads = dict[str, torch.Tensor]


def micro(engine: Engine, task: str, batch: dict[str, torch.Tensor], weight: float) -> float:
    """The training step on one sampled task's micro-batch, that task weighted `weight` (a static
    weighting, as a config would set it)."""
    weighting = WEIGHTINGS["static"](list(engine.engine.module.tasks), weights={task: weight})
    return float(train_step(engine, weighting, {task: batch})[task])


def sampled(engine: Engine, weighting: Weighting, task: str, batch: dict[str, torch.Tensor]) -> float:
    """The training step on one sampled task's micro-batch, weighted by `weighting`."""
    return float(train_step(engine, weighting, {task: batch})[task])


def step_all(engine: Engine, batches: dict[str, dict[str, torch.Tensor]], weighting: Weighting) -> dict[str, float]:
    """The training step over every task's micro-batch; each task's loss, averaged over processes."""
    return {task: float(loss) for task, loss in train_step(engine, weighting, batches).items()}


@pytest.fixture(scope="module")
def world_of_one():
    with single_process_world():
        yield


def batch_for(task: str, seed: int, labels: int | None = None) -> dict[str, torch.Tensor]:
    """Four padded rows of random tokens; token labels are IGNORE on padding, as data_prep writes them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    mask[2, 7:] = 0
    if task == "pos":
        gold = torch.randint(0, 5, (4, 12), generator=g).masked_fill(mask == 0, IGNORE)
    else:
        gold = torch.randint(0, labels or 3, (4,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": gold}


def batches(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    return {t: batch_for(t, seed + i) for i, t in enumerate(TASKS)}


BATCH = batches(1)


def new_model(encoder_dir: Path, sharing: str = "hard", params: dict[str, Any] | None = None,
              weighting: Weighting | None = None, specs: list[TaskSpec] = SPECS) -> MultiTaskModel:
    torch.manual_seed(0)  # the same encoder, heads and strategy weights in every arm of a comparison
    encoder = AutoModel.from_pretrained(str(encoder_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                        add_pooling_layer=False)
    return MultiTaskModel(encoder, specs, sharing, 0.0, params, None if weighting is None else weighting.module())


def new_engine(model: MultiTaskModel, accumulate: int = ACCUMULATE) -> Engine:
    engine = Engine(model, DeepSpeedConfig(zero_stage=0, gradient_accumulation_steps=accumulate), TRAIN)
    engine.train()
    return engine


def accumulated(model: MultiTaskModel) -> Grads:
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def contribution(model: MultiTaskModel, step: Callable[[], Any]) -> Grads:
    """What one engine micro-step adds to the accumulated gradients."""
    before = accumulated(model)
    step()
    return {n: g - before[n] for n, g in accumulated(model).items()}


def task_gradient(model: MultiTaskModel, task: str, batch: dict[str, torch.Tensor]) -> Grads:
    """d(task loss, strategy loss included)/d(weights) by the model's forward, leaving `.grad` alone."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = model(task, **batch).loss
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, materialize_grads=True)
    return {n: g for (n, _), g in zip(named, grads)}


def combination(per_task: dict[str, Grads], coefficients: dict[str, float]) -> Grads:
    """sum_t c_t grad_t, as the engine's backward of sum_t c_t L_t / ACCUMULATE leaves it."""
    names = next(iter(per_task.values()))
    return {n: sum(coefficients[t] * g[n] for t, g in per_task.items()) / ACCUMULATE for n in names}


def assert_same(got: Grads, expected: Grads, names: list[str] | None = None) -> None:
    for name in names if names is not None else list(expected):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


def norm(grads: Grads, prefix: str) -> float:
    return float(sum(g.pow(2).sum() for n, g in grads.items() if n.startswith(prefix)) ** 0.5)


def flat(grads: Grads, names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].reshape(-1) for n in names])


def recorded(weighting: Weighting) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """The weighting, each call of its `combine` kept: (losses, probe gradients, coefficients)."""
    calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
    original = weighting.combine

    def combine(losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        coefficients = original(losses, grads)
        calls.append((losses.clone(), None if grads is None else grads.clone(), coefficients.clone()))
        return coefficients

    weighting.combine = combine  # type: ignore[method-assign]
    return calls


def snapshot(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def moved(start: dict[str, torch.Tensor], model: MultiTaskModel, prefix: str) -> bool:
    return any(not torch.equal(start[n], p) for n, p in model.named_parameters() if n.startswith(prefix))


# DeepSpeed's linear warm-up runs the first two optimizer steps at learning rate 0 (the scheduler's
# state before its first step, then warm-up step 0 of at least 2): weights move from the third on
STILL_STEPS = 2


def train_steps(model: MultiTaskModel, steps: list[str]) -> None:
    """Whole optimizer steps, one task each, after STILL_STEPS of the first task."""
    engine = new_engine(model, accumulate=1)
    for task in steps[:1] * STILL_STEPS + steps:
        micro(engine, task, BATCH[task], 1.0)


# -- loss weightings --------------------------------------------------------------------------

@pytest.mark.parametrize("all_tasks", [False, True], ids=["sampled-step", "all-task-step"])
def test_a_task_weighted_zero_by_static_leaves_its_head_unchanged(world_of_one, tiny_encoder, all_tasks):
    def heads_moved(weighting: Weighting) -> dict[str, bool]:
        model = new_model(tiny_encoder)
        engine = new_engine(model, accumulate=1)
        start = snapshot(model)
        for _ in range(STILL_STEPS + 1):
            if all_tasks:
                step_all(engine, BATCH, weighting)
            else:
                for task in weighting.tasks:
                    sampled(engine, weighting, task, BATCH[task])
        return {t: moved(start, model, f"heads.{t}.") for t in TASKS}

    assert heads_moved(WEIGHTINGS["equal"](TASKS, all_tasks_step=all_tasks)) == {"cls": True, "pos": True}
    static = WEIGHTINGS["static"](TASKS, weights={"cls": 0.0}, all_tasks_step=all_tasks)
    assert heads_moved(static) == {"cls": False, "pos": True}


@pytest.mark.parametrize("name,params,coefficients", [
    ("equal", {}, {"cls": 1.0, "pos": 1.0}),
    ("static", {"weights": {"cls": 0.25}}, {"cls": 0.25, "pos": 1.0}),
], ids=["equal", "static"])
def test_the_all_task_step_applies_each_tasks_weight_to_its_gradient(world_of_one, tiny_encoder, name, params,
                                                                     coefficients):
    weighting = WEIGHTINGS[name](TASKS, all_tasks_step=True, **params)
    model = new_model(tiny_encoder)
    engine = new_engine(model)
    expected = {t: task_gradient(model, t, BATCH[t]) for t in TASKS}
    losses = step_all(engine, BATCH, weighting)
    assert losses == pytest.approx({t: float(model(t, **BATCH[t])[0]) for t in TASKS}, rel=1e-5)
    got = contribution(model, lambda: step_all(engine, BATCH, weighting))
    assert_same(got, combination(expected, coefficients))


def test_the_sampled_step_scales_the_task_gradient_by_its_weight(world_of_one, tiny_encoder):
    model = new_model(tiny_encoder)
    engine = new_engine(model)
    expected = task_gradient(model, "pos", BATCH["pos"])
    got = contribution(model, lambda: micro(engine, "pos", BATCH["pos"], 0.3))
    assert_same(got, combination({"pos": expected}, {"pos": 0.3}))
    assert norm(got, "heads.cls.") == 0.0


def test_dwa_gives_the_task_whose_loss_fell_less_the_larger_share(world_of_one, tiny_encoder):
    weighting = WEIGHTINGS["dwa"](TASKS, period=1, temperature=0.05)
    calls = recorded(weighting)
    model = new_model(tiny_encoder)
    engine = new_engine(model)
    first = step_all(engine, batches(10), weighting)  # one period each: a loss point per task
    second = step_all(engine, batches(20), weighting)
    third = batches(30)
    expected = {t: task_gradient(model, t, third[t]) for t in TASKS}
    got = contribution(model, lambda: step_all(engine, third, weighting))
    applied = dict(zip(weighting.tasks, calls[-1][2].tolist()))
    ratio = {t: second[t] / first[t] for t in TASKS}
    slower, faster = sorted(TASKS, key=ratio.get, reverse=True)
    assert applied[slower] > applied[faster] + 0.1, (ratio, applied)
    assert sum(applied.values()) == pytest.approx(len(TASKS))
    assert_same(got, combination(expected, applied))


def probe_names(model: MultiTaskModel) -> list[str]:
    probe = {id(p) for p in model.sharing.probe_parameters()}
    return [n for n, p in model.named_parameters() if id(p) in probe]


def test_gradnorm_lowers_the_weight_of_the_task_with_the_larger_gradient(world_of_one, tiny_encoder):
    weighting = WEIGHTINGS["gradnorm"](TASKS, alpha=1.5, lr=0.1)
    calls = recorded(weighting)
    model = new_model(tiny_encoder)
    engine = new_engine(model)
    expected = {t: task_gradient(model, t, BATCH[t]) for t in TASKS}
    step_all(engine, BATCH, weighting)  # fixes L(0); weights start equal
    # the same batches at the same weights: every task at training rate 1, so only gradient sizes differ
    got = contribution(model, lambda: step_all(engine, BATCH, weighting))
    _, grads, coefficients = calls[-1]
    assert grads is not None
    probe = probe_names(model)
    for i, task in enumerate(weighting.tasks):  # the engine hands over each task's own probe gradient
        torch.testing.assert_close(grads[i], flat(expected[task], probe), rtol=1e-4, atol=1e-7)
    larger = weighting.tasks[int(grads.norm(dim=1).argmax())]
    smaller = next(t for t in TASKS if t != larger)
    applied = dict(zip(weighting.tasks, coefficients.tolist()))
    assert applied[larger] < 1.0 < applied[smaller] and sum(applied.values()) == pytest.approx(2.0)
    assert_same(got, combination(expected, applied))


CONFLICT = [TaskSpec(name="a", type="sequence_classification", labels=["0", "1"]),
            TaskSpec(name="b", type="sequence_classification", labels=["0", "1"])]


def test_pcgrad_removes_the_conflict_between_task_gradients_at_the_shared_probe(world_of_one, tiny_encoder):
    model = new_model(tiny_encoder, specs=CONFLICT)
    with torch.no_grad():  # b's head is a's with its logits negated: on the same batch the two pull apart
        model.heads["b"].load_state_dict(model.heads["a"].state_dict())
        model.heads["b"].out.weight.neg_()
        model.heads["b"].out.bias.neg_()
    batch = batch_for("cls", 5, labels=2)
    weighting = WEIGHTINGS["pcgrad"](["a", "b"], seed=3)
    calls = recorded(weighting)
    engine = new_engine(model)
    expected = {t: task_gradient(model, t, batch) for t in ("a", "b")}
    got = contribution(model, lambda: step_all(engine, {"a": batch, "b": batch}, weighting))
    probe = probe_names(model)
    g = {t: flat(expected[t], probe) for t in ("a", "b")}
    assert float(g["a"] @ g["b"]) < 0, "the construction must make the tasks conflict"
    equal = g["a"] + g["b"]
    assert min(float(equal @ g[t]) for t in g) < 0, "summed as they are, one task's loss would rise"
    applied = dict(zip(weighting.tasks, calls[-1][2].tolist()))
    assert all(c > 1.0 for c in applied.values()), applied  # each keeps what does not oppose the other
    assert_same(got, combination(expected, applied))
    update = flat(got, probe) * ACCUMULATE
    for task in g:  # the combined update no longer works against either task at the shared probe
        assert float(update @ g[task]) >= -1e-6 * float(update.norm() * g[task].norm())


@pytest.mark.parametrize("all_tasks", [False, True], ids=["sampled-step", "all-task-step"])
def test_uncertainty_scales_each_task_by_its_learned_precision(world_of_one, tiny_encoder, all_tasks):
    weighting = WEIGHTINGS["uncertainty"](TASKS, lr_scale=1.0, all_tasks_step=all_tasks)
    log_var = {"cls": 0.0, "pos": math.log(8.0)}
    with torch.no_grad():
        weighting.module().raw_log_var.copy_(torch.tensor([log_var[t] for t in weighting.tasks]))
    model = new_model(tiny_encoder, weighting=weighting)
    engine = new_engine(model)
    plain = new_model(tiny_encoder)  # the same weights, no learned loss weights
    expected = {t: task_gradient(plain, t, BATCH[t]) for t in TASKS}
    loss = {t: float(plain(t, **BATCH[t])[0]) for t in TASKS}

    def step() -> None:
        if all_tasks:
            step_all(engine, BATCH, weighting)
        else:
            for task in weighting.tasks:
                sampled(engine, weighting, task, BATCH[task])

    got = contribution(model, step)
    precision = {t: math.exp(-s) for t, s in log_var.items()}
    assert_same(got, combination(expected, precision), list(expected["pos"]))
    # d/ds [exp(-s) L + s/2] = 1/2 - exp(-s) L: s falls (the weight grows) while the weighted loss is
    # below 1/2, and rises while it is above: s heads for log(2 L)
    s_grad = got["loss_weighting.raw_log_var"] * ACCUMULATE
    for i, task in enumerate(weighting.tasks):
        assert float(s_grad[i]) == pytest.approx(0.5 - precision[task] * loss[task], rel=1e-4)
    assert precision["pos"] * loss["pos"] < 0.5 < precision["cls"] * loss["cls"]
    assert float(s_grad[weighting.tasks.index("pos")]) > 0 > float(s_grad[weighting.tasks.index("cls")])


def test_uncertainty_log_variances_are_trained_by_the_engine(world_of_one, tiny_encoder):
    weighting = WEIGHTINGS["uncertainty"](TASKS, lr_scale=1.0, all_tasks_step=True)
    with torch.no_grad():
        weighting.module().raw_log_var.copy_(torch.tensor([0.0 if t == "cls" else math.log(8.0) for t in TASKS]))
    model = new_model(tiny_encoder, weighting=weighting)
    engine = new_engine(model, accumulate=1)
    before = dict(zip(weighting.tasks, weighting.module().log_vars().tolist()))
    for _ in range(STILL_STEPS + 1):
        step_all(engine, BATCH, weighting)
    after = dict(zip(weighting.tasks, weighting.module().log_vars().tolist()))
    assert after["pos"] < before["pos"] and after["cls"] > before["cls"]
    assert weighting.weights()["pos"] > 1 / 8


# -- sharing strategies -----------------------------------------------------------------------

def test_hard_sharing_trains_one_encoder_that_every_task_reads(world_of_one, tiny_encoder):
    model = new_model(tiny_encoder, "hard")
    engine = new_engine(model)
    expected = task_gradient(model, "pos", BATCH["pos"])
    got = contribution(model, lambda: micro(engine, "pos", BATCH["pos"], 1.0))
    assert_same(got, combination({"pos": expected}, {"pos": 1.0}))
    encoder = [n for n in got if n.startswith("sharing.encoder.")]
    assert all(got[n].abs().sum() > 0 for n in encoder), [n for n in encoder if got[n].abs().sum() == 0]
    assert norm(got, "heads.cls.") == 0.0

    inputs = {k: v for k, v in BATCH["cls"].items() if k != "labels"}
    trained = new_model(tiny_encoder, "hard")
    trained.eval()
    before = {t: trained.sharing(t, **inputs)[0] for t in TASKS}
    torch.testing.assert_close(before["pos"], before["cls"])  # one encoder's states for every task
    trained.train()
    train_steps(trained, ["pos"])
    trained.eval()
    assert not torch.allclose(trained.sharing("cls", **inputs)[0], before["cls"]), \
        "steps on pos alone must move the encoder cls reads"


def adapter_names(grads: Grads, task: str) -> list[str]:
    return [n for n in grads if f".adapters.{task}." in n]


def test_soft_sharing_trains_only_the_active_tasks_adapters(world_of_one, tiny_encoder):
    model = new_model(tiny_encoder, "soft", {"bottleneck": 4})
    engine = new_engine(model)
    for task, other in (("pos", "cls"), ("cls", "pos")):
        expected = task_gradient(model, task, BATCH[task])
        got = contribution(model, lambda: micro(engine, task, BATCH[task], 1.0))
        assert_same(got, combination({task: expected}, {task: 1.0}))
        assert norm({n: got[n] for n in adapter_names(got, task)}, "") > 0
        assert norm({n: got[n] for n in adapter_names(got, other)}, "") == 0.0


def test_soft_sharing_pull_draws_each_tasks_adapters_toward_the_others(world_of_one, tiny_encoder):
    pull = 0.5
    grads, adapters = {}, {}
    for weight in (0.0, pull):
        model = new_model(tiny_encoder, "soft", {"bottleneck": 4, "l2_pull": weight})
        engine = new_engine(model)
        grads[weight] = contribution(model, lambda: micro(engine, "pos", BATCH["pos"], 1.0))
        adapters = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapters." in n}
    extra = {n: grads[pull][n] - grads[0.0][n] for n in grads[pull]}
    assert_same(extra, {n: torch.zeros_like(g) for n, g in extra.items() if ".adapters." not in n})
    own_names = adapter_names(extra, "pos")
    assert own_names
    # the pull is l2 * sum ||a_pos - mean(a_pos, a_cls)||^2: its gradient is l2 * (a_pos - a_cls) / 2
    # on pos's adapters and the opposite on cls's (two tasks), each / ACCUMULATE
    expected = {}
    for own in own_names:
        other = own.replace(".adapters.pos.", ".adapters.cls.")
        half_gap = (adapters[own] - adapters[other]) / 2
        expected[own] = pull * half_gap / ACCUMULATE
        expected[other] = -pull * half_gap / ACCUMULATE
    assert_same(extra, expected)
    gap = flat({n: adapters[n] - adapters[n.replace(".pos.", ".cls.")] for n in own_names}, own_names)
    descent = flat({n: extra[n] - extra[n.replace(".pos.", ".cls.")] for n in own_names}, own_names)
    assert float(gap @ descent) > 0, "a step against the pull's gradient must shrink the gap between tasks"


def test_attention_layer_weights_receive_gradients_per_task_and_part(world_of_one, tiny_encoder):
    model = new_model(tiny_encoder, "attention")
    engine = new_engine(model)
    for task, other in (("pos", "cls"), ("cls", "pos")):
        expected = task_gradient(model, task, BATCH[task])
        got = contribution(model, lambda: micro(engine, task, BATCH[task], 1.0))
        assert_same(got, combination({task: expected}, {task: 1.0}))
        assert got[f"sharing.mix.{task}.logits"].abs().sum() > 0 and got[f"sharing.mix.{task}.gamma"].abs().sum() > 0
        assert norm(got, f"sharing.mix.{other}.") == 0.0
    assert norm(got, "sharing.pool.cls.") > 0  # the sentence task pools with its own attention

    trained = new_model(tiny_encoder, "attention")
    train_steps(trained, ["pos", "cls"])
    weights = trained.sharing.layer_weights()
    uniform = torch.full((3,), 1 / 3)
    pos, cls = torch.tensor(weights["pos"]), torch.tensor(weights["cls"])
    assert (pos - uniform).abs().max() > 1e-3 and (cls - uniform).abs().max() > 1e-3
    assert (pos - cls).abs().max() > 1e-3, "each task learns its own mix of layers"


class NoReversal:
    """Gradient reversal taken out: the encoder would be trained to help the discriminator."""

    @staticmethod
    def apply(x: torch.Tensor, scale: float) -> torch.Tensor:
        return x


def test_adversarial_discriminator_gradient_reaches_the_encoder_reversed(world_of_one, tiny_encoder, monkeypatch):
    base = {"adversarial_weight": 0.5, "reversal_scale": 0.5, "orthogonality_weight": 0.0}

    def step(**params: float) -> Grads:
        model = new_model(tiny_encoder, "adversarial", {**base, **params})
        engine = new_engine(model)
        return contribution(model, lambda: micro(engine, "cls", BATCH["cls"], 1.0))

    task_only = step(adversarial_weight=0.0)
    reversed_ = step()
    no_scale = step(reversal_scale=0.0)
    with monkeypatch.context() as patch:
        patch.setattr(adversarial, "GradReverse", NoReversal)
        helping = step()
    encoder = [n for n in task_only if n.startswith("sharing.encoder.")]
    discriminator = [n for n in task_only if n.startswith("sharing.discriminator.")]
    from_disc = {n: reversed_[n] - task_only[n] for n in encoder}
    toward_disc = {n: helping[n] - task_only[n] for n in encoder}  # the discriminator's own direction
    assert norm(toward_disc, "") > 0
    assert_same(from_disc, {n: -base["reversal_scale"] * g for n, g in toward_disc.items()})
    assert float(flat(from_disc, encoder) @ flat(toward_disc, encoder)) < 0
    assert_same(no_scale, task_only, encoder)  # scale 0: the discriminator's loss stops at the reversal
    # the discriminator itself still descends its loss, whatever the reversal does to the encoder
    assert norm({n: reversed_[n] for n in discriminator}, "") > 0
    assert_same(reversed_, helping, discriminator)
    # each task's private extractor trains with its task only
    assert norm(task_only, "sharing.private.cls.") > 0 and norm(task_only, "sharing.private.pos.") == 0.0
