"""Unbinned fits against closed forms on the Gaussian toy (exact likelihood ratios)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn

from sbilab.events import Events
from sbilab.exceptions import FitError, OutOfSupportError
from sbilab.simulators.space import ParameterSpace
from sbilab.simulators.toys import GaussianLatent
from sbilab.stats.unbinned import UnbinnedLikelihood

SIM = GaussianLatent()  # x ~ N(theta, 5)
VAR = 5.0
N = 500


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return SIM.simulate(N, theta=torch.tensor([0.4]), generator=torch.Generator().manual_seed(3)).x


def exact_log_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return SIM.log_prob(x, theta) - SIM.log_prob(x, SIM.space.reference)


def test_mle_is_sample_mean_and_errors_are_exact(x):
    xbar, sigma = float(x.double().mean()), math.sqrt(VAR / N)
    nll = UnbinnedLikelihood(exact_log_ratio, Events.observed(x), SIM.space)
    res = nll.fit(minos=True)
    assert res.valid and res.converged and res.message == ""
    assert res.best["theta"] == pytest.approx(xbar, abs=2e-3 * sigma)
    assert res.errors["theta"] == pytest.approx(sigma, rel=1e-4)
    lo, hi = res.minos["theta"]
    assert lo == pytest.approx(xbar - sigma, abs=1e-4) and hi == pytest.approx(xbar + sigma, abs=1e-4)
    lo, hi = nll.interval("theta", best=res)
    assert lo == pytest.approx(xbar - sigma, abs=1e-5) and hi == pytest.approx(xbar + sigma, abs=1e-5)
    lo95, hi95 = nll.interval("theta", cl=0.95, best=res)
    assert hi95 - lo95 == pytest.approx(2 * 1.959964 * sigma, rel=1e-4)
    prof = nll.profile("theta", np.linspace(xbar - 2 * sigma, xbar + 2 * sigma, 41), best=res)
    np.testing.assert_allclose(prof.delta_nll, ((np.asarray(prof.values) - xbar) / sigma) ** 2, atol=1e-6)
    plo, phi = prof.interval()
    assert plo == pytest.approx(xbar - sigma, abs=2e-3 * sigma) and phi == pytest.approx(xbar + sigma, abs=2e-3 * sigma)
    json.dumps(res.to_dict()), json.dumps(prof.to_dict())


def test_gradient_is_autograd_exact(x):
    nll = UnbinnedLikelihood(exact_log_ratio, Events.observed(x), SIM.space)
    assert nll.use_gradient
    for t in (-0.5, 0.1, 1.3):
        expected = -2.0 * float(((x.double()[:, 0] - t) / VAR).sum())
        assert nll.gradient([t])[0] == pytest.approx(expected, rel=1e-10)


def test_weights_enter_the_likelihood(x):
    w = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = UnbinnedLikelihood(exact_log_ratio, Events.observed(x, weights=w), SIM.space).fit()
    xw = float((w * x.double()[:, 0]).sum() / w.sum())
    assert res.best["theta"] == pytest.approx(xw, abs=1e-4)
    assert res.errors["theta"] == pytest.approx(math.sqrt(VAR / float(w.sum())), rel=1e-4)


class _RatioModule(nn.Module):
    """Exact Gaussian log-ratio as a float32 module with a buffer (stands in for a RatioEstimator)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("var", torch.tensor(VAR))
        self.lin = nn.Linear(1, 1)  # a parameter, to check the caller's copy stays float32

    def forward(self, x, theta):
        ref = 0.0
        return (-(x[:, 0] - theta[:, 0]) ** 2 + (x[:, 0] - ref) ** 2) / (2 * self.var)


def test_module_is_evaluated_in_float64_copy(x):
    module = _RatioModule()
    nll = UnbinnedLikelihood(module, Events.observed(x), SIM.space)
    res = nll.fit()
    assert module.var.dtype == torch.float32 and module.lin.weight.dtype == torch.float32
    assert res.best["theta"] == pytest.approx(float(x.double().mean()), abs=2e-4)
    assert res.errors["theta"] == pytest.approx(math.sqrt(VAR / N), rel=1e-4)


def test_extended_fit_with_poisson_yield(x):
    nu0 = 450.0

    def yield_model(theta):
        return nu0 * torch.exp(theta[0] / 2)

    # flat shape: only the Poisson term: nu_hat = n  =>  theta_hat = 2 log(n / nu0), sigma = 2/sqrt(n)
    flat = UnbinnedLikelihood(lambda x, t: 0.0 * t[:, 0], Events.observed(x), SIM.space, yield_model=yield_model)
    res = flat.fit()
    assert res.best["theta"] == pytest.approx(2 * math.log(N / nu0), abs=1e-4)
    assert res.errors["theta"] == pytest.approx(2 / math.sqrt(N), rel=1e-3)
    # shape + yield: score equation sum(x - t)/5 + (n - nu(t))/2 = 0; Fisher N/5 + nu/4
    full = UnbinnedLikelihood(exact_log_ratio, Events.observed(x), SIM.space, yield_model=yield_model)
    res = full.fit()
    xs = x.double()[:, 0].numpy()
    t_hat = brentq(lambda t: (xs - t).sum() / VAR + (N - nu0 * math.exp(t / 2)) / 2, -2, 2)
    assert res.best["theta"] == pytest.approx(t_hat, abs=1e-4)
    fisher = N / VAR + nu0 * math.exp(t_hat / 2) / 4
    assert res.errors["theta"] == pytest.approx(1 / math.sqrt(fisher), rel=1e-3)


def _nuisance_setup(x, sigma_eta):
    space = ParameterSpace(("theta", "eta"), low=(-2.0, -2.0), high=(2.0, 2.0))

    def log_ratio(x, th):  # location-shift nuisance: x ~ N(theta + eta, 5)
        return SIM.log_prob(x, th[:, :1] + th[:, 1:]) - SIM.log_prob(x, torch.zeros(1, dtype=x.dtype))

    return UnbinnedLikelihood(log_ratio, Events.observed(x), space, constraints={"eta": (0.0, sigma_eta)})


def test_constrained_nuisance_widens_interval_by_closed_form(x):
    sigma_eta = 0.08
    nll = _nuisance_setup(x, sigma_eta)
    res = nll.fit(minos=["theta"])
    xbar = float(x.double().mean())
    total = math.sqrt(VAR / N + sigma_eta**2)
    assert res.valid
    assert res.best["theta"] == pytest.approx(xbar, abs=2e-3 * total)
    assert res.best["eta"] == pytest.approx(0.0, abs=2e-3 * total)
    assert res.errors["theta"] == pytest.approx(total, rel=1e-3)
    lo, hi = nll.interval("theta", best=res)
    assert lo == pytest.approx(xbar - total, abs=1e-3 * total) and hi == pytest.approx(xbar + total, abs=1e-3 * total)
    # correlated fit: covariance = inverse Fisher of the two-parameter model
    fisher = np.array([[N / VAR, N / VAR], [N / VAR, N / VAR + 1 / sigma_eta**2]])
    np.testing.assert_allclose(np.asarray(res.covariance), np.linalg.inv(fisher), rtol=2e-3)
    assert res.correlation()[0, 1] == pytest.approx(-sigma_eta / total, rel=2e-3)
    # 2-D profile of a Gaussian likelihood is the exact quadratic form
    xs, ys = [xbar - 0.1, xbar, xbar + 0.1], [-0.05, 0.0, 0.05]
    prof = nll.profile2d(("theta", "eta"), xs, ys, best=res)
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            d = np.array([a - xbar, b])
            assert prof.delta_nll[i][j] == pytest.approx(d @ fisher @ d, abs=1e-4)
    # fixing the nuisance gives back the statistics-only error
    stat = nll.fit(fixed={"eta": 0.0})
    assert stat.errors["theta"] == pytest.approx(math.sqrt(VAR / N), rel=1e-3) and stat.errors["eta"] == 0.0


def test_non_finite_likelihood_is_reported_invalid(x):
    def bad(x, th):
        return torch.where(th[:, 0] > 0.0, torch.full_like(th[:, 0], math.nan), exact_log_ratio(x, th))

    res = UnbinnedLikelihood(bad, Events.observed(x), SIM.space, start={"theta": 0.5}).fit()
    assert not res.valid and res.message


def test_flat_likelihood_is_reported_invalid(x):
    res = UnbinnedLikelihood(lambda x, t: 0.0 * t[:, 0], Events.observed(x), SIM.space).fit()
    assert not res.valid and res.message


def test_bad_input_raises_named_errors(x):
    ev = Events.observed(x)
    with pytest.raises(FitError, match="no events"):
        UnbinnedLikelihood(exact_log_ratio, Events.observed(torch.zeros(0, 1)), SIM.space)
    with pytest.raises(FitError, match="unknown parameters"):
        UnbinnedLikelihood(exact_log_ratio, ev, SIM.space, fixed={"mass": 1.0})
    with pytest.raises(FitError, match="unknown parameters"):
        UnbinnedLikelihood(exact_log_ratio, ev, SIM.space, constraints={"eta": (0.0, 1.0)})
    with pytest.raises(FitError, match="sigma > 0"):
        UnbinnedLikelihood(exact_log_ratio, ev, SIM.space, constraints={"theta": (0.0, 0.0)})
    nll = UnbinnedLikelihood(exact_log_ratio, ev, SIM.space)
    with pytest.raises(FitError, match="unknown parameter"):
        nll.profile("mass", [0.0])
    with pytest.raises(OutOfSupportError):
        nll.profile("theta", [5.0])
    with pytest.raises(OutOfSupportError):
        UnbinnedLikelihood(exact_log_ratio, ev, SIM.space, fixed={"theta": 3.0})
    unbounded = ParameterSpace(
        ("theta",), low=(-math.inf,), high=(math.inf,), reference=(0.0,), proposal=torch.distributions.Normal(torch.zeros(1), 1.0)
    )
    with pytest.raises(FitError, match="no finite bounds"):
        UnbinnedLikelihood(exact_log_ratio, ev, unbounded)
    res = UnbinnedLikelihood(exact_log_ratio, ev, unbounded, limits={"theta": (-3.0, 3.0)}).fit()
    assert res.best["theta"] == pytest.approx(float(x.double().mean()), abs=1e-4)


def test_bound_method_of_a_float32_module_is_evaluated_in_float64():
    # A float32 network summed over many events is too coarse for MIGRAD (EDM ~ 1e-5): the
    # likelihood must copy the module behind `estimator.log_ratio` to float64.
    import torch
    from torch import nn

    from sbilab import Events, ParameterSpace
    from sbilab.stats import UnbinnedLikelihood

    class GaussRatio(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.2))  # float32, 1/(σ_z² + σ_x²)

        def log_ratio(self, x, theta):
            return self.scale * (x[:, 0] * theta[:, 0] - 0.5 * theta[:, 0] ** 2)

    module = GaussRatio()
    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5**0.5 + 0.3
    space = ParameterSpace(("theta",), low=(-2.0,), high=(2.0,))
    nll = UnbinnedLikelihood(module.log_ratio, Events.observed(x), space)
    s = float(module.scale.detach().double())
    for th in (0.1, 0.3, 0.7):
        exact = -2 * s * float((x[:, 0] * th - 0.5 * th**2).sum())
        assert abs(nll([th]) - exact) < 1e-9 * abs(exact)
    assert module.scale.dtype == torch.float32  # the caller's module is untouched
    res = nll.fit()
    assert res.valid and abs(res.best["theta"] - float(x.mean())) < 0.01 * res.errors["theta"]


# ---------------------------------------------------------------------------------------------
# Set-valued events: each event is a set of n_j ~ 1 + Poisson(2) particles x ~ N(mu, 1), padded
# to M entries. The exact per-event log-ratio against mu = 0 is sum over real entries of
# mu x - mu^2 / 2, so the MLE is the mean of all real entries and sigma = 1 / sqrt(sum_j n_j).

SET_SPACE = ParameterSpace(("mu",), low=(-10.0,), high=(10.0,), reference=(0.0,))


def particle_sets(n_events: int, mu: float, fill: float, seed: int, m: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    counts = 1 + torch.poisson(torch.full((n_events,), 2.0), generator=g).clamp(max=m - 1)
    mask = torch.arange(m)[None, :] < counts[:, None]
    x = mu + torch.randn(n_events, m, 1, generator=g, dtype=torch.float64)
    x[~mask] = fill
    return x, mask


def set_log_ratio(x: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log r of a set (N, M, 1) given its mask (N, M); without a mask every entry counts."""
    mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    xm = torch.where(mask, x[..., 0], torch.zeros((), dtype=x.dtype))  # padding never reaches the arithmetic
    mu = theta[:, :1]
    return (mask * (mu * xm - 0.5 * mu**2)).sum(1)


def test_padded_sets_reach_the_likelihood_with_their_mask():
    fits = {}
    for fill in (0.0, 7.5, math.nan):
        x, mask = particle_sets(300, 0.6, fill, seed=11)
        nll = UnbinnedLikelihood(set_log_ratio, Events.observed(x, mask=mask), SET_SPACE)
        fits[fill] = nll.fit()
    real = x[..., 0][mask]
    mu_hat, sigma = float(real.mean()), 1 / math.sqrt(int(mask.sum()))
    for res in fits.values():
        assert res.valid
        assert res.best["mu"] == pytest.approx(mu_hat, abs=1e-9)
        assert res.errors["mu"] == pytest.approx(sigma, rel=1e-9)
    assert fits[0.0].nll_min == fits[7.5].nll_min  # the padding values play no role at all
    lo, hi = nll.interval("mu", best=fits[math.nan])
    assert (lo, hi) == (pytest.approx(mu_hat - sigma, abs=1e-6), pytest.approx(mu_hat + sigma, abs=1e-6))
    # the old path (the set's mask dropped, as UnbinnedLikelihood did before): padding counted as particles
    old = {}
    for fill in (0.0, 7.5):
        x, mask = particle_sets(300, 0.6, fill, seed=11)
        old[fill] = UnbinnedLikelihood(set_log_ratio, Events.observed(x), SET_SPACE).fit().best["mu"]
        assert old[fill] == pytest.approx(float(x.mean()), abs=1e-9)  # mean over every entry, padding included
    assert abs(old[0.0] - mu_hat) > 10 * sigma and abs(old[7.5] - old[0.0]) > 100 * sigma


def test_set_log_ratio_module_receives_the_mask():
    class SetRatio(nn.Module):  # float32 module: evaluated through a float64 copy, mask passed by keyword
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("one", torch.tensor(1.0))

        def forward(self, x, theta, mask=None):
            return self.one * set_log_ratio(x, theta, mask)

    x, mask = particle_sets(200, -0.3, math.nan, seed=12)
    res = UnbinnedLikelihood(SetRatio(), Events.observed(x, mask=mask), SET_SPACE).fit()
    assert res.best["mu"] == pytest.approx(float(x[..., 0][mask].mean()), abs=1e-9)


# ---------------------------------------------------------------------------- honest fits (issue 11)
def test_optimum_at_a_bound_is_not_valid():
    """Data whose likelihood peaks beyond the range: the old code reported valid=True with HESSE error 4e-8."""
    far = SIM.simulate(200, theta=torch.tensor([1.9]), generator=torch.Generator().manual_seed(4)).x + 3.0  # mean ~ 4.9 > bound 2
    res = UnbinnedLikelihood(exact_log_ratio, Events.observed(far), SIM.space).fit()
    assert res.best["theta"] == pytest.approx(2.0, abs=1e-6) and res.errors["theta"] < 1e-4
    assert not res.valid and res.at_bound == ("theta",)
    assert "lies at the upper bound 2 of its range" in res.reason and res.reason == res.message
    inside = UnbinnedLikelihood(exact_log_ratio, Events.observed(far - 3.0), SIM.space).fit()
    assert inside.valid and inside.at_bound == () and inside.message == ""
    fixed = UnbinnedLikelihood(exact_log_ratio, Events.observed(far), SIM.space).fit(fixed={"theta": 2.0})
    assert fixed.at_bound == ()  # a parameter fixed at its bound is not an optimum at the bound


def test_negative_observed_weights_are_not_valid(x):
    w = torch.ones(N, dtype=torch.float64)
    w[:5] = -1.0
    res = UnbinnedLikelihood(exact_log_ratio, Events.observed(x, weights=w), SIM.space).fit()
    assert not res.valid and "5 of 500 observed events have negative weights (min -1)" in res.message
    ok = UnbinnedLikelihood(exact_log_ratio, Events.observed(x, weights=w.abs()), SIM.space).fit()
    assert ok.valid


def test_observed_events_outside_the_training_support(x):
    from sbilab.estimators.support import TrainingSupport

    support = TrainingSupport.from_data(x.clamp(-3.0, 3.0))  # "trained" on [-3, 3]: with the 5% margin [-3.3, 3.3]
    inside = x.clamp(-3.0, 3.0)
    outliers = torch.cat([inside, torch.full((5, 1), 130.0, dtype=inside.dtype)])
    clean = UnbinnedLikelihood(exact_log_ratio, Events.observed(inside), SIM.space, support=support).fit()
    assert clean.valid and clean.outside_support == 0.0 and clean.notes == ()
    dirty = UnbinnedLikelihood(exact_log_ratio, Events.observed(outliers), SIM.space, support=support).fit()
    assert dirty.outside_support == pytest.approx(5 / 505, abs=1e-15)
    assert not dirty.valid and "lie outside the estimator's training support (5 of 505 events, first at row 500: feature 0 = 130" in dirty.message
    tolerant = UnbinnedLikelihood(exact_log_ratio, Events.observed(outliers), SIM.space, support=support, max_outside=0.01).fit()
    assert tolerant.valid and tolerant.outside_support == dirty.outside_support
    w = torch.ones(505, dtype=torch.float64)
    w[500:] = 0.0  # weighted fraction: zero-weight outliers do not count
    weighted = UnbinnedLikelihood(exact_log_ratio, Events.observed(outliers, weights=w), SIM.space, support=support).fit()
    assert weighted.outside_support == 0.0 and weighted.valid
    unknown = UnbinnedLikelihood(exact_log_ratio, Events.observed(outliers), SIM.space).fit()  # a plain callable records no range
    assert unknown.valid and math.isnan(unknown.outside_support)
    assert unknown.notes and "training-support check unavailable" in unknown.notes[0]


@pytest.fixture(scope="module")
def resonance_ratio():
    """A small ALICES ratio estimator of the Resonance toy, trained on x in its window [85, 115]."""
    from sbilab import RatioEstimator, fit, get_loss
    from sbilab.simulators import ratio_training_data
    from sbilab.simulators.toys import Resonance

    sim = Resonance()
    train = ratio_training_data(sim, 2000, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    est = RatioEstimator.from_events(train, sim.space, hidden=(32, 32))
    fit(est, get_loss("alices", alpha=1.0), train, epochs=6, batch_size=256, seed=0, progress=False)
    return sim, est


def test_resonance_events_at_130_make_the_learned_fit_invalid(resonance_ratio):
    """The measured failure: 5 events at x = 130 (outside the training window) moved Gamma with valid=True."""
    sim, est = resonance_ratio
    assert est.training_support.low[0] > 85.0 and est.training_support.high[0] < 115.0
    obs = sim.simulate(1000, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(2)).x
    clean = UnbinnedLikelihood(est, Events.observed(obs), sim.space).fit()
    assert clean.outside_support == 0.0 and "training support" not in clean.message
    dirty = UnbinnedLikelihood(est, Events.observed(torch.cat([obs, torch.full((5, 1), 130.0)])), sim.space).fit()
    assert dirty.outside_support == pytest.approx(5 / 1005, abs=1e-15)
    assert not dirty.valid and "5 of 1005 events, first at row 1000: feature 0 = 130 outside the training range" in dirty.message
    assert dirty.best["Gamma"] != clean.best["Gamma"]  # the outliers do move the fit: that is why it is not valid
