"""Iterative Bayesian unfolding: pyunfold's documented example, exact error propagation, closure, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbilab.exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from sbilab.unfolding import Response, iterative_unfold, minimal_toy, full_toy

DOC_R = [[0.9, 0.1], [0.1, 0.9]]
DOC_D = torch.tensor([100.0, 150.0], dtype=torch.float64)
DOC_VAR = torch.tensor([10.0, 12.2], dtype=torch.float64) ** 2
DOC_RESPONSE = Response.from_matrix(DOC_R, mc_counts=[1e4, 1e4])  # pyunfold: efficiencies_err 0.01 -> N = (1/0.01)^2


def _plain_ibu(d: torch.Tensor, r: torch.Tensor, k: int, prior: torch.Tensor | None = None) -> torch.Tensor:
    """The D'Agostini update written out, for autograd: n^{k+1}_i = n_i/eps_i sum_j R_ji d_j / (R n)_j."""
    n = (torch.ones(r.shape[1], dtype=torch.float64) if prior is None else prior) * d.sum() / r.shape[1]
    for _ in range(k):
        n = n / r.sum(0) * (r.T @ (d / (r @ n)))
    return n


def test_pyunfold_documented_example_unfolded_values():
    out = iterative_unfold(DOC_D, DOC_RESPONSE, iterations=4, data_covariance=DOC_VAR)
    assert out.final.tolist() == pytest.approx([94.3208696743, 155.6791303257], abs=1e-9)
    assert out.unfolded.shape == (4, 2) and out.covariance_data.shape == (4, 2, 2)
    # response (MC) statistics: pyunfold's documented sys_err
    assert out.response_error.tolist() == pytest.approx([0.655706213061, 0.655706213061], abs=1e-11)


def test_infinitely_many_iterations_converge_to_the_inverse():
    out = iterative_unfold(DOC_D, DOC_RESPONSE, iterations=400, covariance=False)
    inverse = torch.linalg.solve(torch.tensor(DOC_R, dtype=torch.float64), DOC_D)
    assert inverse.tolist() == pytest.approx([93.75, 156.25], abs=1e-12)
    assert out.final.tolist() == pytest.approx(inverse.tolist(), abs=1e-8)


def test_data_error_propagation_is_the_exact_jacobian():
    out = iterative_unfold(DOC_D, DOC_RESPONSE, iterations=4, data_covariance=DOC_VAR)
    jac = torch.autograd.functional.jacobian(lambda d: _plain_ibu(d, torch.tensor(DOC_R, dtype=torch.float64), 4), DOC_D)
    exact = (jac @ torch.diag(DOC_VAR) @ jac.T)
    torch.testing.assert_close(out.covariance_data[-1], exact, rtol=1e-12, atol=1e-10)
    assert out.stat_error.tolist() == pytest.approx([11.196285681, 13.612316566], abs=1e-8)


def test_the_issue_reference_stat_errors_are_pyunfolds_product_order():
    """[11.1685326762, 13.6548816816] (pyunfold 0.5) follow from multiplying the previous derivative
    from the other side in Adye's term; this re-derivation reproduces them, so the difference to the
    exact propagation above is that ordering and nothing else."""
    r = torch.tensor(DOC_R, dtype=torch.float64)
    eff, d = r.sum(0), DOC_D
    n = torch.full((2,), 0.5, dtype=torch.float64) * d.sum()
    jac = None
    for _ in range(4):
        m = r.T * (n / eff)[:, None] / (r @ n)[None, :]  # (C, E)
        n_new = m @ d
        if jac is None:
            jac = m.clone()
        else:
            jac = m + jac * (n_new / n)[:, None] - jac @ torch.diag(d) @ m.T @ torch.diag(eff / n) @ m
        n = n_new
    errors = (jac @ torch.diag(DOC_VAR) @ jac.T).diagonal().sqrt()
    assert errors.tolist() == pytest.approx([11.1685326762, 13.6548816816], abs=1e-9)


def test_pyunfold_error_propagation_mode_gives_the_issue_reference_numbers():
    out = iterative_unfold(DOC_D, DOC_RESPONSE, iterations=4, data_covariance=DOC_VAR, error_propagation="pyunfold")
    assert out.stat_error.tolist() == pytest.approx([11.1685326762, 13.6548816816], abs=1e-8)
    assert out.final.tolist() == pytest.approx([94.3208696743, 155.6791303257], abs=1e-9)  # values unchanged
    exact = iterative_unfold(DOC_D, DOC_RESPONSE, iterations=4, data_covariance=DOC_VAR)
    torch.testing.assert_close(out.covariance_response, exact.covariance_response, rtol=0, atol=0)  # only the data part differs
    torch.testing.assert_close(out.covariance_data[0], exact.covariance_data[0], rtol=1e-13, atol=0)  # equal at k = 1
    assert abs(float(out.stat_error[0] - exact.stat_error[0])) > 0.02
    with pytest.raises(ConfigError, match="error_propagation"):
        iterative_unfold(DOC_D, DOC_RESPONSE, error_propagation="adye")


def test_pyunfold_mode_equals_pyunfold_on_a_random_problem():
    pyunfold = pytest.importorskip("pyunfold", reason="pyunfold is an optional benchmark peer")
    r, d, counts = _random_problem(4)
    eff = r.sum(0).numpy()
    for k in (2, 5):
        ref = pyunfold.iterative_unfold(data=d.numpy(), data_err=np.sqrt(d.numpy()), response=r.numpy(), response_err=0.01 * r.numpy(),
                                        efficiencies=eff, efficiencies_err=eff / np.sqrt(counts.numpy()), ts_stopping=1e-300, max_iter=k)
        out = iterative_unfold(d, Response.from_matrix(r, mc_counts=counts), iterations=k, error_propagation="pyunfold")
        np.testing.assert_allclose(out.stat_error.numpy(), ref["stat_err"], rtol=1e-10)
        np.testing.assert_allclose(out.response_error.numpy(), ref["sys_err"], rtol=1e-10)
    batched = iterative_unfold(torch.stack([d, 2 * d]), Response.from_matrix(r, mc_counts=counts), iterations=3,
                               error_propagation="pyunfold")
    single = iterative_unfold(2 * d, Response.from_matrix(r, mc_counts=counts), iterations=3, error_propagation="pyunfold")
    torch.testing.assert_close(batched.covariance_data[:, 1], single.covariance_data, rtol=1e-12, atol=1e-12)


def test_data_error_agrees_with_monte_carlo_of_the_data():
    g = torch.Generator().manual_seed(0)
    scale = 0.01  # small fluctuations: the spread is the linear one, scaled back
    replicas = DOC_D + scale * DOC_VAR.sqrt() * torch.randn(100_000, 2, generator=g, dtype=torch.float64)
    spread = iterative_unfold(replicas, DOC_RESPONSE, iterations=4, covariance=False).final.std(0) / scale
    exact = iterative_unfold(DOC_D, DOC_RESPONSE, iterations=4, data_covariance=DOC_VAR).stat_error
    torch.testing.assert_close(spread, exact, rtol=8e-3, atol=0)  # MC precision 0.22 %


def _random_problem(seed: int, e: int = 6, c: int = 4):
    rng = np.random.default_rng(seed)
    r = rng.random((e, c))
    r = r / r.sum(0) * rng.uniform(0.5, 1.0, c)
    return torch.tensor(r), torch.tensor(rng.uniform(50, 200, e)), torch.tensor(rng.uniform(1e3, 1e4, c))


def test_response_error_propagation_is_the_exact_jacobian():
    r, d, counts = _random_problem(3)
    out = iterative_unfold(d, Response.from_matrix(r, mc_counts=counts), iterations=5)
    jac = torch.autograd.functional.jacobian(lambda rr: _plain_ibu(d, rr, 5), r)  # (C, E, C): d n_a / d R_ji
    rt = r.T
    blocks = (torch.diag_embed(rt) - rt[:, :, None] * rt[:, None, :]) / counts[:, None, None]
    exact = torch.einsum("aji,ijk,bki->ab", jac, blocks, jac)
    torch.testing.assert_close(out.covariance_response[-1], exact, rtol=1e-10, atol=1e-10)
    jac_d = torch.autograd.functional.jacobian(lambda dd: _plain_ibu(dd, r, 5), d)
    torch.testing.assert_close(out.covariance_data[-1], jac_d @ torch.diag(d) @ jac_d.T, rtol=1e-10, atol=1e-10)


def test_agrees_with_pyunfold_where_pyunfold_is_right():
    pyunfold = pytest.importorskip("pyunfold", reason="pyunfold is an optional benchmark peer")
    r, d, counts = _random_problem(1)
    eff = r.sum(0).numpy()
    for k in (1, 2, 5):
        ref = pyunfold.iterative_unfold(data=d.numpy(), data_err=np.sqrt(d.numpy()), response=r.numpy(), response_err=0.01 * r.numpy(),
                                        efficiencies=eff, efficiencies_err=eff / np.sqrt(counts.numpy()), ts_stopping=1e-300, max_iter=k)
        out = iterative_unfold(d, Response.from_matrix(r, mc_counts=counts), iterations=k)
        np.testing.assert_allclose(out.final.numpy(), ref["unfolded"], rtol=1e-12)
        np.testing.assert_allclose(out.response_error.numpy(), ref["sys_err"], rtol=1e-10)
        if k == 1:  # the data part differs from pyunfold's from the second iteration on (see above)
            np.testing.assert_allclose(out.stat_error.numpy(), ref["stat_err"], rtol=1e-12)


def test_batched_replicas_equal_single_calls():
    r, d, counts = _random_problem(2)
    resp = Response.from_matrix(r, mc_counts=counts)
    g = torch.Generator().manual_seed(1)
    batch = torch.poisson(d.expand(5, -1), generator=g)
    priors = torch.rand(5, r.shape[1], generator=g, dtype=torch.float64) + 0.1
    out = iterative_unfold(batch, resp, iterations=3, prior=priors)
    assert out.unfolded.shape == (3, 5, 4) and out.covariance_response.shape == (3, 5, 4, 4)
    many_priors = iterative_unfold(batch[0], resp, iterations=3, prior=priors)  # one data set, five priors
    assert many_priors.prior.shape == (5, 4)
    torch.testing.assert_close(many_priors.prior.sum(-1), batch[0].sum().expand(5))
    for b in range(5):
        one = iterative_unfold(batch[b], resp, iterations=3, prior=priors[b])
        torch.testing.assert_close(many_priors.unfolded[:, b], iterative_unfold(batch[0], resp, iterations=3, prior=priors[b]).unfolded)
        torch.testing.assert_close(out.unfolded[:, b], one.unfolded, rtol=1e-13, atol=1e-12)
        torch.testing.assert_close(out.covariance_data[:, b], one.covariance_data, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.covariance_response[:, b], one.covariance_response, rtol=1e-12, atol=1e-12)


def test_folded_truth_unfolds_back():
    r = torch.tensor(0.6 * np.eye(5) + 0.1 * (np.eye(5, k=1) + np.eye(5, k=-1)))
    truth = torch.tensor([50.0, 120.0, 80.0, 30.0, 10.0], dtype=torch.float64)
    resp = Response.from_matrix(r)
    out = iterative_unfold(resp.fold(truth), resp, iterations=500, covariance=False)
    torch.testing.assert_close(out.final, truth, rtol=1e-6, atol=1e-6)


def test_response_from_weighted_events_and_its_multinomial_statistics():
    toy = minimal_toy()
    g = torch.Generator().manual_seed(0)
    sim = toy.simulation(20_000, generator=g)
    edges = torch.linspace(-3, 3, 7)
    resp = Response.from_events(sim.gen.x, sim.reco.x, gen_edges=edges, reco_edges=edges)
    gi = torch.bucketize(sim.gen.x[:, 0], edges, right=True) - 1
    ri = torch.bucketize(sim.reco.x[:, 0], edges, right=True) - 1
    for i in range(6):
        in_i = gi == i
        for j in range(6):
            assert float(resp.matrix[j, i]) == pytest.approx(int((in_i & (ri == j)).sum()) / int(in_i.sum()), abs=1e-14)
    # unit weights: the delta-method covariance is the multinomial one
    rt = resp.matrix.T
    multinomial = (torch.diag_embed(rt) - rt[:, :, None] * rt[:, None, :]) / resp.truth[:, None, None]
    torch.testing.assert_close(resp.matrix_covariance, multinomial, rtol=1e-10, atol=1e-16)
    # out-of-range generator values are fakes (not in any gen bin, reco inside)
    fakes = ((gi < 0) | (gi > 5)) & (ri >= 0) & (ri <= 5)
    assert float(resp.fakes.sum()) == float(fakes.sum())


@pytest.mark.parametrize("proposal_scale", [None, 1.3])
def test_closure_with_efficiency_fakes_and_weights(proposal_scale):
    """Unfolding the simulation's own detector-level histogram returns its truth at every iteration."""
    toy = full_toy()
    sim = toy.simulation(50_000, generator=torch.Generator().manual_seed(2), proposal_scale=proposal_scale)
    edges = torch.linspace(-4, 4, 17)
    w = sim.weights_or_ones().double()
    resp = Response.from_events(sim.gen.x, sim.reco.x, gen_edges=edges, reco_edges=edges, pass_gen=sim.pass_gen,
                                pass_reco=sim.pass_reco, weights=w)
    reco_idx = torch.bucketize(sim.reco.x[:, 0], edges, right=True) - 1
    keep = sim.pass_reco & (reco_idx >= 0) & (reco_idx < 16)
    data = torch.zeros(16, dtype=torch.float64).index_add_(0, reco_idx[keep], w[keep])
    out = iterative_unfold(data, resp, iterations=3)
    for k in range(3):
        torch.testing.assert_close(out.unfolded[k], resp.truth, rtol=1e-10, atol=1e-9)
        assert float(out.fakes[k]) == pytest.approx(float(resp.fakes.sum()), rel=1e-10)
    centres = 0.5 * (edges[1:] + edges[:-1])
    inner = slice(4, 12)  # bins far from the edges lose no events to migration out of the range
    torch.testing.assert_close(resp.efficiency[inner], toy.efficiency_at(centres[inner].double()), atol=0.03, rtol=0)


def test_background_is_subtracted_and_zero_efficiency_keeps_the_prior():
    r = torch.tensor([[0.5, 0.0, 0.2], [0.3, 0.0, 0.6]], dtype=torch.float64)  # cause 1 is never detected
    resp = Response.from_matrix(r)
    d = torch.tensor([40.0, 70.0], dtype=torch.float64)
    b = torch.tensor([5.0, 8.0], dtype=torch.float64)
    prior = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    with_bkg = iterative_unfold(d + b, resp, iterations=3, prior=prior, background=b, background_covariance=b)
    without = iterative_unfold(d, resp, iterations=3, prior=prior, data_covariance=d)
    torch.testing.assert_close(with_bkg.unfolded, without.unfolded)
    torch.testing.assert_close(with_bkg.covariance_data, iterative_unfold(d, resp, iterations=3, prior=prior, data_covariance=d + 2 * b).covariance_data)
    assert float(with_bkg.final[1]) == pytest.approx(2.0 / 4.0 * float(d.sum()))  # the prior's share of sum(data)


def test_bad_input_is_named():
    resp = DOC_RESPONSE
    with pytest.raises(ConfigError, match="iterations"):
        iterative_unfold(DOC_D, resp, iterations=0)
    with pytest.raises(ShapeMismatchError, match="detector bins"):
        iterative_unfold(torch.ones(3), resp)
    with pytest.raises(InvalidEventsError, match="NaN"):
        iterative_unfold(torch.tensor([1.0, float("nan")]), resp)
    with pytest.raises(InvalidEventsError, match="prior"):
        iterative_unfold(DOC_D, resp, prior=torch.tensor([-1.0, 2.0]))
    with pytest.raises(InvalidEventsError, match="exceed 1"):
        Response.from_matrix([[0.9, 0.5], [0.2, 0.5]])
    gen, reco = torch.zeros(4), torch.zeros(4)
    with pytest.raises(ShapeMismatchError, match="pass_gen"):
        Response.from_events(gen, reco, gen_edges=[-1, 1], reco_edges=[-1, 1], pass_gen=torch.ones(3, dtype=torch.bool))
    with pytest.raises(InvalidEventsError, match="neither selection"):
        Response.from_events(gen, reco, gen_edges=[-1, 1], reco_edges=[-1, 1],
                             pass_gen=torch.tensor([True, False, True, True]), pass_reco=torch.tensor([True, False, True, True]))
    with pytest.raises(InvalidEventsError, match="positive total weight"):
        Response.from_events(gen, reco, gen_edges=[-1, 1], reco_edges=[-1, 1], weights=-torch.ones(4))
    with pytest.raises(InvalidEventsError, match="NaN"):
        Response.from_events(torch.tensor([0.0, float("nan"), 0.0, 0.0]), reco, gen_edges=[-1, 1], reco_edges=[-1, 1])
    with pytest.raises(ShapeMismatchError, match="paired"):
        Response.from_events(gen, torch.zeros(5), gen_edges=[-1, 1], reco_edges=[-1, 1])
    with pytest.raises(ConfigError, match="edges"):
        Response.from_events(gen, reco, gen_edges=[1, -1], reco_edges=[-1, 1])
