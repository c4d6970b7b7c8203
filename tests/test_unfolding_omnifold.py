"""OmniFold against the ideal (quadrature) iterations, replicas as one ensemble, diagnostics, bad input.

Tolerances. With N simulated and N data events the moments of an iteration scatter by the data
statistics of N events (``ideal_stat_error``) and as much again from the simulation's, so
``sigma = sqrt(2) * ideal_stat_error(toy, N)``. The classifiers here are small and briefly trained
(to keep the tests fast), which adds a bias of up to about one sigma at N = 10^4 (measured over
seeds); the tests allow 4 sigma. The benchmark holds OmniFold to the statistical error of 10^5 events.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from sbilab import Events, PairedEvents
from sbilab.exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from sbilab.training import TrainingConfig
from sbilab.unfolding import (
    ClassifierSettings,
    OmniFoldSettings,
    Replicas,
    UnfoldedResult,
    full_toy,
    ideal_iterations,
    ideal_stat_error,
    minimal_toy,
    omnifold,
    weighted_moments,
)
from sbilab.unfolding.steps import DEFAULT_TRAINING, step_ratio

N = 10_000
FAST = ClassifierSettings(hidden=(32, 32), training=dataclasses.replace(DEFAULT_TRAINING, epochs=10, batch_size=1024, learning_rate=5e-3))


def _normal_pdf(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def _pulls(toy, result, sim, n, iterations):
    ideal = ideal_iterations(toy, iterations=iterations).moments[1:]
    sigma = ideal_stat_error(toy, n, iterations=iterations, points=201) * 2**0.5
    got = torch.stack([weighted_moments(sim.gen.x[:, 0], result.nominal_weights(k)) for k in range(1, iterations + 1)])
    return (got - ideal) / sigma


def test_step_classifier_is_calibrated_against_the_exact_ratio():
    """The training settings give a calibrated ratio: learned data/simulation ratio vs the exact one."""
    toy, g = minimal_toy(), torch.Generator().manual_seed(0)
    sim, data = toy.simulation(N, generator=g), toy.data(N // 2, generator=g)
    sim_x = Events.observed(sim.reco.x)
    grid = Events.observed(torch.linspace(-1.5, 1.5, 41, dtype=torch.float64)[:, None])  # the bulk: >= 300 events per unit
    settings = dataclasses.replace(FAST, training=dataclasses.replace(FAST.training, epochs=30))  # ~450 steps
    ratio, reports, _ = step_ratio(sim_x, torch.ones(1, N), data.events, torch.ones(1, N // 2), settings=settings, seed=0,
                                   apply_to=grid, base=torch.ones(1, 41))
    x = grid.x[:, 0]
    exact = 0.5 * _normal_pdf(x, 0.0, math.sqrt(1.25)) / _normal_pdf(x, 0.2, math.sqrt(0.89))  # W1/W0 = 1/2
    assert float((ratio[0].log() - exact.log()).abs().max()) < 0.08  # 5 10^3 vs 10^4 events: a few 0.01 statistical
    report = reports[0]
    assert abs(report.normalisation - 1) < 3 * report.normalisation_error + 2e-3  # calibrated E_0[r] = 1
    assert report.n_clipped == 0 and 0 < report.effective_sample_size <= 41


@pytest.fixture(scope="module")
def minimal_run():
    toy, g = minimal_toy(), torch.Generator().manual_seed(1)
    sim, data = toy.simulation(N, generator=g), toy.data(N, generator=g)
    return toy, sim, omnifold(sim, data.events, settings=OmniFoldSettings(iterations=2, classifier=FAST), progress=False)


def test_minimal_toy_follows_the_ideal_iterations(minimal_run):
    toy, sim, out = minimal_run
    pulls = _pulls(toy, out, sim, N, 2)
    assert float(pulls.abs().max()) < 4.0, pulls
    # every iteration's weights are kept; iteration 0 is the simulation itself
    assert out.push.shape == (3, 1, N) and out.pull.shape == (2, 1, N)
    assert bool((out.push[0] == 1).all())
    torch.testing.assert_close(weighted_moments(sim.gen.x[:, 0], out.nominal_weights(0)),
                               weighted_moments(sim.gen.x[:, 0]), rtol=0, atol=1e-12)
    # the unfolded total is the data's (no efficiency, fakes or background here)
    assert float(out.weights().sum()) == pytest.approx(N, rel=0.02)
    steps = [(d.iteration, d.step) for d in out.diagnostics]
    assert steps == [(1, "1"), (1, "2"), (2, "1"), (2, "2")]
    for d in out.diagnostics:
        assert abs(float(d.normalisation[0]) - 1) < 0.01 and int(d.n_clipped[0]) == 0
        assert 0.5 * N < float(d.effective_sample_size[0]) <= N * 1.0001
    change = [float(d.change[0]) for d in out.diagnostics if d.step == "2"]
    assert change[1] < change[0]  # the iteration converges
    json.dumps([d.to_dict() for d in out.diagnostics])


@pytest.fixture(scope="module")
def full_run():
    """The full toy (efficiency, fakes, background subtracted) with replicas of every kind in one ensemble."""
    toy, g = full_toy(), torch.Generator().manual_seed(2)
    sim, data = toy.simulation(N, generator=g), toy.data(N, generator=g)
    background = toy.background(N, data_rows=N, generator=g)
    z = sim.gen.x[:, 0]
    syst = sim.weights_or_ones().double() * torch.where(sim.pass_gen, 1 + 0.1 * torch.tanh(z), 1.0)  # a shape variation
    replicas = Replicas(ensemble=2, bootstrap_data=2, bootstrap_mc=1, systematics={"shape_up": syst}, seed=5)
    out = omnifold(sim, data.events, background=background, replicas=replicas,
                   settings=OmniFoldSettings(iterations=2, classifier=FAST), progress=False)
    return toy, sim, data, out


def test_full_toy_follows_the_ideal_iterations_with_efficiency_fakes_background(full_run):
    toy, sim, data, out = full_run
    pulls = _pulls(toy, out, sim, N, 2)
    assert float(pulls.abs().max()) < 4.0, pulls
    # fakes share one weight c_k; equal numbers of simulated and data rows: c_k is the ideal one
    ideal = ideal_iterations(toy, iterations=2)
    nominal = out.fake_scale[:, :2].mean(-1)
    torch.testing.assert_close(nominal, ideal.fake_scale, rtol=0, atol=0.05)
    # the unfolded total is the data's fiducial count (efficiency corrected, fakes and background removed)
    assert float(out.nominal_weights().sum()) == pytest.approx(len(data.truth), rel=0.04)
    assert [d.step for d in out.diagnostics] == ["1", "1b", "2"] * 2
    assert all(d.normalisation.shape == (6,) for d in out.diagnostics)


def test_replicas_are_members_of_one_ensemble(full_run):
    toy, sim, data, out = full_run
    lay = out.layout
    assert lay.size == 6 and lay.kinds == ("ensemble",) * 2 + ("bootstrap_data",) * 2 + ("bootstrap_mc", "systematic")
    w = out.weights()  # (K, N)
    assert w.shape == (6, N)
    # simulation bootstraps carry Poisson weights, the others the nominal ones (zero for fakes)
    mc = out.mc_weights
    assert bool((mc[:4] == 1).all())
    assert bool((mc[4] != 1).any()) and bool((mc[4] == mc[4].round()).all())
    means = weighted_moments(sim.gen.x[:, 0], w)[:, 0]
    sigma = float(ideal_stat_error(toy, N, iterations=2, points=201)[-1, 0])
    spread = means[2:5] - means[:2].mean()
    assert 0 < float(spread.abs().max()) < 5 * sigma  # bootstraps fluctuate at the statistical level
    assert float(means[5] - means[:2].mean()) > 0  # the systematic variation's shift survives the unfolding


def test_publish_every_weight_column_and_get_any_histogram_with_covariance(full_run, tmp_path):
    _, sim, _, out = full_run
    result = out.to_result(("z",), ("a.u.",))
    assert isinstance(result, UnfoldedResult) and len(result) == int(sim.pass_gen.sum())
    names = list(result.columns())
    assert names[:3] == ["weights_nominal", "weights_ensemble_0", "weights_ensemble_1"]
    assert "weights_bootstrap_data_1" in names and "weights_bootstrap_mc_0" in names and names[-1] == "weights_shape_up"
    loaded = UnfoldedResult.load(result.save(tmp_path / "unfolded.h5"))
    assert loaded.settings["method"] == "omnifold" and loaded.settings["replicas"]["bootstrap_data"] == 2
    band = loaded.histogram("z", [-2.0, -1.0, 0.0, 1.0, 2.0])
    torch.testing.assert_close(band.nominal, result.histogram("z", [-2.0, -1.0, 0.0, 1.0, 2.0]).nominal)
    assert band.covariance.shape == (4, 4) and bool((band.error > 0).all())
    assert torch.linalg.eigvalsh(band.covariance_data).min() > -1e-9  # a covariance
    before = result.histogram("z", 4, ranges=[(-2.0, 2.0)])
    torch.testing.assert_close(before.nominal, band.nominal)


def test_background_fitted_instead_of_subtracted_with_warm_start():
    toy, g, n = full_toy(), torch.Generator().manual_seed(3), 6000
    sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
    background = toy.background(n // 2, data_rows=n, generator=g)
    settings = OmniFoldSettings(iterations=2, background="fit", classifier=dataclasses.replace(FAST, warm_start=True))
    out = omnifold(sim, data.events, background=background, settings=settings, progress=False)
    # the background normalisation is fitted by the data (truth: 1, the Monte Carlo is normalised to it)
    assert float(out.background_scale[-1, 0]) == pytest.approx(1.0, abs=0.25)
    pulls = _pulls(toy, out, sim, n, 2)
    assert float(pulls.abs().max()) < 5.0, pulls


def _as_particles(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each event as 1-3 zero-padded 'particles' (x, noise): a variable-length set carrying x."""
    n = x.shape[0]
    sizes = torch.randint(1, 4, (n,), generator=g)
    mask = torch.arange(3)[None, :] < sizes[:, None]
    parts = torch.stack([x.expand(n, 3), torch.randn(n, 3, generator=g, dtype=x.dtype)], -1)
    return torch.where(mask[..., None], parts, 0.0), mask


def test_particle_sets_at_detector_level():
    toy, g = minimal_toy(), torch.Generator().manual_seed(4)
    sim, data = toy.simulation(N // 2, generator=g), toy.data(N // 2, generator=g)
    reco_set, reco_mask = _as_particles(sim.reco.x, g)
    mc = PairedEvents(sim.gen, Events.observed(reco_set, mask=reco_mask), pass_gen=sim.pass_gen, pass_reco=sim.pass_reco)
    data_set, data_mask = _as_particles(data.reco, g)
    classifier = dataclasses.replace(FAST, embedding={"kind": "deepsets", "out_features": 8},
                                     training=dataclasses.replace(FAST.training, epochs=40))  # few events: more epochs
    settings = OmniFoldSettings(iterations=1, classifier=classifier)
    out = omnifold(mc, Events.observed(data_set, mask=data_mask), settings=settings, progress=False)
    pulls = _pulls(toy, out, sim, N // 2, 1)
    assert float(pulls.abs().max()) < 4.0, pulls
    with pytest.raises(ShapeMismatchError, match="same observables"):  # a set simulation against vector data
        omnifold(mc, data.events, settings=settings, progress=False)


def test_bad_input_is_named_at_the_call(tmp_path):
    toy, g = minimal_toy(), torch.Generator().manual_seed(6)
    sim, data = toy.simulation(200, generator=g), toy.data(200, generator=g)
    quick = OmniFoldSettings(iterations=1, classifier=FAST)
    with pytest.raises(ShapeMismatchError, match="same observables"):
        omnifold(sim, Events.observed(torch.randn(50, 2)), settings=quick, progress=False)
    with pytest.raises(InvalidEventsError, match="pass_reco"):  # a pass mask of the wrong length
        PairedEvents(sim.gen, sim.reco, pass_reco=sim.pass_reco[:-1])
    with pytest.raises(InvalidEventsError, match="neither"):
        PairedEvents(sim.gen, sim.reco, pass_gen=torch.zeros(200, dtype=torch.bool), pass_reco=torch.zeros(200, dtype=torch.bool))
    with pytest.raises(InvalidEventsError, match="non-finite"):  # NaN in observables
        Events.observed(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(InvalidEventsError, match="total weight"):  # all-zero simulation weights
        omnifold(sim.with_weights(torch.zeros(200)), data.events, settings=quick, progress=False)
    with pytest.raises(InvalidEventsError, match="total weight"):  # negative-sum data weights
        omnifold(sim, Events.observed(data.reco, weights=-torch.ones(len(data.reco))), settings=quick, progress=False)
    with pytest.raises(InvalidEventsError, match="minus background"):
        omnifold(sim, data.events, background=Events.observed(data.reco, weights=2 * torch.ones(len(data.reco))),
                 settings=quick, progress=False)
    for bad in (dict(bootstrap_data=0), dict(bootstrap_mc=0), dict(ensemble=0)):
        with pytest.raises(ConfigError, match="must be an integer >= 1"):  # a replica count of 0
            Replicas(**bad)
    with pytest.raises(ShapeMismatchError, match="one weight per simulated event"):
        omnifold(sim, data.events, replicas=Replicas(systematics={"up": torch.ones(5)}), settings=quick, progress=False)
    with pytest.raises(ConfigError, match="reserved"):
        Replicas(systematics={"bootstrap_mc_0": torch.ones(200)})
    with pytest.raises(ConfigError, match="iterations"):
        OmniFoldSettings(iterations=0)
    with pytest.raises(ConfigError, match="ensemble must be 1"):
        ClassifierSettings(training=TrainingConfig(ensemble=2))
    with pytest.raises(ConfigError, match="w_min < w_max"):
        ClassifierSettings(w_min=2.0, w_max=1.0)
