"""A learned detector stage of the resonance toy: efficiency and response against the exact detector, support, publishing."""

import copy
import math
import warnings

import pytest
import torch
from scipy.stats import norm

from sbilab import publish
from sbilab.events import Events
from sbilab.estimators.support import TrainingSupport
from sbilab.exceptions import ConfigError, ExtrapolationWarning, InvalidEventsError, OutOfSupportError, ShapeMismatchError
from sbilab.nets.flows import FlowSpec
from sbilab.paired import PairedEvents
from sbilab.simulators.toys import Resonance
from sbilab.surrogates import (
    Composition,
    ResonanceDetector,
    ResonanceTruth,
    StageSurrogate,
    TruthRangeWarning,
    paired_arrays,
    simulate_pairs,
    to_paired_events,
    train_stage_surrogate,
)

TOY = Resonance()
TRUTH, DETECTOR = ResonanceTruth(TOY), ResonanceDetector(TOY)
SMALL = dict(flow=FlowSpec("nsf", transforms=1, hidden=(32, 32)), efficiency_hidden=(32, 32), epochs=8, efficiency_epochs=30,
             batch_size=256, learning_rate=1e-2)


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    return simulate_pairs(TRUTH, DETECTOR, TOY.space.sample(6000, generator=g), generator=g)


@pytest.fixture(scope="module")
def stage(pairs):
    z, x, passed = pairs
    return train_stage_surrogate(z, x, passed, truth_low=[70.0], truth_high=[130.0], reco_low=[85.0], reco_high=[115.0],
                                 truth_names=["m"], reco_names=["x"], **SMALL)


def test_efficiency_and_response_follow_the_exact_detector(stage):
    m = torch.tensor([[80.0], [84.0], [86.0], [100.0], [113.0], [117.0], [122.0]], dtype=torch.float64)
    exact = norm.cdf((115 - m[:, 0].numpy()) / 2) - norm.cdf((85 - m[:, 0].numpy()) / 2)
    learned = stage.log_efficiency(m).exp().detach().double().numpy()
    assert abs(learned - exact).max() < 0.08  # binomial noise near the window edges is ~0.03 with 6000 pairs
    # response at m = 100, far from the window edges: N(100, 2)
    draws = stage.sample_reco(torch.full((6000, 1), 100.0), generator=torch.Generator().manual_seed(1))
    assert float(draws.mean()) == pytest.approx(100.0, abs=0.15)
    assert float(draws.std()) == pytest.approx(2.0, rel=0.12)
    x = torch.linspace(96.0, 104.0, 9).reshape(-1, 1)
    exact_lp = DETECTOR.log_prob(x.double(), torch.full((9, 1), 100.0, dtype=torch.float64))
    learned_lp = stage.log_prob(x, torch.full((9, 1), 100.0)).detach().double()
    assert float((learned_lp - exact_lp).abs().max()) < 0.15
    assert stage.training_record["left_out_passing"] == 0


def test_surrogate_simulator_is_normalised_and_stays_in_the_window(stage):
    surrogate = Composition(TRUTH, stage)
    ev = surrogate.sample(torch.tensor([100.0, 5.0]).expand(500, 2), generator=torch.Generator().manual_seed(2))
    assert bool(((ev.x > 85) & (ev.x < 115)).all()) and ev.weights is None
    # p(x|θ) of the surrogate integrates to one over the window (by construction: the grid normalises it)
    grid = torch.linspace(85, 115, 1201, dtype=torch.float64)[1:-1].reshape(-1, 1)
    density = surrogate.log_prob(grid, torch.tensor([100.0, 5.0])).exp()
    assert float(density.sum() * (grid[1, 0] - grid[0, 0])) == pytest.approx(1.0, abs=3e-3)
    exact = TOY.log_prob(grid, torch.tensor([100.0, 5.0], dtype=torch.float64)).exp()
    assert float((density - exact).abs().max() / exact.max()) < 0.1


def test_stage_refuses_truth_and_theta_it_was_not_trained_on(stage):
    with pytest.raises(OutOfSupportError, match="outside the trained truth range"):
        stage.log_prob(torch.tensor([[100.0]]), torch.tensor([[140.0]]))
    with pytest.raises(OutOfSupportError, match="outside the bounds"):
        stage.log_prob(torch.tensor([[120.0]]), torch.tensor([[100.0]]))
    with pytest.raises(ShapeMismatchError, match="does not depend on θ"):
        stage.sample(torch.tensor([[100.0]]), torch.tensor([100.0, 5.0]))


def test_publish_round_trip_reproduces_the_stage(stage, tmp_path):
    path = publish.save(tmp_path / "stage.h5", stage, metadata={"toy": "resonance"})
    loaded = publish.load(path)
    assert isinstance(loaded, StageSurrogate) and loaded.truth_names == ("m",)
    z = torch.tensor([[90.0], [100.0], [110.0]])
    x = torch.tensor([[91.0], [99.0], [112.0]])
    assert torch.equal(loaded.log_prob(x, z), stage.log_prob(x, z))
    assert torch.equal(loaded.log_efficiency(z), stage.log_efficiency(z))
    a = loaded.sample(z, generator=torch.Generator().manual_seed(5))
    b = stage.sample(z, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(OutOfSupportError):
        loaded.log_efficiency(torch.tensor([[60.0]]))


def test_a_truth_range_that_cuts_passing_events_is_announced(pairs):
    z, x, passed = (t[:2000] for t in pairs)
    with pytest.warns(TruthRangeWarning, match="passing events have a truth outside"):
        small = train_stage_surrogate(z, x, passed, truth_low=[90.0], truth_high=[110.0], reco_low=[85.0], reco_high=[115.0],
                                      **{**SMALL, "epochs": 1, "efficiency_epochs": 1})
    assert small.training_record["left_out_passing"] > 0
    assert math.isclose(float(small.truth_box[0][0]), 90.0)


def test_paired_events_train_the_same_stage_as_the_arrays(pairs):
    z, x, passed = (a[:1500] for a in pairs)
    theta = TOY.space.sample(1500, generator=torch.Generator().manual_seed(5))
    paired = to_paired_events(z, x, passed, theta)
    assert paired.misses.sum() == (~passed).sum() and not paired.fakes.any()
    back = paired_arrays(paired)
    assert torch.equal(back[0], z) and torch.equal(back[2], passed) and torch.equal(back[3], theta)
    assert torch.equal(back[1][passed], x[passed]) and bool((back[1][~passed] == 0).all())
    tiny = {**SMALL, "epochs": 1, "efficiency_epochs": 1}
    box = dict(truth_low=[70.0], truth_high=[130.0], reco_low=[85.0], reco_high=[115.0])
    a = train_stage_surrogate(z, x, passed, **box, **tiny)
    b = train_stage_surrogate(to_paired_events(z, x, passed), **box, **tiny)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError, match="come from the pairs"):
        train_stage_surrogate(paired, x, **box, **tiny)
    with pytest.raises(ConfigError, match="reco is missing"):
        train_stage_surrogate(z, **box, **tiny)


def test_paired_events_a_stage_cannot_learn_from_are_refused():
    gen, reco = Events.observed(torch.tensor([[1.0], [2.0]])), Events.observed(torch.tensor([[1.1], [2.2]]))
    with pytest.raises(InvalidEventsError, match="1 of 2 events fail the gen-level selection"):
        paired_arrays(PairedEvents(gen, reco, pass_gen=torch.tensor([True, False])))
    with pytest.raises(InvalidEventsError, match="event weights"):
        paired_arrays(PairedEvents(gen, reco, weights=torch.tensor([1.0, 2.0])))
    with pytest.raises(InvalidEventsError, match="particle sets"):
        paired_arrays(PairedEvents(gen, Events.observed(torch.zeros(2, 3, 1))))
    with pytest.raises(InvalidEventsError, match="expected PairedEvents"):
        paired_arrays((gen.x, reco.x))
    assert paired_arrays(PairedEvents(gen, reco, weights=torch.ones(2)))[3] is None


def test_a_grid_leaning_on_an_extrapolated_density_is_announced(stage):
    # the trained stage: grid nodes outside the passing events' truth have a learned efficiency below 5 %: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        Composition(TRUTH, stage).log_acceptance(torch.tensor([100.0, 5.0]))
        reco, passed = stage.sample(torch.tensor([[70.5], [100.0]]), generator=torch.Generator().manual_seed(3))
    assert reco.shape == (2, 1) and (reco[~passed] == 0).all()
    # the same stage whose density saw truth only in [98, 102]: nodes at efficiency ~1 are extrapolated
    narrow = copy.deepcopy(stage)
    narrow.density.training_support = TrainingSupport(low=(98.0,), high=(102.0,), n_events=100, margin=0.0)
    assert narrow.density_extrapolates(torch.tensor([[97.0], [100.0], [103.0]])).tolist() == [True, False, True]
    with pytest.warns(ExtrapolationWarning, match=r"224 of 240 truth-grid nodes .* efficiency up to (0\.9\d\d|1\.000)"):
        Composition(TRUTH, narrow).log_acceptance(torch.tensor([100.0, 5.0]))
