"""One call from a trained ratio or likelihood estimator and observed events to posterior samples."""

from __future__ import annotations

from typing import Any

import torch

from .mcmc import SamplingResult
from .potential import LogPosterior
from .samplers import get_sampler

__all__ = ["sample_posterior"]


def sample_posterior(estimator: Any, x: Any, n: int, *, prior: Any = None, method: str = "mcmc", mask: Any = None,
                     generator: torch.Generator | None = None, **options: Any) -> SamplingResult:
    r"""Posterior samples :math:`\theta \sim p(\theta) \prod_i \hat r(x_i|\theta)` for ONE observed dataset.

    Args:
        estimator: A trained :class:`RatioEstimator` or :class:`LikelihoodEstimator` (anything with
            ``forward(x, theta) -> (N,)`` and ``space``).
        x: Observed events ``(N, D)`` of one dataset.
        n: Number of samples.
        prior: Prior with ``log_prob``/``sample`` (sbi priors work); default uniform on the space.
        method: A registered sampler (:data:`~sbilab.inference.samplers.SAMPLERS`): ``"mcmc"``
            (:func:`~sbilab.inference.mcmc.sample_mcmc`) or ``"importance"`` (:func:`~sbilab.inference.importance.sample_importance`).
        options: Passed to the sampler (``chains``, ``warmup``, ``max_seconds``, ``proposal``, ...).

    Raises:
        ConfigError: unknown ``method`` (raised before the estimator is evaluated).
        SamplingError: the sampler could not produce the draws within its bounds.
    """
    sampler = get_sampler(method)
    log_posterior = LogPosterior.from_estimator(estimator, x, prior=prior, mask=mask)
    return sampler(log_posterior, n, generator=generator, **options)
