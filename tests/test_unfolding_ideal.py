"""The Gaussian toys and their ideal iterations (quadrature, closed form, binned IBU from events)."""

from __future__ import annotations

import pytest
import torch

from sbilab import Events, PairedEvents
from sbilab.exceptions import ConfigError, InvalidEventsError
from sbilab.unfolding import (
    GaussianUnfoldingToy,
    Response,
    full_toy,
    gaussian_ideal_moments,
    ideal_iterations,
    ideal_stat_error,
    iterative_unfold,
    minimal_toy,
)
from sbilab.unfolding.binning import bin_index, bin_sums


def test_minimal_toy_ideal_iterations_match_the_issue():
    out = ideal_iterations(minimal_toy(), iterations=4)
    expected = {1: (0.056, 0.909), 2: (0.013, 0.964), 4: (0.001, 0.995)}
    for k, (mean, std) in expected.items():
        assert float(out.moments[k, 0]) == pytest.approx(mean, abs=5e-4)
        assert float(out.moments[k, 1]) == pytest.approx(std, abs=5e-4)
    assert out.moments_dict((1, 2, 4))["1"] == pytest.approx([0.0561797753, 0.9089325131], abs=1e-9)


def test_quadrature_equals_the_closed_form():
    toy = GaussianUnfoldingToy(sim_mean=-0.3, sim_std=1.3, data_mean=0.4, data_std=0.7, smearing=0.8)
    quad = ideal_iterations(toy, iterations=8).moments
    exact = torch.tensor(gaussian_ideal_moments(-0.3, 1.3, 0.4, 0.7, 0.8, 8), dtype=torch.float64)
    torch.testing.assert_close(quad, exact, rtol=0, atol=1e-11)
    # the minimal toy's first iteration: m1 = 0.2 (1 - g), g = 0.64 / 0.89
    assert gaussian_ideal_moments(0.2, 0.8, 0.0, 1.0, 0.5, 1)[1][0] == pytest.approx(0.2 * 0.25 / 0.89, abs=1e-15)


def _grid_problem(toy: GaussianUnfoldingToy, points: int):
    """The quadrature written as a binned problem: D'Agostini on the grid is the continuous update."""
    z = ideal_iterations(toy, iterations=1, points=points).grid
    h = float(z[1] - z[0])
    kernel = toy.smearing_pdf(z[None, :], z[:, None])
    eff = toy.efficiency_at(z)
    f, b = toy.fake_fraction, toy.background_fraction
    response = Response(matrix=(eff[:, None] * kernel).T * h, truth=(1 - f) * toy.truth_pdf(z, data=False) * h,
                        fakes=f * toy.fake_pdf(z) * h)
    signal = (1 - f) * ((toy.truth_pdf(z, data=True) * eff) @ kernel) * h
    data = (1 - b) * (signal + f * toy.fake_pdf(z)) * h
    return z, response, data


def test_full_toy_quadrature_is_dagostini_on_the_grid_and_converged():
    toy = full_toy()
    out = ideal_iterations(toy, iterations=4)
    z, response, data = _grid_problem(toy, 801)
    ibu = iterative_unfold(data, response, iterations=4, covariance=False)
    n = ibu.unfolded / ibu.unfolded.sum(-1, keepdim=True)
    mean = (n * z).sum(-1)
    std = (n * (z - mean[:, None]) ** 2).sum(-1).sqrt()
    torch.testing.assert_close(torch.stack([mean, std], -1), out.moments[1:], rtol=0, atol=1e-12)
    fine = ideal_iterations(toy, iterations=4, points=1601, width=12.0)
    torch.testing.assert_close(fine.moments, out.moments, rtol=0, atol=1e-10)
    # the numbers of the full toy as defined in sbilab.unfolding.toys (benchmark key ideal_full)
    assert out.moments_dict((1, 2, 4)) == {
        "1": pytest.approx([0.1505799, 0.8856316], abs=1e-6),
        "2": pytest.approx([0.1844362, 0.8422729], abs=1e-6),
        "4": pytest.approx([0.1968911, 0.8115095], abs=1e-6),
    }


def _binned_moments(toy: GaussianUnfoldingToy, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
    edges = torch.linspace(-6, 6, 121, dtype=torch.float64)
    resp = Response.from_events(sim.gen.x, sim.reco.x, gen_edges=edges, reco_edges=edges, pass_gen=sim.pass_gen,
                                pass_reco=sim.pass_reco, weights=sim.weights_or_ones())
    counts = bin_sums(bin_index(data.reco[:, 0], edges), torch.ones(len(data.reco), dtype=torch.float64), 120)
    bkg = toy.background(n, data_rows=n, generator=g)
    background = bin_sums(bin_index(bkg.x[:, 0], edges), bkg.weights, 120)
    u = iterative_unfold(counts, resp, iterations=4, background=background, covariance=False, response_covariance=False).unfolded
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = (u * c).sum(-1) / u.sum(-1)
    var = (u * (c - mean[:, None]) ** 2).sum(-1) / u.sum(-1) - 0.1**2 / 12  # Sheppard's correction of the binning
    return torch.stack([mean, var.sqrt()], -1)


@pytest.mark.parametrize("make", [minimal_toy, full_toy])
def test_simulators_and_binned_ibu_reproduce_the_ideal_iterations(make):
    """The event simulators match the densities the quadrature uses (efficiency, fakes, background)."""
    toy, n = make(), 300_000
    ideal = ideal_iterations(toy, iterations=4).moments[1:]
    sigma = ideal_stat_error(toy, n, iterations=4, points=201) * 2**0.5  # data and simulation statistics
    pulls = (_binned_moments(toy, n, seed=11) - ideal) / sigma
    assert float(pulls.abs().max()) < 4.0, pulls


def test_ideal_stat_error_is_the_spread_of_poisson_replicas():
    toy = minimal_toy()
    z, response, data = _grid_problem(toy, 161)
    n = 100_000
    g = torch.Generator().manual_seed(5)
    replicas = torch.poisson((n * data).expand(1000, -1), generator=g)
    u = iterative_unfold(replicas, response, iterations=4, covariance=False).unfolded  # (4, 1000, Z)
    mean = (u * z).sum(-1) / u.sum(-1)
    std = ((u * (z - mean[..., None]) ** 2).sum(-1) / u.sum(-1)).sqrt()
    spread = torch.stack([mean.std(1), std.std(1)], -1)
    torch.testing.assert_close(spread, _stat_error_on(z, response, data, n), rtol=0.1, atol=0)  # 1000 replicas: 2.2 %


def _stat_error_on(z, response, data, n):
    """ideal_stat_error's linear propagation, on the given grid problem."""
    out = iterative_unfold(n * data, response, iterations=4, response_covariance=False)
    u = out.unfolded
    total = u.sum(-1, keepdim=True)
    mean = (u * z).sum(-1, keepdim=True) / total
    var = (u * (z - mean) ** 2).sum(-1, keepdim=True) / total
    grads = torch.stack([(z - mean) / total, ((z - mean) ** 2 - var) / (2 * var.sqrt() * total)], -2)
    return (grads @ out.covariance_data @ grads.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sqrt()


def test_stat_error_of_the_minimal_toy():
    se = ideal_stat_error(minimal_toy(), 100_000, iterations=4)
    # deconvolution widens the error of the sample moments (1/sqrt(N) = 0.00316, 1/sqrt(2N) = 0.00224)
    assert 0.0030 < float(se[-1, 0]) < 0.0040 and 0.0022 < float(se[-1, 1]) < 0.0032
    torch.testing.assert_close(ideal_stat_error(minimal_toy(), 400_000, iterations=4), se / 2, rtol=1e-9, atol=0)  # 1/sqrt(N)


def test_toy_samples_follow_the_stated_process():
    toy = full_toy()
    g = torch.Generator().manual_seed(0)
    sim = toy.simulation(200_000, generator=g)
    assert float((~sim.pass_gen).double().mean()) == pytest.approx(0.1, abs=0.003)  # fakes
    fid = sim.pass_gen
    assert float(sim.pass_reco[fid].double().mean()) == pytest.approx(0.9, abs=0.003)  # efficiency on N(0, 1)
    assert float(sim.gen.x[fid].mean()) == pytest.approx(0.0, abs=0.01) and float(sim.gen.x[fid].std()) == pytest.approx(1.0, abs=0.01)
    fakes = sim.reco.x[~sim.pass_gen, 0]
    assert float(fakes.mean()) == pytest.approx(0.5, abs=0.02) and bool(sim.pass_reco[~sim.pass_gen].all())
    weighted = toy.simulation(200_000, generator=g, proposal_scale=1.4)
    w, z = weighted.weights[weighted.pass_gen], weighted.gen.x[weighted.pass_gen, 0]
    assert float(w.std()) > 0.1  # genuinely non-uniform weights
    assert float((w * z).sum() / w.sum()) == pytest.approx(0.0, abs=0.01)
    assert float(((w * z * z).sum() / w.sum()).sqrt()) == pytest.approx(1.0, abs=0.01)
    data = toy.data(200_000, generator=g)
    assert float(data.is_background.double().sum() / data.rows) == pytest.approx(0.1, abs=0.003)
    assert float(data.truth.mean()) == pytest.approx(0.2, abs=0.01) and float(data.truth.std()) == pytest.approx(0.8, abs=0.01)
    assert sim.weights is None  # unit weights
    bkg = toy.background(1000, data_rows=200_000)
    assert bkg.x.shape == (1000, 1) and float(bkg.weights.sum()) == pytest.approx(20_000)


def test_toy_bad_input():
    with pytest.raises(ConfigError, match="smearing"):
        GaussianUnfoldingToy(smearing=0.0)
    with pytest.raises(ConfigError, match="fake_fraction"):
        GaussianUnfoldingToy(fake_fraction=1.0)
    with pytest.raises(ConfigError, match="efficiency"):
        GaussianUnfoldingToy(efficiency=0.5, efficiency_slope=0.6)
    with pytest.raises(ConfigError, match="iterations"):
        ideal_iterations(minimal_toy(), iterations=0)
    with pytest.raises(InvalidEventsError, match="pass_reco"):  # the toys speak the core's PairedEvents
        PairedEvents(Events.observed(torch.zeros(3, 1)), Events.observed(torch.zeros(3, 1)), pass_reco=torch.ones(2, dtype=torch.bool))
