"""Staged simulators without training: the resonance toy as truth level + exact detector must be the toy itself."""

import math

import pytest
import torch
from scipy.stats import norm

from sbilab.events import Events
from sbilab.exceptions import ConfigError, InvalidEventsError, OutOfSupportError, ShapeMismatchError
from sbilab.simulators.toys import Resonance
from sbilab.stats import fit_toys
from sbilab.surrogates import (
    Composition,
    ResonanceDetector,
    ResonanceTruth,
    check_pairs,
    simulate_pairs,
    stage_events,
    stage_features,
)
from sbilab.surrogates.grid import grid_log_likelihood
from sbilab.surrogates.resonance import log_interval_probability

TOY = Resonance()
EXACT = Composition(ResonanceTruth(TOY), ResonanceDetector(TOY))
THETAS = torch.tensor([[100.0, 5.0], [95.0, 2.0], [105.0, 8.0], [97.0, 7.0]], dtype=torch.float64)


def test_composition_of_exact_stages_is_the_toy():
    x = torch.linspace(85.05, 114.95, 61, dtype=torch.float64).reshape(-1, 1)
    for theta in THETAS:
        assert torch.allclose(EXACT.log_prob(x, theta), TOY.log_prob(x, theta), atol=2e-6, rtol=0)
    assert torch.allclose(EXACT.log_acceptance(THETAS).exp(), TOY.acceptance(THETAS), rtol=2e-6)
    # the documented value A(100, 5) = 0.8929820109
    assert float(EXACT.log_acceptance(torch.tensor([100.0, 5.0])).exp()) == pytest.approx(0.8929820109, abs=1e-6)
    assert torch.allclose(EXACT.score(x[:9], THETAS[0]), TOY.score(x[:9], THETAS[0]), atol=1e-6)


def test_joint_likelihood_and_sampling_match_the_toy():
    theta = THETAS[0].expand(4000, 2).float()
    ev = EXACT.sample(theta, generator=torch.Generator().manual_seed(0))
    assert bool(((ev.x > 85) & (ev.x < 115)).all()) and ev.latent.shape == (4000, 1)
    pairs = Events(x=ev.x.double(), theta=ev.theta.double(), latent=ev.latent.double())
    assert torch.allclose(EXACT.joint_log_prob(pairs[:50], pairs.theta[:50]), TOY.joint_log_prob(pairs[:50], pairs.theta[:50]), atol=1e-6)
    # mean of x against quadrature of the exact density (MC error ~ 5/sqrt(4000) = 0.08)
    grid = torch.linspace(85, 115, 30001, dtype=torch.float64)[1:-1].reshape(-1, 1)
    p = TOY.log_prob(grid, THETAS[0]).exp()
    mean = float((p * grid[:, 0]).sum() / p.sum())
    assert abs(float(ev.x.double().mean()) - mean) < 4 * float(ev.x.double().std()) / math.sqrt(4000)


def test_exact_detector_efficiency_and_truncated_response():
    m = torch.tensor([[80.0], [86.0], [100.0], [114.0], [125.0]], dtype=torch.float64)
    det = ResonanceDetector(TOY)
    expected = norm.cdf((115 - m[:, 0].numpy()) / 2) - norm.cdf((85 - m[:, 0].numpy()) / 2)
    assert torch.allclose(det.log_efficiency(m).exp(), torch.as_tensor(expected), rtol=1e-10)
    far = torch.tensor([[40.0]], dtype=torch.float64)  # both tails far below double precision's ndtr: log Φ(-22.5)
    assert float(det.log_efficiency(far)) == pytest.approx(float(norm.logsf(22.5)), rel=1e-10)
    draws = det.sample_reco(torch.full((20000, 1), 86.0, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    a, b = (85 - 86) / 2, (115 - 86) / 2
    mean = 86 + 2 * (norm.pdf(a) - norm.pdf(b)) / (norm.cdf(b) - norm.cdf(a))  # truncated-normal mean
    assert bool(((draws > 85) & (draws < 115)).all())
    assert float(draws.mean()) == pytest.approx(mean, abs=4 * 1.6 / math.sqrt(20000))


def test_toy_fits_on_grid_features_equal_exact_fits():
    toys = TOY.sample(THETAS[0].expand(6 * 300, 2).float(), generator=torch.Generator().manual_seed(2)).x.double().reshape(6, 300, 1)
    table = EXACT.feature_table(85.0, 115.0, 2001)
    feats = torch.stack([table(t) for t in toys])
    fitted, _, ok = fit_toys(EXACT.feature_log_prob, feats, TOY.space, start=THETAS[0])
    exact, _, ok_exact = fit_toys(TOY.log_prob, toys, TOY.space, start=THETAS[0])
    assert bool(ok.all()) and bool(ok_exact.all())
    assert torch.allclose(fitted, exact, atol=2e-3)
    assert table.max_error(EXACT.likelihood_features, toys[0]) < 1e-4
    with pytest.raises(OutOfSupportError, match="tabulated range"):
        table(torch.tensor([[84.0]]))


def test_grid_likelihood_shared_theta_has_exact_derivatives_per_row():
    """Rows sharing a θ value (toys at the same start point) stay separate variables."""
    x = TOY.sample(THETAS[0].expand(40, 2).float(), generator=torch.Generator().manual_seed(3)).x.double()
    feats = EXACT.likelihood_features(x)
    nodes, log_w, e = EXACT._grid()
    theta = THETAS[0].expand(40, 2).clone().requires_grad_(True)  # 1 distinct value: the shared path
    shared = grid_log_likelihood(feats, theta, EXACT.truth.truth_log_prob, nodes, log_w, e)
    (g_shared,) = torch.autograd.grad(shared[:20].sum(), theta)
    assert torch.allclose(shared, TOY.log_prob(x, theta.detach()), atol=1e-6)
    assert torch.allclose(g_shared[:20], TOY.score(x[:20], THETAS[0]), atol=1e-6)
    assert bool((g_shared[20:] == 0).all())  # rows 20.. did not enter the sum


def test_paired_data_are_checked():
    with pytest.raises(InvalidEventsError, match="truth has 5 rows but reco has 4"):
        check_pairs(torch.zeros(5, 1), torch.zeros(4, 1))
    with pytest.raises(InvalidEventsError, match="passed has 3 entries"):
        stage_events(torch.zeros(5, 1), torch.zeros(5, 1), torch.ones(3, dtype=torch.bool))
    with pytest.raises(InvalidEventsError, match="no event passed"):
        stage_events(torch.zeros(5, 1), torch.zeros(5, 1), torch.zeros(5, dtype=torch.bool))
    z, x, passed = simulate_pairs(EXACT.truth, EXACT.stage, THETAS[:1].expand(100, 2), generator=torch.Generator().manual_seed(4))
    view = stage_events(z, x, passed)
    assert len(view) == int(passed.sum()) and torch.equal(view.latent[:, 0], x[passed, 0].float())
    assert stage_features(z, x).shape == (100, 2)


def test_composition_refuses_theta_outside_the_space_and_missing_pieces():
    with pytest.raises(OutOfSupportError, match="outside the parameter space"):
        EXACT.sample(torch.tensor([[120.0, 5.0]]))
    with pytest.raises(OutOfSupportError):
        EXACT.log_prob(torch.tensor([[100.0]]), torch.tensor([100.0, 9.0]))
    with pytest.raises(ConfigError, match="lacks sample_truth"):
        Composition(object(), ResonanceDetector(TOY))
    with pytest.raises(ShapeMismatchError):
        EXACT.feature_table(85.0, 115.0)(torch.zeros(3, 2))


class _ResolutionFromWidth(ResonanceDetector):
    """An exact stage that depends on θ: resolution σ(θ) = 1 + 0.2 Γ (to test the θ-dependent paths)."""

    def __init__(self, sim):
        super().__init__(sim)
        self.space = sim.space

    def log_efficiency(self, truth, theta=None):
        m = torch.as_tensor(truth, dtype=torch.float64)[:, 0]
        s = 1.0 + 0.2 * torch.as_tensor(theta, dtype=torch.float64)[:, 1]
        return log_interval_probability((85 - m) / s, (115 - m) / s)

    def log_prob(self, reco, truth, theta=None):
        x, m = torch.as_tensor(reco, dtype=torch.float64)[:, 0], torch.as_tensor(truth, dtype=torch.float64)[:, 0]
        s = 1.0 + 0.2 * torch.as_tensor(theta, dtype=torch.float64)[:, 1]
        return -0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi) - self.log_efficiency(truth, theta)

    def sample(self, truth, theta=None, *, generator=None):
        m = torch.as_tensor(truth, dtype=torch.float64)[:, 0]
        s = 1.0 + 0.2 * torch.as_tensor(theta, dtype=torch.float64)[:, 1]
        x = m + s * torch.randn(m.shape[0], generator=generator, dtype=torch.float64)
        return x.unsqueeze(1), (x > 85) & (x < 115)


def test_a_theta_dependent_stage_composes_to_a_normalised_likelihood():
    staged = Composition(ResonanceTruth(TOY), _ResolutionFromWidth(TOY))
    grid = torch.linspace(85, 115, 3001, dtype=torch.float64)[1:-1].reshape(-1, 1)
    for theta in THETAS[:2]:
        density = staged.log_prob(grid, theta).exp()
        assert float(density.sum() * (grid[1, 0] - grid[0, 0])) == pytest.approx(1.0, abs=1e-3)
    ev = staged.sample(THETAS[:1].expand(200, 2).float(), generator=torch.Generator().manual_seed(5))
    assert bool(((ev.x > 85) & (ev.x < 115)).all())
    with pytest.raises(ConfigError, match="depends on θ"):
        staged.likelihood_features(ev.x)
