"""Each sharing strategy as a plain module on the tiny encoder: training-mode forward, one-pass
inference, what it exposes for logging, and an export that loads back to the same outputs."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from training.model.export import load_export, write_export
from training.model.multitask import MultiTaskModel
from training.model.sharing import SHARING
from training.task_spec import TaskSpec

TASKS = [TaskSpec(name="pos", type="token_classification", labels=["A", "B", "C"]),
         TaskSpec(name="sst2", type="sequence_classification", labels=["0", "1"])]
PARAMS = {"hard": {}, "soft": {"bottleneck": 4, "l2_pull": 0.1}, "attention": {},
          "adversarial": {"orthogonality_weight": 0.1}, "multi_encoder": {"task_encoders": ["sst2"]}}


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def model_for(tiny_encoder, name: str) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(AutoModel.from_pretrained(tiny_encoder), TASKS, name, 0.0, PARAMS[name])


@pytest.mark.parametrize("name", sorted(SHARING))
def test_strategy_trains_and_exports(tiny_encoder, tmp_path, name):
    model = model_for(tiny_encoder, name)
    model.train()
    loss, logits, raw, handle = model("pos", **batch(), labels=torch.zeros(3, 7, dtype=torch.long))
    assert raw.requires_grad is False and handle.loss is not loss and torch.equal(handle.loss, loss)
    assert logits.shape == (3, 7, 3) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None for p in model.sharing.probe_parameters())
    model.eval()
    reference = model.predict_logits(["pos", "sst2"], **batch(1))
    assert reference["sst2"].shape == (3, 2)
    write_export(tmp_path / "m", model.state_dict(), model, AutoTokenizer.from_pretrained(tiny_encoder),
                 {"sharing": name, "sharing_params": PARAMS[name], "dropout": 0.0, "max_length": 16})
    loaded, _, card = load_export(tmp_path / "m")
    assert card["sharing"] == name
    again = loaded.predict_logits(["pos", "sst2"], **batch(1))
    for task in reference:
        torch.testing.assert_close(again[task], reference[task])


def test_soft_adapters_are_per_task_and_start_as_identity(tiny_encoder):
    plain = AutoModel.from_pretrained(tiny_encoder).eval()
    model = model_for(tiny_encoder, "soft").eval()
    b = batch()
    expected = plain(**b).last_hidden_state
    torch.testing.assert_close(model.sharing("pos", **b)[0], expected)  # zero-initialised up-projection
    next(iter(model.sharing.adapted)).adapters["pos"].up.bias.data.copy_(torch.linspace(-1, 1, 32))  # not constant: LayerNorm would remove that
    assert not torch.allclose(model.sharing("pos", **b)[0], expected)
    torch.testing.assert_close(model.sharing("sst2", **b)[0], expected)


def test_soft_freeze_shared_trains_only_adapters_and_norms(tiny_encoder):
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_encoder), TASKS, "soft", 0.0, {"freeze_shared": True})
    trainable = {n for n, p in model.sharing.named_parameters() if p.requires_grad}
    assert trainable and all("adapters" in n or "LayerNorm" in n for n in trainable)
    assert not model.sharing.encoder.embeddings.word_embeddings.weight.requires_grad


def test_attention_layer_weights_are_a_distribution_per_task(tiny_encoder):
    model = model_for(tiny_encoder, "attention")
    with torch.no_grad():
        model.sharing.mix["pos"].logits.copy_(torch.tensor([0.0, 0.0, 5.0]))
    weights = model.sharing.layer_weights()
    assert set(weights) == {"pos", "sst2"} and len(weights["pos"]) == 3
    assert sum(weights["pos"]) == pytest.approx(1.0) and weights["pos"][2] > 0.9
    assert weights["sst2"] == pytest.approx([1 / 3] * 3)
    assert model.sharing.metrics()["layer_weight.pos.2"] > 0.9


def test_adversarial_reverses_gradient_and_reports_accuracy(tiny_encoder):
    model = model_for(tiny_encoder, "adversarial")
    model.train()
    _, aux = model.sharing("sst2", **batch())
    assert aux is not None and aux.item() > 0
    disc = model.sharing.discriminator[0].weight
    aux.backward()
    # the discriminator descends its loss while the encoder receives the reversed gradient
    assert disc.grad is not None and disc.grad.abs().sum() > 0
    metrics = model.sharing.metrics()
    assert 0.0 <= metrics["discriminator_accuracy"] <= 1.0 and metrics["discriminator_chance"] == 0.5
    assert model.sharing.metrics() == {}  # counts reset after each report


def test_gradient_reversal_flips_sign():
    from training.model.sharing.common import GradReverse

    x = torch.ones(3, requires_grad=True)
    (GradReverse.apply(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_unknown_sharing_params_fail_validation():
    problems = SHARING["soft"].config_problems({"botleneck": 3}, ["pos"], 2, "fp32")
    assert problems and "botleneck" in problems[0]
    zero3 = SHARING["soft"].config_problems({"l2_pull": 0.1}, ["pos"], 3, "fp32")
    assert zero3 and "ZeRO-3" in zero3[0]
    assert SHARING["hard"].config_problems({}, ["pos"], 3, "fp32") == []


def test_config_validation_names_incompatible_combinations(tiny_encoder, data_dir, tmp_path):
    from flows.config import parse_config, semantic_problems
    from helpers import tiny_config

    raw = tiny_config(tiny_encoder, tmp_path, data_dir, sharing="soft", sharing_params={"l2_pull": 0.1},
                      weighting="pcgrad", weighting_params={"all_tasks_step": False})
    raw["deepspeed"] = {"zero_stage": 3, "precision": "fp16"}
    problems = semantic_problems(parse_config(raw))
    assert any(p.startswith("training.sharing_params.l2_pull") and "ZeRO-3" in p for p in problems)
    assert any(p.startswith("training.weighting_params.all_tasks_step") for p in problems)
    assert any(p.startswith("deepspeed.precision") and "fp16" in p for p in problems)
    raw["training"].update(sharing_params={}, weighting_params={})
    raw["deepspeed"] = {"zero_stage": 2}
    assert semantic_problems(parse_config(raw)) == []


def test_an_export_of_the_retired_transfer_strategy_still_loads(tiny_encoder, tmp_path):
    """Models registered while staged training was the `transfer` strategy have the multi_encoder shape."""
    model = model_for(tiny_encoder, "multi_encoder").eval()
    reference = model.predict_logits(["pos", "sst2"], **batch(1))
    write_export(tmp_path / "m", model.state_dict(), model, AutoTokenizer.from_pretrained(tiny_encoder),
                 {"sharing": "transfer", "sharing_params": {"finetuned": ["sst2"]}, "dropout": 0.0, "max_length": 16})
    loaded, _, _ = load_export(tmp_path / "m")
    assert list(loaded.sharing.task_encoders) == ["sst2"]
    again = loaded.predict_logits(["pos", "sst2"], **batch(1))
    for task in reference:
        torch.testing.assert_close(again[task], reference[task])
