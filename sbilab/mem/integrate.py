r"""Per-event Monte Carlo integration of the matrix-element integrand, with stated errors.

For events :math:`x_i` and parameter points :math:`\theta_i` (one per event, so many events ×
many α run in one batch), :func:`integrate` estimates

.. math::
    I(x_i;\theta_i) = \int dz\, \frac{d\sigma}{dz}(z;\alpha_i)\,\epsilon(z) \sum_\pi W(x_{i,\pi}|y(z);\nu_i)
    \approx \frac1S\sum_j w_{ij}, \qquad w_{ij} = \frac{g(z_{ij})}{q(z_{ij}|x_i)},

by importance sampling from any :class:`~sbilab.mem.proposals.Proposal` fed with common random
numbers (:class:`~sbilab.mem.noise.CommonNoise`). The error per event is the sample standard
deviation of the weights over :math:`\sqrt S` (i.i.d. noise) or the spread of the replica means
(randomised QMC); the effective sample size is :math:`(\sum_j w_{ij})^2/\sum_j w_{ij}^2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..exceptions import IntegrandError
from .model import MatrixElement, Prepared
from .noise import CommonNoise, Sequence
from .proposals import Proposal

__all__ = ["Integral", "integrate", "estimate", "draw", "calls_for_precision", "variance_calls"]


@dataclass(frozen=True)
class Integral:
    """Per-event integrals and their Monte Carlo uncertainty.

    Attributes:
        log_value: :math:`\\log\\hat I`, ``(N,)`` (``-inf`` where every weight was zero).
        rel_error: Relative standard error :math:`\\delta\\hat I/\\hat I`, ``(N,)``.
        ess: Effective sample size per event, ``(N,)``.
        samples: Samples per event of the estimate.
        extra_calls: Integrand evaluations per event spent before it (adapting a grid).
    """

    log_value: Tensor
    rel_error: Tensor
    ess: Tensor
    samples: int
    extra_calls: int = 0

    @property
    def calls(self) -> int:
        """Integrand evaluations per event, adaptation included."""
        return self.samples + self.extra_calls


def estimate(log_w: Tensor, *, debias: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    r"""Estimate, relative error and ESS from log-weights ``(N, R, M)`` (``R`` replicas of ``M`` samples).

    Returns ``(log_value (N,), rel_error (N,), ess (N,))``; differentiable in ``log_w``. With
    ``R = 1`` the error is the sample standard deviation over :math:`\sqrt M`, otherwise the
    standard deviation of the ``R`` replica means over :math:`\sqrt R`.

    ``debias=True`` removes the leading bias of the logarithm of an unbiased estimate,
    :math:`E[\log\hat I] = \log I - \delta^2/2 + O(\delta^4)` (Jensen; δ the relative error):
    :math:`\log\hat I + \hat\delta^2/2`, differentiable too. The bias matters in fits because
    δ depends on θ (the proposal suits some θ better), so its θ-derivative biases the score;
    measured on W → ℓν at 512 samples per event, the Γ score was off by 0.4 of the Fisher
    information per event without the correction and consistent with zero with it.
    """
    n, r, m = log_w.shape
    flat = log_w.reshape(n, r * m)
    peak = flat.max(dim=1, keepdim=True).values.detach()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    w = torch.exp(flat - peak)
    mean = w.mean(1)
    log_value = torch.log(mean) + peak[:, 0]
    if r == 1:
        var_mean = w.var(1) / m
    else:
        var_mean = w.reshape(n, r, m).mean(2).var(1) / r
    safe = torch.where(mean > 0, mean, torch.ones_like(mean))
    rel2 = torch.where(mean > 0, var_mean / safe**2, torch.zeros_like(mean))
    if debias:
        log_value = log_value + 0.5 * rel2
    with torch.no_grad():
        rel = torch.where(mean > 0, rel2.detach().sqrt(), torch.full_like(mean, math.inf))
        ess = torch.where(mean > 0, w.sum(1) ** 2 / (w**2).sum(1).clamp(min=1e-300), torch.zeros_like(mean))
    return log_value, rel, ess


def draw(model: MatrixElement, proposal: Proposal, x: Tensor, noise: CommonNoise) -> tuple[Prepared, Tensor]:
    """Samples for events ``x (N, D)`` from ``proposal`` with common random numbers, prepared.

    Returns the prepared samples and the events they belong to, ``(N * R, D)``: each event
    is repeated once per replica (row ``i * R + r`` is replica ``r`` of event ``i``), each row
    holding ``S // R`` samples.

    A proposal may return points outside the process's box (draws it could not place, e.g. no
    real solution for an invisible momentum): they get weight zero, and the proposal's density
    must then be that of its points inside the box.

    Raises:
        IntegrandError: the proposal returns points of the wrong dimension or a log-density
            that is not finite at its own samples inside the box.
    """
    x = x.to(torch.float64)
    u = noise(x)  # (N, R, M, k)
    n, r, m, k = u.shape
    xr = x.repeat_interleave(r, dim=0)
    z, log_q = proposal.transform(u.reshape(n * r, m, k), xr)
    if z.shape != (n * r, m, model.dim) or log_q.shape != (n * r, m):
        raise IntegrandError(
            f"{type(proposal).__name__}.transform returned z {tuple(z.shape)} and log_q {tuple(log_q.shape)}; expected "
            f"({n * r}, {m}, {model.dim}) and ({n * r}, {m})."
        )
    lo, hi = model.bounds.to(z.device, z.dtype).unbind(-1)
    inside = ((z >= lo) & (z <= hi)).all(-1)
    bad = ~torch.isfinite(log_q) & inside
    log_q = torch.where(inside, log_q, torch.zeros_like(log_q))  # rejected draws (outside the box) get weight zero
    if bool(bad.any()):
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        raise IntegrandError(
            f"{type(proposal).__name__} returned a non-finite log q ({float(log_q[i, j])}) at its own sample z={z[i, j].tolist()} "
            f"({int(bad.sum())} samples); a proposal must have positive density wherever it draws."
        )
    return model.prepare(z.to(torch.float64), log_q.to(torch.float64), xr), xr


def integrate(
    model: MatrixElement,
    x: Tensor,
    theta: Tensor,
    proposal: Proposal,
    *,
    samples: int = 4096,
    sequence: Sequence = "random",
    replicas: int = 1,
    seed: int = 0,
    chunk_calls: int = 2**21,
    extra_calls: int = 0,
) -> Integral:
    r"""Per-event integrals :math:`I(x_i;\theta_i)` by importance sampling from ``proposal``.

    Args:
        model: The :class:`~sbilab.mem.model.MatrixElement`.
        x: Events, ``(N, D)``.
        theta: One point per event, ``(N, P)`` or ``(P,)``, in ``model.parameter_names`` order.
        proposal: Any proposal (:class:`~sbilab.mem.proposals.BoxProposal` for plain MC).
        samples: Samples per event ``S``.
        sequence, replicas, seed: The common random numbers (:class:`~sbilab.mem.noise.CommonNoise`).
        chunk_calls: Events are processed in chunks of about this many integrand calls.
        extra_calls: Calls spent before (e.g. adapting a grid), added to ``calls``.

    Returns:
        An :class:`Integral` (no graph: use the likelihood for differentiable values).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(model.parameter_names)).expand(x.shape[0], -1)
    noise = CommonNoise(proposal.noise_dim, samples, sequence, replicas, seed)
    per_chunk = max(1, chunk_calls // samples)
    parts = []
    with torch.no_grad():
        for s in range(0, x.shape[0], per_chunk):
            xs, ts = x[s:s + per_chunk], theta[s:s + per_chunk]
            prep, xr = draw(model, proposal, xs, noise)
            log_w = model.log_weights(prep, xr, ts.repeat_interleave(replicas, 0))
            parts.append(estimate(log_w.reshape(xs.shape[0], replicas, -1)))
    log_value, rel, ess = (torch.cat(p) for p in zip(*parts))
    return Integral(log_value, rel, ess, int(samples), int(extra_calls))


def calls_for_precision(integral: Integral, target: float = 0.01) -> Tensor:
    r"""Integrand calls per event to reach relative error ``target``, ``(N,)`` float64.

    Monte Carlo scaling :math:`\delta \propto S^{-1/2}` from the measured error at ``S`` samples
    (i.i.d. noise), plus the calls spent on adaptation: ``extra + S (rel / target)²``.
    """
    return integral.extra_calls + integral.samples * (integral.rel_error.to(torch.float64) / target) ** 2


def variance_calls(
    model: MatrixElement,
    x: Tensor,
    theta: Tensor,
    evaluated: Proposal,
    reference: Proposal,
    *,
    samples: int = 2**14,
    target: float = 0.01,
    seed: int = 0,
    chunk_calls: int = 2**21,
) -> Tensor:
    r"""Calls another proposal would need for relative precision ``target``, from its exact variance.

    Importance sampling from ``evaluated`` (density :math:`p`) has relative variance per call
    :math:`\int g^2/p\,dz\,/\,I^2 - 1`; both integrals are estimated with samples of a better
    ``reference`` proposal :math:`q`:

    .. math::
        N_p = \frac{1}{\varepsilon^2}\Big(\frac{\langle g^2/(p\,q)\rangle_q}{\langle g/q\rangle_q^2} - 1\Big).

    This measures what plain Monte Carlo (``evaluated = BoxProposal``) would cost when running
    it is out of reach (a 6-D peak occupying 1e-10 of the box). Only ``evaluated.log_prob`` is
    used. Returns ``(N,)`` float64.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(model.parameter_names)).expand(x.shape[0], -1)
    noise = CommonNoise(reference.noise_dim, samples, "random", 1, seed)
    per_chunk = max(1, chunk_calls // samples)
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], per_chunk):
            xs, ts = x[s:s + per_chunk], theta[s:s + per_chunk]
            prep, xr = draw(model, reference, xs, noise)
            log_w = model.log_weights(prep, xr, ts)  # log g/q
            log_p = evaluated.log_prob(prep.z, xr)
            log_m2 = torch.logsumexp(2 * log_w + prep.log_q - log_p, dim=1) - math.log(samples)
            log_i = torch.logsumexp(log_w, dim=1) - math.log(samples)
            out.append((torch.exp(log_m2 - 2 * log_i) - 1).clamp(min=0) / target**2)
    return torch.cat(out)
