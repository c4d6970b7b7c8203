r"""Unnormalised log posteriors :math:`\log p(\theta) + \log L(X|\theta)` for samplers.

For a dataset :math:`X = \{x_i\}_{i=1}^N` of independent events the log-likelihood is a sum over
events. A ratio estimator gives it up to a θ-independent constant,
:math:`\log p(X|\theta) = \sum_i \log\hat r(x_i|\theta) + \sum_i \log p(x_i|\theta_\mathrm{ref})`,
which the posterior does not need; a likelihood estimator gives it directly. So every learned
likelihood (ratio) answers Bayesian questions as well as frequentist ones.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from ..simulators.space import ParameterSpace

__all__ = ["LogPosterior", "BoxUniform"]


class BoxUniform:
    """Uniform prior over the box of a :class:`ParameterSpace`, with a generator-aware ``sample``.

    Example:
        >>> space = ParameterSpace(("a",), low=(0.0,), high=(2.0,))
        >>> BoxUniform(space).log_prob(torch.tensor([[1.0], [3.0]])).tolist()
        [-0.6931471805599453, -inf]
    """

    def __init__(self, space: ParameterSpace) -> None:
        if not bool(torch.isfinite(space.low).all() & torch.isfinite(space.high).all()):
            raise ConfigError("BoxUniform: the space has infinite bounds; pass a proper prior instead.")
        self.space = space
        self._log_volume = float(torch.log(space.high - space.low).sum())

    def sample(self, sample_shape: tuple[int, ...] = (), *, generator: torch.Generator | None = None) -> Tensor:
        n = math.prod(sample_shape) if sample_shape else 1
        return self.space.sample(n, generator=generator).reshape(*sample_shape, self.space.dim)

    def log_prob(self, theta: Tensor) -> Tensor:
        inside = self.space.contains(theta)
        return torch.where(inside, torch.full(inside.shape, -self._log_volume, dtype=torch.float64), torch.full(inside.shape, -math.inf, dtype=torch.float64))


def _prior_log_prob(prior: Any, theta: Tensor) -> Tensor:
    lp = torch.as_tensor(prior.log_prob(theta))
    if lp.shape != theta.shape[:-1]:  # e.g. an un-reinterpreted product of 1-d distributions
        lp = lp.reshape(*theta.shape[:-1], -1).sum(-1)
    return lp


class LogPosterior:
    r"""Callable :math:`\theta \mapsto \log p(\theta) + \log L(\theta)` (up to a constant), ``(C, P) -> (C,)``.

    Points outside the parameter space (or with zero prior density) get :math:`-\infty`.

    Args:
        log_likelihood: ``theta (C, P) -> (C,)``, the log-likelihood of the whole observation.
        space: Parameter space of the likelihood.
        prior: Any object with ``log_prob(theta (C, P))`` (torch or sbi prior); default: uniform
            over the (finite) box of ``space``.

    Example:
        >>> space = ParameterSpace(("mu",), low=(-5.0,), high=(5.0,))
        >>> post = LogPosterior(lambda t: -0.5 * t[:, 0] ** 2, space)
        >>> post(torch.tensor([[0.0], [9.0]]))[1].item()
        -inf
    """

    def __init__(self, log_likelihood: Callable[[Tensor], Tensor], space: ParameterSpace, *, prior: Any = None) -> None:
        self.log_likelihood = log_likelihood
        self.space = space
        self.prior = BoxUniform(space) if prior is None else prior

    @classmethod
    def from_estimator(cls, estimator: Any, x: Any, *, prior: Any = None, mask: Any = None, chunk: int = 2**20) -> "LogPosterior":
        r"""Log posterior from a :class:`RatioEstimator` or :class:`LikelihoodEstimator` and observed events.

        Args:
            estimator: Module with ``forward(x, theta) -> (N,)`` (log r̂ or log p̂) and a ``space``.
            x: Observed events ``(N, D)`` (or ``(N, M, F)`` with ``mask``) of ONE dataset;
                their log-likelihoods are summed.
            chunk: Largest number of (event, θ) pairs evaluated at once.

        Raises:
            ShapeMismatchError: ``x`` does not have the estimator's input shape.
            InvalidEventsError: ``x`` has NaN/inf entries.
        """
        space = estimator.space
        ref = next(iter(estimator.buffers()), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else None
        x = torch.as_tensor(x).to(dtype=dtype, device=device)
        features = getattr(estimator, "x_features", None)
        if x.dim() == 1 and features == 1:
            x = x.reshape(-1, 1)
        if x.dim() not in (2, 3) or (features is not None and x.shape[-1] != features):
            raise ShapeMismatchError(
                f"LogPosterior.from_estimator: x has shape {tuple(x.shape)}; the estimator was trained on events with "
                f"{features} observable(s): pass one dataset (N, {features})."
            )
        if not bool(torch.isfinite(x if mask is None else x[torch.as_tensor(mask, device=x.device).bool()]).all()):
            raise InvalidEventsError("LogPosterior.from_estimator: the observed events x contain NaN or inf values.")
        m = None if mask is None else torch.as_tensor(mask, device=x.device).bool()
        n = x.shape[0]

        @torch.no_grad()
        def log_likelihood(theta: Tensor) -> Tensor:
            theta = theta.to(dtype=dtype, device=device)
            c = theta.shape[0]
            out = torch.empty(c, dtype=dtype, device=device)
            step = max(1, chunk // n)
            for start in range(0, c, step):
                t = theta[start:start + step]
                k = t.shape[0]
                xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
                ts = t.unsqueeze(1).expand(k, n, t.shape[-1]).reshape(k * n, -1)
                if m is None:
                    values = estimator(xs, ts)
                else:  # padded sets: the mask travels with them, by keyword as for every log-ratio
                    values = estimator(xs, ts, mask=m.unsqueeze(0).expand(k, *m.shape).reshape(k * n, -1))
                out[start:start + k] = values.reshape(k, n).sum(1)
            return out

        return cls(log_likelihood, space, prior=prior)

    def __call__(self, theta: Tensor) -> Tensor:
        theta = torch.as_tensor(theta)
        if theta.dim() != 2 or theta.shape[1] != self.space.dim:
            raise ShapeMismatchError(f"LogPosterior: theta has shape {tuple(theta.shape)}; expected (C, {self.space.dim}).")
        lp = _prior_log_prob(self.prior, theta).to(torch.float64)
        inside = self.space.contains(theta) & torch.isfinite(lp)
        out = torch.full((theta.shape[0],), -math.inf, dtype=torch.float64, device=theta.device)
        if bool(inside.any()):
            ll = self.log_likelihood(theta[inside]).to(torch.float64)
            out[inside] = torch.nan_to_num(lp[inside] + ll, nan=-math.inf)
        return out
