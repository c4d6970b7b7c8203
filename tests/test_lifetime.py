"""The Lifetime toy (sbilab.simulators.toys.lifetime) against quadrature and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sbilab.exceptions import ParameterSpaceError
from sbilab.simulators import Lifetime, build_toy, joint_score

F64 = torch.float64


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_closed_form_likelihood_matches_quadrature_and_is_normalised(tau):
    sim = Lifetime()
    th = torch.tensor([tau], dtype=F64)
    for x in (-0.3, 0.0, 0.5, 1.99, 2.2, 2.6):  # tails on both sides of the cut included
        def integrand(t):
            return math.exp(-t / tau) / tau * stats.norm.pdf(x, t, 0.1)
        inside = [x] if 0 < x < 2 else None
        expected = integrate.quad(integrand, 0, 2, points=inside, epsabs=0, epsrel=1e-12)[0] / (1 - math.exp(-2 / tau))
        got = sim.log_prob(torch.tensor([[x]], dtype=F64), th).exp().item()
        assert got == pytest.approx(expected, rel=1e-10)
    nodes, weights = np.polynomial.legendre.leggauss(400)
    x = torch.from_numpy(1.5 + 3.0 * nodes).reshape(-1, 1)  # [-1.5, 4.5]
    assert float((3.0 * torch.from_numpy(weights) * sim.log_prob(x, th).exp()).sum()) == pytest.approx(1.0, abs=1e-10)


def test_acceptance_and_its_log_derivative():
    sim = Lifetime()
    th = torch.tensor([[1.0]], dtype=F64, requires_grad=True)
    log_a = torch.log(sim.acceptance(th))
    (grad,) = torch.autograd.grad(log_a.sum(), th)
    assert log_a.exp().item() == pytest.approx(1 - math.exp(-2), rel=1e-14)
    # d/dτ log(1 - e^{-T/τ}) = -(T/τ²) e^{-T/τ} / A
    assert grad.item() == pytest.approx(-2 * math.exp(-2) / (1 - math.exp(-2)), rel=1e-12)
    assert grad.item() == pytest.approx(-0.3130352855, abs=1e-10)


def test_samples_follow_the_truncated_exponential_and_the_smearing():
    sim = Lifetime()
    ev = sim.simulate(100_000, theta=torch.tensor([0.7]), generator=torch.Generator().manual_seed(0))
    t, x = ev.latent[:, 0].double().numpy(), ev.x[:, 0].double().numpy()
    assert t.min() >= 0 and t.max() < 2.0
    cdf = lambda v: (1 - np.exp(-v / 0.7)) / (1 - np.exp(-2 / 0.7))  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3
    assert stats.kstest((x - t) / 0.1, "norm").pvalue > 1e-3


def test_right_and_wrong_joint_likelihoods_differ_by_the_acceptance_only():
    right, wrong = Lifetime(), Lifetime(include_acceptance=False)
    ev = right.simulate(50, generator=torch.Generator().manual_seed(1)).to(dtype=F64)
    diff = right.joint_log_prob(ev, ev.theta) - wrong.joint_log_prob(ev, ev.theta)
    torch.testing.assert_close(diff, -torch.log(right.acceptance(ev.theta)))
    shift = joint_score(wrong, ev) - joint_score(right, ev)  # ∂τ log A(τ) = -(T/τ²) e^{-T/τ}/A
    tau = ev.theta[:, 0]
    torch.testing.assert_close(shift[:, 0], -(2 / tau**2) * torch.exp(-2 / tau) / right.acceptance(ev.theta))
    assert wrong.config()["include_acceptance"] is False and type(build_toy("lifetime")) is Lifetime


def test_fisher_information_matches_the_variance_of_the_score():
    sim = Lifetime()
    ev = sim.simulate(200_000, theta=torch.tensor([1.0]), generator=torch.Generator().manual_seed(2))
    t = sim.score(ev.x.double(), torch.tensor([1.0], dtype=F64))[:, 0]
    info = sim.fisher_information().item()
    assert abs(t.mean().item()) < 5 * t.std().item() / math.sqrt(len(t))
    assert (t**2).mean().item() == pytest.approx(info, rel=0.02)
    assert info == pytest.approx(0.2670851376, rel=1e-8)


@pytest.mark.parametrize("kwargs, phrase", [
    ({"t_max": 0.0}, "t_max must be > 0"),
    ({"resolution": -1.0}, "resolution must be > 0"),
    ({"low": 0.0}, "lower bound of tau must be > 0"),
])
def test_bad_constructor_arguments(kwargs, phrase):
    with pytest.raises(ParameterSpaceError, match=phrase):
        Lifetime(**kwargs)
