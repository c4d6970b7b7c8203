"""The six-observable toy and the per-observable binned IBU baseline."""

from __future__ import annotations

import pytest
import torch

from sbilab.exceptions import ConfigError, ShapeMismatchError
from sbilab.unfolding import IBUResult, MultiObservableToy, compare_to_truth, unfold_each_observable
from sbilab.unfolding.baseline import ObservableUnfolding


@pytest.fixture(scope="module")
def samples():
    toy = MultiObservableToy()
    g = torch.Generator().manual_seed(0)
    return toy, toy.simulation(60_000, generator=g), toy.data(60_000, generator=g)


def test_toy_is_correlated_nonlinear_and_shifted(samples):
    toy, sim, data = samples
    assert sim.gen.x.shape == (60_000, 6) and len(toy.observables) == 6 == len(toy.units)
    corr = torch.corrcoef(sim.gen.x.T)
    off = corr[~torch.eye(6, dtype=torch.bool)].abs()
    assert int((off > 0.2).sum()) >= 10  # many correlated pairs
    assert bool((sim.gen.x[:, 1] > 0).all()) and bool(((sim.gen.x[:, 2] > 0) & (sim.gen.x[:, 2] < 1)).all())
    reco = sim.reco.x[sim.pass_reco]
    assert bool(((reco[:, 2] > 0) & (reco[:, 2] < 1)).all())  # the bounded observable stays bounded after smearing
    assert 0.75 < float(sim.pass_reco.double().mean()) < 0.9


def test_ibu_per_observable_beats_the_prior_on_every_observable(samples):
    _, sim, data = samples
    unfolded = unfold_each_observable(sim, data.reco, bins=20, iterations=4)
    after = compare_to_truth(unfolded, sim, data.truth)
    prior = [ObservableUnfolding(u.index, u.edges, u.response, IBUResult(unfolded=u.response.truth[None], prior=u.response.truth),
                                 u.response.event_weights(u.response.truth, sim.gen.x[:, u.index])) for u in unfolded]
    before = compare_to_truth(prior, sim, data.truth)
    assert len(after["delta_x1e3"]) == 6 == len(after["w1"])
    assert min(before["delta_x1e3"]) > 2.0  # the data's generator setting changes every observable
    for d in range(6):
        assert after["delta_x1e3"][d] < 0.5 * before["delta_x1e3"][d], (d, after, before)
        assert after["w1"][d] < 0.5 * before["w1"][d], (d, after, before)
    # the reweighted simulation reproduces the unfolded histogram exactly
    u = unfolded[0]
    idx = torch.bucketize(sim.gen.x[:, 0].contiguous(), u.edges, right=True) - 1
    inside = (idx >= 0) & (idx < 20)
    hist = torch.zeros(20, dtype=torch.float64).index_add_(0, idx[inside], u.weights[inside])
    torch.testing.assert_close(hist, u.result.final, rtol=1e-10, atol=1e-8)


def test_baseline_bad_input(samples):
    _, sim, data = samples
    with pytest.raises(ShapeMismatchError, match="observables"):
        unfold_each_observable(sim, data.reco[:, :5])
    with pytest.raises(ConfigError, match="bins"):
        unfold_each_observable(sim, data.reco, bins=1)
