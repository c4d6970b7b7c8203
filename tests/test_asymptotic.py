"""Asymptotic formulae against closed forms and against pyhf on the same binned models."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyhf
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from sbilab.exceptions import FitError
from sbilab.stats import asymptotic
from sbilab.stats.binned import PyhfModel, build_workspace, numpy_minuit


class GaussianMeasurement:
    """x ~ N(mu, 1): the textbook case where every asymptotic formula is exact."""

    poi_index = 0

    def fit(self, data, poi=None):
        mu = float(data) if poi is None else float(poi)
        return (float(data) - mu) ** 2, np.array([mu]), True

    def asimov(self, parameters):
        return float(parameters[0])


def test_statistic_branches():
    assert asymptotic.q0(4.0, 1.0) == 4.0 and asymptotic.q0(4.0, -1.0) == 0.0
    assert asymptotic.qmu(2.0, 0.5, 1.0) == 2.0 and asymptotic.qmu(2.0, 1.5, 1.0) == 0.0
    # qtilde: mu_hat < 0 -> denominator at mu = 0
    assert asymptotic.qtilde_mu(10.0, 1.0, 3.0, -0.5, 1.0) == 7.0
    assert asymptotic.qtilde_mu(10.0, 1.0, 3.0, 0.5, 1.0) == 9.0
    assert asymptotic.qtilde_mu(10.0, 1.0, 3.0, 1.5, 1.0) == 0.0
    with pytest.raises(FitError, match="test_statistic"):
        asymptotic.p_values(1.0, 1.0, kind="qq")


def test_closed_form_gaussian_measurement_cls_and_limit():
    model = GaussianMeasurement()
    x_obs = 0.3
    for mu in (0.5, 1.0, 2.5):
        res = asymptotic.hypotest(model, x_obs, mu, test_statistic="qmu")
        assert res.q_obs == pytest.approx((mu - x_obs) ** 2) and res.q_asimov == pytest.approx(mu**2)
        assert res.clsb_obs == pytest.approx(norm.cdf(x_obs - mu), rel=1e-12)
        assert res.cls_obs == pytest.approx(norm.cdf(x_obs - mu) / norm.cdf(x_obs), rel=1e-12)
    # qtilde with a negative fluctuation: q = mu^2 - 2 mu x for x < 0
    res = asymptotic.hypotest(model, -0.4, 1.0, test_statistic="qtilde")
    assert res.q_obs == pytest.approx(1.0 + 0.8)
    limit = asymptotic.upper_limit(model, x_obs, test_statistic="qmu", bracket=(0.0, 10.0))
    exact = brentq(lambda mu: norm.cdf(x_obs - mu) / norm.cdf(x_obs) - 0.05, 0.0, 10.0)
    assert limit.observed == pytest.approx(exact, rel=1e-5)
    # expected median limit of a Gaussian: Phi(-mu)/0.5 = 0.05  ->  mu = Phi^-1(0.975)
    assert limit.expected[2] == pytest.approx(norm.ppf(1 - 0.025), rel=1e-5)


def test_expected_cls_and_p_values_formulae():
    qa = 2.7
    band = asymptotic.expected_cls(qa)
    for n, value in zip((2, 1, 0, -1, -2), band):
        assert value == pytest.approx(norm.cdf(-(n + math.sqrt(qa))) / norm.cdf(-n), rel=1e-12)
    clsb, clb, cls = asymptotic.p_values(1.1, qa, kind="qmu")
    assert clsb == pytest.approx(1 - norm.cdf(math.sqrt(1.1)))
    assert clb == pytest.approx(1 - norm.cdf(math.sqrt(1.1) - math.sqrt(qa)))
    # qtilde beyond q_A switches to (q + q_A) / (2 sqrt q_A)
    clsb, _, _ = asymptotic.p_values(9.0, 4.0, kind="qtilde")
    assert clsb == pytest.approx(1 - norm.cdf((9.0 + 4.0) / 4.0))
    # far tails stay finite (log-space), and CLs tends to exp(-q/2) as q_A -> 0 with q > 0
    for qa_small in (1e-4, 1e-8):
        assert asymptotic.p_values(3.0, qa_small, kind="qtilde")[2] == pytest.approx(math.exp(-1.5), rel=1e-3)
    assert asymptotic.p_values(3.0, 0.0, kind="qtilde") == (0.0, 0.0, pytest.approx(math.exp(-1.5)))
    assert asymptotic.p_values(80.0, 60.0, kind="qtilde")[2] > 0


@pytest.mark.parametrize("sigma_b", [0.0, 8.0])
def test_asimov_discovery_significance_of_counting_experiment(sigma_b):
    s, b = 15.0, 60.0
    kwargs = {"shapesys": {"bkg": {"unc": [sigma_b]}}} if sigma_b else {}
    ws = build_workspace(signal={"sig": [s]}, backgrounds={"bkg": [b]}, observed=[s + b], **kwargs)
    res = asymptotic.hypotest(PyhfModel(ws, tolerance=1e-4), ws.data(ws.model()), 1.0, test_statistic="q0")
    z = asymptotic.asimov_significance(s, b, sigma_b)
    assert res.significance == pytest.approx(z, rel=1e-3)
    assert res.q_asimov == pytest.approx(z**2, rel=1e-3)
    assert res.clsb_obs == pytest.approx(norm.sf(z), rel=1e-2)


def _small_model():
    return build_workspace(
        signal={"sig": [5.0, 10.0, 4.0]},
        backgrounds={"bkg": [50.0, 60.0, 30.0], "other": [10.0, 8.0, 5.0]},
        observed=[53.0, 74.0, 33.0],
        normsys={"other": {"xsec_other": (0.8, 1.2)}, "sig": {"lumi": (0.98, 1.02)}},
        histosys={"bkg": {"jes": ([48.0, 61.0, 32.0], [52.0, 59.0, 28.0])}},
        shapesys={"bkg": {"bkg_unc": [4.0, 5.0, 3.0]}},
    )


@pytest.mark.parametrize("kind,mu", [("qtilde", 1.0), ("qtilde", 2.5), ("qmu", 1.5)])
def test_hypotest_matches_pyhf(kind, mu):
    ws = _small_model()
    ours = asymptotic.hypotest(PyhfModel(ws), PyhfModel(ws).observed, mu, test_statistic=kind)
    with numpy_minuit(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ws.model()
        obs, expected = pyhf.infer.hypotest(mu, ws.data(model), model, test_stat={"qmu": "q"}.get(kind, kind), return_expected_set=True)
    assert ours.valid
    assert ours.cls_obs == pytest.approx(float(obs), rel=1e-3)
    np.testing.assert_allclose(ours.cls_expected, np.asarray(expected, dtype=float), rtol=1e-3)


def test_upper_limit_matches_pyhf():
    ws = _small_model()
    scan = np.linspace(0.0, 5.0, 11)
    ours = asymptotic.upper_limit(PyhfModel(ws), PyhfModel(ws).observed, scan=scan)
    with numpy_minuit():
        model = ws.model()
        obs, expected = pyhf.infer.intervals.upper_limits.upper_limit(ws.data(model), model, scan=scan, level=0.05)
    assert ours.observed == pytest.approx(float(obs), rel=1e-3)
    np.testing.assert_allclose(ours.expected, np.asarray(expected, dtype=float), rtol=1e-3)
