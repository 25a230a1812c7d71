"""The engine's own step machinery, in this process with a world of one: gradient clipping folded
into the fused AdamW at ZeRO-0, and ZeRO-3's master weights sharing the parameter partition.
Each is checked against what DeepSpeed computes without it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training.trainer import engine as engine_module
from training.config import DeepSpeedConfig, TrainingConfig
from training.trainer.deepspeed_fixes import clip_gradients
from training.trainer.engine import Engine, adamw, deepspeed_config, param_groups
from training.trainer.step import train_step
from training.trainer.weighting import WEIGHTINGS
from training.launch.launcher import single_process_world
from training.model.multitask import build_model
from training.task_spec import TaskSpec

SPECS = [TaskSpec(name="pos", type="token_classification", labels=[f"t{i}" for i in range(5)]),
         TaskSpec(name="cls", type="sequence_classification", labels=["a", "b", "c"])]
EQUAL = WEIGHTINGS["equal"]([s.name for s in SPECS])
TRAIN = TrainingConfig(steps=6, micro_batch_size=4, warmup_steps=1, learning_rate=5e-3, processes=1,
                       checkpoint_every=10**6)


@pytest.fixture(scope="module")
def world_of_one():
    with single_process_world():
        yield


def batches(steps: int, vocab: int = 1000) -> list[tuple[str, dict[str, torch.Tensor]]]:
    rng = torch.Generator().manual_seed(1)
    out = []
    for step in range(steps):
        batch = {"input_ids": torch.randint(5, vocab, (4, 12), generator=rng),
                 "attention_mask": torch.ones(4, 12, dtype=torch.long)}
        if step % 2 == 0:
            out.append(("pos", {**batch, "labels": torch.randint(0, 5, (4, 12), generator=rng)}))
        else:
            out.append(("cls", {**batch, "labels": torch.randint(0, 3, (4,), generator=rng)}))
    return out


def test_clipping_folded_into_the_fused_adamw_step_equals_clipping_then_stepping():
    torch.manual_seed(0)
    reference, folded = nn.Linear(16, 8), nn.Linear(16, 8)
    folded.load_state_dict(reference.state_dict())
    opt_ref, opt_fold = adamw(list(reference.parameters()), 0.1), adamw(list(folded.parameters()), 0.1)
    assert opt_fold.defaults["fused"]
    for scale in (10.0, 0.01):  # the first step clips, the second does not
        x = torch.randn(32, 16)
        for model in (reference, folded):
            (model(x).pow(2).sum() * scale).backward()
        norm = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5)
        opt_ref.step()
        assert float(clip_gradients(list(folded.parameters()), 0.5, opt_fold)) == pytest.approx(float(norm), rel=1e-6)
        opt_fold.step()
        opt_fold.grad_scale = None
        for opt in (opt_ref, opt_fold):
            opt.zero_grad(set_to_none=True)
        for a, b in zip(reference.parameters(), folded.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_clipping_in_place_scales_only_above_the_limit():
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(2))]
    params[0].grad, params[1].grad = torch.full((3,), 2.0), torch.full((4,), 2.0)  # the third has none
    norm = float(clip_gradients(params, 1.0))
    assert norm == pytest.approx(28 ** 0.5, rel=1e-6)  # 7 gradients of 2
    total = torch.cat([params[0].grad, params[1].grad]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-5)
    params[0].grad, params[1].grad = torch.full((3,), 0.1), torch.full((4,), 0.1)
    clip_gradients(params, 1.0)
    assert torch.equal(params[0].grad, torch.full((3,), 0.1))  # below the limit: untouched
    assert float(clip_gradients([nn.Parameter(torch.zeros(2))], 1.0)) == 0.0


def micro_step(engine: Engine):
    """The training step as the worker takes it, on one sampled task's micro-batch."""
    return lambda task, batch: float(train_step(engine, EQUAL, {task: batch})[task])


def losses_of(step) -> list[float]:
    torch.manual_seed(7)  # the same dropout draws in every arm
    return [step(task, batch) for task, batch in batches(TRAIN.steps)]


@pytest.mark.parametrize("clip", [0.05, 0.0], ids=["clipping", "no-clipping"])
def test_zero0_engine_step_matches_deepspeeds_own_clipping(world_of_one, tiny_encoder, clip):
    import deepspeed

    ds = DeepSpeedConfig(zero_stage=0, gradient_clipping=clip)
    torch.manual_seed(0)
    ours = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), ds, TRAIN)
    assert ours.clip == clip and ours.fused_optimizer is not None
    ours.train()
    got = losses_of(lambda t, b: micro_step(ours)(t, b))

    # DeepSpeed clipping in its engine, with torch's default (unfused) AdamW
    torch.manual_seed(0)
    model = build_model(str(tiny_encoder), SPECS, "hard", 0.1)
    config = deepspeed_config(ds, TRAIN, sum(p.numel() for p in model.parameters()))
    assert config["gradient_clipping"] == clip
    groups = param_groups(model, TRAIN.weight_decay)
    theirs, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=config,
                                           optimizer=torch.optim.AdamW(groups, lr=TRAIN.learning_rate))
    theirs.enable_backward_allreduce = False
    theirs.train()

    def their_step(task: str, batch: dict[str, torch.Tensor]) -> float:
        loss = theirs(task, **batch).loss
        theirs.backward(loss)
        theirs.step()
        return float(loss.detach())

    expected = losses_of(their_step)
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)
    for a, b in zip(ours.engine.module.parameters(), theirs.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def zero3_losses(tiny_encoder, precision: str = "fp32") -> tuple[Engine, list[float]]:
    torch.manual_seed(0)
    engine = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1),
                    DeepSpeedConfig(zero_stage=3, precision=precision), TRAIN)
    engine.train()
    return engine, losses_of(lambda t, b: micro_step(engine)(t, b))


def test_zero3_fp32_master_weights_are_the_parameter_partition(world_of_one, tiny_encoder, monkeypatch):
    shared, losses = zero3_losses(tiny_encoder)
    optimizer = shared.engine.optimizer
    partitions = optimizer.fp16_partitioned_groups_flat
    assert shared.master_bytes_shared == sum(p.numel() * 4 for p in partitions) > 0
    for partition, master in zip(partitions, optimizer.fp32_partitioned_groups_flat):
        assert master.data_ptr() == partition.data_ptr()  # one copy, still the optimizer's tensor
        assert master in optimizer.optimizer.state
    # without the sharing, DeepSpeed keeps two copies and computes exactly the same steps
    monkeypatch.setattr(engine_module, "share_zero3_master_weights", lambda optimizer: 0)
    separate, expected = zero3_losses(tiny_encoder)
    assert separate.master_bytes_shared == 0
    assert all(m.data_ptr() != p.data_ptr() for p, m in zip(separate.engine.optimizer.fp16_partitioned_groups_flat,
                                                             separate.engine.optimizer.fp32_partitioned_groups_flat))
    assert losses == expected


def test_zero3_bf16_keeps_its_fp32_master_copy(world_of_one, tiny_encoder):
    engine, losses = zero3_losses(tiny_encoder, "bf16")
    assert engine.master_bytes_shared == 0
    assert all(torch.isfinite(torch.tensor(losses)))


def test_resuming_a_checkpoint_of_an_unfused_adamw_keeps_clipping(world_of_one, tiny_encoder, tmp_path, monkeypatch):
    """A run checkpointed by an engine whose AdamW was not fused (another device, an older
    version) resumes unfused: the optimizer's groups come from the checkpoint, and the clipping
    must not hand a gradient scale to an optimizer that takes none."""
    from training.trainer.checkpoints import CheckpointStore

    store = CheckpointStore(str(tmp_path / "checkpoints"))
    steps = batches(4)
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "adamw", lambda groups, lr: torch.optim.AdamW(groups, lr=lr))
        torch.manual_seed(0)
        first = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), DeepSpeedConfig(zero_stage=0), TRAIN)
    assert first.fused_optimizer is None and first.clip == 1.0
    for task, batch in steps[:2]:
        micro_step(first)(task, batch)
    first.save(store, 2, {"step": 2}, {}, keep=2)

    resumed = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), DeepSpeedConfig(zero_stage=0), TRAIN)
    assert resumed.fused_optimizer is not None
    assert resumed.load_latest(store)[0]["step"] == 2
    assert resumed.fused_optimizer is None and resumed.describe()["clipping_in"] == "engine"
    for task, batch in steps[2:]:
        assert torch.isfinite(torch.tensor(micro_step(resumed)(task, batch)))


def test_bf16_autocast_trains_fp32_master_weights_with_one_fused_step(world_of_one, tiny_encoder):
    """One process, bf16: the forward runs under autocast (matmuls in bf16), the parameters stay
    fp32 and are their own master copy, and the fused AdamW steps them with the engine's clipping;
    the losses follow fp32 training closely."""
    torch.manual_seed(0)
    fp32 = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), DeepSpeedConfig(), TRAIN)
    fp32.train()
    expected = losses_of(micro_step(fp32))
    torch.manual_seed(0)
    bf16 = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), DeepSpeedConfig(precision="bf16"), TRAIN)
    described = bf16.describe()
    assert (described["zero_stage"], described["mixed_precision"]) == (0, "autocast")
    assert described["optimizer"] == "AdamW (fused)" and described["clipping_in"] == "fused optimizer step"
    assert bf16.engine.optimizer is bf16.fused_optimizer  # no DeepSpeed bf16 wrapper around it
    matmul_dtypes: list[torch.dtype] = []
    query = bf16.engine.module.sharing.encoder.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda module, args, out: matmul_dtypes.append(out.dtype))
    bf16.train()
    got = losses_of(micro_step(bf16))
    assert set(matmul_dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in bf16.engine.module.parameters())
    assert got == pytest.approx(expected, rel=2e-2)
    assert got != expected  # bf16 arithmetic did run


def test_the_engine_says_which_stage_it_chose_and_why(world_of_one, tiny_encoder):
    auto = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), DeepSpeedConfig(), TRAIN)
    described = auto.describe()
    assert described["zero_stage"] == 0 and described["zero_stage_reason"].startswith("auto: one process")
    assert described["attention"] == "sdpa"
    pinned = Engine(build_model(str(tiny_encoder), SPECS, "hard", 0.1), DeepSpeedConfig(zero_stage=2), TRAIN)
    assert (pinned.describe()["zero_stage"], pinned.describe()["zero_stage_reason"]) == (
        2, "pinned by deepspeed.zero_stage")


def test_compile_is_in_place_so_checkpoint_keys_stay(world_of_one, tiny_encoder):
    model = build_model(str(tiny_encoder), SPECS, "hard", 0.1)
    keys = sorted(model.state_dict())
    engine = Engine(model, DeepSpeedConfig(), TRAIN.model_copy(update={"compile": True}))
    assert engine.engine.is_compiled and engine.describe()["compile"] is True
    assert sorted(engine.engine.module.state_dict()) == keys


def test_the_attention_implementation_can_be_chosen(tiny_encoder):
    assert build_model(str(tiny_encoder), SPECS, "hard", 0.1).encoder_config._attn_implementation == "sdpa"
    eager = build_model(str(tiny_encoder), SPECS, "hard", 0.1, attn_implementation="eager")
    assert eager.encoder_config._attn_implementation == "eager"
