"""Distance correlation against Székely's closed form, and the DisCo / Double-DisCo losses."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from sbilab.anomaly import DecorrelationToy, bivariate_normal_dcor2, labelled_events, mass_sculpting, train_classifier, classifier_score
from sbilab.estimators import Classifier, ClassifierPair, classifier_training_data, disco_loss, distance_correlation, distance_covariance, double_disco_loss, get_loss
from sbilab.events import Events
from sbilab.exceptions import ConfigError, MissingAugmentedDataError, ShapeMismatchError
from sbilab.nets import Ensemble

F64 = torch.float64


@pytest.mark.parametrize("rho, value", [(0.1, 0.007944), (0.3, 0.072362), (0.5, 0.206231), (0.9, 0.753733), (1.0, 1.0), (0.0, 0.0)])
def test_closed_form_of_szekely(rho, value):
    assert bivariate_normal_dcor2(rho) == pytest.approx(value, abs=5e-7)
    assert bivariate_normal_dcor2(-rho) == bivariate_normal_dcor2(rho)


def _bivariate(rho, batches, n, seed):
    z = torch.randn(batches, n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return z[..., :1], rho * z[..., :1] + math.sqrt(1 - rho**2) * z[..., 1:]


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.9])
def test_large_sample_estimates_converge_to_the_closed_form(rho):
    x, y = _bivariate(rho, 4, 1200, seed=int(10 * rho))
    u = distance_correlation(x, y, unbiased=True)  # (4,): one estimate per sample of the stack
    v = distance_correlation(x, y)
    exact = bivariate_normal_dcor2(rho)
    spread = float(u.std()) / math.sqrt(len(u))
    assert abs(float(u.mean()) - exact) < 4 * spread + 2e-3
    # the V-statistic is biased upwards by O(1/n) (a few 1e-3 here), the U-statistic is not
    assert 0 < float(v.mean()) - float(u.mean()) < 8e-3


def test_weights_are_repetitions_and_the_statistic_is_invariant():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, generator=g, dtype=F64), torch.randn(40, 2, generator=g, dtype=F64)
    y[:, 0] += x
    counts = torch.randint(1, 4, (40,), generator=g)
    repeated = distance_correlation(x.repeat_interleave(counts), y.repeat_interleave(counts, dim=0))
    weighted = distance_correlation(x, y, counts.to(F64))
    assert float(weighted) == pytest.approx(float(repeated), rel=1e-12)
    assert float(distance_correlation(3 * x - 1, y)) == pytest.approx(float(distance_correlation(x, y)), rel=1e-12)
    assert float(distance_correlation(x, 2 * x + 5)) == pytest.approx(1.0, rel=1e-9)  # eps = 1e-12 in the denominator
    # a stack gives the per-sample values
    stack = distance_correlation(torch.stack([x, -x, x**2]).unsqueeze(-1), y)
    assert torch.allclose(stack, torch.stack([distance_correlation(x, y), distance_correlation(-x, y), distance_correlation(x**2, y)]))


def test_unbiased_statistic_matches_its_definition():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(9, generator=g, dtype=F64), torch.randn(9, generator=g, dtype=F64)
    n = 9

    def u_centre(d):
        out = torch.zeros_like(d)
        for i in range(n):
            for j in range(n):
                if i != j:
                    out[i, j] = d[i, j] - d[i].sum() / (n - 2) - d[:, j].sum() / (n - 2) + d.sum() / ((n - 1) * (n - 2))
        return out

    a, b = u_centre((x[:, None] - x[None]).abs()), u_centre((y[:, None] - y[None]).abs())
    assert float(distance_covariance(x, y, unbiased=True)) == pytest.approx(float((a * b).sum() / (n * (n - 3))), rel=1e-12)


def test_gradients_and_errors():
    x = torch.randn(64, 1, requires_grad=True)
    distance_correlation(x, torch.randn(64, 1)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="unbiased"):
        distance_correlation(torch.randn(10), torch.randn(10), torch.ones(10), unbiased=True)
    with pytest.raises(ConfigError, match=">= 0"):
        distance_correlation(torch.randn(10), torch.randn(10), -torch.ones(10))
    with pytest.raises(ShapeMismatchError, match="events"):
        distance_correlation(torch.randn(10), torch.randn(11))


# ---------------------------------------------------------------------------- losses
def _toy_batch(n=256, seed=0):
    toy = DecorrelationToy()
    g = torch.Generator().manual_seed(seed)
    return labelled_events(toy.background(n, generator=g), toy.signal(n, generator=g))


def test_disco_loss_is_cross_entropy_plus_lambda_dcor_on_background():
    batch = _toy_batch()
    clf = Classifier.from_events(batch, hidden=(16,), seed=0)
    logit = clf(batch.x)
    bce = F.binary_cross_entropy_with_logits(logit, batch.label)
    bkg = batch.label == 0
    dcor = distance_correlation(torch.sigmoid(logit[bkg]), batch.spectator[bkg])
    per_event = disco_loss(clf, batch, lam=7.0)
    assert per_event.shape == (len(batch),)
    assert float(per_event.mean().detach()) == pytest.approx(float((bce + 7.0 * dcor).detach()), rel=1e-5)
    assert float(get_loss("disco", lam=0.0)(clf, batch).mean().detach()) == pytest.approx(float(bce.detach()), rel=1e-6)
    # an ensemble gets one dCor^2 per member
    ens = Ensemble(clf, 3, generator=torch.Generator().manual_seed(1))
    assert disco_loss(ens, batch, lam=1.0).shape == (3, len(batch))


def test_disco_refuses_bad_lambda_missing_or_leaking_spectator():
    batch = _toy_batch(64)
    clf = Classifier.from_events(batch, hidden=(8,), seed=0)
    with pytest.raises(ConfigError, match="lam = -1.0"):
        disco_loss(clf, batch, lam=-1.0)
    with pytest.raises(MissingAugmentedDataError, match="spectator"):
        disco_loss(clf, batch.replace(spectator=None))
    leaking = batch.replace(spectator=batch.x[:, 1:])  # the mass is also input column 1
    with pytest.raises(ConfigError, match="identical to input column 1"):
        disco_loss(clf, leaking)
    toy = DecorrelationToy()
    bkg, sig = toy.background(50), toy.signal(50)
    with pytest.raises(ConfigError, match="must not be a classifier input"):
        labelled_events(bkg.replace(spectator=bkg.x[:, :1]), sig.replace(spectator=sig.x[:, :1]))


def test_double_disco_decorrelates_two_classifiers():
    batch = _toy_batch()
    pair = ClassifierPair(Classifier.from_events(batch, hidden=(16,), seed=0), Classifier.from_events(batch, hidden=(16,), seed=1))
    logits = pair(batch.x)
    bkg = batch.label == 0
    expected = (F.binary_cross_entropy_with_logits(logits, batch.label[:, None].expand(-1, 2), reduction="none").sum(-1).mean()
                + 3.0 * distance_correlation(torch.sigmoid(logits[bkg, :1]), torch.sigmoid(logits[bkg, 1:])))
    assert float(double_disco_loss(pair, batch, lam=3.0).mean().detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    with pytest.raises(ShapeMismatchError, match="two logits"):
        double_disco_loss(pair.first, batch)
    with pytest.raises(ConfigError, match="lam"):
        double_disco_loss(pair, batch, lam=-0.5)
    trained = train_classifier(batch, loss=functools.partial(double_disco_loss, lam=20.0), pair=True, hidden=(16,), epochs=15,
                               batch_size=256, seed=0)
    scores = torch.sigmoid(classifier_score(trained, batch.x))
    assert float(distance_correlation(scores[bkg, :1], scores[bkg, 1:])) < 0.05


def test_disco_training_removes_the_sculpting_and_keeps_some_rejection():
    # decorrelation toy with rho = 0.7: the optimal classifier's score correlates with m by 0.495
    toy = DecorrelationToy()
    g = torch.Generator().manual_seed(11)
    train = labelled_events(toy.background(3000, generator=g), toy.signal(3000, generator=g))
    test_b = toy.background(20000, generator=g)
    results = {}
    for lam in (0.0, 30.0):
        clf = train_classifier(train, loss=functools.partial(disco_loss, lam=lam), hidden=(32,), epochs=25, batch_size=500, seed=3)
        score = classifier_score(clf, test_b.x)
        results[lam] = (mass_sculpting(test_b.spectator, score), float(distance_correlation(torch.sigmoid(score[:3000]), test_b.spectator[:3000])))
    exact = mass_sculpting(test_b.spectator, toy.log_ratio(test_b.x))
    assert results[0.0][0] == pytest.approx(exact, rel=0.3)  # the undecorrelated classifier sculpts like the exact ratio
    assert results[30.0][0] < 0.2 * results[0.0][0] and results[30.0][1] < 0.2 * results[0.0][1]
