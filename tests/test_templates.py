"""Histogram templates and binning (sbilab.stats.templates): equal-population edges, open outer bins,
morphed templates against the closed-form cross sections and the binned likelihood against a
hand-written Poisson likelihood."""

import math

import numpy as np
import pytest
import torch

from sbilab.stats.templates import MorphedHistogram, histogram, quantile_edges
from sbilab.simulators.toys import Morphing


def test_quantile_edges_split_equal_populations_and_histogram_keeps_every_value():
    values = torch.arange(1000, dtype=torch.float64).flip(0)  # 0..999, unsorted
    edges = quantile_edges(values, 4)
    assert edges[0] == -math.inf and edges[-1] == math.inf
    assert edges[1:-1].tolist() == pytest.approx([249.75, 499.5, 749.25], abs=1e-12)  # torch.quantile, linear
    assert histogram(values, edges).tolist() == [250.0, 250.0, 250.0, 250.0]
    weights = torch.full((1000,), 0.5, dtype=torch.float64)
    assert histogram(values, torch.tensor([100.0, 200.0, 300.0]), weights).tolist() == [100.0, 400.0]  # open outer bins


def test_morphed_templates_and_binned_likelihood():
    sim = Morphing(1, low=-0.5, high=0.5)
    x, _ = sim.sample_weighted(100_000, torch.zeros(1, 1), generator=torch.Generator().manual_seed(2))
    w = sim.component_shapes(x) / sim.proposal_log_prob(x).exp()[:, None]
    edges = torch.tensor([-math.inf, 20.0, 50.0, 100.0, math.inf], dtype=torch.float64)
    hist = MorphedHistogram(x[:, 0], w, edges, sim.basis, sim.space, luminosity=100.0)
    theta = torch.tensor([0.3], dtype=torch.float64)
    # total yield = L σ(θ) in closed form (MC precision of the weighted templates)
    assert float(hist.yield_model(theta)) == pytest.approx(float(sim.expected_events(theta.reshape(1, 1), 100.0)[0]), rel=0.01)
    counts = torch.tensor([30.0, 25.0, 20.0, 9.0], dtype=torch.float64)
    nll = hist.likelihood(counts)
    for a, b in ((0.3, -0.2), (0.1, 0.4)):
        nu_a, nu_b = hist.expected(torch.tensor([a], dtype=torch.float64)), hist.expected(torch.tensor([b], dtype=torch.float64))
        poisson = 2 * ((nu_a - counts * nu_a.log()) - (nu_b - counts * nu_b.log())).sum()
        assert nll(np.array([a])) - nll(np.array([b])) == pytest.approx(float(poisson), abs=1e-8)
