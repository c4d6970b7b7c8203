"""Toy 2 of the MEM (two measured objects, two permutations, 3-D integral) against quadrature.

Reference values: ``quadrature_integral(x, alpha)`` and ``quadrature_fiducial(alpha)`` of
:mod:`sbilab.mem.toys.two_body` at their defaults (adaptive in m to 1e-7, peak-aligned
Gauss–Legendre in y and c; agree with fully nested adaptive ``quad`` to 3e-8), computed with
``python -c "from sbilab.mem.toys.two_body import *; print(quadrature_integral((80.0, 30.0), (100.0, 5.0)))"``.
"""

import math

import pytest
import torch

from sbilab.events import Events
from sbilab.mem import FiducialCrossSection, MatrixElement, MatrixElementLikelihood, integrate
from sbilab.mem.toys import TwoBody, quadrature_integral, two_body_model, two_body_proposal, two_body_sampler
from sbilab.mem.toys.two_body import TwoBodyPrior
from sbilab.simulators import ParameterSpace
from sbilab.stats import UnbinnedLikelihood

XS = [(61.9604, 50.5328), (80.0, 30.0), (52.0, 48.0), (120.0, 35.0)]
REFERENCE = {
    (100.0, 5.0): ([0.0008944394168201421, 0.00018771009440912557, 0.002029160650542322, 6.771142327257085e-05], 0.9823174658988723),
    (97.0, 8.0): ([0.0007063179056621615, 0.00022194666095834791, 0.0019114189862755816, 6.17360014228317e-05], 0.979213415067182),
}


@pytest.fixture(scope="module")
def sim():
    return TwoBody()


@pytest.fixture(scope="module")
def model(sim):
    return two_body_model(sim.process)


@pytest.fixture(scope="module")
def proposal(sim):
    return two_body_proposal(sim.process)


def test_integral_matches_quadrature(model, proposal):
    x = torch.tensor(XS, dtype=torch.float64)
    for alpha, (values, _) in REFERENCE.items():
        res = integrate(model, x, torch.tensor(alpha), proposal, samples=2**15)
        ref = torch.tensor(values, dtype=torch.float64)
        dev = (res.log_value.exp() / ref - 1).abs()
        assert float(res.rel_error.max()) < 0.02
        assert bool((dev < 4 * res.rel_error).all()), (alpha, dev, res.rel_error)


def test_quadrature_reference_is_converged():
    value = quadrature_integral(XS[1], (100.0, 5.0), epsrel=1e-2, steps=(0, 1, 3, 8))
    assert abs(value / REFERENCE[(100.0, 5.0)][0][1] - 1) < 1e-5


def test_both_permutations_contribute(sim, model, proposal):
    x = torch.tensor(XS[:2], dtype=torch.float64)
    theta = torch.tensor([100.0, 5.0])
    both = integrate(model, x, theta, proposal, samples=2**14).log_value.exp()
    parts = []
    for perm in [(0, 1)], [(1, 0)]:
        single = MatrixElement(sim.process, model.transfer, permutations=perm, selection=model.selection)
        parts.append(integrate(single, x, theta, proposal, samples=2**14).log_value.exp())
    assert bool(((parts[0] + parts[1]) / both - 1).abs().max() < 0.05)
    assert bool((torch.minimum(parts[0], parts[1]) / both > 0.05).all())  # neither assignment is negligible


def test_fiducial_matches_quadrature(sim, model):
    fid = FiducialCrossSection(model, two_body_sampler(sim.process, sim.space), samples=2**15, draws=4)
    for alpha, (_, ref) in REFERENCE.items():
        value, error = fid.evaluate(torch.tensor([alpha], dtype=torch.float64))
        assert float(error) < 1e-3
        assert abs(float(value) - ref) < 4 * float(error) + 1e-5


def test_simulator_and_likelihood_normalisation(sim, model, proposal):
    """E over x ~ p(x|α0) of p(x|α1)/p(x|α0) is one: the likelihood is a normalised density."""
    events = sim.simulate(200, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(11))
    assert bool((events.x[:, 1] > 20).all() & (events.x[:, 0] >= events.x[:, 1]).all())
    fid = FiducialCrossSection(model, two_body_sampler(sim.process, sim.space), samples=2**15, draws=4)
    mem = MatrixElementLikelihood(model, proposal, sim.space, fiducial=fid, samples=1024, sequence="random")
    ratio = mem(events.x.double(), torch.tensor([102.0, 7.0])).exp()
    assert abs(float(ratio.mean()) - 1) < 3 * float(ratio.std()) / math.sqrt(200) + 0.01


def test_jet_energy_scale_nuisance(sim, proposal):
    model = two_body_model(sim.process, scale="jes")
    x = torch.tensor(XS[:3], dtype=torch.float64)
    s = 1.04
    scaled = integrate(model, x, torch.tensor([100.0, 5.0, s]), proposal, samples=2**13)
    nominal = integrate(model, x / s, torch.tensor([100.0, 5.0, 1.0]), proposal, samples=2**13)
    # W(x|E; s) = W(x/s|E; 1)/s per object: I(x; s) = I(x/s; 1)/s^2
    dev = (scaled.log_value - nominal.log_value + 2 * math.log(s)).abs()
    assert bool((dev < 4 * torch.sqrt(scaled.rel_error**2 + nominal.rel_error**2)).all())
    space = ParameterSpace(("M", "Gamma", "jes"), low=(95.0, 2.0, 0.9), high=(105.0, 10.0, 1.1), reference=(100.0, 5.0, 1.0))
    fid = FiducialCrossSection(model, TwoBodyPrior(sim.process, 100.0, 5.0), samples=2**14, draws=2)
    mem = MatrixElementLikelihood(model, proposal, space, fiducial=fid, samples=512, sequence="random")
    data = Events.observed(sim.simulate(100, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(5)).x.double())
    nll = UnbinnedLikelihood(mem, data, space, constraints={"jes": (1.0, 0.02)})
    free = nll.fit(fixed={"Gamma": 5.0})
    fixed = nll.fit(fixed={"Gamma": 5.0, "jes": 1.0})
    assert free.valid and fixed.valid
    # M and the scale are degenerate (energies scale with both): the 2 % constraint adds ~2 GeV in quadrature
    expected = math.hypot(fixed.errors["M"], 100.0 * 0.02)
    assert abs(free.errors["M"] / expected - 1) < 0.25
