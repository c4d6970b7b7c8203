"""Unfolding metrics against closed forms and quadrature: Δ, W1, χ²/ndf, classifier AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2, norm, wasserstein_distance

from sbilab.exceptions import InvalidEventsError, ShapeMismatchError
from sbilab.unfolding import (
    Response,
    chi2_ndf,
    classifier_auc,
    iterative_unfold,
    triangular_discriminator,
    triangular_discriminator_binned,
    wasserstein_1d,
    wasserstein_1d_cdf,
)


def test_triangular_discriminator_references():
    p, q = norm(0, 1), norm(0.2, 0.8)
    assert 1e3 * triangular_discriminator(p.pdf, q.pdf) == pytest.approx(33.444576, abs=5e-7)
    edges = np.linspace(-4, 4, 51)
    masses = torch.tensor(np.diff(p.cdf(edges))), torch.tensor(np.diff(q.cdf(edges)))
    assert 1e3 * float(triangular_discriminator_binned(*masses, normalize=False)) == pytest.approx(33.278771, abs=5e-7)
    assert triangular_discriminator(p.pdf, p.pdf) == 0.0


def test_binned_discriminator_limits_and_batching():
    h = torch.tensor([3.0, 5.0, 2.0])
    assert float(triangular_discriminator_binned(h, 2 * h)) == 0.0  # normalised: same shape
    assert float(triangular_discriminator_binned(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 4.0]))) == 1.0  # disjoint
    batch = torch.stack([h, h.flip(0)])
    out = triangular_discriminator_binned(batch, h)
    assert out.shape == (2,) and float(out[0]) == 0.0
    assert float(out[1]) == pytest.approx(float(triangular_discriminator_binned(h.flip(0), h)))
    with pytest.raises(ShapeMismatchError):
        triangular_discriminator_binned(h, torch.ones(4))
    with pytest.raises(InvalidEventsError):
        triangular_discriminator_binned(-h, h)


def test_wasserstein_references():
    p = norm(0, 1)
    assert wasserstein_1d_cdf(p.cdf, norm(0.2, 0.8).cdf) == pytest.approx(0.233326, abs=5e-7)
    assert wasserstein_1d_cdf(p.cdf, norm(0.1, 1).cdf) == pytest.approx(0.1, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=g, dtype=torch.float64)
    assert float(wasserstein_1d(a, a + 0.1)) == pytest.approx(0.1, abs=1e-12)  # a shift moves every quantile by 0.1


def test_weighted_wasserstein_is_exact():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(0.3, 1.2, size=300)
    wa, wb = rng.random(500), rng.random(300)
    ours = float(wasserstein_1d(torch.tensor(a), torch.tensor(b), weights_a=torch.tensor(wa), weights_b=torch.tensor(wb)))
    assert ours == pytest.approx(wasserstein_distance(a, b, wa, wb), rel=1e-12)
    # integer weights = repeated events
    counts = rng.integers(1, 4, 500)
    rep = float(wasserstein_1d(torch.tensor(np.repeat(a, counts)), torch.tensor(b)))
    assert float(wasserstein_1d(torch.tensor(a), torch.tensor(b), weights_a=torch.tensor(counts, dtype=torch.float64))) == pytest.approx(rep, rel=1e-12)
    # many weight columns at once
    cols = torch.tensor(rng.random((4, 500)))
    many = wasserstein_1d(torch.tensor(a), torch.tensor(b), weights_a=cols)
    assert many.shape == (4,)
    for i in range(4):
        assert float(many[i]) == pytest.approx(float(wasserstein_1d(torch.tensor(a), torch.tensor(b), weights_a=cols[i])), rel=1e-12)
    with pytest.raises(InvalidEventsError, match="non-positive sum"):
        wasserstein_1d(torch.tensor(a), torch.tensor(b), weights_a=torch.zeros(500))
    with pytest.raises(InvalidEventsError, match="NaN"):
        wasserstein_1d(torch.tensor([0.0, float("nan")]), torch.tensor(b))


def test_sample_wasserstein_converges_to_the_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200_000, generator=g, dtype=torch.float64)
    b = 0.2 + 0.8 * torch.randn(200_000, generator=g, dtype=torch.float64)
    assert float(wasserstein_1d(a, b)) == pytest.approx(0.233326, abs=0.01)


def test_chi2_with_diagonal_and_singular_covariances():
    u, t = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.5, 2.0, 2.0])
    res = chi2_ndf(u, t, torch.diag(torch.tensor([0.25, 1.0, 4.0])))
    assert res.chi2 == pytest.approx(1.0 + 0.0 + 0.25) and res.ndf == 3
    assert res.p_value == pytest.approx(chi2.sf(1.25, 3)) and res.per_ndf == pytest.approx(1.25 / 3)
    v = torch.ones(3, 3)  # rank one: only the sum is constrained
    assert chi2_ndf(u, t, v).ndf == 1 and chi2_ndf(u, t, v).chi2 == pytest.approx(0.5**2 / 9)  # (sum of residuals)^2 / var(sum)
    with pytest.raises(InvalidEventsError, match="positive semi-definite"):
        chi2_ndf(u, t, -torch.eye(3))
    with pytest.raises(ShapeMismatchError):
        chi2_ndf(u, t, torch.eye(2))


def test_chi2_of_unfolded_replicas_follows_chi2_ndf():
    """The IBU covariance describes the spread of unfolded Poisson replicas: mean chi2/ndf = 1."""
    r = torch.tensor(0.7 * np.eye(6) + 0.12 * (np.eye(6, k=1) + np.eye(6, k=-1)))
    resp = Response.from_matrix(r)
    truth = torch.tensor([2000.0, 3000.0, 4000.0, 3500.0, 2500.0, 1500.0], dtype=torch.float64)
    expected = resp.fold(truth)
    centre = iterative_unfold(expected, resp, iterations=3)
    g = torch.Generator().manual_seed(3)
    replicas = torch.poisson(expected.expand(400, -1), generator=g)
    out = iterative_unfold(replicas, resp, iterations=3, covariance=False)
    values = [chi2_ndf(out.final[i], centre.final, centre.covariance_data[-1]) for i in range(400)]
    assert np.mean([v.per_ndf for v in values]) == pytest.approx(1.0, abs=0.1)  # sd of the mean ~ sqrt(2/6/400) = 0.03
    assert all(v.ndf == 6 for v in values)


def test_classifier_auc_sees_a_shift_and_not_its_absence():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3000, 1, generator=g)
    same = classifier_auc(a, torch.randn(3000, 1, generator=g), epochs=4, n_bootstrap=20)
    shifted = classifier_auc(a, 1.0 + torch.randn(3000, 1, generator=g), epochs=4, n_bootstrap=20)
    assert abs(same.auc - 0.5) < 0.05 and shifted.auc > 0.7
    # weights that turn N(0,1) into N(1,1) make the shift invisible again
    reweighted = classifier_auc(a, 1.0 + torch.randn(3000, 1, generator=g), weights=torch.exp(a[:, 0] - 0.5).double(), epochs=4,
                                n_bootstrap=20)
    assert abs(reweighted.auc - 0.5) < 0.06
    with pytest.raises(InvalidEventsError):
        classifier_auc(a, a, weights=torch.zeros(3000))
