"""SIC curves and mass sculpting against exact answers."""

import math

import numpy as np
import pytest
import torch

from sbilab.anomaly import (
    AnomalyToy,
    gaussian_cut_sic,
    gaussian_optimal_sic,
    js_divergence,
    js_divergence_floor,
    mass_sculpting,
    rejection_at,
    sic_curve,
)
from sbilab.exceptions import ConfigError, ShapeMismatchError


def test_closed_form_sic_maxima():
    one = gaussian_cut_sic(1.0)
    assert one.sic == pytest.approx(1.258729, abs=1e-6) and one.background_efficiency == pytest.approx(0.2, abs=1e-3)
    assert gaussian_cut_sic(2.0).sic == pytest.approx(4.403414, abs=1e-6)
    # 2-D: N(0, I) against N((2, 2), 0.5^2 I); the optimal cut is a disc around (8/3, 8/3)
    two = gaussian_optimal_sic([2.0, 2.0], 0.5)
    assert two.sic == pytest.approx(12.434, abs=1e-3)
    assert two.sic == pytest.approx(two.signal_efficiency / math.sqrt(two.background_efficiency), rel=1e-12)
    # a floor above the optimum's efficiency caps the SIC at the floor
    floored = gaussian_cut_sic(2.0, min_background_efficiency=1e-3)
    assert floored.background_efficiency == pytest.approx(1e-3, rel=1e-6) and floored.sic < 4.403414
    assert gaussian_optimal_sic([1.0, 0.0], 1.0).sic == pytest.approx(1.258729, abs=1e-6)  # sigma = 1: a linear cut


def test_measured_curve_matches_the_exact_one_within_its_error():
    g = np.random.default_rng(0)
    s, b = g.normal(2.0, 1.0, 200_000), g.normal(0.0, 1.0, 400_000)
    curve = sic_curve(s, b, min_background_efficiency=1e-3)
    assert curve.background_efficiency.min() >= 1e-3
    value, error, eff = curve.max()
    exact = gaussian_cut_sic(2.0, min_background_efficiency=1e-3).sic
    assert abs(value - exact) < 4 * error + 0.02  # the maximum of a noisy curve is biased up by about its error
    from scipy.stats import norm

    at, at_err = curve.at(0.01)
    assert at == pytest.approx(norm.sf(norm.isf(0.01) - 2.0) / 0.1, abs=4 * at_err)


def test_quoted_error_matches_the_spread_of_repeated_experiments():
    g = np.random.default_rng(1)
    values, errors = [], []
    for _ in range(200):
        curve = sic_curve(g.normal(1.0, 1.0, 3000), g.normal(0.0, 1.0, 3000), min_background_efficiency=0.05)
        v, e = curve.at(0.05)
        values.append(v)
        errors.append(e)
    assert np.std(values) == pytest.approx(np.mean(errors), rel=0.2)


def test_weights_rejection_and_errors():
    s, b = np.array([3.0, 2.0, 1.0]), np.array([2.5, 1.5, 0.5, -1.0])
    curve = sic_curve(s, b, weights_signal=[2.0, 1.0, 1.0], min_background_efficiency=0.2)
    assert curve.signal_efficiency[0] == pytest.approx(0.5) and curve.background_efficiency[0] == pytest.approx(0.25)
    assert rejection_at(np.arange(100.0), np.arange(1000.0) - 900.0, 0.5) == pytest.approx(1000 / 50)
    with pytest.raises(ConfigError, match="outside the curve"):
        sic_curve(s, b, min_background_efficiency=0.2).at(1e-3)
    with pytest.raises(ShapeMismatchError, match="non-finite"):
        sic_curve([1.0, np.nan], b)
    with pytest.raises(ConfigError, match="min_background_efficiency"):
        sic_curve(s, b, min_background_efficiency=2.0)


def test_anomaly_toy_optimal_sic_is_the_gaussian_reference_without_mass_correlation():
    toy = AnomalyToy(feature_slope=0.0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    # beta = 0: the SR background is exactly N(0, I), the quadrature must return its density
    exact = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
    assert torch.allclose(toy.background_log_prob_sr(x), exact, atol=1e-12)
    bkg = toy.background(250_000, generator=g, lo=toy.window.lo, hi=toy.window.hi)
    sig = toy.signal(30_000, generator=g, in_signal_region=True)
    curve = sic_curve(toy.log_ratio_sr(sig.x), toy.log_ratio_sr(bkg.x), min_background_efficiency=1e-3)
    value, error, _ = curve.max()
    assert abs(value - gaussian_optimal_sic([2.0, 2.0], 0.5, min_background_efficiency=1e-3).sic) < 4 * error + 0.1


def test_anomaly_toy_background_density_in_the_signal_region_is_normalised():
    toy = AnomalyToy(feature_slope=2.0)
    # integrate p_b(x | SR) over a grid: it is a density (x2 integrates analytically, x1 on a fine grid)
    x1 = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    x = torch.stack([x1, torch.zeros_like(x1)], dim=1)
    p = torch.exp(toy.background_log_prob_sr(x)) * math.sqrt(2 * math.pi)
    assert float(torch.trapezoid(p, x1)) == pytest.approx(1.0, abs=1e-9)
    # its mean is beta (E[m | SR] - m_ref), by sampling
    bkg = toy.background(200_000, lo=toy.window.lo, hi=toy.window.hi, generator=torch.Generator().manual_seed(0))
    mean = float((p * x1).sum() / p.sum())
    assert mean == pytest.approx(float(bkg.x[:, 0].mean()), abs=4 / math.sqrt(200_000) * 1.1)


def test_sculpting_of_a_correlated_cut_and_the_statistical_floor():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    g = np.random.default_rng(3)
    m = g.normal(size=50_000)
    floor = js_divergence_floor(50_000)
    random = [mass_sculpting(m, g.normal(size=m.size)) for _ in range(20)]
    assert np.mean(random) == pytest.approx(floor, rel=0.25)
    assert mass_sculpting(m, m + 0.3 * g.normal(size=m.size)) > 100 * floor
