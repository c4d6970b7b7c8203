"""Validation suite: two-sample AUC against its closed form, histogram χ², moments, inference comparison, report."""

import json
import math

import pytest
import torch
from scipy.stats import norm

from sbilab.events import Events
from sbilab.exceptions import InsufficientEventsError
from sbilab.simulators.toys import GaussianLatent
from sbilab.surrogates import (
    LikelihoodModel,
    auc_error_estimate,
    compare_histograms,
    compare_inference,
    compare_moments,
    two_sample_auc,
    validate,
)


def test_auc_of_shifted_gaussians_matches_its_closed_form():
    # original N(0, 1), "surrogate" N(δ, 1): the optimal classifier's AUC is Φ(δ/√2)
    g = torch.Generator().manual_seed(0)
    delta = 0.3
    result = two_sample_auc(delta + torch.randn(5000, 1, generator=g), torch.randn(5000, 1, generator=g), hidden=(16,), epochs=4,
                            n_bootstrap=100)
    assert result.auc == pytest.approx(norm.cdf(delta / math.sqrt(2)), abs=3 * result.error + 0.01)
    assert result.pull > 5 and not result.consistent()
    assert result.error == pytest.approx(auc_error_estimate(2500, 2500), rel=0.35)


def test_too_few_events_for_the_resolution_are_refused():
    assert auc_error_estimate(1000, 1000) == pytest.approx(math.sqrt(2001 / 12e6))
    with pytest.raises(InsufficientEventsError, match="give at least 3335 effective events per sample"):
        two_sample_auc(torch.randn(500, 2), torch.randn(500, 2), resolution=0.01)


def test_histogram_chi2_by_hand():
    s = torch.tensor([0.5, 0.5, 1.5, 2.5])           # fractions 1/2, 1/4, 1/4
    o = torch.tensor([0.5, 1.5, 1.5, 2.5])           # fractions 1/4, 1/2, 1/4
    h = compare_histograms(s, o, bins=[0.0, 1.0, 2.0, 3.0], name="x")
    # σ² per bin: count/N² = 2/16, 1/16, 1/16 (surrogate) and 1/16, 2/16, 1/16 (original)
    expected = (0.25**2) / (3 / 16) + (0.25**2) / (3 / 16) + 0.0
    assert h.chi2 == pytest.approx(expected) and h.ndf == 2
    assert h.surrogate == (0.5, 0.25, 0.25) and h.chi2_per_ndf == pytest.approx(expected / 2)


def test_moments_and_correlations():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20000, 2, generator=g)
    b = torch.randn(20000, 2, generator=g) @ torch.tensor([[1.0, 0.6], [0.0, 0.8]])   # correlation 0.6, unit variances
    m = compare_moments(a, b, names=["u", "v"])
    assert m["correlation_original"][0][1] == pytest.approx(0.6, abs=0.02)
    assert m["max_correlation_difference"] == pytest.approx(0.6, abs=0.03)
    assert abs(m["columns"]["u"]["mean_pull"]) < 4 and m["columns"]["v"]["std_original"] == pytest.approx(1.0, abs=0.02)


def test_inference_comparison_on_the_gaussian_toy():
    """Fits of N(θ, 5) toys: the width is sqrt(5/N) exactly and the 68.3% region covers 68.3%."""
    toy = GaussianLatent()
    n, t = 200, 200
    truth = torch.tensor([0.4])
    toys = toy.sample(truth.expand(n * t, 1), generator=torch.Generator().manual_seed(2)).x.reshape(t, n, 1).double()
    model = LikelihoodModel(toy.log_prob)
    cmp = compare_inference({"original": model, "copy": model}, toys, toy.space, truth, observed=toys[0], levels=(0.683, 0.95))
    assert cmp.widths["original"]["theta"] == pytest.approx(math.sqrt(5 / n), rel=1e-6)
    assert cmp.width_ratio("copy") == {"theta": pytest.approx(1.0)}
    assert cmp.coverage["original"][0.683] == pytest.approx(0.683, abs=3 * cmp.coverage_error(0.683))
    assert cmp.observed["original"]["best"]["theta"] == pytest.approx(float(toys[0].mean()), abs=1e-4)
    assert cmp.observed["original"]["valid"] and cmp.observed["original"]["reason"] == "" and cmp.observed["copy"]["at_bound"] == []
    assert cmp.shift["copy"]["theta"] == 0.0
    # one parameter: the profile interval is the joint region
    assert cmp.coverage_by_parameter["original"]["theta"] == cmp.coverage["original"]


def test_validate_writes_a_report(tmp_path):
    g = torch.Generator().manual_seed(3)
    theta = 4 * torch.rand(8000, 1, generator=g) - 2
    surrogate = Events(x=theta + math.sqrt(5) * torch.randn(8000, 1, generator=g), theta=theta)
    original = Events(x=theta + math.sqrt(5) * torch.randn(8000, 1, generator=g), theta=theta)
    report = validate(surrogate, original, names=["theta", "x"], regions={"theta": 2}, bins=20, epochs=3, hidden=(16,),
                      resolution=0.012, n_bootstrap=50)
    assert report.auc.consistent(3.0) and len(report.regions) == 2 and report.regions[0].label.startswith("theta in [")
    x_hist = next(h for h in report.histograms if h.name == "x")
    assert x_hist.chi2_per_ndf < 2.0
    paths = report.write(tmp_path, plots=True)
    doc = json.loads((tmp_path / "validation.json").read_text())
    assert doc["auc"]["auc"] == pytest.approx(report.auc.auc) and len(doc["regions"]) == 2
    pytest.importorskip("matplotlib")
    assert (tmp_path / "validation_histograms.png") in paths and (tmp_path / "validation_auc.png") in paths
