"""ABCD: the estimate and its closure against quadrature; the four-channel likelihood against abcd-pyhf's reference."""

import math

import numpy as np
import pytest

from sbilab.anomaly import (
    AbcdCountingModel,
    DecorrelationToy,
    abcd_estimate,
    abcd_inference,
    abcd_regions,
    abcd_workspace,
    bivariate_normal_abcd,
    threshold_at_efficiency,
)
from sbilab.anomaly.abcd_model import _code4
from sbilab.exceptions import FitError, RegionError
from sbilab.stats.binned import PyhfModel, numpy_minuit


@pytest.mark.parametrize("rho, closure", [(0.0, 1.0), (0.1, 0.7250), (0.3, 0.3871), (0.5, 0.1984)])
def test_bivariate_normal_closure_by_quadrature(rho, closure):
    p = bivariate_normal_abcd(rho)
    assert p.closure == pytest.approx(closure, abs=5e-5)
    assert p.p_a + p.p_b + p.p_c + p.p_d == pytest.approx(1.0, abs=1e-12)
    if rho == 0.0:
        assert (p.p_a, p.p_b, p.p_c, p.p_d) == pytest.approx((0.02517, 0.13348, 0.13348, 0.70786), abs=5e-6)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5])
def test_estimate_reproduces_the_quadrature_closure(rho):
    g = np.random.default_rng(int(10 * rho))
    z = g.normal(size=(2, 400_000))
    u, v = z[0], rho * z[0] + math.sqrt(1 - rho**2) * z[1]
    est = abcd_estimate(u, v, cut_u=1.0, cut_v=1.0, require_a=True)
    exact = bivariate_normal_abcd(rho).closure
    assert abs(est.closure - exact) < 4 * est.closure_error
    assert est.closes() == (rho == 0.0)  # the bias is reported: a pull of many sigma for correlated variables
    assert est.counts.events["A"] + est.counts.events["B"] + est.counts.events["C"] + est.counts.events["D"] == u.size


def test_statistical_error_matches_the_spread_of_repeated_experiments():
    g = np.random.default_rng(7)
    predictions, errors = [], []
    for _ in range(300):
        u, v = g.normal(size=(2, 2000))
        w = g.uniform(0.5, 1.5, size=2000)
        est = abcd_estimate(u, v, cut_u=0.5, cut_v=0.5, weights=w)
        predictions.append(est.predicted)
        errors.append(est.predicted_error)
    # the spread of the prediction agrees with its quoted error (to the ~6 % precision of 300 experiments)
    assert np.std(predictions) == pytest.approx(np.mean(errors), rel=0.15)


def test_regions_directions_and_thresholds():
    u = np.array([2.0, 2.0, 0.0, 0.0])
    v = np.array([2.0, 0.0, 2.0, 0.0])
    assert abcd_regions(u, v, cut_u=1, cut_v=1).tolist() == [0, 1, 2, 3]
    assert abcd_regions(u, v, cut_u=1, cut_v=1, above=(False, True)).tolist() == [2, 3, 0, 1]
    s = np.arange(1000.0)
    cut = threshold_at_efficiency(s, 0.1)
    assert (s > cut).sum() == 100
    w = np.where(s >= 500, 3.0, 1.0)  # 3/4 of the weight above 500
    assert threshold_at_efficiency(s, 0.75, weights=w) == pytest.approx(499.5)


def test_empty_regions_are_named():
    u, v = np.array([0.0, 2.0, 0.0]), np.array([0.0, 0.0, 2.0])
    with pytest.raises(RegionError, match=r"region\(s\) \['A'\]"):
        abcd_estimate(u, v, cut_u=1.0, cut_v=1.0, require_a=True)
    with pytest.raises(RegionError, match=r"\['B', 'C'\] are empty .*loosen the cuts"):
        abcd_estimate(u, v, cut_u=5.0, cut_v=5.0)


def test_optimal_classifier_closure_on_the_decorrelation_toy():
    # the optimal score of the toy is a standard normal correlated with m by rho' = rho mu_1/|mu|
    toy = DecorrelationToy(rho=0.7)
    bkg = toy.background(300_000)
    score = toy.log_ratio(bkg.x).numpy()
    z = (score - score.mean()) / score.std()
    est = abcd_estimate(z, bkg.spectator[:, 0].numpy(), cut_u=0.8, cut_v=1.0, require_a=True)
    exact = bivariate_normal_abcd(toy.score_mass_correlation, 0.8, 1.0).closure
    assert abs(est.closure - exact) < 4 * est.closure_error


# ---------------------------------------------------------------------------- the likelihood
def test_reference_of_abcd_pyhf_through_pyhf_and_iminuit():
    res = abcd_inference((10, 100, 100, 1000), (1, 0, 0, 0))
    band = (3.979234, 5.557391, 7.962507, 11.797208, 16.974624)
    assert res.limit.scan == tuple(float(v) for v in range(27))  # abcd-pyhf's scan: mu = 0, 1, ..., 26
    assert res.limit.observed == pytest.approx(7.962507, rel=2e-5)
    assert res.limit.expected == pytest.approx(band, rel=2e-5)
    # iminuit, with the same asymptotic formulas, is the independent cross-check (and tighter)
    assert res.limit_iminuit.observed == pytest.approx(7.962507, rel=1e-6)
    assert res.limit_iminuit.expected == pytest.approx(band, rel=1e-6)
    # background-only fit: mu_b = B C / D = 10, error 1.3174 from the exact Fisher information
    # (abcd-pyhf quotes 1.316 from scipy's approximate Hessian)
    fisher = np.array([[1210.0, 1100.0, 1100.0], [1100.0, 1100.0, 1000.0], [1100.0, 1000.0, 1100.0]])
    sigma = 10.0 * math.sqrt(np.linalg.inv(fisher)[0, 0])
    for fit in (res.background_fit, res.background_fit_iminuit):
        assert fit.best["mu_b"] == pytest.approx(10.0, rel=1e-4)
        assert fit.errors["mu_b"] == pytest.approx(sigma, rel=0.01) and fit.errors["mu_b"] == pytest.approx(1.316, rel=0.01)
    # n_A equals the background-only expectation: no excess
    assert res.significance == pytest.approx(0.0, abs=0.01) and res.significance_iminuit == pytest.approx(0.0, abs=0.01)


def test_contamination_and_shape_uncertainty_agree_between_pyhf_and_iminuit():
    observed, signal = (25, 110, 105, 1000), (8, 1.5, 1.0, 0.2)
    ws = abcd_workspace(observed, signal, background_uncertainty=0.2)
    model = PyhfModel(ws)
    counting = AbcdCountingModel(observed, signal, background_uncertainty=0.2)
    order = model.model.config.par_order  # pyhf orders parameters by name
    with numpy_minuit():
        for alpha in (-1.7, -0.4, 0.0, 0.6, 1.3):  # code-4 interpolation inside |alpha| < 1, exponential outside
            pars = np.array([2.0, 9.0, 11.0, 9.5, alpha])
            pyhf_pars = np.zeros(len(order))
            for name, value in zip(("mu", "mu_b", "tau_B", "tau_C", "abcd_nonclosure"), pars):
                pyhf_pars[model.model.config.par_slice(name)] = value
            assert -2 * float(model.model.logpdf(pyhf_pars, model.observed)[0]) == pytest.approx(counting.twice_nll(pars, counting.observed), rel=1e-10)
    assert _code4(1.0, 1.2, 0.8) == pytest.approx(1.2) and _code4(-1.0, 1.2, 0.8) == pytest.approx(0.8)
    res = abcd_inference(observed, signal, background_uncertainty=0.2, scan=np.linspace(0, 6, 7))
    assert res.limit.observed == pytest.approx(res.limit_iminuit.observed, rel=2e-3)
    assert res.limit.expected == pytest.approx(res.limit_iminuit.expected, rel=2e-3)
    assert res.significance == pytest.approx(res.significance_iminuit, rel=5e-3) and res.significance > 1.0


def test_model_errors():
    with pytest.raises(RegionError, match=r"control region\(s\) \['C'\] are empty"):
        abcd_workspace((10, 100, 0, 1000))
    with pytest.raises(RegionError, match="four finite counts"):
        abcd_workspace((10, -1, 100, 1000))
    with pytest.raises(RegionError, match="all zero"):
        abcd_workspace((10, 100, 100, 1000), (0, 0, 0, 0))
    with pytest.raises(FitError, match="background_uncertainty"):
        AbcdCountingModel((10, 100, 100, 1000), background_uncertainty=1.5)
