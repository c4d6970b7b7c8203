"""The exact primary-emission toy: quadrature against scipy, sampling against the exact Poisson process."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from sbilab.events import Events
from sbilab.exceptions import NegativeKernelError, OverestimateError, ShapeMismatchError
from sbilab.simulators import joint_score
from sbilab.simulators.shower import PrimaryEmissions, emission_integrals
from sbilab.simulators.shower.kernels import CF

# scipy.integrate.dblquad over t in [1, Q^2/4], z in [z-, z+] (epsrel 1e-10) of the coefficients of D, F, C
SCIPY = (0.6290370881717307, 0.07778270531118232, 0.002084196786881581)
SM = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def toy() -> PrimaryEmissions:
    return PrimaryEmissions()


def test_coefficient_integrals_against_scipy(toy):
    for got, want in zip(emission_integrals().tolist(), SCIPY):
        assert got == pytest.approx(want, rel=1e-9)
    n_bar = toy.expected_emissions(SM.unsqueeze(0)).item()
    assert n_bar == pytest.approx(0.70682, abs=1e-5)
    assert math.exp(-n_bar) == pytest.approx(0.49321, abs=1e-5)
    # a coarser rule agrees: the quadrature has converged
    torch.testing.assert_close(emission_integrals(panels=4, order=12), emission_integrals(), rtol=1e-8, atol=0)


def test_log_prob_of_a_hand_made_event(toy):
    x = torch.tensor([[[math.log(4.0), 0.9], [math.log(100.0), 0.3], [0.0, 0.0]]], dtype=torch.float64)
    theta = torch.tensor([[1.2, 0.8, 0.5]], dtype=torch.float64)
    d, f, c = theta[0].tolist()

    def density(t, z):  # per d ln t dz
        y = t / (1e4 * z * (1 - z))
        p = CF * (d * 2 * z * (1 - y) / (1 - z * (1 - y)) + f * (1 - z) + c * y * z * (1 - z))
        return 0.118 / (2 * math.pi) * (1 - y) * p

    n_bar = d * SCIPY[0] + f * SCIPY[1] + c * SCIPY[2]
    want = -n_bar + math.log(density(4.0, 0.9)) + math.log(density(100.0, 0.3))
    assert toy.log_prob(x, theta).item() == pytest.approx(want, rel=1e-9)
    mask = torch.tensor([[True, True, False]])
    assert toy.log_prob(x, theta, mask).item() == pytest.approx(want, rel=1e-9)
    ev = Events(x=x.float(), theta=theta.float(), mask=mask)
    assert toy.joint_log_prob(ev, theta).item() == pytest.approx(toy.log_prob(x.float(), theta, mask).item(), rel=1e-12)


def test_sampling_follows_the_exact_process(toy):
    theta = torch.tensor([1.3, 0.7, 1.0])
    ev = toy.simulate(40000, theta=theta, generator=torch.Generator().manual_seed(0))
    n_bar = toy.expected_emissions(theta.double().unsqueeze(0)).item()
    counts = ev.mask.sum(1).double()
    assert counts.mean().item() == pytest.approx(n_bar, abs=4 * math.sqrt(n_bar / 40000))
    observed = torch.bincount(ev.mask.sum(1), minlength=5)[:5].double()
    expected = 40000 * torch.tensor([math.exp(-n_bar) * n_bar**k / math.factorial(k) for k in range(5)], dtype=torch.float64)
    assert stats.chisquare(observed[:4].numpy(), expected[:4].numpy() * observed[:4].sum().item() / expected[:4].sum().item()).pvalue > 1e-3
    # the z distribution of emissions against the exact marginal (by quadrature on the same nodes)
    t_nodes, z_nodes, w = toy._nodes
    from sbilab.simulators.shower.toy import _intensity_coefficients

    density = w * (_intensity_coefficients(t_nodes, z_nodes, toy.q2, toy.alpha_s) @ theta.double())
    z = ev.x[..., 1][ev.mask].double()
    edges = torch.tensor([0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0], dtype=torch.float64)
    exact = torch.stack([density[(z_nodes >= a) & (z_nodes < b)].sum() for a, b in zip(edges[:-1], edges[1:])])
    seen = torch.histogram(z, edges).hist
    assert stats.chisquare(seen.numpy(), (exact / exact.sum() * seen.sum()).numpy()).pvalue > 1e-3


def test_score_has_mean_zero_and_the_fisher_information(toy):
    theta = torch.tensor([0.9, 1.2, 0.3])
    ev = toy.simulate(30000, theta=theta, generator=torch.Generator().manual_seed(1))
    score = joint_score(toy, ev).double()
    err = score.std(0) / math.sqrt(len(ev))
    assert bool((score.mean(0).abs() < 4 * err).all())
    fisher = toy.fisher_information(theta.double())
    empirical = score.T @ score / len(ev)
    for a in range(2):  # D and F: C's information is too small to check with this many events
        assert empirical[a, a].item() == pytest.approx(fisher[a, a].item(), rel=0.06)


def test_named_errors(toy):
    with pytest.raises(OverestimateError, match="C above"):
        toy.sample(torch.tensor([[1.0, 1.0, 1.6]]))
    with pytest.raises(NegativeKernelError):
        toy.sample(torch.tensor([[-0.1, 1.0, 0.0]]))
    with pytest.raises(ShapeMismatchError):
        toy.log_prob(torch.zeros(3, 2), SM)
