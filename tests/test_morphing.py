"""Morphing toy: closed-form cross sections, exact likelihood, sampling and weighted events."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sbilab.exceptions import ParameterSpaceError
from sbilab.simulators import augment
from sbilab.simulators.toys.morphing import Morphing

POINTS = [[0.0, 0.0], [0.7, -0.4], [-1.0, 1.0], [1.0, 1.0]]


def dsigma_by_hand(x: np.ndarray, t1: float, t2: float) -> np.ndarray:
    """(a0 + t1 a1 + t2 a2)^2 + b, written out independently of the module."""
    a0 = np.exp(-x / 80.0)
    a1 = 0.5 * (x / 70.0) * np.exp(-x / 140.0)
    a2 = 0.15 * (x / 100.0) ** 2 * np.exp(-x / 200.0)
    b = 0.3 * np.exp(-x / 25.0)
    return ((a0 + t1 * a1 + t2 * a2) ** 2 + b) / (40.0 + 0.3 * 25.0)


@pytest.mark.parametrize("point", POINTS)
def test_cross_section_and_density_closed_form(point):
    sim = Morphing(2)
    x = torch.linspace(0, 600, 31, dtype=torch.float64).reshape(-1, 1)
    ours = sim.differential_cross_section(x, torch.tensor(point, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, dsigma_by_hand(x[:, 0].numpy(), *point), rtol=1e-13)
    total = integrate.quad(lambda v: dsigma_by_hand(np.array(v), *point), 0, np.inf, epsabs=1e-13, epsrel=1e-12)[0]
    assert sim.cross_section(torch.tensor([point], dtype=torch.float64)).item() == pytest.approx(total, rel=1e-9)
    comps = sim.component_shapes(x) * sim.basis.components(torch.tensor([point], dtype=torch.float64))
    np.testing.assert_allclose(comps.sum(1).numpy(), ours, rtol=1e-12)
    assert sim.expected_events(torch.tensor([point], dtype=torch.float64), luminosity=300.0).item() == pytest.approx(300 * total, rel=1e-9)
    log_p = sim.log_prob(x, torch.tensor(point, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(log_p, np.log(dsigma_by_hand(x[:, 0].numpy(), *point) / total), rtol=1e-9)


def test_sm_cross_section_is_one_pb_and_positive_everywhere():
    sim = Morphing(2)
    assert sim.cross_section(torch.zeros(1, 2)).item() == pytest.approx(1.0, rel=1e-14)
    grid = torch.cartesian_prod(torch.linspace(-1, 1, 21), torch.linspace(-1, 1, 21)).double()
    x = torch.linspace(0, 1000, 201, dtype=torch.float64).reshape(-1, 1)
    dsig = torch.stack([sim.differential_cross_section(x, t) for t in grid])
    assert bool((dsig > 0).all())


def test_score_matches_finite_differences():
    sim = Morphing(2)
    x = torch.tensor([[10.0], [150.0], [400.0]], dtype=torch.float64)
    theta = torch.tensor([0.3, -0.6], dtype=torch.float64)
    ours = sim.score(x, theta).numpy()
    h = 1e-6
    for j in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[j] = h
        fd = (sim.log_prob(x, theta + step) - sim.log_prob(x, theta - step)).numpy() / (2 * h)
        np.testing.assert_allclose(ours[:, j], fd, rtol=1e-6, atol=1e-9)


def test_unweighted_sampling_matches_density():
    sim = Morphing(2)
    point = [0.8, -0.5]
    ev = sim.simulate(8000, theta=torch.tensor(point), generator=torch.Generator().manual_seed(2))
    grid = np.linspace(0, 3000, 30001)
    pdf = dsigma_by_hand(grid, *point)
    cdf = integrate.cumulative_trapezoid(pdf, grid, initial=0.0)
    cdf /= cdf[-1]
    assert stats.kstest(ev.x[:, 0].double().numpy(), lambda v: np.interp(v, grid, cdf)).pvalue > 1e-3
    aug = augment(sim, ev)
    assert aug.score_joint.shape == (8000, 2)


def test_weighted_sampling_estimates_cross_sections():
    sim = Morphing(2)
    bench = torch.tensor(POINTS, dtype=torch.float64)
    x, w = sim.sample_weighted(40000, bench, generator=torch.Generator().manual_seed(5))
    exact = sim.cross_section(bench)
    err = w.std(0) / np.sqrt(len(w))
    assert bool(((w.mean(0) - exact).abs() < 4 * err).all())
    # weights are bounded (proposal dominates every benchmark's dσ)
    assert float(w.max()) < 3 * (40.0 + 0.25 * 2 * 70 + 0.0225 * 24 * 100 + 7.5) / 47.5
    ratio = w[:, 2] / w[:, 0]
    expected = sim.differential_cross_section(x, bench[2]) / sim.differential_cross_section(x, bench[0])
    torch.testing.assert_close(ratio, expected, rtol=1e-12, atol=0)


def test_one_coupling_and_bad_arguments():
    sim = Morphing(1)
    assert sim.basis.n_components == 3 and sim.space.dim == 1
    total = integrate.quad(lambda v: dsigma_by_hand(np.array(v), 0.5, 0.0), 0, np.inf, epsabs=1e-13, epsrel=1e-12)[0]
    assert sim.cross_section(torch.tensor([[0.5]])).item() == pytest.approx(total, rel=1e-9)
    with pytest.raises(ParameterSpaceError):
        Morphing(3)
