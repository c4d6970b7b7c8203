r"""The matrix-element method (MEM): per-event likelihoods by Monte Carlo integration.

.. math::
    p(x|\alpha,\nu) = \frac{1}{\sigma_\mathrm{fid}(\alpha,\nu)} \int dz\, \frac{d\sigma}{dz}(z;\alpha)\,
        \epsilon(z) \sum_\pi W(x_\pi | y(z); \nu)

A user gives the hard process (:class:`HardProcess`), a transfer function
(:class:`GaussianTransfer` or anything with the :class:`TransferFunction` methods), cuts and
the permutations of objects (:class:`MatrixElement`). Integrators: plain Monte Carlo
(:class:`BoxProposal`), a VEGAS-like adaptive grid (:func:`adapt_vegas`) and importance
sampling from any :class:`Proposal` — physics-based (multi-channel, Breit–Wigner mapped,
transfer-function inverted: :mod:`sbilab.mem.toys`) or learned (:class:`FlowProposal`: a core
``ConditionalDensity`` trained by ``fit`` on simulation, :func:`fit_proposal`, or on the
integrand's variance, :func:`fit_sampler`). The detector may be learned too
(:class:`LearnedTransfer`, :class:`LearnedAcceptance` from (reco, parton) pairs).
:func:`check_coverage` makes a proposal that misses part of the integrand loud.
:class:`MatrixElementLikelihood` is the per-event log-ratio that
:class:`~sbilab.stats.UnbinnedLikelihood` and :func:`~sbilab.stats.fit_toys` take unchanged.
"""

from .coverage import AgreementCheck, CoverageCheck, CoverageWarning, check_agreement, check_coverage
from .fiducial import FiducialCrossSection
from .flows import PROPOSAL_TRAINING, SAMPLER_TRAINING, Anchor, FlowProposal, fit_proposal, fit_sampler
from .fitting import IntegrationNoise, fiducial_noise, integration_noise
from .integrate import Integral, calls_for_precision, integrate, variance_calls
from .learned import (ACCEPTANCE_TRAINING, TRANSFER_TRAINING, AcceptedProcess, LearnedAcceptance, LearnedTransfer, detector_pairs,
                      fit_acceptance, fit_transfer)
from .likelihood import MatrixElementLikelihood
from .mappings import cauchy_map, normal_map, truncated_normal_map
from .model import HardProcess, MatrixElement
from .noise import CommonNoise, event_keys
from .proposals import BoxProposal, MultiChannel, Proposal
from .remapped import RemappedChannels, fit_channel_flows
from .transfer import GaussianTransfer, TransferFunction, check_normalisation
from .vegas import VegasProposal, adapt_vegas

__all__ = [
    # model
    "HardProcess",
    "MatrixElement",
    "TransferFunction",
    "GaussianTransfer",
    "check_normalisation",
    # proposals and integrators
    "Proposal",
    "BoxProposal",
    "MultiChannel",
    "VegasProposal",
    "adapt_vegas",
    "cauchy_map",
    "normal_map",
    "truncated_normal_map",
    "CommonNoise",
    "event_keys",
    "Integral",
    "integrate",
    "calls_for_precision",
    "variance_calls",
    "CoverageCheck",
    "CoverageWarning",
    "check_coverage",
    "AgreementCheck",
    "check_agreement",
    # learned pieces
    "FlowProposal",
    "Anchor",
    "fit_proposal",
    "fit_sampler",
    "RemappedChannels",
    "fit_channel_flows",
    "PROPOSAL_TRAINING",
    "SAMPLER_TRAINING",
    "LearnedTransfer",
    "LearnedAcceptance",
    "AcceptedProcess",
    "detector_pairs",
    "fit_transfer",
    "fit_acceptance",
    "TRANSFER_TRAINING",
    "ACCEPTANCE_TRAINING",
    # likelihood
    "FiducialCrossSection",
    "MatrixElementLikelihood",
    "IntegrationNoise",
    "integration_noise",
    "fiducial_noise",
]
