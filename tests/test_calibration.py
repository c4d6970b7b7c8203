import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sbilab.calibration import HistogramCalibrator, IsotonicCalibrator, closure_test, weighted_auc
from sbilab.exceptions import ShapeMismatchError


def gaussian_samples(n=40000, shift=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(shift, 1.0, n), rng.normal(0.0, 1.0, n)


def test_weighted_auc_matches_closed_form_and_weights():
    # AUC of N(μ,1) vs N(0,1) is Φ(μ/√2)
    x1, x0 = gaussian_samples(200_000, 1.0)
    assert weighted_auc(x1, x0) == pytest.approx(norm.cdf(1 / math.sqrt(2)), abs=3e-3)
    # integer weights equal duplicated events; ties count half
    assert weighted_auc([1.0, 2.0], [1.0], weights_pos=[2.0, 1.0]) == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)


@pytest.mark.parametrize("calibrator", [HistogramCalibrator, IsotonicCalibrator])
def test_calibration_recovers_exact_ratio_from_a_distorted_score(calibrator):
    # a monotonic but badly scaled score s = exp(x): calibration must recover log r = x - 1/2
    x1, x0 = gaussian_samples(80_000, 1.0, seed=1)
    cal = calibrator(np.exp(x1 / 3), np.exp(x0 / 3))
    grid = np.linspace(-1.0, 2.0, 13)
    got = cal(np.exp(grid / 3)).numpy()
    np.testing.assert_allclose(got, grid - 0.5, atol=0.12)


def test_calibrators_reject_bad_input():
    with pytest.raises(ShapeMismatchError, match="score_num"):
        HistogramCalibrator(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ShapeMismatchError, match="NaN"):
        IsotonicCalibrator(np.array([np.nan, 1.0]), np.zeros(3))


def test_closure_passes_with_exact_ratio_and_fails_without():
    torch.manual_seed(0)
    x1, x0 = gaussian_samples(6000, 0.6, seed=2)
    exact = torch.as_tensor(0.6 * x0 - 0.18)  # log N(x;0.6,1)/N(x;0,1)
    good = closure_test(x0, x1, exact, epochs=8, seed=1)
    assert good.passed and abs(good.auc - 0.5) < 0.03 and 0 < good.auc_error < 0.02
    bad = closure_test(x0, x1, torch.zeros(len(x0)), epochs=8, seed=1)
    # unweighted: the classifier separates the samples with AUC ≈ Φ(0.6/√2) = 0.664
    assert not bad.passed and bad.auc == pytest.approx(norm.cdf(0.6 / math.sqrt(2)), abs=0.03)


def test_closure_reports_a_mis_normalised_ratio():
    # log r shifted by log 2: the shape is right (the AUC is the same, it rescales to the target's
    # total) but E_ref[r] = 2 is reported, with its statistical error, and fails the test
    x1, x0 = gaussian_samples(4000, 0.6, seed=3)
    exact = torch.as_tensor(0.6 * x0 - 0.18)
    good = closure_test(x0, x1, exact, epochs=4, seed=1, n_bootstrap=20)
    doubled = closure_test(x0, x1, exact + math.log(2.0), epochs=4, seed=1, n_bootstrap=20)
    assert doubled.auc == pytest.approx(good.auc, abs=1e-9) and doubled.shape_passed == good.shape_passed
    assert good.passed and good.normalisation_passed is True and good.normalisation_method == "mean"
    assert not doubled.passed and doubled.normalisation_passed is False
    # not a density ratio (e.g. unfolded weights): the normalisation is reported, not judged
    total = closure_test(x0, x1, exact + math.log(2.0), epochs=4, seed=1, n_bootstrap=20, normalised=False)
    assert total.passed and total.normalisation_passed is None and total.normalisation == pytest.approx(doubled.normalisation)
    # E_0[e^{0.6x - 0.18}] = 1 exactly; its sample estimate and error from the weights
    r = np.exp(0.6 * x0 - 0.18)
    assert good.normalisation == pytest.approx(r.mean(), rel=1e-12)
    assert good.normalisation_error == pytest.approx(r.std() / math.sqrt(len(r)), rel=1e-9)
    assert abs(good.normalisation - 1.0) < 3 * good.normalisation_error
    assert doubled.normalisation == pytest.approx(2 * good.normalisation, rel=1e-12)
    assert good.effective_sample_size == pytest.approx(r.sum() ** 2 / (r**2).sum(), rel=1e-12)
    assert set(good.to_dict()) >= {"normalisation", "normalisation_error", "effective_sample_size"}


def test_normalised_log_ratio_removes_an_offset_that_biases_the_unbinned_fit():
    from sbilab.calibration import NormalizedLogRatio
    from sbilab.events import Events
    from sbilab.simulators.space import ParameterSpace
    from sbilab.stats import UnbinnedLikelihood

    g = torch.Generator().manual_seed(3)
    n = 2_000
    x = 0.3 + torch.randn(n, 1, generator=g, dtype=torch.float64)  # x ~ N(θ = 0.3, 1), reference θ = 0
    space = ParameterSpace(("theta",), low=(-1.0,), high=(1.0,), reference=(0.0,))

    def learned(x, th):  # exact log r = θx - θ²/2, off by 0.05 θ (a classifier's per-θ offset)
        return x[:, 0] * th[:, 0] - th[:, 0] ** 2 / 2 + 0.05 * th[:, 0]

    raw = UnbinnedLikelihood(learned, Events.observed(x), space).fit()
    assert raw.best["theta"] == pytest.approx(x.mean().item() + 0.05, abs=1e-4)  # 2.2 standard deviations off
    normed = NormalizedLogRatio(learned, torch.randn(100_000, 1, generator=g, dtype=torch.float64))
    assert normed.log_normalization(torch.tensor([[0.4]], dtype=torch.float64)).item() == pytest.approx(0.02, abs=3e-3)
    fit = UnbinnedLikelihood(normed, Events.observed(x), space).fit()
    sigma = 1 / n**0.5
    assert abs(fit.best["theta"] - x.mean().item()) < 0.3 * sigma and fit.errors["theta"] == pytest.approx(sigma, rel=0.02)
    with pytest.raises(ShapeMismatchError, match="reference_mask"):
        NormalizedLogRatio(learned, torch.randn(10, 4, 2))
