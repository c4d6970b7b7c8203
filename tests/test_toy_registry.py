"""The toy vocabulary (sbilab.simulators.registry) and the exact log-ratio of a toy (sbilab.simulators.exact)."""

from __future__ import annotations

import pytest
import torch

from sbilab.exceptions import ConfigError
from sbilab.simulators import GaussianLatent, Resonance
from sbilab.simulators.base import Simulator
from sbilab.simulators.exact import ExactLogRatio
from sbilab.simulators.registry import TOYS, build_toy, register_toy


def test_toys_register_where_defined_and_build_by_name():
    assert TOYS["gaussian"] is GaussianLatent and TOYS["resonance"] is Resonance
    sim = build_toy("resonance", {"sigma_det": 1.5})
    assert isinstance(sim, Resonance) and sim.sigma_det == 1.5
    with pytest.raises(ConfigError, match=r"here: toy = 'resonanse'; choose one of \[('\w+', )*'gaussian', ('\w+', )*'resonance'"):
        build_toy("resonanse", where="here")
    with pytest.raises(ConfigError, match=r"options \{'sigma': 1.5\} do not fit the 'resonance' toy"):
        build_toy("resonance", {"sigma": 1.5})
    with pytest.raises(ConfigError, match="already taken by sbilab.simulators.toys.gaussian.GaussianLatent"):
        register_toy("gaussian")(type("Other", (GaussianLatent,), {}))


def test_a_new_toy_needs_only_the_decorator():
    @register_toy("test_shifted_gaussian")
    class Shifted(GaussianLatent):
        pass

    try:
        assert isinstance(build_toy("test_shifted_gaussian", {"sigma_x": 2.0}), Shifted)
        register_toy("test_shifted_gaussian")(Shifted)  # registering the same class again is harmless
    finally:
        del TOYS["test_shifted_gaussian"]


def test_exact_log_ratio_is_the_closed_form_and_caches_the_reference():
    sim = GaussianLatent()  # x ~ N(θ, √5), reference 0
    ratio = ExactLogRatio(sim)
    x = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    for t in (0.7, -1.3):
        theta = torch.full((3, 1), t, dtype=torch.float64)
        expected = (x[:, 0] ** 2 - (x[:, 0] - t) ** 2) / (2 * 5.0)
        torch.testing.assert_close(ratio(x, theta), expected, rtol=0, atol=1e-12)
    first = ratio._ref
    ratio(x, torch.zeros(3, 1, dtype=torch.float64))
    assert ratio._ref is first  # same events: the reference term is not recomputed
    y = x + 1.0
    torch.testing.assert_close(ratio(y, torch.zeros(3, 1, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)

    class NoLikelihood(Simulator):
        space = sim.space
        observable_names = ("x",)

        def sample(self, theta, generator=None):
            return sim.sample(theta, generator)

    with pytest.raises(ConfigError, match="no exact log_prob"):
        ExactLogRatio(NoLikelihood())
