"""Diagnostics against exact posteriors: a conjugate Gaussian model and a deliberately over-confident one."""

import math

import pytest
import torch

from sbilab.exceptions import ShapeMismatchError
from sbilab.stats.diagnostics import c2st, dkw_tolerance, expected_coverage, sbc, tarp

N, S = 400, 200
TAU, SIGMA = 1.0, 0.5  # prior N(0, τ²), likelihood x ~ N(θ, σ²) per coordinate
POST_VAR = 1 / (1 / TAU**2 + 1 / SIGMA**2)


def conjugate(width_factor: float, seed: int = 0):
    """θ ~ prior, x ~ p(x|θ), posterior draws N(m(x), (f·s)²) with f = 1 exact, f < 1 over-confident."""
    g = torch.Generator().manual_seed(seed)
    theta = TAU * torch.randn(N, 2, generator=g, dtype=torch.float64)
    x = theta + SIGMA * torch.randn(N, 2, generator=g, dtype=torch.float64)
    mean, sd = POST_VAR * x / SIGMA**2, width_factor * math.sqrt(POST_VAR)
    samples = mean + sd * torch.randn(S, N, 2, generator=g, dtype=torch.float64)

    def log_q(t):
        return (-0.5 * ((t - mean) / sd) ** 2).sum(-1) - 2 * math.log(sd)

    return theta, samples, log_q(samples), log_q(theta)


def test_exact_posterior_passes_everything():
    theta, samples, lq_s, lq_t = conjugate(1.0)
    assert sbc(samples, theta).passed
    cov = expected_coverage(lq_s, lq_t)
    assert cov.passed and abs(cov.curve[50] - 0.5) < 0.1
    assert tarp(samples, theta).passed


def test_overconfident_posterior_fails_everything():
    theta, samples, lq_s, lq_t = conjugate(0.5)
    assert not sbc(samples, theta).passed
    cov = expected_coverage(lq_s, lq_t)
    assert not cov.passed and cov.curve[68] < 0.4  # a 68 % region covers far less than 68 %
    assert not tarp(samples, theta).passed
    # an under-confident posterior is acceptable when conservativeness is allowed
    _, _, lq_s2, lq_t2 = conjugate(2.0)
    assert not expected_coverage(lq_s2, lq_t2).passed and expected_coverage(lq_s2, lq_t2, conservative_ok=True).passed


def test_uniform_statistic_and_tolerance():
    theta, samples, lq_s, lq_t = conjugate(1.0, seed=3)
    res = sbc(samples, theta)
    assert res.values.shape == (N, 2) and 0 <= res.values.min() and res.values.max() <= 1
    assert res.tolerance == pytest.approx(math.sqrt(math.log(4 / 0.01) / (2 * N)))
    assert dkw_tolerance(100, significance=0.05) == pytest.approx(math.sqrt(math.log(40) / 200))


def test_plots(tmp_path):
    theta, samples, lq_s, lq_t = conjugate(1.0)
    for result in (sbc(samples, theta), expected_coverage(lq_s, lq_t), tarp(samples, theta)):
        path = result.plot(tmp_path / f"{result.name}.png")
        assert path.stat().st_size > 1000
    g = torch.Generator().manual_seed(0)
    assert c2st(torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g), max_epochs=5).plot(tmp_path / "c.png").exists()


def test_c2st_same_and_separated():
    g = torch.Generator().manual_seed(1)
    same = c2st(torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g), max_epochs=60)
    assert abs(same.accuracy - 0.5) < 0.04 and abs(same.auc - 0.5) < 0.05 and same.passed
    apart = c2st(torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g) + torch.tensor([6.0, 0.0]), max_epochs=60)
    assert apart.accuracy > 0.99 and apart.auc > 0.999 and not apart.passed
    # partial overlap: two unit Gaussians 1σ apart have a Bayes-optimal accuracy Φ(1/2) = 0.691
    mid = c2st(torch.randn(2000, 1, generator=g), torch.randn(2000, 1, generator=g) + 1.0, max_epochs=60)
    assert mid.accuracy == pytest.approx(0.6915, abs=0.03)
    with pytest.raises(ShapeMismatchError):
        c2st(torch.zeros(10, 2), torch.zeros(10, 3))
