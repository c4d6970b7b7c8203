"""Bad input to the MEM: named errors, nothing silently dropped."""

import math

import pytest
import torch

from sbilab.exceptions import ConfigError, IntegrandError, OutOfSupportError, ShapeMismatchError
from sbilab.mem import (BoxProposal, FiducialCrossSection, GaussianTransfer, HardProcess, MatrixElement, MatrixElementLikelihood,
                        Proposal, check_normalisation, integrate)
from sbilab.mem.toys import TwoBody, resonance_model, two_body_model, two_body_proposal
from sbilab.mem.toys.resonance import CauchyLine, PeakChannel
from sbilab.simulators import ParameterSpace
from sbilab.simulators.toys import Resonance

X = torch.tensor([[100.0], [103.0]], dtype=torch.float64)
THETA = torch.tensor([100.0, 5.0], dtype=torch.float64)


class Signed(CauchyLine):
    """A line that goes negative (or NaN) above 102."""

    def __init__(self, bad: float) -> None:
        super().__init__()
        self.bad = bad

    def dsigma(self, z, alpha):
        value = super().dsigma(z, alpha)
        return torch.where(z[..., 0] > 102, torch.full_like(value, self.bad), value)


@pytest.mark.parametrize("bad, word", [(-1e-3, "negative"), (math.nan, "NaN")])
def test_negative_or_nan_cross_section(bad, word):
    model = MatrixElement(Signed(bad), GaussianTransfer(absolute=2.0))
    with pytest.raises(IntegrandError, match=f"{word}.*Signed.dsigma|Signed.dsigma.*{word}"):
        integrate(model, X, THETA, BoxProposal(model.bounds), samples=256)


class Inflated(GaussianTransfer):
    def log_prob(self, x, y, nuisance):
        return super().log_prob(x, y, nuisance) + math.log(1.2)


def test_transfer_function_that_does_not_normalise():
    with pytest.raises(IntegrandError, match=r"is 1\.(19|20|21)\d* ± 0\.00\d+ .*off by \+0\.(19|20|21)"):
        check_normalisation(Inflated(absolute=2.0), torch.tensor([[100.0], [90.0]]), generator=torch.Generator().manual_seed(0))
    integrals = check_normalisation(GaussianTransfer(relative=0.1, positive=True), torch.tensor([[50.0], [10.0]]))
    assert bool(((integrals - 1).abs() < 0.01).all())
    sim = Resonance()
    model = MatrixElement(CauchyLine(), Inflated(absolute=2.0))
    fid = FiducialCrossSection(model, PeakChannel(100.0, 5.0, (55.0, 145.0)), samples=4096)
    with pytest.raises(IntegrandError, match="does not normalise"):
        MatrixElementLikelihood(model, PeakChannel(100.0, 5.0, (55.0, 145.0)), sim.space, fiducial=fid)


@pytest.mark.parametrize("perms, match", [([(0, 0)], "does not match"), ([(0, 1, 2)], "does not match"), ([(0, 1), (0, 1)], "repeat"), ([], "empty")])
def test_permutations_must_match_the_objects(perms, match):
    with pytest.raises(ConfigError, match=match):
        MatrixElement(TwoBody().process, GaussianTransfer(relative=0.1), permutations=perms)


def test_events_of_wrong_width_or_outside_support_or_cuts():
    sim = TwoBody()
    model = two_body_model(sim.process)
    with pytest.raises(ShapeMismatchError, match=r"\(N, 2\)"):
        model.check_events(torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(OutOfSupportError, match="support.*row 1"):
        model.check_events(torch.tensor([[60.0, 40.0], [50.0, -3.0]], dtype=torch.float64))
    with pytest.raises(OutOfSupportError, match="selection.*row 0"):
        model.check_events(torch.tensor([[60.0, 15.0], [50.0, 40.0]], dtype=torch.float64))


def test_asymmetric_cuts_under_permutations():
    sim = TwoBody()
    model = MatrixElement(sim.process, GaussianTransfer(relative=0.1, positive=True), permutations=[(0, 1), (1, 0)],
                          selection=lambda x: x[..., 0] > 40)
    with pytest.raises(ConfigError, match="order of objects"):
        FiducialCrossSection(model, BoxProposal(model.bounds), samples=4096)


class Plateau(HardProcess):
    """A flat mass distribution on [M - 1, M + 1]: no events reach the window when M > 120."""

    parameter_names = ("M",)
    slot_sizes = (1,)
    bounds = torch.tensor([[80.0, 140.0]], dtype=torch.float64)

    def dsigma(self, z, alpha):
        return ((z[..., 0] - alpha[..., 0]).abs() < 1).to(z.dtype) / 2

    def partons(self, z):
        return z


def test_zero_acceptance_for_some_parameters():
    model = MatrixElement(Plateau(), GaussianTransfer(absolute=0.5), selection=lambda x: (x[..., 0] > 95) & (x[..., 0] < 105))
    fid = FiducialCrossSection(model, BoxProposal(model.bounds), samples=8192)
    assert float(fid.evaluate(torch.tensor([[100.0]], dtype=torch.float64))[0]) > 0
    with pytest.raises(IntegrandError, match=r"zero fiducial acceptance at theta=\[125.0\]"):
        fid.evaluate(torch.tensor([[125.0]], dtype=torch.float64))


class Broken(Proposal):
    dim = noise_dim = 1

    def transform(self, u, x):
        return 100 + u, torch.full(u.shape[:-1], math.nan, dtype=u.dtype)

    def log_prob(self, z, x):
        return torch.zeros(z.shape[:-1], dtype=z.dtype)


def test_proposal_with_bad_density_and_missing_coverage():
    model = resonance_model()
    with pytest.raises(IntegrandError, match="non-finite log q"):
        integrate(model, X, THETA, Broken(), samples=64)
    sim = Resonance()
    fid = FiducialCrossSection(model, PeakChannel(100.0, 5.0, (55.0, 145.0)), samples=4096)
    far = PeakChannel(150.0, 0.01, (149.0, 151.0))  # draws only outside the process's box
    mem = MatrixElementLikelihood(model, far, sim.space, fiducial=fid, samples=64, sequence="random", check_transfer=False)
    with pytest.raises(IntegrandError, match="integral is zero"):
        mem.log_prob(X, THETA)


def test_space_must_match_the_model():
    sim = TwoBody()
    model = two_body_model(sim.process, scale="jes")
    fid = FiducialCrossSection(model, BoxProposal(model.bounds), samples=1024)
    with pytest.raises(ConfigError, match="jes"):
        MatrixElementLikelihood(model, two_body_proposal(sim.process), sim.space, fiducial=fid)
    space = ParameterSpace(("M", "Gamma", "jes"), low=(95.0, 2.0, 0.9), high=(105.0, 10.0, 1.1))
    mem = MatrixElementLikelihood(model, two_body_proposal(sim.process), space, fiducial=fid, samples=64, sequence="random")
    with pytest.raises(OutOfSupportError):
        mem.log_prob(torch.tensor([[60.0, 40.0]], dtype=torch.float64), torch.tensor([100.0, 5.0, 1.5]))
