"""Generative (cINN) unfolding and its iterations against the ideal iterations; the many-observable metrics.

Tolerance as in ``test_unfolding_omnifold.py``: sigma = sqrt(2) * ideal_stat_error for equal
simulation and data sizes, 4 sigma allowed for small, briefly trained networks.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sbilab import Events, PairedEvents
from sbilab.exceptions import ConfigError, ShapeMismatchError
from sbilab.nets.flows import FlowSpec
from sbilab.unfolding import (
    ClassifierSettings,
    GenerativeSettings,
    MultiObservableToy,
    compare_to_truth,
    distances_to_truth,
    full_toy,
    generative_unfold,
    ideal_iterations,
    ideal_stat_error,
    unfold_each_observable,
    weighted_moments,
)
from sbilab.unfolding.steps import DEFAULT_TRAINING

N = 8_000
QUICK = dataclasses.replace(DEFAULT_TRAINING, epochs=10, batch_size=512)
SETTINGS = GenerativeSettings(iterations=2, draws=4, flow=FlowSpec("maf", transforms=2, hidden=(32, 32)),
                              density_training=dataclasses.replace(QUICK, learning_rate=2e-3),
                              classifier=ClassifierSettings(hidden=(32, 32), training=QUICK))


@pytest.fixture(scope="module")
def full_run():
    toy, g = full_toy(), torch.Generator().manual_seed(0)
    sim, data = toy.simulation(N, generator=g), toy.data(N, generator=g)
    background = toy.background(N, data_rows=N, generator=g)
    return toy, sim, data, generative_unfold(sim, data.events, background=background, settings=SETTINGS, progress=False)


def test_iterations_follow_the_ideal_ones_with_efficiency_fakes_and_background(full_run):
    toy, sim, data, out = full_run
    ideal = ideal_iterations(toy, iterations=2)
    sigma = ideal_stat_error(toy, N, iterations=2, points=201) * 2**0.5
    got = torch.stack([weighted_moments(*(lambda z, w: (z[:, 0], w))(*out.unfolded(k))) for k in (1, 2)])
    pulls = (got - ideal.moments[1:]) / sigma
    assert float(pulls.abs().max()) < 4.0, pulls
    # iterating removes prior dependence: iteration 2 is closer to the data's truth N(0.2, 0.8)
    truth = torch.tensor([0.2, 0.8], dtype=torch.float64)
    assert float((got[1] - truth).abs().sum()) < float((got[0] - truth).abs().sum())
    # efficiency corrected, fakes and background removed: the weights sum to the fiducial count
    for k in (1, 2):
        assert float(out.unfolded(k)[1].sum()) == pytest.approx(len(data.truth), rel=0.05)
    torch.testing.assert_close(out.fake_scale, ideal.fake_scale, rtol=0, atol=0.06)  # c_k, the extra cause


def test_result_layout_and_diagnostics(full_run):
    _, sim, data, out = full_run
    m = len(data.reco)
    assert out.samples.shape == (2, 4 * m, 1) and out.sample_weights.shape == (2, 4 * m)
    assert out.prior_weights.shape == (2, N) and bool((out.prior_weights[0] == 1).all())
    assert out.data_weights.shape == (2, m) and bool((out.data_weights <= 1 + 1e-9).all())
    steps = [(d.iteration, d.step) for d in out.diagnostics]
    assert steps == [(0, "background"), (1, "purity"), (1, "prior"), (2, "purity")]
    for d in out.diagnostics:
        assert abs(float(d.normalisation[0]) - 1) < 0.03
    with pytest.raises(ConfigError, match="iteration"):
        out.unfolded(3)


def test_bad_input():
    with pytest.raises(ConfigError, match="draws"):
        GenerativeSettings(draws=0)
    toy, g = full_toy(), torch.Generator().manual_seed(1)
    sim, data = toy.simulation(100, generator=g), toy.data(100, generator=g)
    as_set = PairedEvents(Events.observed(sim.gen.x[:, None, :]), sim.reco, pass_gen=sim.pass_gen, pass_reco=sim.pass_reco)
    with pytest.raises(ShapeMismatchError, match="particle set"):
        generative_unfold(as_set, data.events, settings=SETTINGS, progress=False)
    with pytest.raises(ShapeMismatchError, match="same observables"):
        generative_unfold(sim, Events.observed(torch.randn(10, 3)), settings=SETTINGS, progress=False)


def test_distances_to_truth_are_the_baselines_metrics_for_ibu_weights():
    toy, g = MultiObservableToy(), torch.Generator().manual_seed(2)
    sim, data = toy.simulation(5000, generator=g), toy.data(5000, generator=g)
    unfolded = unfold_each_observable(sim, data.reco, bins=10, iterations=2)
    reference = compare_to_truth(unfolded, sim, data.truth)
    for d, u in enumerate(unfolded):
        got = distances_to_truth(sim.gen.x, u.weights, data.truth, [x.edges for x in unfolded])
        assert got["delta_x1e3"][d] == pytest.approx(reference["delta_x1e3"][d], rel=1e-9)
        assert got["w1"][d] == pytest.approx(reference["w1"][d], rel=1e-9)
    with pytest.raises(ShapeMismatchError, match="must agree"):
        distances_to_truth(sim.gen.x, torch.ones(5000), data.truth, [unfolded[0].edges])
