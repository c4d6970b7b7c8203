"""Shower reweighting to another θ against events generated there directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from sbilab.calibration import closure_test
from sbilab.exceptions import InvalidEventsError, OverestimateError
from sbilab.simulators.shower import PartonShower, effective_sample_size, reweight

SM = torch.tensor([1.0, 1.0, 0.0])
TARGET = torch.tensor([1.35, 0.7, 1.2])


def weighted_chi2(a: np.ndarray, wa: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """p-value of the two-sample chi^2 of a weighted histogram against an unweighted one (normalised shapes)."""
    ha, _ = np.histogram(a, edges, weights=wa)
    va, _ = np.histogram(a, edges, weights=wa**2)
    hb, _ = np.histogram(b, edges)
    sa, sb = ha.sum(), hb.sum()
    chi2 = np.sum((ha / sa - hb / sb) ** 2 / (va / sa**2 + hb / sb**2))
    return float(stats.chi2.sf(chi2, len(ha) - 1))


@pytest.fixture(scope="module")
def samples():
    sim = PartonShower(output="observables")
    base = sim.simulate(8000, theta=SM, generator=torch.Generator().manual_seed(10))
    direct = sim.simulate(8000, theta=TARGET, generator=torch.Generator().manual_seed(11))
    return sim, base, direct


def test_reweighted_histograms_match_direct_generation(samples):
    sim, base, direct = samples
    moved = reweight(sim, base, TARGET)
    w = moved.weights.double().numpy()
    assert torch.equal(moved.theta, TARGET.expand(len(base), 3))
    assert w.mean() == pytest.approx(1.0, abs=4 * w.std() / np.sqrt(len(w)))
    ess = effective_sample_size(moved.weights)
    assert 0.2 * len(w) < ess < len(w)
    names = sim.observable_names
    for name, edges in (("multiplicity", np.arange(1.5, 13.5)), ("tau", np.array([0, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.5]))):
        col = names.index(name)
        a, b = base.x[:, col].numpy(), direct.x[:, col].numpy()
        assert weighted_chi2(a, w, b, edges) > 1e-3, name
        assert weighted_chi2(a, np.ones_like(w), b, edges) < 1e-6, name  # without the weights the samples differ


def test_classifier_cannot_tell_reweighted_from_direct(samples):
    sim, base, direct = samples
    log_w = torch.log(reweight(sim, base, TARGET).weights.double())
    result = closure_test(base.x, direct.x, log_w, hidden=(32, 32), epochs=12, n_bootstrap=50, seed=0)
    assert result.passed, result
    assert abs(result.auc - 0.5) < 0.03
    unweighted = closure_test(base.x, direct.x, torch.zeros(len(base)), hidden=(32, 32), epochs=12, n_bootstrap=50, seed=0)
    assert unweighted.auc > result.auc + 0.02  # the classifier does see the difference without the weights


def test_reweighting_errors(samples):
    sim, base, _ = samples
    with pytest.raises(OverestimateError):
        reweight(sim, base[:5], torch.tensor([2.0, 1.0, 0.0]))
    with pytest.raises(InvalidEventsError):
        effective_sample_size(torch.tensor([1.0, -1.0]))
