"""Estimators trained with fit() on the Gaussian latent toy against the exact likelihood, and every bad input.

Toy: z ~ N(θ, 2²), x ~ N(z, 1), θ ∈ [-2, 2], reference 0; exact
log r(x|θ) = log N(x; θ, √5) − log N(x; 0, √5), score t(x|0) = x/5. Thresholds were set at about
twice the errors measured with these seeds (ALICES 0.005, SALLY 2e-4, NDE |Δlog p| 0.055).
"""

from __future__ import annotations

import math

import pytest
import torch

from sbilab.nets.ensemble import Ensemble
from sbilab.estimators import (
    LikelihoodEstimator,
    RatioEstimator,
    ScoreEstimator,
    alices_loss,
    ensemble_log_ratio,
    ensemble_score,
    nde_loss,
    sally_loss,
)
from sbilab.events import Events
from sbilab.exceptions import ConfigError, MissingAugmentedDataError, NonFiniteOutputError, OutOfSupportError, ShapeMismatchError
from sbilab.simulators import GaussianLatent, ratio_training_data
from sbilab.simulators.augment import doubly_ratio_training_data, score_training_data
from sbilab.training import fit

FAST = dict(batch_size=256, learning_rate=3e-3, progress=False, seed=1, patience=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets on a shared 2-core machine: threads only contend
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim() -> GaussianLatent:
    return GaussianLatent(sigma_z=2.0, sigma_x=1.0)


@pytest.fixture(scope="module")
def train(sim) -> Events:
    return ratio_training_data(sim, 5000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def test_events(sim) -> tuple[Events, torch.Tensor]:
    ev = sim.simulate(4000, generator=torch.Generator().manual_seed(99))
    exact = sim.log_prob(ev.x, ev.theta) - sim.log_prob(ev.x, torch.zeros(1))
    return ev, exact


@pytest.fixture(scope="module")
def alices(sim, train) -> RatioEstimator:
    est = RatioEstimator.from_events(train, sim, hidden=(64, 64), activation="tanh")
    return fit(est, alices_loss, train, epochs=10, **FAST).model


def test_alices_learns_the_exact_log_ratio(alices, test_events) -> None:
    ev, exact = test_events
    with torch.no_grad():
        mse = ((alices.log_ratio(ev.x, ev.theta) - exact) ** 2).mean().item()
    assert mse < 0.01
    with torch.no_grad():  # its θ-gradient is the score: exact (x − θ)/5
        t = alices.score(ev.x, ev.theta)
    assert ((t - (ev.x - ev.theta) / 5) ** 2).mean().item() < 0.02  # measured 0.0067


def test_log_ratio_between_two_points_and_standardisation_buffers(alices, test_events) -> None:
    ev, _ = test_events
    x = ev.x[:5]
    a, b = torch.tensor([1.0]), torch.tensor([-0.5])
    assert torch.allclose(alices.log_ratio(x, a, b), alices.log_ratio(x, a) - alices.log_ratio(x, b), atol=1e-6)
    names = dict(alices.named_buffers())
    # half the events at θ ~ U(-2, 2) (variance 5 + 4/3), half at θ = 0 (variance 5)
    assert abs(names["net.x_norm.std"].item() - math.sqrt(5 + 4 / 6)) < 0.05
    assert names["theta_ref"].tolist() == [0.0]


def test_sally_learns_the_score_at_the_reference(sim, test_events) -> None:
    data = score_training_data(sim, 4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(data.theta, torch.zeros(4000, 1)) and data.score_joint.shape == (4000, 1)
    est = fit(ScoreEstimator.from_events(data, sim, hidden=(32, 32)), sally_loss, data, epochs=10, **FAST).model
    x = test_events[0].x
    with torch.no_grad():
        assert ((est.score(x) - x / 5) ** 2).mean().item() < 0.002
        assert torch.allclose(est.project(x), est.score(x)[:, 0])
        fisher = est.fisher_information(data.x).item()
    assert abs(fisher - 0.2) / 0.2 < 0.1  # exact per-event Fisher information 1/5


def test_nde_learns_the_exact_density_and_samples_it(sim, train, test_events) -> None:
    drawn_at_theta = train[train.label > 0.5]
    torch.manual_seed(0)  # the flow's initialisation: otherwise it depends on which tests ran before
    est = LikelihoodEstimator.from_events(drawn_at_theta, sim, hidden=(32, 32), transforms=2)
    est = fit(est, nde_loss, train, epochs=10, **FAST).model  # label-0 rows are masked by the loss
    ev, exact = test_events
    with torch.no_grad():
        assert (est.log_prob(ev.x, ev.theta) - sim.log_prob(ev.x, ev.theta)).abs().mean().item() < 0.15
        assert ((est.log_ratio(ev.x, ev.theta) - exact) ** 2).mean().item() < 0.03
        draws = est.sample(torch.tensor([1.0]), 20000, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (20000, 1)
    assert abs(draws.mean().item() - 1.0) < 0.15 and abs(draws.std().item() - math.sqrt(5)) < 0.15
    again = est.sample(torch.tensor([1.0]), 20000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(draws, again)
    assert est.sample(torch.tensor([[1.0], [-1.0]]), 3).shape == (3, 2, 1)
    assert est.sample_events(torch.zeros(7, 1)).x.shape == (7, 1)


def test_ensemble_gives_mean_and_spread(sim, train, test_events) -> None:
    est = RatioEstimator.from_events(train, sim, hidden=(32, 32), activation="tanh")
    ens = fit(Ensemble(est, 3), alices_loss, train, epochs=4, **FAST).model
    ev, exact = test_events
    with torch.no_grad():
        mean, std = ensemble_log_ratio(ens, ev.x, ev.theta)
        members = ens(ev.x, ev.theta)
    assert mean.shape == std.shape == (4000,) and members.shape == (3, 4000)
    assert torch.allclose(mean, members.mean(0)) and torch.allclose(std, members.std(0))
    assert ((mean - exact) ** 2).mean().item() < 0.05 and std.mean().item() > 0
    with pytest.raises(OutOfSupportError):
        ensemble_log_ratio(ens, ev.x, torch.tensor([5.0]))
    data = score_training_data(sim, 500, generator=torch.Generator().manual_seed(1))
    sens = fit(Ensemble(ScoreEstimator.from_events(data, sim, hidden=(8,)), 2), sally_loss, data, epochs=1, **FAST).model
    assert ensemble_score(sens, ev.x[:10])[0].shape == (10, 1)


def test_ensemble_mean_averages_ratios_and_mixes_densities(sim, tmp_path) -> None:
    from sbilab.estimators import EnsembleMean
    from sbilab.nets.ensemble import Ensemble
    from sbilab.publish import load, save

    g = torch.Generator().manual_seed(5)
    x, theta = torch.randn(6, 1, generator=g), torch.rand(6, 1, generator=g) * 2 - 1
    ratios = Ensemble(RatioEstimator(sim.space, 1, hidden=(8,)), 3, generator=torch.Generator().manual_seed(0)).eval()
    densities = Ensemble(LikelihoodEstimator(sim.space, 1, hidden=(8,), transforms=1), 2, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        log_r = [ratios.member(k).eval()(x, theta) for k in range(3)]
        log_p = [densities.member(k).eval()(x, theta) for k in range(2)]
        mean_r = EnsembleMean(ratios)(x, theta)
        mixture = EnsembleMean(densities)(x, theta)
    # ratios: the mean of log r̂ (geometric mean of r̂); densities: log of the mean density (the mixture)
    torch.testing.assert_close(mean_r, (log_r[0] + log_r[1] + log_r[2]) / 3, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixture, torch.log((log_p[0].exp() + log_p[1].exp()) / 2), rtol=0, atol=1e-6)
    assert EnsembleMean(ratios).reduction == "mean" and EnsembleMean(densities).reduction == "mixture"
    single = RatioEstimator(sim.space, 1, hidden=(8,))
    assert EnsembleMean.of(single) is single and isinstance(EnsembleMean.of(ratios), EnsembleMean)
    with pytest.raises(ConfigError, match="must be an Ensemble"):
        EnsembleMean(single)
    back = load(save(tmp_path / "mean.h5", EnsembleMean(ratios)))
    assert isinstance(back, EnsembleMean) and back.k == 3
    with torch.no_grad():
        torch.testing.assert_close(back(x, theta), mean_r, rtol=0, atol=0)


def test_doubly_parameterised_is_antisymmetric_and_trains(sim, test_events) -> None:
    data = doubly_ratio_training_data(sim, 3000, generator=torch.Generator().manual_seed(4))
    assert data.theta.shape == (6000, 2) and data.score_joint.shape == (6000, 2)
    est = RatioEstimator.from_events(data, sim, hidden=(32, 32), activation="tanh", doubly=True)
    est = fit(est, alices_loss, data, epochs=6, **FAST).model
    ev, exact = test_events
    with torch.no_grad():
        a, b = torch.tensor([1.5]), torch.tensor([-1.0])
        assert torch.allclose(est.log_ratio(ev.x, a, b), -est.log_ratio(ev.x, b, a), atol=1e-6)
        assert torch.equal(est.log_ratio(ev.x, a, a), torch.zeros(4000))
        assert ((est.log_ratio(ev.x, ev.theta) - exact) ** 2).mean().item() < 0.05


def test_spec_round_trip_and_publish(alices, tmp_path, test_events) -> None:
    x = test_events[0].x[:10]
    clone = RatioEstimator.from_spec(alices.spec())
    clone.load_state_dict(alices.state_dict())
    assert torch.equal(clone.log_ratio(x, torch.tensor([0.3])), alices.log_ratio(x, torch.tensor([0.3])))
    publish = pytest.importorskip("sbilab.publish")
    publish.save(tmp_path / "r.h5", alices)
    loaded = publish.load(tmp_path / "r.h5")
    assert torch.equal(loaded.log_ratio(x, torch.tensor([0.3])), alices.log_ratio(x, torch.tensor([0.3])))


def test_bad_inputs_raise_named_errors(alices, sim, train) -> None:
    x = torch.zeros(4, 1)
    with pytest.raises(ShapeMismatchError, match=r"\(N, 1\)"):
        alices.log_ratio(torch.zeros(4, 2), torch.tensor([0.0]))
    with pytest.raises(ShapeMismatchError, match="parameter"):
        alices.log_ratio(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ShapeMismatchError):
        alices.log_ratio(x, torch.zeros(3, 1))
    with pytest.raises(OutOfSupportError, match="outside the parameter space"):
        alices.log_ratio(x, torch.tensor([2.5]))
    with pytest.raises(OutOfSupportError):
        alices.log_ratio(x, torch.tensor([0.0]), torch.tensor([-3.0]))
    broken = RatioEstimator.from_spec(alices.spec())
    broken.load_state_dict(alices.state_dict())
    with torch.no_grad():
        broken.net.mlp[0].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="retrain"):
        broken.log_ratio(x, torch.tensor([0.0]))
    plain = train.replace(log_r_joint=None, score_joint=None)
    with pytest.raises(MissingAugmentedDataError, match="augment"):
        fit(RatioEstimator.from_events(plain, sim, hidden=(4,)), alices_loss, plain, epochs=1, **FAST)
    with pytest.raises(ShapeMismatchError):
        RatioEstimator(sim.space, 2, hidden=(4,)).standardize_from(train)
    with pytest.raises(ShapeMismatchError):
        ScoreEstimator(sim.space, 1, hidden=(4,)).score(torch.zeros(3, 4))
    with pytest.raises(OutOfSupportError):
        LikelihoodEstimator(sim.space, 1, hidden=(4,)).sample(torch.tensor([9.0]), 2)
