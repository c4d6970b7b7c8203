r"""One-dimensional maps from uniform noise to peaked variables, with their log-densities.

The building blocks of physics-based importance samplers (MadWeight's phase-space "blocks",
arXiv:1010.2263; MadGraph's Breit–Wigner mapping): each map sends ``u ∈ (0, 1)`` to a variable
distributed like the peak it flattens, and returns :math:`\log q` of the point so the proposal
density is exact.

* :func:`cauchy_map` — a Breit–Wigner (Cauchy) in ``v`` truncated to ``[lo, hi]``. With
  ``v = m²``, ``loc = M²`` and ``scale = MΓ`` it is the relativistic Breit–Wigner of an
  s-channel propagator.
* :func:`normal_map` — a Gaussian, the inverse of a Gaussian transfer function;
  :func:`truncated_normal_map` the same restricted to an interval (kinematic limits), stable
  far in the tails.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cauchy_map", "cauchy_log_prob", "normal_map", "normal_log_prob", "truncated_normal_map", "truncated_normal_log_prob"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _angles(loc: Tensor, scale: Tensor, lo: Tensor | float, hi: Tensor | float) -> tuple[Tensor, Tensor]:
    a_lo = torch.atan((torch.as_tensor(lo, dtype=loc.dtype) - loc) / scale)
    a_hi = torch.atan((torch.as_tensor(hi, dtype=loc.dtype) - loc) / scale)
    return a_lo, a_hi


def cauchy_map(u: Tensor, loc: Tensor, scale: Tensor, lo: Tensor | float = -math.inf, hi: Tensor | float = math.inf) -> tuple[Tensor, Tensor]:
    r"""Inverse CDF of a Cauchy truncated to ``[lo, hi]``: ``(v, log q(v))``.

    .. math::
        v = \ell + s\tan\!\big(a_\mathrm{lo} + u\,(a_\mathrm{hi} - a_\mathrm{lo})\big), \qquad
        q(v) = \frac{s}{(a_\mathrm{hi} - a_\mathrm{lo})\,[s^2 + (v - \ell)^2]}, \qquad
        a = \arctan\frac{\text{bound} - \ell}{s}.

    Args:
        u: Uniform noise, any shape.
        loc, scale: Peak position ℓ and half width s (> 0), broadcastable to ``u``.
        lo, hi: Truncation (``lo < hi``), broadcastable.

    Example:
        >>> v, log_q = cauchy_map(torch.tensor([0.5]), torch.tensor(100.0), torch.tensor(2.5))
        >>> float(v), round(float(log_q.exp()), 6)  # the peak of Cauchy(100, 2.5): 1 / (2.5 pi)
        (100.0, 0.127324)
    """
    loc, scale = torch.as_tensor(loc, dtype=u.dtype), torch.as_tensor(scale, dtype=u.dtype)
    a_lo, a_hi = _angles(loc, scale, lo, hi)
    v = loc + scale * torch.tan(a_lo + u * (a_hi - a_lo))
    return v, cauchy_log_prob(v, loc, scale, lo, hi)


def cauchy_log_prob(v: Tensor, loc: Tensor, scale: Tensor, lo: Tensor | float = -math.inf, hi: Tensor | float = math.inf) -> Tensor:
    r"""Log-density of the truncated Cauchy of :func:`cauchy_map` at ``v`` (``-inf`` outside ``[lo, hi]``)."""
    loc, scale = torch.as_tensor(loc, dtype=v.dtype), torch.as_tensor(scale, dtype=v.dtype)
    a_lo, a_hi = _angles(loc, scale, lo, hi)
    log_q = torch.log(scale) - torch.log(a_hi - a_lo) - torch.log(scale**2 + (v - loc) ** 2)
    inside = (v >= torch.as_tensor(lo, dtype=v.dtype)) & (v <= torch.as_tensor(hi, dtype=v.dtype))
    return torch.where(inside, log_q, torch.full_like(log_q, -math.inf))


def normal_map(u: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    r"""Inverse CDF of :math:`\mathcal N(\mu, \sigma^2)`: ``(v, log q(v))`` with :math:`v = \mu + \sigma\Phi^{-1}(u)`."""
    e = torch.special.ndtri(u)
    std = torch.as_tensor(std, dtype=u.dtype)
    v = mean + std * e
    return v, -0.5 * e**2 - torch.log(std) - _HALF_LOG_2PI


def normal_log_prob(v: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    r"""Log-density of :math:`\mathcal N(\mu, \sigma^2)` at ``v``."""
    std = torch.as_tensor(std, dtype=v.dtype)
    return -0.5 * ((v - mean) / std) ** 2 - torch.log(std) - _HALF_LOG_2PI


_TAIL = 37.5  # Φ(-37.5) ~ 5e-308: standardised limits are clipped here


def _log_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) - Φ(a)) for standardised a <= b, from the side where no cancellation occurs."""
    upper = a > 0
    hi_log = torch.where(upper, torch.special.log_ndtr(-a), torch.special.log_ndtr(b))
    lo_log = torch.where(upper, torch.special.log_ndtr(-b), torch.special.log_ndtr(a))
    return hi_log + torch.log1p(-torch.exp(lo_log - hi_log).clamp(max=1.0))


def truncated_normal_map(u: Tensor, mean: Tensor, std: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    r"""Inverse CDF of :math:`\mathcal N(\mu, \sigma^2)` truncated to ``[lo, hi]``: ``(v, log q(v))``.

    For limits in the upper tail the draw uses the survival function
    (:math:`t = -\Phi^{-1}(\Phi(-a) - u[\Phi(-a) - \Phi(-b)])`), so it stays exact far from the
    mean. An interval more than 37.5 σ from the mean (beyond double precision) is sampled
    uniformly instead; :func:`truncated_normal_log_prob` gives the density of exactly this
    sampler.

    Args:
        u: Uniform noise, any shape.
        mean, std, lo, hi: Broadcastable to ``u``; ``lo < hi``.
    """
    std = torch.as_tensor(std, dtype=u.dtype)
    a, b, uniform = _standardise(mean, std, lo, hi)
    upper = a > 0
    pa_up, pb_up = torch.special.ndtr(-a), torch.special.ndtr(-b)
    pa, pb = torch.special.ndtr(a), torch.special.ndtr(b)
    t_up = -torch.special.ndtri((pa_up - u * (pa_up - pb_up)).clamp(min=1e-320))
    t_lo = torch.special.ndtri((pa + u * (pb - pa)).clamp(max=1.0 - 2.0**-53))
    t = torch.minimum(torch.maximum(torch.where(upper, t_up, t_lo), a), b)
    v = torch.where(uniform, lo + u * (hi - lo), mean + std * t)
    v = torch.minimum(torch.maximum(v, torch.as_tensor(lo, dtype=u.dtype)), torch.as_tensor(hi, dtype=u.dtype))
    return v, truncated_normal_log_prob(v, mean, std, lo, hi)


def _standardise(mean: Tensor, std: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a = (lo - mean) / std
    b = (hi - mean) / std
    uniform = (a >= _TAIL) | (b <= -_TAIL)
    return a.clamp(-_TAIL, _TAIL), b.clamp(-_TAIL, _TAIL), uniform


def truncated_normal_log_prob(v: Tensor, mean: Tensor, std: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    r"""Log-density of the sampler :func:`truncated_normal_map` (``-inf`` outside ``[lo, hi]``)."""
    std = torch.as_tensor(std, dtype=v.dtype)
    a, b, uniform = _standardise(mean, std, lo, hi)
    t = (v - mean) / std
    log_q = torch.where(uniform, -torch.log(torch.as_tensor(hi - lo, dtype=v.dtype)),
                        -0.5 * t**2 - _HALF_LOG_2PI - torch.log(std) - _log_mass(a, b))
    return torch.where((v >= lo) & (v <= hi), log_q, torch.full_like(log_q, -math.inf))
