r"""Interoperability with sbi (Tejero-Cantero et al., JOSS 2020; Boelts et al., arXiv:2411.17337).

* sbi priors (``BoxUniform`` or any torch distribution) and sbi-style simulators
  (``theta (N, P) -> x (N, D)``) become sbilab training :class:`~sbilab.events.Events` via
  :func:`simulate_for_sbilab` and :meth:`ParameterSpace.from_prior`.
* :class:`SbiPosterior` exposes an sbilab posterior (a :class:`PosteriorEstimator` or an ensemble's
  :class:`PosteriorMixture`, or samples from MCMC/importance sampling through a
  :class:`LogPosterior`) through the methods of sbi's posterior interface (``sample``,
  ``sample_batched``, ``log_prob``, ``set_default_x``), so sbi's diagnostics (``run_sbc``,
  ``run_tarp``, ``check_sbc``, ...) run on it unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, SamplingError, ShapeMismatchError
from ..simulators.space import ParameterSpace
from .mcmc import draw_from

__all__ = ["simulate_for_sbilab", "SbiPosterior"]


def simulate_for_sbilab(simulator: Callable[[Tensor], Any], prior: Any, n: int, *, names: Sequence[str] | None = None,
                        generator: torch.Generator | None = None, batch_size: int = 10_000) -> tuple[Events, ParameterSpace]:
    """Simulate ``n`` (θ, x) pairs with an sbi-style simulator and prior.

    Args:
        simulator: ``theta (B, P) -> x (B, D)`` (tensor or array), as used with sbi.
        prior: sbi/torch prior with ``sample((n,))``.
        names: Parameter names (default ``theta_0, theta_1, ...``).
        batch_size: Simulator calls take at most this many rows.

    Returns:
        ``(events, space)``: Events with ``x (n, D)``, ``theta (n, P)``, and the parameter space
        built from the prior's support. Rows whose ``x`` is NaN/inf are dropped (as sbi does).

    Example:
        >>> from sbi.utils import BoxUniform
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> ev, space = simulate_for_sbilab(lambda t: t + 0.1, prior, 5, generator=torch.Generator().manual_seed(0))
        >>> ev.x.shape, space.names
        (torch.Size([5, 2]), ('theta_0', 'theta_1'))
    """
    theta = draw_from(prior, n, generator).to(torch.get_default_dtype())
    theta = theta.reshape(n, -1)
    names = tuple(names) if names is not None else tuple(f"theta_{i}" for i in range(theta.shape[1]))
    if len(names) != theta.shape[1]:
        raise ConfigError(f"simulate_for_sbilab: {len(names)} names for {theta.shape[1]} parameters.")
    xs = [torch.as_tensor(simulator(theta[i:i + batch_size])).to(theta.dtype).reshape(min(batch_size, n - i), -1)
          for i in range(0, n, batch_size)]
    x = torch.cat(xs)
    ok = torch.isfinite(x).all(-1)
    space = ParameterSpace.from_prior(names, prior)
    return Events(x=x[ok], theta=theta[ok]), space


class SbiPosterior:
    """sbi-style posterior around an sbilab posterior.

    Args:
        posterior: A :class:`~sbilab.estimators.posterior.PosteriorEstimator` or
            :class:`~sbilab.estimators.posterior.PosteriorMixture` (amortised: any ``x``), or a function ``x -> LogPosterior`` with a ``sampler(log_posterior, n)`` for
            likelihood(-ratio) based posteriors.
        prior: Optional prior (kept for sbi code that reads ``posterior.prior``).
        generator: Random source of the samples.

    Example:
        >>> from sbilab.estimators.posterior import PosteriorEstimator
        >>> space = ParameterSpace(("a", "b"), low=(0.0, 0.0), high=(1.0, 1.0))
        >>> post = SbiPosterior(PosteriorEstimator(space, 3, transforms=1, hidden=(8,)))
        >>> post.sample((7,), x=torch.zeros(1, 3)).shape, post.sample_batched((7,), x=torch.zeros(4, 3)).shape
        (torch.Size([7, 2]), torch.Size([7, 4, 2]))
    """

    def __init__(self, posterior: Any, *, prior: Any = None, sampler: Callable[..., Any] | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.posterior = posterior
        self.prior = prior
        self.sampler = sampler
        self.generator = generator
        self.default_x: Tensor | None = None
        self._amortised = hasattr(posterior, "sample") and hasattr(posterior, "log_prob")

    def set_default_x(self, x: Tensor) -> "SbiPosterior":
        self.default_x = torch.as_tensor(x)
        return self

    def _x(self, x: Tensor | None) -> Tensor:
        x = self.default_x if x is None else torch.as_tensor(x)
        if x is None:
            raise ShapeMismatchError("SbiPosterior: no x given and no default x set (use set_default_x).")
        return x

    @staticmethod
    def _n(sample_shape: Any) -> int:
        shape = torch.Size(sample_shape if isinstance(sample_shape, (tuple, list, torch.Size)) else (sample_shape,))
        return int(shape.numel())

    def sample(self, sample_shape: Any = (), x: Tensor | None = None, show_progress_bars: bool = False, **_: Any) -> Tensor:
        """``(*sample_shape, P)`` samples for one observation ``x`` (``(1, D)`` or ``(D,)``)."""
        x = self._x(x)
        n = max(1, self._n(sample_shape))
        if self._amortised:
            xb = x if x.dim() == (3 if self.posterior.is_set else 2) else x.unsqueeze(0)
            if xb.shape[0] != 1:
                raise ShapeMismatchError(f"SbiPosterior.sample: x has {xb.shape[0]} observations; use sample_batched.")
            out = self.posterior.sample(n, xb, generator=self.generator)[:, 0]
        else:
            if self.sampler is None:
                raise ConfigError("SbiPosterior: a likelihood-based posterior needs `sampler(log_posterior, n)`.")
            out = self.sampler(self.posterior(x), n).samples
        return out.reshape(*torch.Size(sample_shape if isinstance(sample_shape, (tuple, list, torch.Size)) else (sample_shape,)), -1)

    def sample_batched(self, sample_shape: Any, x: Tensor, show_progress_bars: bool = False, **_: Any) -> Tensor:
        """``(*sample_shape, B, P)`` samples for ``B`` observations at once."""
        if not self._amortised:
            raise SamplingError(
                "SbiPosterior.sample_batched: only amortised posteriors (a PosteriorEstimator) sample many "
                "observations at once; for a ratio or likelihood estimator call sample(shape, x) per observation."
            )
        n = max(1, self._n(sample_shape))
        out = self.posterior.sample(n, torch.as_tensor(x), generator=self.generator)
        return out.reshape(*torch.Size(sample_shape if isinstance(sample_shape, (tuple, list, torch.Size)) else (sample_shape,)), *out.shape[1:])

    def log_prob(self, theta: Tensor, x: Tensor | None = None, **_: Any) -> Tensor:
        """``log q(θ|x)`` for ``theta (N, P)`` and one observation; ``-inf`` outside the support (as in sbi)."""
        x = self._x(x)
        theta = torch.as_tensor(theta)
        if not self._amortised:
            return self.posterior(x)(theta.reshape(-1, theta.shape[-1])).reshape(theta.shape[:-1])
        est = self.posterior
        xb = x if x.dim() == (3 if est.is_set else 2) else x.unsqueeze(0)
        flat = theta.reshape(-1, theta.shape[-1]).to(est.low)
        inside = est.space.contains(flat)
        out = torch.full((flat.shape[0],), float("-inf"), dtype=flat.dtype)
        if bool(inside.any()):
            with torch.no_grad():
                out[inside] = est.log_prob(flat[inside].unsqueeze(1), xb.expand(1, *xb.shape[1:]))[:, 0]
        return out.reshape(theta.shape[:-1])

    def log_prob_batched(self, theta: Tensor, x: Tensor, **_: Any) -> Tensor:
        """``theta (S, B, P)``, ``x (B, ...)`` -> ``(S, B)``."""
        with torch.no_grad():
            return self.posterior.log_prob(theta, x)
