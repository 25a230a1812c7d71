"""Task samplers: their distributions, and that each is a pure function of (seed, draw)."""
from __future__ import annotations

from collections import Counter

import pytest

from training.lookup import lookup
from training.trainer.sampling import SAMPLERS, AnnealedSampler

SIZES = {"big": 800, "mid": 150, "small": 50}
DRAWS = 6000


def shares(name: str, start: int = 0, count: int = DRAWS, **kw: float) -> dict[str, float]:
    sampler = SAMPLERS[name](SIZES, 11, total_draws=kw.pop("total", DRAWS), **kw)
    counts = Counter(sampler.sample(d) for d in range(start, start + count))
    return {t: counts[t] / count for t in SIZES}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_a_pure_function_of_seed_and_draw(name):
    make = lambda seed: SAMPLERS[name](SIZES, seed, total_draws=500)  # noqa: E731
    first = [make(3).sample(d) for d in range(500)]
    # a fresh sampler asked from the middle ("resumed") gives the same tail
    assert [make(3).sample(d) for d in range(250, 500)] == first[250:]
    assert set(first) == set(SIZES)
    if name != "round_robin":
        assert first != [make(4).sample(d) for d in range(500)]


def test_proportional_follows_sizes():
    got = shares("proportional")
    for task, size in SIZES.items():
        assert got[task] == pytest.approx(size / 1000, abs=0.02)


def test_temperature_flattens_towards_uniform():
    tau2 = SAMPLERS["temperature"](SIZES, 0, temperature=2.0).probabilities()
    roots = {t: s ** 0.5 for t, s in SIZES.items()}
    assert tau2 == pytest.approx({t: r / sum(roots.values()) for t, r in roots.items()})
    got = shares("temperature", temperature=2.0)
    assert got == pytest.approx(tau2, abs=0.02)
    assert SAMPLERS["temperature"](SIZES, 0, temperature=1.0).probabilities() == pytest.approx(
        {t: s / 1000 for t, s in SIZES.items()})
    assert SAMPLERS["temperature"](SIZES, 0, temperature=1e6).probabilities() == pytest.approx(
        {t: 1 / 3 for t in SIZES}, abs=1e-4)


def test_annealed_goes_from_proportional_to_uniform():
    sampler = AnnealedSampler(SIZES, 0, total_draws=DRAWS, final_alpha=0.0)
    assert sampler.alpha(0) == 1.0 and sampler.alpha(DRAWS - 1) == 0.0
    assert sampler.probabilities(0) == pytest.approx({t: s / 1000 for t, s in SIZES.items()})
    assert sampler.probabilities(DRAWS - 1) == pytest.approx({t: 1 / 3 for t in SIZES})
    early, late = shares("annealed", 0, 1000), shares("annealed", DRAWS - 1000, 1000)
    assert early["big"] > 0.6 and early["small"] < 0.1
    assert late["big"] < 0.45 and late["small"] > 0.2
    paper = AnnealedSampler(SIZES, 0, total_draws=DRAWS, final_alpha=0.2)
    assert paper.alpha(DRAWS - 1) == pytest.approx(0.2)


def test_uniform_and_round_robin_ignore_sizes():
    assert shares("uniform") == pytest.approx({t: 1 / 3 for t in SIZES}, abs=0.02)
    sampler = SAMPLERS["round_robin"](SIZES, 0)
    assert [sampler.sample(d) for d in range(6)] == ["big", "mid", "small"] * 2


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(KeyError, match="valid: \\['annealed', 'proportional', 'round_robin'"):
        lookup(SAMPLERS, "magic", "sampler")
