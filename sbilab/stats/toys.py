r"""Vectorised maximum likelihood over many toy datasets at once.

Coverage studies and Neyman constructions need the profile likelihood ratio of thousands of
toy experiments. Instead of one Minuit fit per toy, :func:`fit_toys` runs a damped Newton
iteration on all toys together: one batched estimator call evaluates
:math:`\ell_t(\theta_t) = \sum_i \log\hat r(x_{ti}|\theta_t)` for every toy ``t``, autograd gives
each toy's gradient and Hessian (the toys are independent, so derivatives of the sum are
per-toy derivatives), and a per-toy backtracking line search keeps every step an ascent step
inside the parameter bounds.

The likelihood is an :class:`~sbilab.stats.model.UnbinnedModel` — the same object
:class:`~sbilab.stats.UnbinnedLikelihood` fits to the observed data, with its yield term,
Gaussian constraints, event weights and set masks — or a bare log-ratio callable (then the model
is the log-ratio alone). Toys of different sizes (e.g. Poisson-distributed counts in an extended
fit) are padded to a common ``N`` with zero-weight events.

Precision: the estimator runs in its own dtype (float32 networks stay float32, which keeps
thousands of toys affordable); per-toy sums and Newton steps are accumulated in float64.
Use :class:`~sbilab.stats.unbinned.UnbinnedLikelihood` (float64 throughout, HESSE/MINOS) for
the fit to the observed data.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..exceptions import FitError
from ..simulators.space import ParameterSpace
from .model import LogRatio, UnbinnedModel, as_model, check_data, summed_log_ratio

__all__ = ["toy_log_likelihood", "fit_toys", "profile_likelihood_ratio"]


def toy_log_likelihood(log_ratio: LogRatio | UnbinnedModel, x: Tensor, theta: Tensor, *, weights: Tensor | None = None,
                       mask: Tensor | None = None, chunk_events: int = 262_144) -> Tensor:
    r""":math:`\log L_t(\theta_t)` per toy (up to a θ-independent constant), float64, ``(T,)``; differentiable in ``theta``.

    For a bare log-ratio this is :math:`\sum_i w_i\log\hat r(x_{ti}|\theta_t)`; for a model,
    :math:`-\tfrac12` its :meth:`~sbilab.stats.model.UnbinnedModel.twice_nll` (yield and
    constraint terms included).

    Args:
        log_ratio: An :class:`UnbinnedModel`, or ``log_ratio(x: (M, D), theta: (M, P)) -> (M,)``.
        x: Toy datasets, ``(T, N, D)`` or padded sets ``(T, N, M, F)``.
        theta: One parameter point per toy, ``(T, P)``.
        weights: Event weights, ``(T, N)``.
        mask: Set masks, ``(T, N, M)`` bool (sets only).
        chunk_events: Rows per estimator call.
    """
    if isinstance(log_ratio, UnbinnedModel):
        return -0.5 * log_ratio.twice_nll(theta, x, weights=weights, mask=mask, chunk_events=chunk_events)
    check_data(theta, x, weights, mask)
    return summed_log_ratio(log_ratio, theta, x, weights=weights, mask=mask, chunk_events=chunk_events)


def _loglik_grad_hess(model: UnbinnedModel, x: Tensor, theta: Tensor, weights: Tensor | None, mask: Tensor | None,
                      free: Tensor, chunk_events: int) -> tuple[Tensor, Tensor, Tensor]:
    """log L, its gradient and Hessian per toy (from the model's -2 log L derivatives)."""
    value, grad, hess = model.derivatives(theta, x, weights=weights, mask=mask, free=free, chunk_events=chunk_events)
    return -0.5 * value, -0.5 * grad, -0.5 * hess


def _rows(value: float | Tensor, part: slice | Tensor, per_toy_dim: int) -> float | Tensor:
    """The rows ``part`` of a per-toy value (``per_toy_dim`` dimensions); shared values pass unchanged."""
    value = torch.as_tensor(value, dtype=torch.float64)
    return value[part] if value.dim() == per_toy_dim else value


def _take(value: Tensor | None, part: slice | Tensor) -> Tensor | None:
    return None if value is None else value[part]


def fit_toys(
    log_ratio: LogRatio | UnbinnedModel,
    x: Tensor,
    space: ParameterSpace | None = None,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    fixed: Mapping[str, float | Tensor] | None = None,
    start: Tensor | None = None,
    iterations: int = 30,
    tolerance: float = 1e-6,
    chunk_events: int = 262_144,
    block_events: int = 262_144,
    return_covariance: bool = False,
) -> tuple[Tensor, ...]:
    r"""Maximum-likelihood fits of ``T`` toys at once by damped Newton–Raphson.

    Args:
        log_ratio: An :class:`~sbilab.stats.model.UnbinnedModel` (log-ratio, yield,
            constraints, limits), or ``log_ratio(x: (M, D), theta: (M, P)) -> (M,)``
            differentiable in theta (then ``space`` is required).
        x: Toy datasets, ``(T, N, D)`` or padded sets ``(T, N, M, F)``.
        space: Parameter space of a bare log-ratio (a model has its own).
        weights: Event weights, ``(T, N)`` (zero for padding events of smaller toys).
        mask: Set masks, ``(T, N, M)`` bool; passed to the log-ratio as ``mask=``.
        fixed: ``{name: value}`` with a scalar or a per-toy ``(T,)`` tensor.
        start: ``(T, P)`` or ``(P,)`` starting point (default: the reference).
        iterations: Maximum Newton iterations.
        tolerance: Convergence when the predicted gain :math:`-\tfrac12 g^T H^{-1} g` in
            :math:`\log L` is below this for a toy (its last Newton step is then taken, so a
            converged fit sits on the minimum to rounding precision).
        chunk_events: Events per estimator call (and per autograd graph).
        block_events: Toys are fitted in blocks of at most this many events (at least one toy
            per block), which bounds the memory of the per-toy Hessians and line searches.
        return_covariance: Also return the per-toy covariance :math:`(-\nabla^2\ell)^{-1}`,
            ``(T, P, P)`` (zero rows/columns for fixed parameters; HESSE-like errors).

    Returns:
        ``(theta_hat (T, P), twice_nll (T,), converged (T,) bool)`` with
        ``twice_nll`` :math:`= -2\log L` at the fitted point (the model's, which for a bare
        log-ratio is :math:`-2\sum_i w_i\log\hat r`), plus the covariance if asked for.

    Raises:
        FitError: unknown names in ``fixed``; model parts given both in the model and here.
    """
    model = as_model(log_ratio, space)
    t, p = x.shape[0], model.dim
    per_block = max(1, block_events // max(x.shape[1], 1))
    if t > per_block:
        blocks = []
        for s in range(0, t, per_block):
            part = slice(s, s + per_block)
            start_b = None if start is None else _rows(start, part, 2)
            fixed_b = {name: _rows(value, part, 1) for name, value in (fixed or {}).items()}
            blocks.append(fit_toys(model, x[part], weights=_take(weights, part), mask=_take(mask, part), fixed=fixed_b,
                                   start=start_b, iterations=iterations, tolerance=tolerance, chunk_events=chunk_events,
                                   block_events=block_events, return_covariance=return_covariance))
        return tuple(torch.cat(parts) for parts in zip(*blocks))
    low, high = model.low.to(torch.float64), model.high.to(torch.float64)
    reference = model.space.reference.to(torch.float64)
    theta = reference.expand(t, p).clone() if start is None else torch.as_tensor(start, dtype=torch.float64).expand(t, p).clone()
    free = torch.ones(p, dtype=torch.bool)
    for name, value in (fixed or {}).items():
        if name not in model.names:
            raise FitError(f"fixed names unknown parameter {name!r}; the parameters are {list(model.names)}.")
        i = model.names.index(name)
        theta[:, i] = torch.as_tensor(value, dtype=torch.float64).expand(t)
        free[i] = False
    if not bool(free.any()):
        with torch.no_grad():
            nll = model.twice_nll(theta, x, weights=weights, mask=mask, chunk_events=chunk_events)
        out = (theta, nll, torch.ones(t, dtype=torch.bool))
        return out + (torch.zeros(t, p, p, dtype=torch.float64),) if return_covariance else out
    theta = torch.minimum(torch.maximum(theta, low), high)
    eye = torch.eye(p, dtype=torch.float64)
    free_f = free.to(torch.float64)
    converged = torch.zeros(t, dtype=torch.bool)
    ll, g, h = _loglik_grad_hess(model, x, theta, weights, mask, free, chunk_events)
    step = torch.zeros_like(theta)
    for _ in range(iterations):
        # active set: a parameter at a bound whose gradient points outwards is held there
        outward = ((theta <= low) & (g < 0)) | ((theta >= high) & (g > 0))
        m = free_f[None, :] * (~outward).to(torch.float64)  # (T, P)
        g = g * m
        neg_h = -(h * m[:, :, None] * m[:, None, :]) + torch.diag_embed(1 - m)  # held directions: identity
        # make -H positive definite: Levenberg-style shift where needed
        evals = torch.linalg.eigvalsh(neg_h)
        shift = torch.clamp(1e-6 * evals.abs().max(dim=1).values - evals.min(dim=1).values, min=0.0)
        step = torch.linalg.solve(neg_h + shift[:, None, None] * eye, g.unsqueeze(-1)).squeeze(-1) * m
        gain = 0.5 * (g * step).sum(1)
        converged = gain < tolerance
        if bool(converged.all()):
            break
        act = torch.nonzero(~converged)[:, 0]  # only toys still moving are re-evaluated
        xa, wa, ma = x[act], _take(weights, act), _take(mask, act)
        theta_a, step_a, ll_a = theta[act], step[act], ll[act]
        alpha = torch.ones(len(act), dtype=torch.float64)
        accepted = torch.zeros(len(act), dtype=torch.bool)
        new_theta = theta_a.clone()
        for _ in range(12):  # backtracking, per toy
            trial = torch.minimum(torch.maximum(theta_a + alpha[:, None] * step_a, low), high)
            with torch.no_grad():
                ll_trial = -0.5 * model.twice_nll(trial, xa, weights=wa, mask=ma, chunk_events=chunk_events)
            ok = (~accepted) & (ll_trial >= ll_a - 1e-12)
            new_theta[ok] = trial[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            alpha = torch.where(accepted, alpha, alpha / 2)
        theta[act] = new_theta
        ll[act], g[act], h[act] = _loglik_grad_hess(model, xa, new_theta, wa, ma, free, chunk_events)
    # converged toys are in the quadratic regime: their last Newton step (computed above, not yet
    # taken) puts them on the minimum to rounding precision, not just within `tolerance`
    last = torch.nonzero(converged & (step != 0).any(1))[:, 0]
    if len(last):
        trial = torch.minimum(torch.maximum(theta[last] + step[last], low), high)
        ll_t, g_t, h_t = _loglik_grad_hess(model, x[last], trial, _take(weights, last), _take(mask, last), free, chunk_events)
        better = ll_t >= ll[last]
        keep = last[better]
        theta[keep], ll[keep], g[keep], h[keep] = trial[better], ll_t[better], g_t[better], h_t[better]
    if not return_covariance:
        return theta, -2 * ll, converged
    neg_h = -(h * free_f[:, None] * free_f[None, :]) + torch.diag(1 - free_f)
    cov = torch.linalg.inv(neg_h) * free_f[:, None] * free_f[None, :]
    return theta, -2 * ll, converged, cov


def profile_likelihood_ratio(
    log_ratio: LogRatio | UnbinnedModel,
    x: Tensor,
    space: ParameterSpace | Tensor | None,
    theta: Tensor | None = None,
    *,
    parameter: str | None = None,
    best: tuple[Tensor, Tensor] | None = None,
    **options,
) -> Tensor:
    r"""Per-toy :math:`t = -2\log\lambda`: at the full point ``theta`` (joint) or profiled over the others.

    Called as ``profile_likelihood_ratio(log_ratio, x, space, theta)`` with a bare log-ratio,
    or ``profile_likelihood_ratio(model, x, theta)`` with an :class:`UnbinnedModel`.

    Args:
        x: Toy datasets, ``(T, N, D)`` or padded sets ``(T, N, M, F)`` (give ``mask=``).
        theta: Tested point, ``(P,)`` or ``(T, P)``.
        parameter: If given, only this parameter is fixed to its value in ``theta`` and the
            others are re-minimised (profile likelihood ratio of one parameter).
        best: Reuse a global fit ``(theta_hat, twice_nll)`` from :func:`fit_toys`.
        options: Passed to :func:`fit_toys` (``weights``, ``mask``, ``chunk_events``, ...).

    Returns:
        ``(T,)`` float64, clipped at 0.
    """
    if theta is None and not isinstance(space, ParameterSpace):
        space, theta = None, space
    model = as_model(log_ratio, space)  # type: ignore[arg-type]
    t = x.shape[0]
    theta = torch.as_tensor(theta, dtype=torch.float64).expand(t, model.dim)
    start = options.pop("start", None)
    if best is None:
        theta_hat, nll_hat, _ = fit_toys(model, x, start=start, **options)
    else:
        theta_hat, nll_hat = best
    if parameter is None:
        fixed = {name: theta[:, i] for i, name in enumerate(model.names)}
    else:
        fixed = {parameter: theta[:, model.index(parameter)]}
    _, nll_fixed, _ = fit_toys(model, x, fixed=fixed, start=theta_hat, **options)
    return torch.clamp(nll_fixed - nll_hat, min=0.0)
