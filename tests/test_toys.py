"""Vectorised toy fits against closed forms and against Minuit."""

from __future__ import annotations

import math

import pytest
import torch

from sbilab.events import Events
from sbilab.exceptions import FitError, ShapeMismatchError
from sbilab.simulators.toys import GaussianLatent
from sbilab.stats.toys import fit_toys, profile_likelihood_ratio, toy_log_likelihood
from sbilab.stats.unbinned import UnbinnedLikelihood

SIM = GaussianLatent()


def exact_log_ratio(x, theta):
    return SIM.log_prob(x, theta) - SIM.log_prob(x, SIM.space.reference.to(x.dtype))


def test_gaussian_toys_mle_and_profile_ratio_are_exact():
    gen = torch.Generator().manual_seed(0)
    x = 0.2 + math.sqrt(5) * torch.randn(64, 100, 1, generator=gen, dtype=torch.float64)
    theta_hat, nll, ok, cov = fit_toys(exact_log_ratio, x, SIM.space, return_covariance=True)
    assert bool(ok.all())
    torch.testing.assert_close(cov[:, 0, 0], torch.full((64,), 5 / 100, dtype=torch.float64))
    torch.testing.assert_close(theta_hat[:, 0], x.mean(dim=(1, 2)).clamp(-2, 2), atol=1e-6, rtol=0)
    t = profile_likelihood_ratio(exact_log_ratio, x, SIM.space, torch.tensor([0.2]))
    torch.testing.assert_close(t, 100 * (x.mean(dim=(1, 2)) - 0.2) ** 2 / 5, atol=1e-6, rtol=1e-6)
    assert toy_log_likelihood(exact_log_ratio, x, theta_hat).shape == (64,)


def test_two_parameter_toys_agree_with_minuit():
    from sbilab.simulators.toys import Resonance

    sim = Resonance()
    ref = sim.space.reference

    def log_ratio(x, th):
        return sim.log_prob(x, th) - sim.log_prob(x, ref)

    gen = torch.Generator().manual_seed(1)
    x = sim.simulate(4 * 300, theta=torch.tensor([100.5, 5.5]), generator=gen).x.double().reshape(4, 300, 1)
    theta_hat, nll, ok, cov = fit_toys(log_ratio, x, sim.space, return_covariance=True)
    assert bool(ok.all())
    for i in range(4):
        res = UnbinnedLikelihood(log_ratio, Events.observed(x[i]), sim.space, tolerance=1e-4).fit()
        assert res.valid
        assert theta_hat[i, 0].item() == pytest.approx(res.best["M"], abs=0.02 * res.errors["M"])
        assert theta_hat[i, 1].item() == pytest.approx(res.best["Gamma"], abs=0.02 * res.errors["Gamma"])
        assert nll[i].item() == pytest.approx(res.nll_min, abs=1e-3)
        torch.testing.assert_close(cov[i], torch.tensor(res.covariance, dtype=torch.float64), rtol=0.03, atol=0)
    # profiled ratio for M: equals the Minuit profile at one point
    t = profile_likelihood_ratio(log_ratio, x, sim.space, torch.tensor([100.0, 5.0]), parameter="M", best=(theta_hat, nll))
    nll0 = UnbinnedLikelihood(log_ratio, Events.observed(x[0]), sim.space, tolerance=1e-4)
    prof = nll0.profile("M", [100.0])
    assert t[0].item() == pytest.approx(prof.delta_nll[0], abs=2e-3)
    # fitting in blocks of toys (bounded memory) gives the same per-toy answers, per-toy fixed values included
    blocked = fit_toys(log_ratio, x, sim.space, return_covariance=True, block_events=600)
    for got, want in zip(blocked, (theta_hat, nll, ok, cov)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    t_blocked = profile_likelihood_ratio(log_ratio, x, sim.space, torch.tensor([100.0, 5.0]), parameter="M", best=(theta_hat, nll), block_events=300)
    torch.testing.assert_close(t_blocked, t, rtol=1e-9, atol=1e-9)
    with pytest.raises(FitError, match="unknown parameter"):
        fit_toys(log_ratio, x, sim.space, fixed={"mass": 1.0})


def test_set_valued_toys_use_their_masks():
    """Toys of padded particle sets (exact per-event ratio = sum over real entries): fit_toys gives the
    mean of each toy's real entries, sigma^2 = 1/n_real, and t = n_real (mu_hat - mu0)^2 exactly."""
    from sbilab.simulators.space import ParameterSpace

    space = ParameterSpace(("mu",), low=(-10.0,), high=(10.0,), reference=(0.0,))

    def set_log_ratio(x, theta, mask):
        xm = torch.where(mask, x[..., 0], torch.zeros((), dtype=x.dtype))
        return (mask * (theta[:, :1] * xm - 0.5 * theta[:, :1] ** 2)).sum(1)

    g = torch.Generator().manual_seed(3)
    t, n, m = 16, 40, 6
    counts = 1 + torch.poisson(torch.full((t, n), 1.5), generator=g).clamp(max=m - 1)
    mask = torch.arange(m) < counts[..., None]
    x = 0.4 + torch.randn(t, n, m, 1, generator=g, dtype=torch.float64)
    x[~mask] = math.nan
    theta_hat, nll, ok, cov = fit_toys(set_log_ratio, x, space, mask=mask, return_covariance=True)
    n_real = mask.sum((1, 2)).to(torch.float64)
    mean = torch.where(mask, x[..., 0], torch.zeros(())).sum((1, 2)) / n_real
    assert bool(ok.all())
    torch.testing.assert_close(theta_hat[:, 0], mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(cov[:, 0, 0], 1 / n_real, rtol=1e-9, atol=0)
    stat = profile_likelihood_ratio(set_log_ratio, x, space, torch.tensor([0.5]), mask=mask, best=(theta_hat, nll))
    torch.testing.assert_close(stat, n_real * (mean - 0.5) ** 2, rtol=1e-8, atol=1e-9)
    with pytest.raises(ShapeMismatchError, match="mask must be"):
        fit_toys(set_log_ratio, x, space, mask=mask[:, :, :3])
