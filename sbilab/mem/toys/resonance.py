r"""Toy 1: one resonance, one measured object — the MEM of :class:`~sbilab.simulators.toys.Resonance`.

.. math::
    \frac{d\sigma}{dm} = \frac{\Gamma/2}{\pi\,[(m - M)^2 + \Gamma^2/4]}, \qquad
    W(x|m) = \mathcal N(x; m, \sigma), \qquad 85 < x < 115,

so :math:`p(x|M,\Gamma) = V(x - M;\sigma,\Gamma/2)/A(M,\Gamma)` (a Voigt profile) exactly. At
M = 100, Γ = 5, σ = 2: A = 0.8929820109, p(103) = 0.067734165, and for 1000 events the
Cramér–Rao bounds are σ(M) = 0.1434, σ(Γ) = 0.3238. The simulator is the existing
:class:`~sbilab.simulators.toys.Resonance` (its exact ``log_prob`` is the reference).

The proposal is the inverted transfer function (with Cauchy tails, :class:`SmearingChannel`);
the fiducial cross section is sampled from the Breit–Wigner peak at the reference point
(:class:`PeakChannel`, the Breit–Wigner mapping of MadGraph).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...simulators.toys import Resonance
from ..fiducial import FiducialCrossSection
from ..likelihood import MatrixElementLikelihood
from ..mappings import cauchy_log_prob, cauchy_map
from ..model import HardProcess, MatrixElement
from ..noise import Sequence
from ..learned import ACCEPTANCE_TRAINING, TRANSFER_TRAINING, AcceptedProcess, detector_pairs, fit_acceptance, fit_transfer
from ..proposals import BoxProposal, Proposal
from ..transfer import GaussianTransfer
from ...nets.flows import FlowSpec
from ...training import TrainingConfig

__all__ = ["CauchyLine", "PeakChannel", "SmearingChannel", "resonance_model", "resonance_proposal", "resonance_likelihood", "peak_channel",
           "learned_resonance_model"]


class CauchyLine(HardProcess):
    r"""A Breit–Wigner (Cauchy) line shape in the parton mass, normalised on the real line.

    Args:
        bounds: Integration range of m (the line outside it never reaches the window).
    """

    parameter_names = ("M", "Gamma")
    slot_sizes = (1,)

    def __init__(self, bounds: tuple[float, float] = (55.0, 145.0)) -> None:
        self.bounds = torch.tensor([bounds], dtype=torch.float64)

    def dsigma(self, z: Tensor, alpha: Tensor) -> Tensor:
        m, mass, half = z[..., 0], alpha[..., 0], alpha[..., 1] / 2
        return half / (math.pi * (half**2 + (m - mass) ** 2))

    def total(self, alpha: Tensor) -> Tensor:
        r"""The line's mass inside the box, :math:`[\arctan\frac{b - M}{\Gamma/2} - \arctan\frac{a - M}{\Gamma/2}]/\pi`."""
        lo, hi = self.bounds[0].tolist()
        mass, half = alpha[..., 0], alpha[..., 1] / 2
        return (torch.atan((hi - mass) / half) - torch.atan((lo - mass) / half)) / math.pi

    def partons(self, z: Tensor) -> Tensor:
        return z


class PeakChannel(Proposal):
    """The Breit–Wigner of ``variable`` at fixed (mass, width), truncated to ``bounds``; independent of x."""

    def __init__(self, mass: float, width: float, bounds: tuple[float, float]) -> None:
        self.mass, self.half, self.lo, self.hi = float(mass), float(width) / 2, float(bounds[0]), float(bounds[1])
        self.dim = self.noise_dim = 1

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        m, log_q = cauchy_map(u[..., 0], torch.tensor(self.mass, dtype=u.dtype), torch.tensor(self.half, dtype=u.dtype), self.lo, self.hi)
        return m.unsqueeze(-1), log_q

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        return cauchy_log_prob(z[..., 0], torch.tensor(self.mass, dtype=z.dtype), torch.tensor(self.half, dtype=z.dtype), self.lo, self.hi)


class SmearingChannel(Proposal):
    r"""The inverted transfer function with heavy tails: :math:`m \sim \mathrm{Cauchy}(x, \sigma)`.

    A Cauchy of the detector width rather than the Gaussian itself: the weight
    :math:`d\sigma\,W/q` then vanishes smoothly at the ends of the noise interval, which keeps
    randomised QMC in its fast regime (a Gaussian proposal leaves the Breit–Wigner's power-law
    tail in the weight, and the error falls only like plain Monte Carlo's).
    """

    def __init__(self, sigma: float) -> None:
        self.sigma = float(sigma)
        self.dim = self.noise_dim = 1

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        m, log_q = cauchy_map(u[..., 0], x[:, :1].to(u.dtype), torch.tensor(self.sigma, dtype=u.dtype))
        return m.unsqueeze(-1), log_q

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        return cauchy_log_prob(z[..., 0], x[:, :1].to(z.dtype), torch.tensor(self.sigma, dtype=z.dtype))


def resonance_model(simulator: Resonance | None = None) -> MatrixElement:
    """Cauchy line, Gaussian transfer of the simulator's resolution, and its window as the selection."""
    sim = simulator or Resonance()
    lo, hi = sim.window
    return MatrixElement(CauchyLine(), GaussianTransfer(absolute=sim.sigma_det),
                         selection=lambda x: (x[..., 0] > lo) & (x[..., 0] < hi))


def resonance_proposal(simulator: Resonance | None = None) -> SmearingChannel:
    """The inverted transfer function (heavy-tailed), one channel: at 1024 randomised-QMC samples
    per event it reaches ~2e-4 relative precision over the whole window."""
    sim = simulator or Resonance()
    return SmearingChannel(sim.sigma_det)


def resonance_likelihood(
    simulator: Resonance | None = None,
    *,
    model: MatrixElement | None = None,
    proposal: Proposal | None = None,
    samples: int = 1024,
    sequence: Sequence = "sobol",
    replicas: int = 8,
    fiducial_samples: int = 2**17,
    draws: int = 32,
    seed: int = 0,
    coverage: Proposal | None = None,
    coverage_events: int = 16,
) -> MatrixElementLikelihood:
    """The MEM likelihood of toy 1 over the simulator's space (M, Γ), ready for ``UnbinnedLikelihood``.

    ``model`` and ``proposal`` default to the analytic ones (:func:`resonance_model`,
    :func:`resonance_proposal`); pass learned ones (:func:`learned_resonance_model`, a
    :class:`~sbilab.mem.flows.FlowProposal`) to build the ML-MEM on the same footing.
    ``coverage`` is the broad proposal of the likelihood's coverage check (e.g. :func:`peak_channel`)
    on its first ``coverage_events`` events;
    ``draws`` detector draws per fiducial point smooth the window's edges (each costs a transfer
    function draw: few for a learned one).
    """
    sim = simulator or Resonance()
    model = model or resonance_model(sim)
    fid = FiducialCrossSection(model, peak_channel(sim), samples=fiducial_samples, sequence="sobol", seed=seed, draws=draws)
    return MatrixElementLikelihood(model, proposal or resonance_proposal(sim), sim.space, fiducial=fid, samples=samples,
                                   sequence=sequence, replicas=replicas, seed=seed, coverage=coverage,
                                   coverage_events=coverage_events)


def peak_channel(simulator: Resonance | None = None) -> PeakChannel:
    """The Breit–Wigner at the reference point over the box: the fiducial sampler and a defensive (broad) proposal."""
    sim = simulator or Resonance()
    mass, width = sim.space.reference.tolist()
    return PeakChannel(mass, width, tuple(CauchyLine().bounds[0].tolist()))


def learned_resonance_model(
    simulator: Resonance | None = None,
    *,
    pairs: int = 20_000,
    flow: FlowSpec = FlowSpec("nsf", transforms=3, hidden=(32, 32)),
    hidden: tuple[int, ...] = (32, 32),
    training: TrainingConfig = TRANSFER_TRAINING,
    acceptance_training: TrainingConfig = ACCEPTANCE_TRAINING,
    seed: int = 0,
    progress: bool = False,
) -> MatrixElement:
    r"""Toy 1 with a learned detector: :math:`W_\mathrm{acc}(x|m)` and :math:`\epsilon(m)` from simulated (reco, parton) pairs.

    The pairs have parton masses uniform over the process's box and the simulator's smearing
    and window as the detector (:func:`~sbilab.mem.learned.detector_pairs`); the transfer
    density models the residual x - m of the accepted pairs, the acceptance is a classifier of m
    (:func:`~sbilab.mem.learned.fit_transfer`, :func:`~sbilab.mem.learned.fit_acceptance`).
    """
    sim = simulator or Resonance()
    exact = resonance_model(sim)
    z = BoxProposal(exact.bounds).sample(int(pairs), None, torch.Generator().manual_seed(seed))[0][0]
    data = detector_pairs(exact, z, generator=torch.Generator().manual_seed(seed + 1))
    transfer = fit_transfer(data, response="residual", flow=flow, training=training, progress=progress)
    acceptance = fit_acceptance(data, hidden=hidden, training=acceptance_training, progress=progress)
    return MatrixElement(AcceptedProcess(CauchyLine(), acceptance), transfer, selection=exact.selection)
