"""Learned pieces of the MEM on toy 1, against its closed forms.

Detector: W(x|m) = N(x; m, 2) in the window 85 < x < 115, so the learned transfer function of
accepted events is W_acc(x|m) = N(x; m, 2)/ε(m) with ε(m) = Φ((115 - m)/2) - Φ((85 - m)/2);
the exact likelihood is the simulator's Voigt ``log_prob``. Networks are small and trained
briefly: the tolerances are those of such networks, the checks of bias and coverage are exact.
"""

import dataclasses
import math
import warnings

import pytest
import torch
from scipy.stats import norm

from sbilab.estimators import ConditionalDensity, get_loss
from sbilab.events import Events
from sbilab.exceptions import ConfigError, ExtrapolationWarning, OutOfSupportError
from sbilab.mem import (ACCEPTANCE_TRAINING, BoxProposal, CoverageWarning, FiducialCrossSection, LearnedTransfer, MultiChannel, Proposal,
                        calls_for_precision, check_coverage,
                        check_normalisation, fit_proposal, fit_sampler, integrate, PROPOSAL_TRAINING, SAMPLER_TRAINING)
from sbilab.mem.flows import FlowProposal
from sbilab.mem.mappings import truncated_normal_log_prob, truncated_normal_map
from sbilab.mem.toys import learned_resonance_model, peak_channel, resonance_likelihood, resonance_model, resonance_proposal
from sbilab.nets.flows import FlowSpec
from sbilab.simulators.toys import Resonance
from sbilab.training import fit

REF = torch.tensor([100.0, 5.0], dtype=torch.float64)
SMALL = FlowSpec("nsf", transforms=2, hidden=(16, 16))
QUICK = dataclasses.replace(PROPOSAL_TRAINING, epochs=8, batch_size=256)
QUICK_ACCEPTANCE = dataclasses.replace(ACCEPTANCE_TRAINING, epochs=8)


@pytest.fixture(scope="module")
def sim():
    return Resonance()


@pytest.fixture(scope="module")
def learned_model(sim):
    return learned_resonance_model(sim, pairs=6000, flow=SMALL, hidden=(16, 16), training=QUICK, acceptance_training=QUICK_ACCEPTANCE)


@pytest.fixture(scope="module")
def proposal(sim):
    events = sim.simulate(3000, theta=REF.float(), generator=torch.Generator().manual_seed(3))
    return fit_proposal(events, bounds=resonance_model(sim).bounds, flow=SMALL, training=QUICK)


def _exact_log_integral(sim, x, theta):
    """log of the MEM integral ∫ dσ W: the normalised Voigt times the window acceptance."""
    th = torch.as_tensor(theta, dtype=torch.float64).reshape(1, 2)
    return sim.log_prob(x, th.expand(x.shape[0], 2)) + torch.log(sim.acceptance(th))


def test_learned_transfer_and_acceptance_match_the_detector(learned_model):
    transfer, acceptance = learned_model.transfer, learned_model.process.efficiency
    m = torch.tensor([[90.0], [97.0], [100.0], [104.0], [110.0]], dtype=torch.float64)
    integrals = check_normalisation(transfer, m, generator=torch.Generator().manual_seed(0))
    assert float((integrals - 1).abs().max()) < 0.02
    eps_exact = torch.tensor(norm.cdf((115 - m.numpy()) / 2) - norm.cdf((85 - m.numpy()) / 2))[:, 0]
    assert float((acceptance(m) - eps_exact).abs().max()) < 0.05
    assert float(acceptance(torch.tensor([[60.0]], dtype=torch.float64))) < 0.05
    x = m + torch.tensor([[-1.5], [2.0], [0.0], [1.0], [-2.5]], dtype=torch.float64)
    exact = torch.tensor(norm.logpdf(x.numpy(), m.numpy(), 2.0))[:, 0] - torch.log(eps_exact)
    assert float((transfer.log_prob(x, m, torch.zeros(5, 0)) - exact).abs().max()) < 0.3  # a small network, briefly trained
    with pytest.raises(OutOfSupportError, match="selection cuts.*row 1"):
        learned_model.check_events(torch.tensor([[100.0], [120.0]], dtype=torch.float64))
    with pytest.raises(OutOfSupportError, match="support.*row 0"):
        learned_model.check_events(torch.tensor([[math.nan], [100.0]], dtype=torch.float64))
    with pytest.raises(ConfigError, match="0..D-1"):
        LearnedTransfer([(transfer.blocks[0][0], [1])])


def test_learned_mem_is_a_normalised_likelihood_close_to_the_exact_one(sim, learned_model, proposal):
    mix = MultiChannel([proposal, peak_channel(sim)], [0.9, 0.1])
    mem = resonance_likelihood(sim, model=learned_model, proposal=mix, samples=256, sequence="random", fiducial_samples=2**14,
                               draws=1)
    x = torch.linspace(86.0, 114.0, 15, dtype=torch.float64).reshape(-1, 1)
    bulk = (x[:, 0] > 89) & (x[:, 0] < 111)
    for theta in (REF, torch.tensor([97.0, 3.0], dtype=torch.float64)):
        dev = mem.log_prob(x, theta) - sim.log_prob(x, theta.expand(15, 2))
        # the truncation of W_acc at the window's edges is the hard part for a small flow
        assert float(dev[bulk].abs().max()) < 0.15 and float(dev.abs().max()) < 0.8, (theta, dev)
    # the learned density and acceptance are normalised: ∫ p(x|θ) dx over the window is one
    t, w = torch.tensor(__import__("numpy").stack(__import__("numpy").polynomial.legendre.leggauss(40)), dtype=torch.float64)
    nodes, weights = (100.0 + 15.0 * t).reshape(-1, 1), 15.0 * w
    assert abs(float((mem.log_prob(nodes, REF).exp() * weights).sum()) - 1) < 0.01


def test_fiducial_with_the_learned_detector_stays_in_the_training_range_quietly(sim, learned_model):
    """σ_fid draws the learned W_acc only at parton masses it was trained on (no ExtrapolationWarning); the
    points left out carry a learned acceptance ~0, so the bound on what they miss is tiny and σ_fid matches
    the exact window acceptance (to the small networks' accuracy)."""
    transfer = learned_model.transfer
    m = torch.tensor([[60.0], [100.0], [140.0]], dtype=torch.float64)
    assert transfer.covers(m).tolist() == [False, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)  # raised by every σ_fid before the restriction
        fid = FiducialCrossSection(learned_model, peak_channel(sim), samples=2**14, draws=2, seed=0)
        for theta in (REF, torch.tensor([97.0, 3.0], dtype=torch.float64)):
            value, _ = fid.evaluate(theta)
            neglected = float(fid.neglected(theta))
            assert 0 < neglected < 1e-3, neglected  # some points lie outside the range, with ~no acceptance
            assert abs(float(value) / float(sim.acceptance(theta.reshape(1, 2))) - 1) < 0.03


def test_learned_proposal_is_unbiased_and_efficient(sim, proposal):
    model = resonance_model(sim)
    mix = MultiChannel([proposal, peak_channel(sim)], [0.9, 0.1])
    x = torch.linspace(85.5, 114.5, 30, dtype=torch.float64).reshape(-1, 1)
    for theta in (REF, torch.tensor([97.0, 3.0], dtype=torch.float64)):
        res = integrate(model, x, theta, mix, samples=256, seed=1)
        pull = (res.log_value - _exact_log_integral(sim, x, theta)) / res.rel_error
        assert float(pull.abs().max()) < 4.5 and abs(float(pull.mean())) < 4 / math.sqrt(30), pull
    res = integrate(model, x, REF, mix, samples=256)
    plain = integrate(model, x, REF, BoxProposal(model.bounds), samples=4096)
    assert float((res.ess / 256).median()) > 0.7  # a few hundred samples per event are enough
    assert float(calls_for_precision(res).median()) < float(calls_for_precision(plain).median()) / 20


def test_variance_loss_value_and_training(sim, proposal):
    model = resonance_model(sim)
    x = sim.simulate(600, theta=REF.float(), generator=torch.Generator().manual_seed(5)).x.double()
    events = Events(x=x.float(), theta=REF.float().expand(600, 2))
    loss = get_loss("integrand_variance", integrand=proposal.integrand(model), samples=32)
    torch.manual_seed(11)
    value = loss(proposal.density, events[:40])
    torch.manual_seed(11)
    y = proposal.density.sample(32, events.x[:40])
    log_w = model.log_integrand(y.transpose(0, 1).double(), x[:40], REF.expand(40, 2)) - proposal.density(y, events.x[:40]).T.double()
    w = torch.exp(log_w - log_w.max(1, keepdim=True).values)
    assert torch.allclose(value.double(), 32 * (w**2).sum(1) / w.sum(1) ** 2 - 1, rtol=1e-4, atol=1e-6)  # S/ESS - 1
    # from a poor start (an untrained flow, standardised on the data), the variance loss trains a sampler
    poor = FlowProposal(ConditionalDensity.from_events(sim.simulate(500, theta=REF.float(), generator=torch.Generator().manual_seed(6)),
                                                       target="latent", flow=SMALL, low=[55.0], high=[145.0]))
    trained = fit_sampler(poor, model, events, samples=16, training=dataclasses.replace(SAMPLER_TRAINING, epochs=4, batch_size=100,
                                                                                        learning_rate=3e-3))
    xs = x[:40]
    before, after = (1 / (integrate(model, xs, REF, p, samples=256).ess / 256) - 1 for p in (poor, trained))
    assert float(after.mean()) < 0.5 * float(before.mean())
    with pytest.raises(ConfigError, match="samples"):
        fit(proposal.density, get_loss("integrand_variance", integrand=proposal.integrand(model), samples=1), events, epochs=1, progress=False)


class _Narrow(Proposal):
    """m from N(x, 1) truncated to x ± 2: the integrand is wider (resolution 2, Breit–Wigner tails)."""

    dim = noise_dim = 1

    def transform(self, u, x):
        m, log_q = truncated_normal_map(u[..., 0], x[:, :1], torch.tensor(1.0, dtype=u.dtype), x[:, :1] - 2.0, x[:, :1] + 2.0)
        return m.unsqueeze(-1), log_q

    def log_prob(self, z, x):
        return truncated_normal_log_prob(z[..., 0], x[:, :1], torch.tensor(1.0, dtype=z.dtype), x[:, :1] - 2.0, x[:, :1] + 2.0)


def test_a_proposal_that_misses_the_tail_is_flagged(sim):
    model = resonance_model(sim)
    x = torch.tensor([[100.0], [106.0], [110.0], [113.0]], dtype=torch.float64)
    silent = integrate(model, x, REF, _Narrow(), samples=1024)
    low = 1 - torch.exp(silent.log_value - _exact_log_integral(sim, x, REF))
    assert float(low.min()) > 0.15 and float(silent.rel_error.max()) < 0.025  # low by > 15 %, stated error < 2.5 %
    with pytest.warns(CoverageWarning, match="misses part of the integrand"):
        check = check_coverage(model, x, REF, _Narrow(), peak_channel(sim), events=None, samples=1024)
    assert check.flagged == (0, 1, 2, 3)
    assert max(abs(r - float(e)) for r, e in zip(check.ratio, 1 - low)) < 0.05  # the check measures the deficit
    assert check_coverage(model, x, REF, resonance_proposal(sim), peak_channel(sim), events=None).passed
    mem = resonance_likelihood(sim, proposal=_Narrow(), samples=512, sequence="random", fiducial_samples=2**12, draws=1,
                               coverage=peak_channel(sim))
    with pytest.warns(CoverageWarning):
        mem(x, REF)
    assert mem.coverage_check is not None and mem.coverage_check.flagged == (0, 1, 2, 3)
