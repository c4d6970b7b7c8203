"""Bayesian inference from learned likelihoods: vectorised MCMC, importance sampling, sbi interoperability."""

from .importance import sample_importance
from .mcmc import SamplingResult, sample_mcmc, split_rhat
from .potential import BoxUniform, LogPosterior
from .sample import sample_posterior
from .samplers import SAMPLERS, register_sampler
from .sbi import SbiPosterior, simulate_for_sbilab

__all__ = [
    "LogPosterior",
    "BoxUniform",
    "sample_mcmc",
    "sample_importance",
    "sample_posterior",
    "split_rhat",
    "SamplingResult",
    "SbiPosterior",
    "simulate_for_sbilab",
    "SAMPLERS",
    "register_sampler",
]
