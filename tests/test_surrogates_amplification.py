"""GANplification factor against closed forms: a known bias gives a known number of equivalent events."""

import pytest
import torch

from sbilab.exceptions import ConfigError, ShapeMismatchError
from sbilab.surrogates import histogram_amplification, mean_amplification

EDGES = torch.linspace(0, 1, 11)
P = torch.full((10,), 0.1)


def test_a_biased_histogram_is_worth_v_over_its_squared_bias():
    # "surrogate" U(δ, 1 + δ) of a U(0, 1) truth: bin 1 loses δ, every other bin is exact, so MSE = δ²;
    # V = Σ p(1 - p) = 0.9 and the surrogate is worth 0.9 / δ² events: factor 0.9 / (N δ²) = 9 for N = 1000, δ = 0.01
    g = torch.Generator().manual_seed(0)
    samples = [0.01 + torch.rand(2_000_000, generator=g, dtype=torch.float64) for _ in range(2)]
    res = histogram_amplification(samples, 1000, edges=EDGES, probabilities=P)
    assert res.resolved and res.factor == pytest.approx(9.0, rel=0.05)
    assert res.variance == pytest.approx(0.9) and res.replicas == 2


def test_a_biased_mean_can_be_worth_less_than_its_training_sample():
    # draws of N(b, 1) for a N(0, 1) truth: MSE = b², factor = 1 / (N b²) = 0.4 for N = 1000, b = 0.05
    g = torch.Generator().manual_seed(1)
    samples = [0.05 + torch.randn(1_000_000, generator=g, dtype=torch.float64) for _ in range(3)]
    res = mean_amplification(samples, 1000, mean=0.0, variance=1.0)
    assert res.resolved and res.factor == pytest.approx(0.4, rel=0.05) and res.factor < 1


def test_a_perfect_surrogate_gives_only_a_lower_bound():
    g = torch.Generator().manual_seed(2)
    samples = [torch.rand(100_000, generator=g, dtype=torch.float64) for _ in range(3)]
    res = histogram_amplification(samples, 1000, edges=EDGES, probabilities=P)
    assert not res.resolved and res.factor > 10  # the finite surrogate sample bounds what can be shown
    assert res.to_dict()["statistic"] == "histogram"


def test_bad_input():
    with pytest.raises(ConfigError):
        histogram_amplification([], 1000, edges=EDGES, probabilities=P)
    with pytest.raises(ShapeMismatchError, match="need 10 probabilities"):
        histogram_amplification([torch.rand(10)], 1000, edges=EDGES, probabilities=torch.ones(3))
    with pytest.raises(ConfigError, match="variance"):
        mean_amplification([torch.rand(10)], 100, mean=0.0, variance=0.0)
