"""One call from a trained ratio or likelihood estimator and observed events to posterior samples."""

from __future__ import annotations

from typing import Any

import torch

from ..exceptions import ConfigError
from .importance import sample_importance
from .mcmc import SamplingResult, sample_mcmc
from .potential import LogPosterior

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
        method: ``"mcmc"`` (:func:`sample_mcmc`) or ``"importance"`` (:func:`sample_importance`).
        options: Passed to the sampler (``chains``, ``warmup``, ``max_seconds``, ``proposal``, ...).

    Raises:
        ConfigError: unknown ``method``.
        SamplingError: the sampler could not produce the draws within its bounds.
    """
    log_posterior = LogPosterior.from_estimator(estimator, x, prior=prior, mask=mask)
    if method == "mcmc":
        return sample_mcmc(log_posterior, n, generator=generator, **options)
    if method == "importance":
        return sample_importance(log_posterior, n, generator=generator, **options)
    raise ConfigError(f"sample_posterior: method must be 'mcmc' or 'importance', got {method!r}.")
