"""The two parts of the MEM refit spread: σ_fid's Monte Carlo error against closed forms, the fit shift
it causes against the linear response −N V ∇η, and the warning of :func:`sbilab.mem.fiducial_noise`.

Closed form (Gaussian line, plain MC on the box [−8, 8], no cuts): σ = 1 and the per-point influence
of ∇log σ̂ is 16 ∂f, so n Var(∂_μ log σ̂) = 16 ∫ w² N(w)² dw = 4/√π and n Var(∂_s log σ̂) =
16 ∫ (w² − 1)² N(w)² dw = 6/√π (N² = N(0, ½)/(2√π)), uncorrelated.
"""

import math
import warnings

import pytest
import torch

from sbilab.events import Events
from sbilab.exceptions import FitError, IntegrationNoiseWarning
from sbilab.mem import (BoxProposal, FiducialCrossSection, GaussianTransfer, HardProcess, MatrixElement, MatrixElementLikelihood,
                        fiducial_noise, integration_noise)
from sbilab.mem.toys import resonance_model, resonance_proposal
from sbilab.mem.toys.resonance import PeakChannel, peak_channel
from sbilab.simulators import ParameterSpace
from sbilab.simulators.toys import Resonance
from sbilab.stats import UnbinnedLikelihood

NAMES = ("M", "Gamma")


class GaussianLine(HardProcess):
    """dσ/dz = N(z; mu, s), normalised on the real line (no closed-form total given: plain MC)."""

    parameter_names = ("mu", "s")
    slot_sizes = (1,)
    bounds = torch.tensor([[-8.0, 8.0]], dtype=torch.float64)

    def dsigma(self, z, alpha):
        w = (z[..., 0] - alpha[..., 0]) / alpha[..., 1]
        return torch.exp(-0.5 * w**2) / (math.sqrt(2 * math.pi) * alpha[..., 1])

    def partons(self, z):
        return z


def test_gradient_covariance_closed_form():
    model = MatrixElement(GaussianLine(), GaussianTransfer(absolute=1.0))
    n = 2**18
    fid = FiducialCrossSection(model, BoxProposal(GaussianLine.bounds), samples=n, sequence="random", seed=3)
    for mu in (0.0, 1.0):
        cov = fid.gradient_covariance(torch.tensor([mu, 1.0], dtype=torch.float64)) * n
        assert abs(float(cov[0, 0]) / (4 / math.sqrt(math.pi)) - 1) < 0.02, mu
        assert abs(float(cov[1, 1]) / (6 / math.sqrt(math.pi)) - 1) < 0.03, mu
        assert abs(float(cov[0, 1])) < 0.02 * math.sqrt(float(cov[0, 0] * cov[1, 1]))
    # the likelihood reports it in the space's order
    space = ParameterSpace(("s", "mu"), low=(0.5, -1.0), high=(2.0, 2.0), reference=(1.0, 0.0))
    mem = MatrixElementLikelihood(model, BoxProposal(GaussianLine.bounds), space, fiducial=fid, samples=64)
    swapped = mem.fiducial_covariance(torch.tensor([1.0, 0.0], dtype=torch.float64))
    direct = fid.gradient_covariance(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(swapped, direct.flip(0).flip(1), rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def toy():
    sim = Resonance()
    x = sim.simulate(300, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(1)).x.double()
    model, proposal, fids = resonance_model(sim), resonance_proposal(sim), {}

    def fid(seed: int) -> FiducialCrossSection:  # a deliberately small sample: its part of the spread is visible
        if seed not in fids:
            fids[seed] = FiducialCrossSection(model, peak_channel(sim), samples=2**10, sequence="sobol", seed=seed, draws=4)
        return fids[seed]

    def mem(event_seed: int, fiducial_seed: int) -> MatrixElementLikelihood:
        return MatrixElementLikelihood(model, proposal, sim.space, fiducial=fid(fiducial_seed), samples=256, seed=event_seed)

    return sim, x, fid, mem


def _grad_log(fid, theta):
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fid(th.reshape(1, -1)).sum(), th)
    return g


def test_gradient_covariance_matches_the_spread_over_seeds(toy):
    """Toy 1 (Sobol replicas, control variate, several draws): the stated covariance against 64 independent samples."""
    _, _, fid, _ = toy
    ref = torch.tensor([100.0, 5.0], dtype=torch.float64)
    grads = torch.stack([_grad_log(fid(s), [100.0, 5.0]) for s in range(64)])
    empirical = torch.cov(grads.T).diagonal()
    stated = torch.stack([fid(s).gradient_covariance(ref) for s in range(64)]).mean(0).diagonal()
    ratio = torch.sqrt(stated / empirical)
    assert bool(((ratio - 1).abs() < 0.3).all()), ratio.tolist()


def _fit(log_ratio, sim, x):
    fit = UnbinnedLikelihood(log_ratio, Events.observed(x), sim.space).fit()
    assert fit.valid
    return torch.tensor([fit.best[n] for n in NAMES], dtype=torch.float64), torch.tensor(fit.covariance, dtype=torch.float64), fit


def test_fit_shift_is_the_linear_response(toy):
    """Same per-event integrals, two σ_fid samples: the best fits differ by −N V (∇log σ̂_a − ∇log σ̂_b)."""
    sim, x, fid, mem = toy
    like = mem(0, 1)
    a, va, _ = _fit(like, sim, x)
    like.fiducial = fid(2)
    b, vb, _ = _fit(like, sim, x)
    mid = ((a + b) / 2).tolist()
    predicted = -len(x) * (va + vb) / 2 @ (_grad_log(fid(1), mid) - _grad_log(fid(2), mid))
    sigma = torch.sqrt(va.diagonal())
    assert float(((a - b) / sigma).abs().max()) > 0.05  # a visible shift
    assert float(((a - b - predicted) / sigma).abs().max()) < 2e-3

    # a known relative error: log(1 + ε) = ε₁ (M − 100) moves M by −N V ε₁ exactly for a quadratic −log L
    class Tilted:
        def __init__(self, base, slope):
            self.base, self.slope, self.parton_points, self.nuisance = base, slope, base.parton_points, base.nuisance

        def __call__(self, theta):
            return self.base(theta) + self.slope * (theta[:, 0] - 100.0)

    like.fiducial = fid(1)
    slope = 0.3 / len(x) / float(sigma[0])
    like.fiducial = Tilted(fid(1), slope)
    c, vc, _ = _fit(like, sim, x)
    predicted = -len(x) * (va + vc) / 2 @ torch.tensor([slope, 0.0], dtype=torch.float64)
    assert abs(float((c - a)[0] / sigma[0]) + 0.3) < 0.01
    assert float(((c - a - predicted) / sigma).abs().max()) < 2e-3


def test_warning_fires_when_and_only_when_the_criterion_says(toy):
    """r = N sqrt(VCV/V): four copies of the data make V four times smaller and r exactly twice larger."""
    sim, x, _, mem = toy
    like = mem(0, 1)
    _, _, fit1 = _fit(like, sim, x)
    _, _, fit4 = _fit(like, sim, x.repeat(4, 1))
    r1 = fiducial_noise(like, fit1, Events.observed(x), warn=False)
    r4 = fiducial_noise(like, fit4, 4 * len(x), warn=False)
    for name in NAMES:
        assert abs(r4[name] / r1[name] - 2) < 0.01
    tolerance = 1.5 * max(r1.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrationNoiseWarning)
        fiducial_noise(like, fit1, len(x), tolerance=tolerance)  # r < tolerance: silent
    with pytest.warns(IntegrationNoiseWarning, match=r"enlarge the FiducialCrossSection sample \(now 1024; about"):
        fiducial_noise(like, fit4, 4 * len(x), tolerance=tolerance)
    with pytest.raises(FitError, match="needs a MatrixElementLikelihood"):
        fiducial_noise(lambda x, t: x[:, 0] * 0, fit1, len(x))


def test_integration_noise_splits_the_spread(toy):
    sim, x, _, mem = toy
    seeds = tuple(range(6))
    with pytest.warns(IntegrationNoiseWarning):  # integration_noise applies the same criterion
        noise = integration_noise(mem, Events.observed(x), sim.space, seeds=seeds, split=True, fiducial_tolerance=0.01)
    assert noise.valid and noise.events == 300
    for name in NAMES:
        assert noise.best_fiducial[name][0] == noise.best_event[name][0] == noise.best[name][0]  # the shared first fit
        # the σ_fid part dominates here (2^10 points), the predicted one agrees with the measured
        assert noise.relative_fiducial_spread[name] > noise.relative_event_spread[name]
        assert 0.5 < noise.relative_fiducial_spread[name] / noise.predicted_fiducial[name] < 2.0
        parts = math.hypot(noise.relative_fiducial_spread[name], noise.relative_event_spread[name])
        assert 0.5 < noise.relative_spread[name] / parts < 2.0
    # each σ_fid-only refit is the fit of that seed's sample with the first per-event seed
    _, _, fit = _fit(mem(0, 3), sim, x)
    assert all(abs(noise.best_fiducial[n][3] - fit.best[n]) < 1e-9 for n in NAMES)
    text = str(noise)
    assert "σ_fid part" in text and f"{noise.relative_event_spread['Gamma']:.3f}" in text
    # the one-seed form is unchanged: no parts, same total
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrationNoiseWarning)
        plain = integration_noise(lambda s: mem(s, s), Events.observed(x), sim.space, seeds=seeds[:3])
    assert plain.fiducial_spread is None and plain.relative_event_spread is None
    assert plain.best["M"] == noise.best["M"][:3]
    assert "—" in plain.summary()
    with pytest.raises(FitError, match="two seeds"):
        integration_noise(lambda s: mem(s, s), Events.observed(x), sim.space, seeds=seeds[:2], split=True)


class Interference(HardProcess):
    """A line times (1 + c (m − 100)/10)²: polynomial of degree 2 in c (as in test_mem_fiducial)."""

    parameter_names = ("c",)
    slot_sizes = (1,)
    bounds = torch.tensor([[60.0, 140.0]], dtype=torch.float64)

    def dsigma(self, z, alpha):
        m = z[..., 0]
        return 2.5 / (math.pi * (2.5**2 + (m - 100) ** 2)) * (1 + alpha[..., 0] * (m - 100) / 10) ** 2

    def partons(self, z):
        return z


def test_gradient_covariance_with_a_nuisance_and_morphing():
    """A scale nuisance reweights the detector draws, the morphing basis gives the α dependence: the
    stated covariance is the same with and without morphing and agrees with the spread over 48 samples."""
    from sbilab.simulators import MorphingBasis

    model = MatrixElement(Interference(), GaussianTransfer(absolute=2.0, scale="jes"), selection=lambda x: (x[..., 0] > 85.0) & (x[..., 0] < 115.0))
    sampler = PeakChannel(100.0, 8.0, (60.0, 140.0))
    basis = MorphingBasis(1, max_power=2, benchmarks=[[-0.5], [0.0], [0.5]])
    point = torch.tensor([0.2, 1.02], dtype=torch.float64)
    direct = FiducialCrossSection(model, sampler, samples=2**12, draws=2, seed=0)
    morphed = FiducialCrossSection(model, sampler, samples=2**12, draws=2, seed=0, morphing=basis)
    assert torch.allclose(direct.gradient_covariance(point), morphed.gradient_covariance(point), rtol=1e-8, atol=0)
    samples = [FiducialCrossSection(model, sampler, samples=2**12, draws=2, seed=s) for s in range(48)]
    grads = torch.stack([_grad_log(f, point.tolist()) for f in samples])
    stated = torch.stack([f.gradient_covariance(point) for f in samples]).mean(0)
    ratio = torch.sqrt(stated.diagonal() / torch.cov(grads.T).diagonal())
    assert bool(((ratio - 1).abs() < 0.3).all()), ratio.tolist()
