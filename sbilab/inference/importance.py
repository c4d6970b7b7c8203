r"""Importance sampling (sampling-importance-resampling) of a posterior.

Draw :math:`\theta_k \sim g`, weight :math:`w_k \propto \exp(\log\pi(\theta_k)) / g(\theta_k)`, and
resample. The effective sample size :math:`(\sum w)^2/\sum w^2` (Kish) says how many independent
draws the weights are worth; too few raise an error instead of returning a degenerate sample.
With the prior as proposal this is exact for small likelihoods; with an NPE posterior as proposal
it corrects the NPE approximation (Dax et al., arXiv:2210.05686).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..exceptions import ConfigError, SamplingError
from .mcmc import SamplingResult, draw_from
from .potential import _prior_log_prob
from .samplers import register_sampler

__all__ = ["sample_importance"]


@register_sampler("importance")
def sample_importance(
    log_posterior: Callable[[Tensor], Tensor],
    n: int,
    *,
    proposal: Any = None,
    proposals: int | None = None,
    min_ess: float = 50.0,
    generator: torch.Generator | None = None,
) -> SamplingResult:
    r"""``n`` posterior samples by sampling-importance-resampling.

    Args:
        log_posterior: ``theta (K, P) -> (K,)`` unnormalised log posterior.
        n: Samples to return (drawn with replacement according to the weights).
        proposal: Object with ``sample((K,))`` and ``log_prob(theta)``; default ``log_posterior.prior``.
        proposals: Number ``K`` of proposal draws (default ``20 n``).
        min_ess: Smallest acceptable effective sample size.

    Raises:
        SamplingError: the effective sample size is below ``min_ess`` (the proposal misses the
            posterior: use MCMC or a better proposal), or all weights vanish.

    Example:
        >>> from sbilab.inference.potential import LogPosterior
        >>> from sbilab.simulators import ParameterSpace
        >>> space = ParameterSpace(("mu",), low=(-5.0,), high=(5.0,))
        >>> post = LogPosterior(lambda t: -0.5 * ((t[:, 0] - 1.0) / 0.5) ** 2, space)
        >>> res = sample_importance(post, 2000, generator=torch.Generator().manual_seed(0))
        >>> round(res.samples.mean().item(), 1), round(res.samples.std().item(), 1)
        (1.0, 0.5)
    """
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"sample_importance: n must be a positive integer, got {n!r}.")
    proposal = getattr(log_posterior, "prior", None) if proposal is None else proposal
    if proposal is None:
        raise ConfigError("sample_importance: give a `proposal` (the log posterior has no prior).")
    k = proposals or 20 * n
    theta = draw_from(proposal, k, generator).to(torch.get_default_dtype())
    log_w = log_posterior(theta).double() - _prior_log_prob(proposal, theta).double()
    log_w = torch.nan_to_num(log_w, nan=-math.inf)
    if not bool(torch.isfinite(log_w).any()):
        raise SamplingError(f"sample_importance: all {k} proposal draws have zero posterior density.")
    w = torch.softmax(log_w, 0)
    ess = float(1.0 / (w**2).sum())
    if ess < min_ess:
        raise SamplingError(
            f"sample_importance: effective sample size {ess:.1f} of {k} draws is below min_ess={min_ess}; "
            "the proposal misses the posterior. Use sample_mcmc, more proposals, or a narrower proposal."
        )
    idx = torch.multinomial(w.float(), n, replacement=True, generator=generator)
    return SamplingResult(theta[idx], "importance", ess=ess, extra={"proposals": k, "log_weights": log_w})
