"""Toy 1 of the MEM (Breit–Wigner ⊗ Gaussian in a window) against its closed forms.

A = 0.8929820109, p(x=103) = 0.067734165 (Voigt; scipy's voigt_profile independently),
Cramér–Rao for 1000 events σ(M) = 0.1434, σ(Γ) = 0.3238; the exact likelihood is the
simulator's own ``log_prob``.
"""

import math

import numpy as np
import pytest
import torch
from scipy.special import voigt_profile

from sbilab.events import Events
from sbilab.mem import integration_noise
from sbilab.mem.toys import resonance_likelihood
from sbilab.simulators.toys import Resonance
from sbilab.stats import UnbinnedLikelihood, fit_toys

A_REF = 0.8929820109
REF = torch.tensor([100.0, 5.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def sim():
    return Resonance()


@pytest.fixture(scope="module")
def mem(sim):
    return resonance_likelihood(sim, samples=1024)


@pytest.fixture(scope="module")
def data(sim):
    return sim.simulate(1000, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(1)).x.double()


def test_p103_and_acceptance(mem):
    p = float(mem.log_prob(torch.tensor([[103.0]], dtype=torch.float64), REF).exp())
    assert abs(p / 0.067734165 - 1) < 1e-3
    assert abs(p / (voigt_profile(3.0, 2.0, 2.5) / A_REF) - 1) < 1e-3
    value, error = mem.fiducial.evaluate(REF.reshape(1, -1))
    assert float(error) < 1e-4
    assert abs(float(value) - A_REF) < 2e-4


def test_per_event_likelihood_within_0p1_percent(sim, mem):
    x = torch.linspace(85.5, 114.5, 30, dtype=torch.float64).reshape(-1, 1)
    for theta in ([100.0, 5.0], [97.0, 3.0], [103.0, 7.5]):
        th = torch.tensor(theta, dtype=torch.float64)
        rel = (mem.log_prob(x, th) - sim.log_prob(x, th.expand(30, 2))).abs()
        assert float(rel.max()) < 1e-3, theta
    stated = mem.relative_error(x, REF)
    assert float(stated.max()) < 1e-3


def test_fit_matches_exact_likelihood_fit(sim, mem, data):
    exact = UnbinnedLikelihood(lambda x, t: sim.log_prob(x, t) - sim.log_prob(x, sim.space.reference), Events.observed(data), sim.space).fit()
    fit = UnbinnedLikelihood(mem, Events.observed(data), sim.space).fit(minos=["M"])
    assert fit.valid
    for name in ("M", "Gamma"):
        assert abs(fit.errors[name] / exact.errors[name] - 1) < 0.02
        assert abs(fit.best[name] - exact.best[name]) < 0.1 * exact.errors[name]
    lo, hi = fit.minos["M"]
    assert abs((hi - lo) / 2 / exact.errors["M"] - 1) < 0.03


def test_expected_widths_are_cramer_rao(mem):
    """The MEM likelihood's Fisher information, integrated over the window by Gauss–Legendre."""
    t, w = np.polynomial.legendre.leggauss(16)
    edges = np.linspace(85.0, 115.0, 16)
    nodes = ((edges[1:] + edges[:-1])[:, None] / 2 + (edges[1:] - edges[:-1])[:, None] / 2 * t).ravel()
    weights = torch.tensor(((edges[1:] - edges[:-1])[:, None] / 2 * w).ravel())
    x = torch.tensor(nodes).reshape(-1, 1)
    theta = REF.expand(len(nodes), 2).clone().requires_grad_(True)
    log_p = mem.log_prob(x, theta)
    (score,) = torch.autograd.grad(log_p.sum(), theta)
    fisher = torch.einsum("n,ni,nj->ij", weights * log_p.detach().exp(), score, score)
    cr = torch.sqrt(torch.diagonal(torch.linalg.inv(1000 * fisher)))
    assert abs(float(cr[0]) / 0.1434 - 1) < 0.01
    assert abs(float(cr[1]) / 0.3238 - 1) < 0.01


def test_gradient_and_log_ratio(mem, data):
    x = data[:50]
    th = torch.tensor([100.4, 5.3], dtype=torch.float64, requires_grad=True)
    value = mem(x, th.expand(50, 2)).sum()
    (grad,) = torch.autograd.grad(value, th)
    h = 1e-5
    for k in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[k] = h
        numeric = (mem(x, (th + step).detach()).sum() - mem(x, (th - step).detach()).sum()) / (2 * h)
        assert abs(float(grad[k] - numeric)) < 1e-5 * max(1.0, abs(float(numeric)))
    assert float(mem(x, REF).abs().max()) < 1e-12  # log-ratio at the reference


def test_integration_noise_is_negligible(sim, data):
    noise = integration_noise(lambda s: resonance_likelihood(sim, samples=512, seed=s, fiducial_samples=2**15), Events.observed(data[:300]),
                              sim.space, seeds=(0, 1))
    assert noise.valid
    assert max(noise.relative_spread.values()) < 0.05


def test_fit_toys_agrees_with_minuit(sim, mem):
    x = sim.simulate(300, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(7)).x.double().reshape(2, 150, 1)
    theta, _, converged, cov = fit_toys(mem, x, sim.space, return_covariance=True, block_events=150)
    assert bool(converged.all())
    for t in range(2):
        ref = UnbinnedLikelihood(mem, Events.observed(x[t]), sim.space).fit()
        assert abs(float(theta[t, 0]) - ref.best["M"]) < 0.02 * ref.errors["M"]
        assert abs(float(theta[t, 1]) - ref.best["Gamma"]) < 0.02 * ref.errors["Gamma"]
        assert abs(math.sqrt(float(cov[t, 0, 0])) / ref.errors["M"] - 1) < 0.02
