"""Resonance toy: exact numbers against scipy and hand-derived formulas."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from sbilab.exceptions import SamplingError
from sbilab.simulators import augment, joint_score
from sbilab.simulators.toys.resonance import Resonance, faddeeva

REF = torch.tensor([[100.0, 5.0]], dtype=torch.float64)


def scipy_acceptance(mass: float, width: float, sigma: float = 2.0, lo: float = 85.0, hi: float = 115.0) -> float:
    f = lambda x: special.voigt_profile(x - mass, sigma, width / 2)  # noqa: E731
    return integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=200)[0]


def test_reference_numbers():
    sim = Resonance()
    assert sim.acceptance(REF).item() == pytest.approx(0.8929820109, abs=5e-11)
    p103 = sim.log_prob(torch.tensor([[103.0]], dtype=torch.float64), REF).exp().item()
    assert p103 == pytest.approx(6.7734165e-2, rel=1e-7)


def test_cramer_rao_bounds():
    fisher = Resonance().fisher_information(torch.tensor([100.0, 5.0]))
    bounds = torch.sqrt(torch.diag(torch.linalg.inv(1000 * fisher)))
    assert bounds[0].item() == pytest.approx(0.14338, abs=2e-4)
    assert bounds[1].item() == pytest.approx(0.32378, abs=2e-4)
    assert abs(fisher[0, 1].item()) < 1e-12  # symmetric window around M: no M-Gamma correlation


def test_faddeeva_against_scipy():
    re, im = np.meshgrid(np.linspace(-25, 25, 201), np.array([0.3, 0.6, 1.5, 4.0]))
    z = re.ravel() + 1j * im.ravel()
    ours = faddeeva(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(ours, special.wofz(z), rtol=1e-11)


@pytest.mark.parametrize("point", [(95.0, 2.0), (100.0, 5.0), (104.0, 8.0)])
def test_log_prob_and_acceptance_against_scipy(point):
    sim = Resonance()
    mass, width = point
    a_ref = scipy_acceptance(mass, width)
    theta = torch.tensor([point], dtype=torch.float64)
    assert sim.acceptance(theta).item() == pytest.approx(a_ref, rel=1e-9)
    x = torch.linspace(85.5, 114.5, 59, dtype=torch.float64).reshape(-1, 1)
    ours = sim.log_prob(x, theta.expand(59, 2)).exp().numpy()
    exact = special.voigt_profile(x[:, 0].numpy() - mass, 2.0, width / 2) / a_ref
    np.testing.assert_allclose(ours, exact, rtol=1e-8)
    outside = sim.log_prob(torch.tensor([[80.0], [120.0]], dtype=torch.float64), theta[0])
    assert torch.isinf(outside).all() and (outside < 0).all()


def test_acceptance_gradient_and_score():
    sim = Resonance()
    theta = torch.tensor([[98.0, 3.0], [103.0, 7.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sim.acceptance, (theta,))
    assert torch.autograd.gradgradcheck(sim.acceptance, (theta,))
    # exact score vs central finite differences of the scipy likelihood
    x = torch.tensor([[92.0], [107.0]], dtype=torch.float64)
    ours = sim.score(x, theta.detach())
    h = 1e-5
    for row in range(2):
        for j in range(2):
            up, down = theta.detach()[row].clone().numpy(), theta.detach()[row].clone().numpy()
            up[j] += h
            down[j] -= h
            lp = lambda t: math.log(special.voigt_profile(x[row, 0].item() - t[0], 2.0, t[1] / 2) / scipy_acceptance(*t))  # noqa: E731
            assert ours[row, j].item() == pytest.approx((lp(up) - lp(down)) / (2 * h), rel=1e-5, abs=1e-7)


def test_joint_score_matches_hand_formula():
    sim = Resonance()
    ev = sim.simulate(200, theta=torch.tensor([101.0, 6.0]), generator=torch.Generator().manual_seed(3))
    ev = ev.replace(x=ev.x.double(), theta=ev.theta.double(), latent=ev.latent.double())
    ours = joint_score(sim, ev).numpy()
    m, mass, width = ev.latent[:, 0].numpy(), 101.0, 6.0
    g, d = width / 2, m - mass
    d_mass_cauchy = 2 * d / (g**2 + d**2)
    d_width_cauchy = 0.5 * (1 / g - 2 * g / (g**2 + d**2))
    # acceptance derivatives from the Faddeeva function (scipy), independently of the code
    norm = 2.0 * math.sqrt(2 * math.pi)
    z = lambda edge: (edge - mass + 1j * g) / (2.0 * math.sqrt(2))  # noqa: E731
    acc = scipy_acceptance(mass, width)
    d_acc_mass = (special.wofz(z(85.0)).real - special.wofz(z(115.0)).real) / norm
    d_acc_width = -0.5 * (special.wofz(z(115.0)).imag - special.wofz(z(85.0)).imag) / norm
    h = 1e-4
    assert d_acc_width == pytest.approx((scipy_acceptance(mass, width + h) - scipy_acceptance(mass, width - h)) / (2 * h), rel=1e-6)
    np.testing.assert_allclose(ours[:, 0], d_mass_cauchy - d_acc_mass / acc, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours[:, 1], d_width_cauchy - d_acc_width / acc, rtol=1e-9, atol=1e-12)


def test_sampling_distribution_and_reproducibility():
    sim = Resonance()
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    ev = sim.simulate(20000, theta=torch.tensor([100.0, 5.0]), generator=gen())
    again = sim.simulate(20000, theta=torch.tensor([100.0, 5.0]), generator=gen())
    assert torch.equal(ev.x, again.x) and torch.equal(ev.latent, again.latent)
    x = ev.x[:, 0].double().numpy()
    assert ((x > 85) & (x < 115)).all()
    grid = np.linspace(85, 115, 3001)
    pdf = special.voigt_profile(grid - 100.0, 2.0, 2.5)
    cdf = integrate.cumulative_trapezoid(pdf, grid, initial=0.0)
    cdf /= cdf[-1]
    assert stats.kstest(x, lambda v: np.interp(v, grid, cdf)).pvalue > 1e-3
    # the joint score has mean zero under the model
    aug = augment(sim, ev.replace(theta=ev.theta.double(), x=ev.x.double(), latent=ev.latent.double()))
    assert aug.score_joint.mean(0).abs().max().item() < 4 * aug.score_joint.std(0).max().item() / math.sqrt(len(ev))


def test_sampling_error_is_named():
    sim = Resonance(window=(400.0, 401.0), max_rounds=3)
    with pytest.raises(SamplingError, match="max_rounds"):
        sim.simulate(50, generator=torch.Generator().manual_seed(0))
