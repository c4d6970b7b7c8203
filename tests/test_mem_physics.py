"""The W → ℓν case: Jacobian of the phase space, the simulator, integrals and normalisation."""

import copy
import dataclasses
import math

import pytest
import torch

from sbilab.exceptions import ConfigError, ShapeMismatchError
from sbilab.mem import (PROPOSAL_TRAINING, BoxProposal, FiducialCrossSection, FlowProposal, MatrixElementLikelihood, MultiChannel, fit_proposal,
                        integrate, variance_calls)
from sbilab.mem.toys import WAnchor, WDecay, WGenerator, WToLeptonNeutrino, w_proposal
from sbilab.nets.flows import FlowSpec

ALPHA = torch.tensor([80.4, 2.1], dtype=torch.float64)


@pytest.fixture(scope="module")
def sim():
    return WToLeptonNeutrino()


@pytest.fixture(scope="module")
def events(sim):
    return sim.simulate(150, theta=torch.tensor([80.4, 2.1]), generator=torch.Generator().manual_seed(2))


def test_phase_space_jacobian_by_autograd():
    """dσ/dz in lab variables equals the generator's density in (s, y, k_T, Ω*) over |det ∂z/∂v|."""
    proc = WDecay()
    gen = WGenerator(proc, 80.4, 2.1)
    lo, hi = proc.s_range
    scale = 80.4 * 2.1
    a_lo, a_hi = math.atan((lo - 80.4**2) / scale), math.atan((hi - 80.4**2) / scale)

    def z_of_v(v: torch.Tensor) -> torch.Tensor:
        s, y, kx, ky, c, phi = v
        u = torch.stack([(torch.atan((s - 80.4**2) / scale) - a_lo) / (a_hi - a_lo), torch.special.ndtr(y / proc.sigma_y),
                         torch.special.ndtr(kx / proc.sigma_k), torch.special.ndtr(ky / proc.sigma_k), (c + 1) / 2, phi / (2 * math.pi)])
        return gen.generate(u, ALPHA)

    for v in ([6400.0, -0.5, 3.0, 1.0, -0.3, 1.0], [6600.0, 0.4, -4.0, 2.5, 0.5, 4.0], [5000.0, 1.2, 0.5, -6.0, 0.9, 5.5]):
        v = torch.tensor(v, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(z_of_v, v)
        s, y, kx, ky = v[:4].tolist()
        log_density = (float(proc.log_bw(torch.tensor(s, dtype=torch.float64), ALPHA)) - 0.5 * (y / proc.sigma_y) ** 2
                       - math.log(proc.sigma_y * math.sqrt(2 * math.pi)) - 0.5 * (kx**2 + ky**2) / proc.sigma_k**2
                       - math.log(2 * math.pi * proc.sigma_k**2) - math.log(4 * math.pi))
        expected = log_density - float(torch.log(torch.det(jac).abs()))
        assert abs(float(torch.log(proc.dsigma(z_of_v(v), ALPHA))) - expected) < 1e-9


def test_simulator_events_are_inside_box_and_cuts(sim, events):
    lo, hi = sim.model.bounds.unbind(-1)
    z = events.latent.double()
    assert bool(((z >= lo) & (z <= hi)).all())
    assert bool(sim.model.selected(events.x.double()).all())


def test_integrators_agree_and_plain_mc_is_hopeless(sim, events):
    model = sim.model
    x = events.x.double()[:4]
    analytic = integrate(model, x, ALPHA, w_proposal(model), samples=2**13)
    other = integrate(model, x, ALPHA, w_proposal(model, widen=1.6, turning_weight=0.5), samples=2**13, seed=3)
    combined = torch.sqrt(analytic.rel_error**2 + other.rel_error**2)
    assert float(analytic.rel_error.max()) < 0.05
    assert bool(((analytic.log_value - other.log_value).abs() < 4 * combined).all())
    plain_calls = variance_calls(model, x, ALPHA, BoxProposal(model.bounds), w_proposal(model), samples=2**13)
    assert float(plain_calls.min()) > 1e3 * float((2**13 * (analytic.rel_error / 0.01) ** 2).max())


def test_likelihood_normalisation(sim, events):
    model = sim.model
    fid = FiducialCrossSection(model, WGenerator(model.process, 80.4, 2.1), samples=2**16)
    mem = MatrixElementLikelihood(model, w_proposal(model), sim.space, fiducial=fid, samples=1024, sequence="random")
    ratio = mem(events.x.double(), torch.tensor([80.9, 2.6])).exp()
    assert abs(float(ratio.mean()) - 1) < 3 * float(ratio.std()) / math.sqrt(len(ratio)) + 0.01
    value, error = fid.evaluate(ALPHA.reshape(1, -1))
    assert 0.2 < float(value) < 0.9 and float(error / value) < 0.01


def test_anchored_flow_proposal(sim, events):
    """A flow in the frame of WAnchor (trained briefly on simulation), mixed with the process: consistent and unbiased."""
    model = sim.model
    train = sim.simulate(2000, theta=ALPHA.float(), generator=torch.Generator().manual_seed(8))
    training = dataclasses.replace(PROPOSAL_TRAINING, epochs=2, batch_size=256)
    flow = fit_proposal(train, anchor=WAnchor(model), flow=FlowSpec("nsf_coupling", transforms=2, hidden=(16, 16)), training=training)
    x = events.x.double()[:12]
    # transform's log q is log_prob at the drawn points: the anchor's Jacobian -sum log scale enters both
    u = torch.rand(12, 64, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, log_q = flow.transform(u, x)
    shift, scale = WAnchor(model)(x)
    assert torch.allclose(log_q, flow.log_prob(z, x), atol=1e-3)  # float32 flow
    v = ((z - shift[:, None]) / scale[:, None]).transpose(0, 1).float()
    assert torch.allclose(flow.log_prob(z, x) + torch.log(scale).sum(-1, keepdim=True), flow.density(v, x.float()).T.double(), atol=1e-3)
    mix = MultiChannel([flow, WGenerator(model.process, 80.4, 2.1)], [0.9, 0.1])
    learned = integrate(model, x, ALPHA, mix, samples=4096, seed=4)
    analytic = integrate(model, x, ALPHA, w_proposal(model), samples=2**13, seed=5)
    pull = (learned.log_value - analytic.log_value) / torch.sqrt(learned.rel_error**2 + analytic.rel_error**2)
    assert float(pull.abs().max()) < 4.5 and abs(float(pull.mean())) < 4 / math.sqrt(12), pull
    with pytest.raises(ShapeMismatchError, match="shift and scale of shape"):
        FlowProposal(flow.density, anchor=lambda xx: (xx, xx)).log_prob(z, x)
    with pytest.raises(ConfigError, match="GaussianTransfer"):
        WAnchor(_without_transfer(model))


def _without_transfer(model):
    clone = copy.copy(model)
    clone.transfer = None
    return clone
