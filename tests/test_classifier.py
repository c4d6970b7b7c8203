"""Classifier and classifier_weights against exact density ratios of Gaussians.

Exact answers: N(0.5, 1) / N(0, 1) = exp(x/2 - 1/8); for sets of i.i.d. particles the log-ratio is
the sum over real particles; for N(θ, 1) / N(0, 1) it is θx - θ²/2. Clipping counts, effective
sample size and normalisation are checked on a hand-built logit vector.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from sbilab.nets.ensemble import Ensemble
from sbilab.estimators import (
    Classifier,
    ClassifierWeights,
    WeightClippingWarning,
    carl_loss,
    classifier_training_data,
    classifier_weights,
)
from sbilab.exceptions import ConfigError, InvalidEventsError, NonFiniteOutputError, ShapeMismatchError
from sbilab.publish import load, save
from sbilab.training import fit

QUIET = dict(validation_fraction=0.0, patience=None, progress=False, device="cpu", seed=0)


def test_weights_of_a_trained_classifier_are_the_exact_density_ratio():
    # class 0: 20k from N(0,1), unit weights; class 1: 10k from N(0.5,1) with weights U(0.5, 2.5):
    # W0/W1 = 20000/15000, so forgetting the weighted class balance would be off by a third
    g = torch.Generator().manual_seed(0)
    n1 = 10_000
    x0 = torch.randn(2 * n1, 1, generator=g)
    x1 = torch.randn(n1, 1, generator=g) + 0.5
    w1 = 0.5 + 2.0 * torch.rand(n1, generator=g)
    train = classifier_training_data(x0, x1, weights1=w1)
    clf = Classifier.from_events(train, hidden=(32, 32), seed=0)
    assert clf.class_totals.tolist() == pytest.approx([2 * n1, float(w1.sum())], rel=1e-6)
    fit(clf, carl_loss, train, epochs=30, batch_size=512, learning_rate=1e-3, **QUIET)

    grid = torch.linspace(-2.0, 2.0, 9)
    with torch.no_grad():
        on_grid = classifier_weights(clf.logit(grid), class_totals=clf.class_totals)
    exact = torch.exp(0.5 * grid - 0.125).double()
    assert (on_grid.ratio.log() - exact.log()).abs().max() < 0.08  # measured 0.031

    # reweight fresh N(0,1) events: the weighted mean must be the target's 0.5 within statistical
    # error (the reweighted sample's, plus the training samples' that the classifier learned from)
    x = torch.randn(50_000, generator=g).double()
    with torch.no_grad():
        res = classifier_weights(clf.logit(x), class_totals=clf.class_totals)
    w = res.weights
    mean = float((w * x).sum() / w.sum())
    stat = math.sqrt(float((w**2 * (x - mean) ** 2).sum())) / float(w.sum())
    train_stat = math.sqrt(float((w1**2).sum()) / float(w1.sum()) ** 2 + 1.0 / (2 * n1))
    sigma = math.hypot(stat, train_stat)
    assert abs(mean - 0.5) < 3 * sigma, (mean, sigma)  # measured 0.487 ± 0.014
    assert abs(res.normalisation - 1.0) < 3 * math.hypot(res.normalisation_error, train_stat)  # E_0[r] = 1; measured 0.997
    assert res.n_clipped == 0 and 0.7 * len(x) < res.effective_sample_size < len(x)
    # ESS of the exact ratio on N(0,1): N / E[r²] = N e^{-1/4}
    assert res.effective_sample_size == pytest.approx(len(x) * math.exp(-0.25), rel=0.02)


def test_clipping_is_counted_exactly_and_announced():
    logit = torch.log(torch.tensor([1e-4, 0.005, 0.011, 0.5, 1.0, 2.0, 50.0, 99.0, 1e3, 1e5], dtype=torch.float64))
    with pytest.warns(WeightClippingWarning, match="clipped 2 of 10 ratios up to w_min = 0.02 and 2 down to w_max = 200"):
        res = classifier_weights(logit, class_totals=(2.0, 1.0), w_min=0.02, w_max=200.0)
    # ratio = 2 e^logit = [2e-4, 0.01, 0.022, 1, 2, 4, 100, 198, 2e3, 2e5] clipped to [0.02, 200]
    expected = torch.tensor([0.02, 0.02, 0.022, 1.0, 2.0, 4.0, 100.0, 198.0, 200.0, 200.0], dtype=torch.float64)
    torch.testing.assert_close(res.ratio, expected)
    assert (res.n_clipped_low, res.n_clipped_high, res.n_clipped) == (2, 2, 4)
    assert res.effective_sample_size == pytest.approx(float(expected.sum()) ** 2 / float((expected**2).sum()), rel=1e-12)
    assert res.normalisation == pytest.approx(float(expected.mean()), rel=1e-12)
    base = torch.arange(1.0, 11.0)
    with pytest.warns(WeightClippingWarning):
        weighted = classifier_weights(logit, class_totals=(2.0, 1.0), base_weights=base, w_min=0.02, w_max=200.0)
    torch.testing.assert_close(weighted.weights, base.double() * expected)
    assert weighted.normalisation == pytest.approx(float((base.double() * expected).sum() / base.sum()), rel=1e-12)
    assert isinstance(res, ClassifierWeights) and res.to_dict()["n_clipped_high"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing clipped: no warning
        plain = classifier_weights(torch.tensor([0.0, math.log(3.0)]))
    torch.testing.assert_close(plain.weights, torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_bad_logits_and_options_raise_named_errors():
    with pytest.raises(NonFiniteOutputError, match="1 of 3 logits are NaN/inf .first at row 1"):
        classifier_weights(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(NonFiniteOutputError, match="set a finite w_max"):
        classifier_weights(torch.tensor([800.0]))
    with pytest.warns(WeightClippingWarning, match="1 down to w_max = 1e[+]06"):
        assert classifier_weights(torch.tensor([800.0]), w_max=1e6).ratio.item() == 1e6  # no overflow: clipped in log space
    with pytest.raises(ConfigError, match="w_min < w_max"):
        classifier_weights(torch.zeros(2), w_min=2.0, w_max=1.0)
    with pytest.raises(ConfigError, match="class_totals"):
        classifier_weights(torch.zeros(2), class_totals=(0.0, 1.0))
    with pytest.raises(ShapeMismatchError, match="logit must be one value per event"):
        classifier_weights(torch.zeros(2, 1))
    with pytest.raises(ShapeMismatchError, match="base_weights must be one value per event, shape .2,."):
        classifier_weights(torch.zeros(2), base_weights=torch.ones(3))


def test_set_classifier_learns_the_sum_over_real_particles_and_ignores_padding():
    g = torch.Generator().manual_seed(1)

    def sets(n: int, shift: float, m: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, m, 1, generator=g) + shift
        mask = torch.arange(m)[None, :] < torch.randint(1, m + 1, (n, 1), generator=g)
        return torch.where(mask[..., None], x, torch.full_like(x, 99.0)), mask  # padding holds junk

    (x0, m0), (x1, m1) = sets(4000, 0.0), sets(4000, 0.5)
    x0, m0 = torch.cat([x0, torch.full((4000, 1, 1), 7.0)], 1), torch.cat([m0, torch.zeros(4000, 1, dtype=torch.bool)], 1)
    train = classifier_training_data(x0, x1, mask0=m0, mask1=m1)  # a wider padded sample: x1 is padded to 4 slots
    assert train.x.shape == (8000, 4, 1) and not bool(train.mask[:, 3].any())
    clf = Classifier.from_events(train, hidden=(32, 32), embedding={"kind": "deepsets", "out_features": 8, "hidden": [32], "latent": 16},
                                 seed=0)
    fit(clf, carl_loss, train, epochs=12, batch_size=256, learning_rate=3e-3, **QUIET)
    x, mask = sets(2000, 0.25)
    with torch.no_grad():
        logit = clf.logit(x, mask=mask)
        moved = clf.logit(torch.where(mask[..., None], x, torch.zeros_like(x)), mask=mask)
        swapped = clf.logit(x.flip(1), mask=mask.flip(1))
    exact = ((0.5 * x[..., 0] - 0.125) * mask).sum(1)  # balanced classes: logit = log r
    assert float((logit - exact).pow(2).mean().sqrt()) < 0.15  # measured 0.06
    torch.testing.assert_close(moved, logit)  # padding values never count
    torch.testing.assert_close(swapped, logit, atol=1e-5, rtol=1e-5)  # permutation invariant


def test_parameterised_classifier_learns_theta_x_minus_half_theta_squared(tmp_path):
    g = torch.Generator().manual_seed(2)
    n = 8000
    th0, th1 = torch.rand(n, 1, generator=g), torch.rand(n, 1, generator=g)
    train = classifier_training_data(torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g) + th1, theta0=th0, theta1=th1)
    clf = Classifier.from_events(train, hidden=(32, 32), seed=0)
    assert clf.theta_features == 1
    fit(clf, carl_loss, train, epochs=15, batch_size=256, learning_rate=3e-3, **QUIET)
    grid = torch.linspace(-1.5, 2.0, 8)
    for theta in (0.2, 0.8):
        with torch.no_grad():
            logit = clf.logit(grid, torch.tensor([theta]))
        assert (logit - (theta * grid - theta**2 / 2)).abs().max() < 0.2, theta  # measured 0.08, 0.07
    # published and reloaded (HDF5 + JSON): same logits and class totals
    save(tmp_path / "clf.h5", clf)
    again = load(tmp_path / "clf.h5")
    assert isinstance(again, Classifier) and again.spec() == clf.spec()
    with torch.no_grad():
        torch.testing.assert_close(again.logit(grid, torch.full((8, 1), 0.5)), clf.logit(grid, torch.tensor([0.5])))
    torch.testing.assert_close(again.class_totals, clf.class_totals)


def test_seeded_construction_and_ensembles():
    train = classifier_training_data(torch.randn(200, 2).double().numpy(), torch.randn(100, 2) + 1.0)  # numpy float64 is cast
    assert train.x.dtype == torch.get_default_dtype()
    a, b = Classifier.from_events(train, seed=3), Classifier.from_events(train, seed=3)
    state = torch.random.get_rng_state()
    Classifier.from_events(train, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    result = fit(Ensemble(a, 3), carl_loss, train, epochs=2, **QUIET)
    assert result.model(train.x, train.theta).shape == (3, 300)


def test_bad_input_is_named():
    train = classifier_training_data(torch.randn(20, 2), torch.randn(10, 2))
    clf = Classifier.from_events(train, hidden=(8,), seed=0)
    with pytest.raises(ShapeMismatchError, match=r"x has shape \(4, 3\).*2 observable"):
        clf.logit(torch.zeros(4, 3))
    with pytest.raises(ShapeMismatchError, match="complex"):
        clf.logit(torch.zeros(4, 2, dtype=torch.complex64))
    with pytest.raises(ShapeMismatchError, match="takes x alone"):
        clf.logit(torch.zeros(4, 2), torch.zeros(4, 1))
    with pytest.raises(NonFiniteOutputError, match="Classifier.logit"):
        clf.logit(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(InvalidEventsError, match="label must be 0 or 1.*first at row 3: 2.0"):
        Classifier.from_events(train.replace(label=torch.tensor([0.0] * 3 + [2.0] + [1.0] * 26)))
    with pytest.raises(InvalidEventsError, match="no label"):
        Classifier.from_events(train.replace(label=None))
    with pytest.raises(InvalidEventsError, match="class 1 has total weight 0"):
        Classifier.from_events(train.replace(weights=torch.cat([torch.ones(20), torch.zeros(10)])))
    with pytest.raises(ConfigError, match="hidden"):
        Classifier(2, hidden=(0,))
    with pytest.raises(ShapeMismatchError, match="theta with 1 columns"):
        clf.standardize_from(classifier_training_data(torch.randn(5, 2), torch.randn(5, 2), theta0=torch.zeros(1), theta1=torch.ones(1)))
    with pytest.raises(ShapeMismatchError, match="must both be"):
        classifier_training_data(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ShapeMismatchError, match="theta0 and theta1 together"):
        classifier_training_data(torch.randn(5, 2), torch.randn(5, 2), theta0=torch.zeros(1))
    with pytest.raises(InvalidEventsError, match="one weight per event"):
        classifier_training_data(torch.randn(5, 2), torch.randn(5, 2), weights0=torch.ones(4))
    parameterised = Classifier(1, theta_features=2, hidden=(4,))
    with pytest.raises(ShapeMismatchError, match="pass theta"):
        parameterised.logit(torch.zeros(3))
    with pytest.raises(ShapeMismatchError, match=r"theta has shape \(3, 1\)"):
        parameterised.logit(torch.zeros(3), torch.zeros(3, 1))
