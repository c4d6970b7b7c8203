"""Data sets of events as one padded-set observation: layouts against hand-built answers."""

from __future__ import annotations

import pytest
import torch

from sbilab.events import Events
from sbilab.exceptions import ConfigError, ShapeMismatchError
from sbilab.simulators import datasets_from_events, simulate_datasets
from sbilab.simulators.toys import GaussianLatent


def test_vector_events_become_sets_of_consecutive_events():
    ev = Events(x=torch.arange(12.0).reshape(6, 2), theta=torch.arange(6.0).unsqueeze(1))
    sets = datasets_from_events(ev, 3)
    assert sets.x.tolist() == [[[0, 1], [2, 3], [4, 5]], [[6, 7], [8, 9], [10, 11]]]
    assert sets.theta.tolist() == [[0.0], [3.0]] and bool(sets.mask.all())


def test_set_events_occupy_blocks_with_their_particles_first():
    x = torch.tensor([[[1.0], [0.0], [2.0]], [[0.0], [3.0], [0.0]]])  # two events, 3 slots, padding interleaved
    mask = torch.tensor([[True, False, True], [False, True, False]])
    ev = Events(x=x, theta=torch.zeros(2, 1), mask=mask)
    sets = datasets_from_events(ev, 2, block=4)
    assert sets.x.shape == (1, 8, 1)
    assert sets.x[0, :, 0].tolist() == [1.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0]
    assert sets.mask[0].tolist() == [True, True, False, False, True, False, False, False]
    narrow = datasets_from_events(ev, 1, block=2)  # the longest event has 2 particles: fits
    assert narrow.x[:, :, 0].tolist() == [[1.0, 2.0], [3.0, 0.0]]
    with pytest.raises(ShapeMismatchError, match="block = 1"):
        datasets_from_events(ev, 1, block=1)
    with pytest.raises(ShapeMismatchError, match="set_size = 3"):
        datasets_from_events(ev, 3)


def test_simulate_datasets_draws_each_set_at_its_theta():
    toy = GaussianLatent()  # x ~ N(theta, 2^2 + 1^2)
    theta = torch.tensor([[-2.0], [0.0], [2.0]])
    sets = simulate_datasets(toy, 3, 4000, theta=theta, generator=torch.Generator().manual_seed(0))
    assert sets.x.shape == (3, 4000, 1) and torch.equal(sets.theta, theta)
    torch.testing.assert_close(sets.x.mean(1)[:, 0], theta[:, 0], atol=0.15, rtol=0)  # 4 standard errors sqrt(5/4000)
    drawn = simulate_datasets(toy, 5, 2, generator=torch.Generator().manual_seed(1))
    assert drawn.x.shape == (5, 2, 1) and bool(((drawn.theta >= -2) & (drawn.theta <= 2)).all())
    with pytest.raises(ConfigError, match="set_size"):
        simulate_datasets(toy, 2, 0)
