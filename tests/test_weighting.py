"""The mathematics of each loss weighting, on hand-made losses and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from training.trainer.weighting import WEIGHTINGS
from training.trainer.weighting.pcgrad import pcgrad_coefficients

TASKS = ["a", "b"]


def test_registry_and_defaults():
    assert sorted(WEIGHTINGS) == ["dwa", "equal", "gradnorm", "pcgrad", "static", "uncertainty"]
    assert WEIGHTINGS["equal"](TASKS).combine(torch.tensor([3.0, 1.0]), None).tolist() == [1.0, 1.0]
    assert WEIGHTINGS["equal"](TASKS).all_tasks_step is False
    assert WEIGHTINGS["pcgrad"](TASKS).all_tasks_step is True


def test_static_uses_configured_weights_and_validates_names():
    w = WEIGHTINGS["static"](TASKS, weights={"a": 0.25})
    assert w.weight("a") == 0.25 and w.weight("b") == 1.0
    assert w.combine(torch.ones(2), None).tolist() == [0.25, 1.0]
    problems = WEIGHTINGS["static"].config_problems({"weights": {"c": 1.0}}, TASKS, 2, "fp32")
    assert problems and "'c'" in problems[0]


def test_pcgrad_removes_exactly_the_conflicting_component():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    c = pcgrad_coefficients(g @ g.T, [[1], [0]])
    projected = c @ g
    # g_a . g_b = -1 < 0: g_a loses its component along g_b, g_b its component along g_a
    torch.testing.assert_close(projected[0], g[0] - (-1.0 / 2.0) * g[1])
    torch.testing.assert_close(projected[1], g[1] - (-1.0 / 1.0) * g[0])
    assert projected[0] @ g[1] == pytest.approx(0.0, abs=1e-12)
    assert projected[1] @ g[0] == pytest.approx(0.0, abs=1e-12)


def test_pcgrad_leaves_agreeing_gradients_alone_and_matches_direct_surgery():
    agree = torch.tensor([[1.0, 0.2], [0.5, 1.0]])
    assert WEIGHTINGS["pcgrad"](TASKS).combine(torch.ones(2), agree).tolist() == [1.0, 1.0]
    torch.manual_seed(0)
    g = torch.randn(4, 6, dtype=torch.float64)
    orders = [torch.randperm(4).tolist() for _ in range(4)]
    direct = []
    for i in range(4):
        gi = g[i].clone()
        for j in orders[i]:
            if j != i and gi @ g[j] < 0:
                gi = gi - (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        direct.append(gi)
    torch.testing.assert_close(pcgrad_coefficients(g @ g.T, orders) @ g, torch.stack(direct))


def test_uncertainty_weights_follow_learned_variances():
    w = WEIGHTINGS["uncertainty"](TASKS, lr_scale=1.0)
    module = w.module()
    with torch.no_grad():
        module.raw_log_var.copy_(torch.tensor([math.log(4.0), 0.0]))  # sigma_a^2 = 4, sigma_b^2 = 1
    assert w.weights() == pytest.approx({"a": 0.25, "b": 1.0})
    loss = torch.tensor(2.0)
    assert module("a", loss).item() == pytest.approx(2.0 / 4.0 + 0.5 * math.log(4.0))
    assert w.weight("a") == 1.0  # the model applies the weight; the step must not apply it twice
    # the optimum of exp(-s) L + s/2 is s = log(2L): a task with a larger loss gets a larger variance
    s = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        (torch.exp(-s) * 3.0 + 0.5 * s).sum().backward()
        opt.step()
    assert s.item() == pytest.approx(math.log(6.0), abs=1e-3)


def test_dwa_ratios_raise_the_weight_of_the_slower_task():
    w = WEIGHTINGS["dwa"](TASKS, temperature=2.0, period=1)
    assert w.combine(torch.tensor([1.0, 1.0]), None).tolist() == [1.0, 1.0]
    w.combine(torch.tensor([0.5, 0.9]), None)  # a halves, b falls by 10 %
    lam = w.weights()
    ra, rb = 0.5, 0.9
    expected_a = 2 * math.exp(ra / 2) / (math.exp(ra / 2) + math.exp(rb / 2))
    assert lam["a"] == pytest.approx(expected_a) and lam["b"] == pytest.approx(2 - expected_a)
    assert lam["b"] > lam["a"] and sum(lam.values()) == pytest.approx(2.0)


def test_dwa_averages_over_a_period_and_resumes():
    w = WEIGHTINGS["dwa"](TASKS, period=2)
    for losses in ([1.0, 1.0], [1.0, 1.0], [0.4, 1.0]):
        w.combine(torch.tensor(losses), None)
    assert w.weights() == {"a": 1.0, "b": 1.0}  # only one full period so far
    again = WEIGHTINGS["dwa"](TASKS, period=2)
    again.load_state_dict(w.state_dict())
    for other in (w, again):
        other.combine(torch.tensor([0.6, 1.0]), None)  # second period: a at 0.5 of the first
    assert w.weights() == again.weights() and w.weights()["a"] < 1.0


def test_gradnorm_moves_weights_toward_equal_training_rates():
    w = WEIGHTINGS["gradnorm"](TASKS, alpha=1.5, lr=0.1)
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w.combine(torch.tensor([1.0, 1.0]), grads)  # fixes L(0)
    assert w.weights() == pytest.approx({"a": 1.0, "b": 1.0})
    for _ in range(3):  # a has trained to 20 % of its loss, b only to 80 %: b is behind
        w.combine(torch.tensor([0.2, 0.8]), grads)
    weights = w.weights()
    assert weights["b"] > weights["a"] and sum(weights.values()) == pytest.approx(2.0)


def test_gradnorm_equalises_gradient_norms_at_equal_rates():
    w = WEIGHTINGS["gradnorm"](TASKS, lr=0.05)
    grads = torch.tensor([[4.0, 0.0], [0.0, 1.0]])  # a's gradient is 4x larger
    for _ in range(60):
        w.combine(torch.tensor([1.0, 1.0]), grads)
    weighted = torch.tensor([w.weights()["a"] * 4.0, w.weights()["b"] * 1.0])
    assert weighted[0] / weighted[1] == pytest.approx(1.0, abs=0.15)


def test_gradient_weightings_refuse_fp16_and_sampled_steps():
    problems = WEIGHTINGS["pcgrad"].config_problems({"all_tasks_step": False}, TASKS, 2, "fp16")
    assert any("all_tasks_step" in p for p in problems) and any("fp16" in p for p in problems)
    assert WEIGHTINGS["gradnorm"].config_problems({"alpha": -1}, TASKS, 2, "fp32")
    assert WEIGHTINGS["uncertainty"].config_problems({}, TASKS, 3, "fp16") == []
    for name in ("pcgrad", "gradnorm"):
        zero3 = WEIGHTINGS[name].config_problems({}, TASKS, 3, "fp32")
        assert len(zero3) == 1 and zero3[0].startswith("deepspeed.zero_stage") and "ZeRO-3" in zero3[0]
    assert WEIGHTINGS["dwa"].config_problems({}, TASKS, 3, "fp32") == []


def test_gradnorm_refuses_a_step_without_gradients_and_resumes_its_state():
    """What GradNorm carries to a resumed run (its weights and the first losses its rates are
    relative to) comes back as saved; a step without per-task gradients is refused, saying why."""
    first = WEIGHTINGS["gradnorm"](["a", "b"])
    with pytest.raises(ValueError, match="^gradnorm needs per-task gradients$"):
        first.combine(torch.tensor([1.0, 2.0]), None)
    first.combine(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    resumed = WEIGHTINGS["gradnorm"](["a", "b"])
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == first.state_dict() and resumed.initial is not None
    assert torch.equal(resumed.initial, torch.tensor([1.0, 2.0]))
