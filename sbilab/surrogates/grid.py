r"""Per-event marginal likelihoods on a truth grid, evaluated once per distinct θ: :func:`grid_log_likelihood`.

For per-event features :math:`F_{ik}` (θ-independent) and grid weights :math:`a_k(\theta) = w_k\,p(z_k\mid\theta)`,

.. math::
    \ell_i(\theta) = \log\sum_k e^{F_{ik}}\,a_k(\theta) - \log\sum_k e^{E_k}\,a_k(\theta).

A batched toy fit (:func:`~sbilab.stats.fit_toys`) calls this with one θ row per event, but the
events of a toy share their θ: evaluating :math:`a(\theta)` per row would cost
:math:`N \times K` transcendental evaluations and their second-order autograd graph at every
Newton step. Instead, per distinct θ :math:`a`, its Jacobian :math:`J` and Hessian :math:`H` are
computed once (by autograd on one copy of θ per grid node), the sums by matrix products
:math:`S_i = e^{F_i}\cdot a`, :math:`G_i = e^{F_i} J`, :math:`K_i = e^{F_i} H`, and each row's own
θ enters through :math:`\Delta_i = \theta_i - \mathrm{sg}(\theta_i)` (zero in value):

.. math:: \ell_i = \log\bigl(S_i + G_i\Delta_i + \tfrac12\Delta_i^\top K_i\Delta_i\bigr) - (\text{same for } E),

whose value, gradient and Hessian with respect to :math:`\theta_i` are exactly those of
:math:`\ell_i` (third derivatives are not). Rows that share a θ value stay separate variables,
so per-event scores are right too. With mostly distinct θ rows the direct per-row formula is used.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["grid_log_likelihood"]

TruthLogProb = Callable[[Tensor, Tensor], Tensor]


def _log_a(truth_log_prob: TruthLogProb, nodes: Tensor, log_w: Tensor, theta: Tensor) -> Tensor:
    r""":math:`\log a_k(\theta_r) = \log w_k + \log p(z_k\mid\theta_r)`, ``(R, K)`` for ``theta (R, P)``."""
    r, k = theta.shape[0], nodes.shape[0]
    values = truth_log_prob(nodes.repeat(r, 1), theta.repeat_interleave(k, 0)).double()
    return values.reshape(r, k) + log_w


def _taylor(s0: Tensor, g: Tensor, k: Tensor, delta: Tensor) -> Tensor:
    """``log(s0 + g·Δ + ½ Δᵀ k Δ)`` per row: ``s0 (M,)``, ``g (M, P)``, ``k (M, P, P)``, ``Δ (M, P)``."""
    return torch.log(s0 + (g * delta).sum(1) + 0.5 * torch.einsum("mp,mpq,mq->m", delta, k, delta))


def _derivatives(truth_log_prob: TruthLogProb, nodes: Tensor, log_w: Tensor, unique: Tensor) -> Tensor:
    """``[a, ∂a/∂θ, ∂²a/∂θ²]`` at each distinct θ, ``(U, K, 1 + P + P²)``: one θ copy per (point, node), so a
    reverse pass of the sum gives every node's gradient, and ``P`` more passes the Hessians."""
    u, p = unique.shape
    k = nodes.shape[0]
    with torch.enable_grad():
        copies = unique.repeat_interleave(k, 0).requires_grad_(True)               # (U·K, P)
        a = torch.exp(truth_log_prob(nodes.repeat(u, 1), copies).double() + log_w.repeat(u))
        (jac,) = torch.autograd.grad(a.sum(), copies, create_graph=True)
        rows = [torch.autograd.grad(jac[:, i].sum(), copies, retain_graph=i < p - 1)[0] for i in range(p)]
    hes = torch.stack(rows, 1)                                                    # (U·K, P, P)
    return torch.cat([a.detach().unsqueeze(1), jac.detach(), hes.flatten(1)], 1).reshape(u, k, 1 + p + p * p)


def grid_log_likelihood(features: Tensor, theta: Tensor, truth_log_prob: TruthLogProb, nodes: Tensor, log_w: Tensor,
                        log_e: Tensor) -> Tensor:
    r""":math:`\ell_i(\theta_i)` (see the module docs), ``(M,)`` float64, exact to second order in θ.

    Args:
        features: :math:`F`, ``(M, K)``.
        theta: One point per row, ``(M, P)``.
        truth_log_prob: :math:`\log p(z\mid\theta)` for ``z (R, L)``, ``theta (R, P)`` -> ``(R,)``, differentiable.
        nodes: Grid nodes :math:`z_k`, ``(K, L)``.
        log_w: Log quadrature weights, ``(K,)``.
        log_e: :math:`E`, ``(K,)``.
    """
    f = features.double()
    theta = theta.double()
    log_w, log_e = log_w.double(), log_e.double()
    unique, inverse = torch.unique(theta.detach(), dim=0, return_inverse=True)
    m, p = theta.shape
    if 4 * unique.shape[0] > m:  # mostly distinct points: the direct formula
        c = _log_a(truth_log_prob, nodes, log_w, theta)
        return torch.logsumexp(f + c, 1) - torch.logsumexp(c + log_e, 1)
    basis = _derivatives(truth_log_prob, nodes, log_w, unique)                     # (U, K, 1 + P + P²)
    with torch.no_grad():
        shift = f.max(1).values
        z = torch.exp(f - shift.unsqueeze(1))                                     # (M, K), entries in [0, 1]
        sums = torch.empty(m, basis.shape[2], dtype=torch.float64, device=f.device)
        for u in range(unique.shape[0]):
            rows = torch.nonzero(inverse == u)[:, 0]
            sums[rows] = z[rows] @ basis[u]
        e_max = log_e.max()
        den = torch.einsum("k,ukj->uj", torch.exp(log_e - e_max), basis)[inverse]  # (M, 1 + P + P²)
    delta = theta - theta.detach()
    numerator = _taylor(sums[:, 0], sums[:, 1:1 + p], sums[:, 1 + p:].reshape(m, p, p), delta)
    denominator = _taylor(den[:, 0], den[:, 1:1 + p], den[:, 1 + p:].reshape(m, p, p), delta)
    return shift + numerator - denominator - e_max


class FeatureTable:
    r"""Features :math:`F_{ik}` of a one-dimensional observable, tabulated once and interpolated linearly.

    Evaluating a learned stage at every (event, grid node) pair costs :math:`N K` network calls
    per dataset; for thousands of toys the table costs :math:`G K` once. The :math:`G` points are
    Chebyshev–Lobatto points of the range (dense near its ends, where a bounded density's log
    varies fastest), inset by :math:`10^{-6}` of the range from the ends (the open bounds of a
    selection); values between the inset and the ends take the end values. :meth:`max_error`
    measures the interpolation error against the exact features on given events.

    Args:
        features: The exact map ``x (N, 1) -> F (N, K)``.
        low, high: The range of the observable (e.g. the selection window).
        points: :math:`G`.

    Raises:
        ConfigError: ``low >= high`` or fewer than 2 points.
    """

    def __init__(self, features: Callable[[Tensor], Tensor], low: float, high: float, points: int = 2001) -> None:
        from ..exceptions import ConfigError

        if not low < high or points < 2:
            raise ConfigError(f"FeatureTable: need low < high and points >= 2, got ({low}, {high}) and {points}.")
        self.low, self.high = float(low), float(high)
        inset = 1e-6 * (self.high - self.low)
        j = torch.arange(points, dtype=torch.float64)
        a, b = self.low + inset, self.high - inset
        self.grid = a + (b - a) * (1 - torch.cos(torch.pi * j / (points - 1))) / 2
        self.values = features(self.grid.unsqueeze(1)).double()  # (G, K)

    def __call__(self, x: Tensor) -> Tensor:
        """Interpolated features ``(N, K)`` of ``x (N, 1)``.

        Raises:
            OutOfSupportError: ``x`` outside ``[low, high]``.
            ShapeMismatchError: ``x`` is not one observable.
        """
        from ..exceptions import OutOfSupportError, ShapeMismatchError

        x = torch.as_tensor(x, dtype=torch.float64)
        x = x.reshape(-1, 1) if x.dim() == 1 else x
        if x.dim() != 2 or x.shape[1] != 1:
            raise ShapeMismatchError(f"FeatureTable: x has shape {tuple(x.shape)}; the table is of one observable, (N, 1).")
        v = x[:, 0]
        outside = (v < self.low) | (v > self.high)
        if bool(outside.any()):
            raise OutOfSupportError(f"FeatureTable: {int(outside.sum())} events lie outside the tabulated range "
                                    f"[{self.low}, {self.high}] (first {float(v[outside][0])}); tabulate a wider range.")
        v = v.clamp(float(self.grid[0]), float(self.grid[-1]))
        i = torch.searchsorted(self.grid, v, right=True).clamp(1, self.grid.numel() - 1) - 1
        t = ((v - self.grid[i]) / (self.grid[i + 1] - self.grid[i])).unsqueeze(1)
        return self.values[i] * (1 - t) + self.values[i + 1] * t

    def max_error(self, features: Callable[[Tensor], Tensor], x: Tensor) -> float:
        r"""Largest error of :math:`\log\sum_k e^{F_{ik}}` (the per-event sum a likelihood takes) over the events ``x (N, 1)``."""
        exact, approx = features(x).double(), self(x)
        return float((torch.logsumexp(exact, 1) - torch.logsumexp(approx, 1)).abs().max())
