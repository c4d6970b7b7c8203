"""Morphing basis and weighted events against the morphing toy's exact dσ."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sbilab.exceptions import MorphingError
from sbilab.simulators import augment, ratio_training_data
from sbilab.simulators.toys.morphing import Morphing
from sbilab.simulators.weighted import MorphingBasis, WeightedEvents

BENCH = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.8], [0.0, -1.0]], dtype=torch.float64)


@pytest.fixture(scope="module")
def setup():
    sim = Morphing(2)
    x, w = sim.sample_weighted(3000, BENCH, generator=torch.Generator().manual_seed(0))
    exact_sigma = sim.cross_section(BENCH)
    pool = WeightedEvents.from_arrays(x, w, BENCH, space=sim.space, cross_sections=exact_sigma)
    return sim, x, w, pool


def test_basis_components_and_gradients():
    basis = MorphingBasis(2, max_power=2)
    assert basis.exponents.tolist() == [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]
    theta = torch.tensor([[0.0, 0.0], [0.3, -2.0]], dtype=torch.float64, requires_grad=True)
    t1, t2 = theta.detach()[1]
    comps = basis.components(theta)
    torch.testing.assert_close(comps[1], torch.stack([t1**0, t1, t2, t1**2, t1 * t2, t2**2]))
    auto = torch.stack([torch.autograd.grad(comps[:, c].sum(), theta, retain_graph=True)[0] for c in range(6)], dim=1)
    torch.testing.assert_close(basis.component_gradients(theta.detach()), auto)
    assert not torch.isnan(auto).any()
    assert MorphingBasis(3, max_power=(2, 1, 1), max_total_power=2).n_components == 1 + 3 + 1 + 3


def test_morphing_reproduces_benchmarks_and_new_points(setup):
    sim, x, w, pool = setup
    for b in range(6):
        torch.testing.assert_close(pool.weights_at(BENCH[b]), w[:, b], rtol=1e-10, atol=1e-12)
    theta = torch.tensor([-0.45, 0.62], dtype=torch.float64)
    exact = sim.differential_cross_section(x, theta) / torch.exp(sim.proposal_log_prob(x))
    torch.testing.assert_close(pool.weights_at(theta), exact, rtol=1e-10, atol=0)
    ratio = pool.weights_at(theta) / pool.weights_at(torch.zeros(2))
    expected = sim.differential_cross_section(x, theta) / sim.differential_cross_section(x, torch.zeros(2))
    torch.testing.assert_close(ratio, expected, rtol=1e-10, atol=0)
    assert pool.cross_section(theta).item() == pytest.approx(sim.cross_section(theta.reshape(1, 2)).item(), rel=1e-12)


def test_joint_ratio_and_score_closed_form(setup):
    sim, x, _, pool = setup
    theta = torch.tensor([0.25, -0.8], dtype=torch.float64)
    # x is the whole event here, so the joint quantities equal the exact marginal ones
    exact_log_r = sim.log_prob(x, theta) - sim.log_prob(x, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(pool.joint_log_ratio(theta), exact_log_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pool.joint_score(theta), sim.score(x, theta), rtol=1e-9, atol=1e-10)
    h = 1e-5
    for j in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[j] = h
        fd = (pool.joint_log_ratio(theta + step) - pool.joint_log_ratio(theta - step)) / (2 * h)
        np.testing.assert_allclose(pool.joint_score(theta)[:, j].numpy(), fd.numpy(), rtol=1e-6, atol=1e-6)
        fd_rate = (torch.log(pool.weights_at(theta + step)) - torch.log(pool.weights_at(theta - step))) / (2 * h)
        np.testing.assert_allclose(pool.joint_score(theta, normalised=False)[:, j].numpy(), fd_rate.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "bench, match",
    [
        (BENCH[[0, 1, 2, 3, 4, 4]], "singular|ill-conditioned"),  # two identical points
        (torch.stack([torch.linspace(-1, 1, 6), 0.5 * torch.linspace(-1, 1, 6)], 1), "singular|ill-conditioned"),  # a line
        (BENCH[:5], "B == C"),
        (torch.cat([BENCH, BENCH[:1] + 0.1]), "least_squares"),
        (torch.zeros(6, 3), "expected"),
    ],
)
def test_degenerate_benchmarks_are_refused(bench, match):
    with pytest.raises(MorphingError, match=match):
        MorphingBasis(2, max_power=2, benchmarks=bench)


def test_refusal_reports_condition_number_and_least_squares_works(setup):
    _, x, w, _ = setup
    with pytest.raises(MorphingError, match="condition number"):
        MorphingBasis(2, benchmarks=BENCH[[0, 1, 2, 3, 4, 4]])
    sim = Morphing(2)
    extra = torch.cat([BENCH, torch.tensor([[0.5, -0.5]], dtype=torch.float64)])
    x7, w7 = sim.sample_weighted(200, extra, generator=torch.Generator().manual_seed(1))
    pool = WeightedEvents.from_arrays(x7, w7, extra, least_squares=True)
    theta = torch.tensor([0.2, 0.9], dtype=torch.float64)
    exact = sim.differential_cross_section(x7, theta) / torch.exp(sim.proposal_log_prob(x7))
    torch.testing.assert_close(pool.weights_at(theta), exact, rtol=1e-9, atol=0)
    chosen = MorphingBasis(2).choose_benchmarks([-1, -1], [1, 1], n_trials=20, generator=torch.Generator().manual_seed(0))
    assert MorphingBasis(2, benchmarks=chosen).condition_number < 1e4
    with pytest.raises(MorphingError, match=r"\(N, B\)"):
        WeightedEvents.from_arrays(x, w[:, :5], BENCH)


def test_resampling_simulator_works_with_ratio_training_data(setup):
    sim, _, _, pool = setup
    ev = pool.simulate(4000, theta=torch.tensor([0.8, -0.5]), generator=torch.Generator().manual_seed(3))
    grid = np.linspace(0, 3000, 30001)
    pdf = sim.differential_cross_section(torch.from_numpy(grid).reshape(-1, 1), torch.tensor([0.8, -0.5])).numpy()
    cdf = integrate.cumulative_trapezoid(pdf, grid, initial=0.0)
    cdf /= cdf[-1]
    # resampling a 3000-event pool: discrete, so only a loose KS check
    assert stats.kstest(ev.x[:, 0].double().numpy(), lambda v: np.interp(v, grid, cdf)).statistic < 0.05
    data = ratio_training_data(pool, 500, generator=torch.Generator().manual_seed(4))
    assert len(data) == 1000 and data.score_joint.shape == (1000, 2)
    index = data.latent[:, 0].long()
    expected = pool.joint_log_ratio(data.theta.double(), index=index)
    torch.testing.assert_close(data.log_r_joint.double(), expected, rtol=1e-5, atol=1e-5)
    again = augment(pool, data)
    torch.testing.assert_close(again.score_joint.double(), pool.joint_score(data.theta.double(), index=index), rtol=1e-4, atol=1e-5)


def test_weighted_training_data(setup):
    _, _, _, pool = setup
    data = pool.training_data(generator=torch.Generator().manual_seed(6))
    assert len(data) == 2 * len(pool)
    ones, zeros = data.label == 1, data.label == 0
    # reference-class weights have mean one; E_ref[r(x|theta)] = 1 for every theta
    assert data.weights[zeros].double().mean().item() == pytest.approx(1.0, rel=1e-6)  # float32 storage
    r_mean = (data.weights[zeros].double() * data.log_r_joint[zeros].double().exp()).mean().item()
    assert r_mean == pytest.approx(1.0, abs=0.05)
    # E_theta[t(x|theta)] = 0 under the numerator class
    t_mean = (data.weights[ones].double().unsqueeze(1) * data.score_joint[ones].double()).mean(0)
    assert t_mean.abs().max().item() < 0.1
    again = pool.training_data(generator=torch.Generator().manual_seed(6))
    assert torch.equal(again.x, data.x) and torch.equal(again.weights, data.weights)
