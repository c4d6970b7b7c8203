r"""Vectorised MCMC: many adaptive random-walk Metropolis chains advanced in one tensor step.

All ``C`` chains move at once, so one call of the log posterior evaluates ``C`` points (for a
ratio estimator: ``C × N`` events in one batch). The proposal is Gaussian with the covariance of
the current chain ensemble scaled by :math:`2.38^2/P` (Haario et al. 2001; Gelman, Roberts &
Gilks 1996), its scale tuned towards 30 % acceptance during warm-up and then frozen. Chains
start from sampling-importance-resampling of prior draws. Convergence is reported by the split
:math:`\hat R` (Vehtari et al., arXiv:1903.08008). Every run is bounded in steps and in time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..exceptions import ConfigError, SamplingError
from .samplers import register_sampler

__all__ = ["SamplingResult", "sample_mcmc", "split_rhat", "draw_from"]


@dataclass(frozen=True)
class SamplingResult:
    """Posterior samples with their quality figures.

    Attributes:
        samples: ``(n, P)`` draws.
        method: ``"mcmc"`` or ``"importance"``.
        acceptance: Mean Metropolis acceptance rate (MCMC).
        rhat: Split :math:`\\hat R` per parameter (MCMC), ``(P,)``; values > 1.05 signal trouble.
        ess: Effective sample size of the importance weights (importance sampling).
    """

    samples: Tensor
    method: str
    acceptance: float = float("nan")
    rhat: Tensor | None = None
    ess: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def draw_from(distribution: Any, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` draws ``(n, P)`` from a prior/proposal, reproducibly even if it takes no generator."""
    try:
        return torch.as_tensor(distribution.sample((n,), generator=generator))
    except TypeError:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return torch.as_tensor(distribution.sample((n,)))


def split_rhat(chains: Tensor) -> Tensor:
    r"""Split-:math:`\hat R` of ``chains (T, C, P)`` (T steps of C chains), ``(P,)``."""
    t = chains.shape[0] // 2
    if t < 2:
        return torch.full((chains.shape[-1],), math.nan, dtype=torch.float64)
    halves = torch.cat([chains[:t], chains[t:2 * t]], dim=1).double()  # (t, 2C, P)
    means = halves.mean(0)
    w = halves.var(0).mean(0)
    b = t * means.var(0)
    var = (t - 1) / t * w + b / t
    return torch.sqrt(var / w.clamp_min(1e-300))


def _initial_points(log_posterior: Callable[[Tensor], Tensor], prior: Any, chains: int, candidates: int,
                    generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    theta = draw_from(prior, candidates, generator).to(torch.get_default_dtype())
    lp = log_posterior(theta)
    if not bool(torch.isfinite(lp).any()):
        raise SamplingError(
            f"sample_mcmc: none of {candidates} prior draws has a finite posterior density; the likelihood vanishes "
            "on the prior. Check the observation against the model, or pass `init` points."
        )
    weights = torch.softmax(torch.nan_to_num(lp, nan=-math.inf), 0)
    idx = torch.multinomial(weights.float(), chains, replacement=True, generator=generator)
    return theta[idx], lp[idx]


@register_sampler("mcmc")
def sample_mcmc(
    log_posterior: Callable[[Tensor], Tensor],
    n: int,
    *,
    prior: Any = None,
    init: Tensor | None = None,
    chains: int = 64,
    warmup: int = 300,
    thin: int = 2,
    init_candidates: int | None = None,
    generator: torch.Generator | None = None,
    max_steps: int = 100_000,
    max_seconds: float = 600.0,
    progress: bool = True,
) -> SamplingResult:
    r"""Draw ``n`` samples from :math:`\exp(\text{log\_posterior})` with ``chains`` parallel chains.

    Args:
        log_posterior: ``theta (C, P) -> (C,)``, :math:`-\infty` outside the support
            (e.g. :class:`~sbilab.inference.potential.LogPosterior`).
        n: Number of samples to return (pooled over chains).
        prior: Distribution to draw starting points from (default: ``log_posterior.prior``).
        init: Starting points ``(chains, P)`` instead of prior draws.
        warmup: Adaptation steps (discarded).
        thin: Keep every ``thin``-th step.
        max_steps: Bound on warm-up plus sampling steps.
        max_seconds: Bound on the wall time.

    Returns:
        :class:`SamplingResult` with ``(n, P)`` samples, acceptance rate and split R-hat.

    Raises:
        ConfigError: ``n``, ``chains``, ``thin`` or the step budget are invalid.
        SamplingError: no finite starting point, or the time bound is exceeded.

    Example:
        >>> from sbilab.inference.potential import LogPosterior
        >>> from sbilab.simulators import ParameterSpace
        >>> space = ParameterSpace(("mu",), low=(-10.0,), high=(10.0,))
        >>> post = LogPosterior(lambda t: -0.5 * ((t[:, 0] - 1.0) / 0.5) ** 2, space)
        >>> res = sample_mcmc(post, 4000, generator=torch.Generator().manual_seed(0), progress=False)
        >>> round(res.samples.mean().item(), 1), round(res.samples.std().item(), 1)
        (1.0, 0.5)
    """
    if not isinstance(n, int) or n < 1 or chains < 2 or thin < 1 or warmup < 0:
        raise ConfigError(f"sample_mcmc: need n >= 1, chains >= 2, thin >= 1, warmup >= 0; got n={n}, chains={chains}, thin={thin}, warmup={warmup}.")
    steps = math.ceil(n / chains) * thin
    if warmup + steps > max_steps:
        raise ConfigError(f"sample_mcmc: {warmup} warm-up + {steps} sampling steps exceed max_steps={max_steps}; use more chains or raise max_steps.")
    prior = getattr(log_posterior, "prior", None) if prior is None else prior
    if init is None:
        if prior is None:
            raise ConfigError("sample_mcmc: give `init` points or a `prior` to draw them from.")
        theta, lp = _initial_points(log_posterior, prior, chains, init_candidates or 20 * chains, generator)
    else:
        theta = torch.as_tensor(init, dtype=torch.get_default_dtype()).clone()
        if theta.dim() != 2:
            raise ConfigError(f"sample_mcmc: init must be (chains, P), got {tuple(theta.shape)}.")
        chains = theta.shape[0]
        lp = log_posterior(theta)
        if not bool(torch.isfinite(lp).all()):
            raise SamplingError("sample_mcmc: some `init` points have zero posterior density (outside the support?).")
    p = theta.shape[1]
    dtype = theta.dtype
    log_scale = math.log(2.38 / math.sqrt(p))
    chol = _proposal_cholesky(theta)
    kept, accepted, tried = [], 0.0, 0
    start = time.monotonic()
    bar = tqdm(total=warmup + steps, desc="MCMC", disable=not progress, leave=False)
    for step in range(warmup + steps):
        if time.monotonic() - start > max_seconds:
            bar.close()
            raise SamplingError(
                f"sample_mcmc: exceeded max_seconds={max_seconds} after {step} of {warmup + steps} steps; "
                "use fewer samples, more chains, or importance sampling."
            )
        eps = torch.randn(chains, p, generator=generator, dtype=dtype)
        proposal = theta + math.exp(log_scale) * eps @ chol.T
        lp_new = log_posterior(proposal)
        log_u = torch.log(torch.rand(chains, generator=generator, dtype=torch.float64))
        accept = log_u < (lp_new - lp)
        theta = torch.where(accept[:, None], proposal, theta)
        lp = torch.where(accept, lp_new, lp)
        rate = accept.double().mean().item()
        if step < warmup:
            log_scale += (rate - 0.3) / math.sqrt(step + 1.0) * 2.0
            if step % 10 == 9:
                chol = _proposal_cholesky(theta)
        else:
            accepted += rate
            tried += 1
            if (step - warmup) % thin == thin - 1:
                kept.append(theta.clone())
        bar.update()
    bar.close()
    chain_samples = torch.stack(kept)  # (T, C, P)
    samples = chain_samples.reshape(-1, p)
    perm = torch.randperm(samples.shape[0], generator=generator)[:n]
    return SamplingResult(samples[perm], "mcmc", acceptance=accepted / max(tried, 1), rhat=split_rhat(chain_samples),
                          extra={"chains": chains, "steps": warmup + steps})


def _proposal_cholesky(theta: Tensor) -> Tensor:
    """Cholesky factor of the chain ensemble's covariance (regularised), ``(P, P)``."""
    p = theta.shape[1]
    x = theta.double()
    cov = torch.cov(x.T).reshape(p, p) if x.shape[0] > 1 else torch.eye(p, dtype=torch.float64)
    scale = cov.diagonal().mean().clamp_min(1e-12)
    cov = cov + 1e-6 * scale * torch.eye(p, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        chol = torch.diag(cov.diagonal().clamp_min(1e-12).sqrt())
    return chol.to(theta.dtype)
