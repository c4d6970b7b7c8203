"""One likelihood model: UnbinnedLikelihood (iminuit) and fit_toys (batched Newton) agree, and match closed forms.

Toy: x ~ N(mu + c*alpha, 1) with a nuisance shift alpha constrained by N(0, 1) and an extended
yield nu(mu) = nu0 * exp(a*mu). With R = sum(x) - n*mu, the likelihood equations reduce to
R / (1 + n c^2) = a (nu(mu) - n) (one-dimensional root), alpha = c R / (1 + n c^2), and the
Hessian of -log L is [[n + a^2 nu, n c], [n c, n c^2 + 1]] (exact: the model is Gaussian in
(mu, alpha) apart from the yield).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from sbilab import Events, ParameterSpace
from sbilab.exceptions import FitError
from sbilab.stats import UnbinnedLikelihood, UnbinnedModel, fit_toys, profile_likelihood_ratio

C, A, NU0 = 0.3, 0.5, 400.0
SPACE = ParameterSpace(("mu", "alpha"), low=(-2.0, -5.0), high=(3.0, 5.0), reference=(0.0, 0.0))


def log_ratio(x, theta):
    shift = theta[:, 0] + C * theta[:, 1]
    return shift * x[:, 0] - 0.5 * shift**2


def yield_model(theta):
    return NU0 * torch.exp(A * theta[0])


MODEL = UnbinnedModel(log_ratio, SPACE, yield_model=yield_model, constraints={"alpha": (0.0, 1.0)})


def closed_form(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, sx = len(x), float(x.sum())
    mu = brentq(lambda m: (sx - n * m) / (1 + n * C**2) - A * (NU0 * math.exp(A * m) - n), -2, 3, xtol=1e-14)
    alpha = C * (sx - n * mu) / (1 + n * C**2)
    nu = NU0 * math.exp(A * mu)
    hess = np.array([[n + A**2 * nu, n * C], [n * C, n * C**2 + 1]])
    return np.array([mu, alpha]), np.linalg.inv(hess)


def sample(seed: int, mu: float = 0.4) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.poisson(torch.tensor([NU0 * math.exp(A * mu)]), generator=g))
    return (mu + torch.randn(n, generator=g, dtype=torch.float64)).numpy()


def test_both_fitters_give_the_same_minimum_and_errors_as_the_closed_form():
    x = sample(0)
    best, cov = closed_form(x)
    xt = torch.as_tensor(x).reshape(-1, 1)
    res = UnbinnedLikelihood(MODEL, Events.observed(xt)).fit()
    theta, nll, ok, tcov = fit_toys(MODEL, xt[None], return_covariance=True)
    assert res.valid and bool(ok.all())
    ml = np.array([res.best["mu"], res.best["alpha"]])
    np.testing.assert_allclose(ml, theta[0].numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose([res.errors["mu"], res.errors["alpha"]], tcov[0].diagonal().sqrt().numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(np.asarray(res.covariance), tcov[0].numpy(), rtol=1e-6, atol=0)
    assert res.nll_min == pytest.approx(float(nll[0]), rel=1e-9)
    np.testing.assert_allclose(ml, best, rtol=1e-6, atol=0)  # against the closed form
    np.testing.assert_allclose(np.asarray(res.covariance), cov, rtol=1e-6, atol=0)
    # the model from parts is the same model
    parts = UnbinnedLikelihood(log_ratio, Events.observed(xt), SPACE, yield_model=yield_model, constraints={"alpha": (0.0, 1.0)})
    for point in ([0.1, 0.2], [0.5, -1.0]):
        assert parts(point) == UnbinnedLikelihood(MODEL, Events.observed(xt))(point)
    # the profile likelihood ratio of toys is Minuit's profile
    nll_obj = UnbinnedLikelihood(MODEL, Events.observed(xt))
    t = profile_likelihood_ratio(MODEL, xt[None], torch.tensor([0.3, 0.0]), parameter="mu", best=(theta, nll))
    assert float(t[0]) == pytest.approx(nll_obj.fit(fixed={"mu": 0.3}).nll_min - res.nll_min, rel=1e-6)
    assert float(t[0]) == pytest.approx(nll_obj.profile("mu", [0.3], best=res).delta_nll[0], abs=1e-4)  # MIGRAD points


def test_toys_of_different_sizes_padded_with_zero_weights():
    samples = [sample(seed, mu) for seed, mu in ((1, 0.2), (2, 0.4), (3, 0.7))]
    n_max = max(len(s) for s in samples)
    x = torch.zeros(len(samples), n_max, 1, dtype=torch.float64)
    w = torch.zeros(len(samples), n_max, dtype=torch.float64)
    for i, s in enumerate(samples):
        x[i, : len(s), 0] = torch.as_tensor(s)
        w[i, : len(s)] = 1.0
    theta, nll, ok, cov = fit_toys(MODEL, x, weights=w, return_covariance=True)
    assert bool(ok.all())
    for i, s in enumerate(samples):
        best, exact_cov = closed_form(s)
        np.testing.assert_allclose(theta[i].numpy(), best, rtol=1e-6)
        np.testing.assert_allclose(cov[i].numpy(), exact_cov, rtol=1e-6)
        res = UnbinnedLikelihood(MODEL, Events.observed(torch.as_tensor(s).reshape(-1, 1))).fit()
        assert res.nll_min == pytest.approx(float(nll[i]), rel=1e-9)


def test_model_parts_are_checked_once():
    x = torch.zeros(3, 1)
    with pytest.raises(FitError, match="unknown parameters \\['beta'\\]"):
        UnbinnedModel(log_ratio, SPACE, constraints={"beta": (0.0, 1.0)})
    with pytest.raises(FitError, match="sigma > 0"):
        UnbinnedModel(log_ratio, SPACE, constraints={"alpha": (0.0, -1.0)})
    with pytest.raises(FitError, match="inside the space's bounds"):
        UnbinnedModel(log_ratio, SPACE, limits={"mu": (-3.0, 1.0)})
    with pytest.raises(FitError, match="part of the UnbinnedModel"):
        UnbinnedLikelihood(MODEL, Events.observed(x), constraints={"alpha": (0.0, 2.0)})
    with pytest.raises(FitError, match="needs its ParameterSpace"):
        fit_toys(log_ratio, x[None])
    narrow = UnbinnedModel(log_ratio, SPACE, limits={"mu": (-1.0, 1.0)})
    assert narrow.low.tolist() == [-1.0, -5.0] and UnbinnedLikelihood(narrow, Events.observed(x)).limits[0] == (-1.0, 1.0)
    # a yield model torch.func.vmap cannot vectorise is evaluated row by row, with one warning
    theta = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    scalar = UnbinnedModel(log_ratio, SPACE, yield_model=lambda th: NU0 * math.exp(A * float(th[0])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nu = scalar.expected_yield(theta)
        scalar.expected_yield(theta)
    assert len(caught) == 1 and "row by row" in str(caught[0].message)
    torch.testing.assert_close(nu, MODEL.expected_yield(theta))
