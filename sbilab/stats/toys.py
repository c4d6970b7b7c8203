r"""Vectorised maximum likelihood over many toy datasets at once.

Coverage studies and Neyman constructions need the profile likelihood ratio of thousands of
toy experiments. Instead of one Minuit fit per toy, :func:`fit_toys` runs a damped Newton
iteration on all toys together: one batched estimator call evaluates
:math:`\ell_t(\theta_t) = \sum_i \log\hat r(x_{ti}|\theta_t)` for every toy ``t``, autograd gives
each toy's gradient and Hessian (the toys are independent, so derivatives of the sum are
per-toy derivatives), and a per-toy backtracking line search keeps every step an ascent step
inside the parameter bounds.

Precision: the estimator runs in its own dtype (float32 networks stay float32, which keeps
thousands of toys affordable); per-toy sums and Newton steps are accumulated in float64.
Use :class:`~sbilab.stats.unbinned.UnbinnedLikelihood` (float64 throughout, HESSE/MINOS) for
the fit to the observed data.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from ..exceptions import FitError, ShapeMismatchError
from ..simulators.space import ParameterSpace

__all__ = ["toy_log_likelihood", "fit_toys", "profile_likelihood_ratio"]

LogRatio = Callable[[Tensor, Tensor], Tensor]


def _dtype_of(log_ratio: LogRatio, fallback: torch.dtype) -> torch.dtype:
    params = list(getattr(log_ratio, "parameters", lambda: [])())
    return params[0].dtype if params else fallback


def toy_log_likelihood(log_ratio: LogRatio, x: Tensor, theta: Tensor, *, chunk_events: int = 262_144) -> Tensor:
    r""":math:`\sum_i \log\hat r(x_{ti}|\theta_t)` per toy, float64, ``(T,)``; differentiable in ``theta``.

    Args:
        log_ratio: ``log_ratio(x: (M, D), theta: (M, P)) -> (M,)``.
        x: Toy datasets, ``(T, N, D)``.
        theta: One parameter point per toy, ``(T, P)``.
        chunk_events: Rows per estimator call.
    """
    if x.dim() != 3 or theta.dim() != 2 or theta.shape[0] != x.shape[0]:
        raise ShapeMismatchError(f"x must be (T, N, D) and theta (T, P) with the same T; got {tuple(x.shape)} and {tuple(theta.shape)}.")
    t, n, d = x.shape
    dtype = _dtype_of(log_ratio, theta.dtype)
    toys_per_chunk = max(1, chunk_events // max(n, 1))
    out = []
    for s in range(0, t, toys_per_chunk):
        xs = x[s : s + toys_per_chunk].to(dtype)
        th = theta[s : s + toys_per_chunk]
        k = xs.shape[0]
        values = log_ratio(xs.reshape(k * n, d), th.to(dtype).repeat_interleave(n, dim=0))
        out.append(values.to(torch.float64).reshape(k, n).sum(1))
    return torch.cat(out)


def _value_grad_hess(log_ratio: LogRatio, x: Tensor, theta: Tensor, free: Tensor, chunk_events: int) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        th = theta.detach().clone().requires_grad_(True)
        ll = toy_log_likelihood(log_ratio, x, th, chunk_events=chunk_events)
        (g,) = torch.autograd.grad(ll.sum(), th, create_graph=True)
        rows = []
        for p in range(theta.shape[1]):
            if bool(free[p]):
                (h,) = torch.autograd.grad(g[:, p].sum(), th, retain_graph=True)
            else:
                h = torch.zeros_like(th)
            rows.append(h)
    hess = torch.stack(rows, dim=1).detach()
    return ll.detach(), g.detach(), hess


def _rows(value: float | Tensor, part: slice, per_toy_dim: int) -> float | Tensor:
    """The rows ``part`` of a per-toy value (``per_toy_dim`` dimensions); shared values pass unchanged."""
    value = torch.as_tensor(value, dtype=torch.float64)
    return value[part] if value.dim() == per_toy_dim else value


def fit_toys(
    log_ratio: LogRatio,
    x: Tensor,
    space: ParameterSpace,
    *,
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
        log_ratio: ``log_ratio(x: (M, D), theta: (M, P)) -> (M,)``, differentiable in theta.
        x: Toy datasets, ``(T, N, D)``.
        space: Parameter space; its bounds confine every step.
        fixed: ``{name: value}`` with a scalar or a per-toy ``(T,)`` tensor.
        start: ``(T, P)`` or ``(P,)`` starting point (default: the reference).
        iterations: Maximum Newton iterations.
        tolerance: Convergence when the predicted gain :math:`-\tfrac12 g^T H^{-1} g` in
            :math:`\log L` is below this for a toy.

        block_events: Toys are fitted in blocks of at most this many events (at least one toy
            per block): the Hessian needs the autograd graph of every event of a block at
            once, so this bounds the memory (over 4 GB per million events for a (100, 100)
            MLP), while ``chunk_events`` only bounds the rows per estimator call.
        return_covariance: Also return the per-toy covariance :math:`(-\nabla^2\ell)^{-1}`,
            ``(T, P, P)`` (zero rows/columns for fixed parameters; HESSE-like errors).

    Returns:
        ``(theta_hat (T, P), twice_nll (T,), converged (T,) bool)`` with
        ``twice_nll`` :math:`= -2\sum_i\log\hat r` at the fitted point (plus the covariance
        if asked for).

    Raises:
        FitError: unknown names in ``fixed``.
    """
    t, p = x.shape[0], space.dim
    per_block = max(1, block_events // max(x.shape[1], 1))
    if t > per_block:
        blocks = []
        for s in range(0, t, per_block):
            part = slice(s, s + per_block)
            start_b = None if start is None else _rows(start, part, 2)
            fixed_b = {name: _rows(value, part, 1) for name, value in (fixed or {}).items()}
            blocks.append(fit_toys(log_ratio, x[part], space, fixed=fixed_b, start=start_b, iterations=iterations, tolerance=tolerance,
                                   chunk_events=chunk_events, block_events=block_events, return_covariance=return_covariance))
        return tuple(torch.cat(parts) for parts in zip(*blocks))
    low, high = space.low.to(torch.float64), space.high.to(torch.float64)
    theta = space.reference.to(torch.float64).expand(t, p).clone() if start is None else torch.as_tensor(start, dtype=torch.float64).expand(t, p).clone()
    free = torch.ones(p, dtype=torch.bool)
    for name, value in (fixed or {}).items():
        if name not in space.names:
            raise FitError(f"fixed names unknown parameter {name!r}; the parameters are {list(space.names)}.")
        i = space.names.index(name)
        theta[:, i] = torch.as_tensor(value, dtype=torch.float64).expand(t)
        free[i] = False
    if not bool(free.any()):
        ll = toy_log_likelihood(log_ratio, x, theta, chunk_events=chunk_events).detach()
        out = (theta, -2 * ll, torch.ones(t, dtype=torch.bool))
        return out + (torch.zeros(t, p, p, dtype=torch.float64),) if return_covariance else out
    theta = torch.minimum(torch.maximum(theta, low), high)
    eye = torch.eye(p, dtype=torch.float64)
    mask = free.to(torch.float64)
    converged = torch.zeros(t, dtype=torch.bool)
    ll, g, h = _value_grad_hess(log_ratio, x, theta, free, chunk_events)
    for _ in range(iterations):
        # active set: a parameter at a bound whose gradient points outwards is held there
        outward = ((theta <= low) & (g < 0)) | ((theta >= high) & (g > 0))
        m = mask[None, :] * (~outward).to(torch.float64)  # (T, P)
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
        xa, theta_a, step_a, ll_a = x[act], theta[act], step[act], ll[act]
        alpha = torch.ones(len(act), dtype=torch.float64)
        accepted = torch.zeros(len(act), dtype=torch.bool)
        new_theta = theta_a.clone()
        for _ in range(12):  # backtracking, per toy
            trial = torch.minimum(torch.maximum(theta_a + alpha[:, None] * step_a, low), high)
            with torch.no_grad():
                ll_trial = toy_log_likelihood(log_ratio, xa, trial, chunk_events=chunk_events)
            ok = (~accepted) & (ll_trial >= ll_a - 1e-12)
            new_theta[ok] = trial[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            alpha = torch.where(accepted, alpha, alpha / 2)
        theta[act] = new_theta
        ll[act], g[act], h[act] = _value_grad_hess(log_ratio, xa, new_theta, free, chunk_events)
    if not return_covariance:
        return theta, -2 * ll, converged
    neg_h = -(h * mask[:, None] * mask[None, :]) + torch.diag(1 - mask)
    cov = torch.linalg.inv(neg_h) * mask[:, None] * mask[None, :]
    return theta, -2 * ll, converged, cov


def profile_likelihood_ratio(
    log_ratio: LogRatio,
    x: Tensor,
    space: ParameterSpace,
    theta: Tensor,
    *,
    parameter: str | None = None,
    best: tuple[Tensor, Tensor] | None = None,
    **options,
) -> Tensor:
    r"""Per-toy :math:`t = -2\log\lambda`: at the full point ``theta`` (joint) or profiled over the others.

    Args:
        x: Toy datasets, ``(T, N, D)``.
        theta: Tested point, ``(P,)`` or ``(T, P)``.
        parameter: If given, only this parameter is fixed to its value in ``theta`` and the
            others are re-minimised (profile likelihood ratio of one parameter).
        best: Reuse a global fit ``(theta_hat, twice_nll)`` from :func:`fit_toys`.
        options: Passed to :func:`fit_toys`.

    Returns:
        ``(T,)`` float64, clipped at 0.
    """
    t = x.shape[0]
    theta = torch.as_tensor(theta, dtype=torch.float64).expand(t, space.dim)
    start = options.pop("start", None)
    if best is None:
        theta_hat, nll_hat, _ = fit_toys(log_ratio, x, space, start=start, **options)
    else:
        theta_hat, nll_hat = best
    if parameter is None:
        fixed = {name: theta[:, i] for i, name in enumerate(space.names)}
    else:
        if parameter not in space.names:
            raise FitError(f"unknown parameter {parameter!r}; the parameters are {list(space.names)}.")
        fixed = {parameter: theta[:, space.names.index(parameter)]}
    _, nll_fixed, _ = fit_toys(log_ratio, x, space, fixed=fixed, start=theta_hat, **options)
    return torch.clamp(nll_fixed - nll_hat, min=0.0)
