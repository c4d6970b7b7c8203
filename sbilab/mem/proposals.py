r"""Importance-sampling proposals :math:`q(z | x)` for the per-event integrals.

Every integrator of :mod:`sbilab.mem` is importance sampling from a proposal:

.. math::
    I(x) = \int dz\, g(z; x) \approx \frac1S \sum_{j=1}^S \frac{g(z_j; x)}{q(z_j|x)},
    \qquad z_j \sim q(\cdot|x).

A proposal is a map from uniform noise to points, :meth:`Proposal.transform`, plus its
log-density :meth:`Proposal.log_prob`. Drawing through a map (rather than from an internal
random state) lets the likelihood feed the same noise at every parameter point (common random
numbers, :mod:`sbilab.mem.noise`), so the estimate is smooth in α. The proposal must not depend
on α. Implementations: :class:`BoxProposal` (plain Monte Carlo), :class:`MultiChannel`
(a stratified mixture of channels, e.g. one per permutation or resonance peak, weighted by the
balance heuristic: Kleiss & Pittau, hep-ph/9405257; Veach & Guibas, SIGGRAPH 1995), the
adaptive grid of :mod:`sbilab.mem.vegas`, the physics-based proposals of :mod:`sbilab.mem.toys`,
and — through the same two methods — a learned conditional flow (MadNIS, arXiv:2212.06172;
arXiv:2311.01548): with base noise :math:`e = \Phi^{-1}(u)` and the flow's map
:math:`z = T^{-1}(e; x)`, :math:`\log q = \log\mathcal N(e) - \log|\det \partial T^{-1}/\partial e|`.
"""

from __future__ import annotations

import abc
import math
from typing import Sequence

import torch
from torch import Tensor

from ..exceptions import ConfigError

__all__ = ["Proposal", "BoxProposal", "MultiChannel", "stratified_counts"]


class Proposal(abc.ABC):
    r"""A proposal :math:`q(z|x)` given as a map from uniform noise.

    Subclasses set :attr:`dim` and :attr:`noise_dim` and implement :meth:`transform` and
    :meth:`log_prob`; :meth:`sample` follows.

    The contract a learned proposal (a conditional flow trained by ``fit()``) meets too:

    * ``transform(u, x)`` is deterministic in ``u`` and independent of θ (common random
      numbers make the likelihood smooth in θ only then); ``u`` and ``x`` arrive as float64;
    * ``log_prob(z, x)`` is the exact log-density of what ``transform`` produces (mixtures
      evaluate every channel's ``log_prob`` at every point);
    * points it cannot place may lie outside the process's box (weight zero);
    * for training on the integrand, ``transform`` may carry a graph: with
      ``prep = model.prepare(z, log_q, x)``, ``model.log_weights(prep, x, theta)`` is
      :math:`\log g - \log q` differentiable in the proposal's parameters.

    Attributes:
        dim: Number of integration variables ``z``.
        noise_dim: Uniform variables consumed per sample.
    """

    dim: int
    noise_dim: int

    @abc.abstractmethod
    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""Map noise to points: ``u (N, S, noise_dim)`` in (0, 1) → ``z (N, S, dim)``, :math:`\log q(z|x)` ``(N, S)``.

        ``x (N, D)`` are the events the points are for; ``None`` for an unconditional proposal
        (then ``N`` is the leading size of ``u``). Must be deterministic and α-independent.
        Points it cannot place may be put outside the process's box: they get weight zero, and
        ``log_q`` is then the density of the points inside the box."""

    @abc.abstractmethod
    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        r""":math:`\log q(z|x)` of any points ``z (N, S, dim)``, ``(N, S)`` (``-inf`` where q is zero)."""

    def sample(self, n: int, x: Tensor | None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""Draw ``n`` points per event: ``z (N, n, dim)`` and :math:`\log q` ``(N, n)`` (``N = 1`` if ``x`` is None)."""
        rows = 1 if x is None else x.shape[0]
        dtype = torch.float64 if x is None else torch.promote_types(x.dtype, torch.float64)
        u = torch.rand(rows, int(n), self.noise_dim, generator=generator, dtype=dtype)
        return self.transform(u.clamp(2.0**-40, 1 - 2.0**-40), x)


class BoxProposal(Proposal):
    r"""Uniform over a box: plain Monte Carlo, :math:`q = 1/\mathrm{vol}`.

    Args:
        bounds: ``(dim, 2)`` low/high per variable (e.g. ``process.bounds``).

    Example:
        >>> box = BoxProposal(torch.tensor([[0.0, 2.0], [0.0, 5.0]]))
        >>> z, log_q = box.transform(torch.full((1, 1, 2), 0.5), None)
        >>> z.tolist(), round(float(log_q.exp()), 3)
        ([[[1.0, 2.5]]], 0.1)
    """

    def __init__(self, bounds: Tensor) -> None:
        b = torch.as_tensor(bounds, dtype=torch.float64)
        if b.dim() != 2 or b.shape[1] != 2 or not bool((b[:, 0] < b[:, 1]).all()) or not bool(torch.isfinite(b).all()):
            raise ConfigError(f"BoxProposal: bounds must be finite (dim, 2) with low < high, got {b.tolist()}.")
        self.bounds = b
        self.dim = self.noise_dim = int(b.shape[0])
        self._log_volume = float(torch.log(b[:, 1] - b[:, 0]).sum())

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        lo, hi = self.bounds.to(u.device, u.dtype).unbind(-1)
        z = lo + (hi - lo) * u
        return z, torch.full(u.shape[:-1], -self._log_volume, dtype=u.dtype, device=u.device)

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        lo, hi = self.bounds.to(z.device, z.dtype).unbind(-1)
        inside = ((z >= lo) & (z <= hi)).all(-1)
        return torch.where(inside, torch.full(z.shape[:-1], -self._log_volume, dtype=z.dtype, device=z.device),
                           torch.full(z.shape[:-1], -math.inf, dtype=z.dtype, device=z.device))


def stratified_counts(weights: Sequence[float], samples: int) -> list[int]:
    """Deterministic sample counts per channel: ``floor(w S)`` plus the remainder by largest fraction."""
    w = [float(v) for v in weights]
    exact = [v * samples / sum(w) for v in w]
    counts = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(w)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: samples - sum(counts)]:
        counts[i] += 1
    return counts


class MultiChannel(Proposal):
    r"""A mixture of channels sampled in fixed proportions (stratified multi-channel).

    Of ``S`` samples, channel ``c`` receives :math:`n_c` (:func:`stratified_counts` of the
    weights); every point is weighted with the mixture of the channels actually sampled,

    .. math::
        q(z|x) = \sum_c \frac{n_c}{S}\, q_c(z|x),

    which makes :math:`\frac1S\sum_j g(z_j)/q(z_j)` unbiased (balance heuristic) and its
    variance no larger than that of the unstratified mixture. Each channel typically flattens
    one peak or one permutation of objects.

    Args:
        channels: Proposals of the same ``dim``.
        weights: Nominal channel weights (default: equal).

    Raises:
        ConfigError: no channels, channels of different ``dim``, or non-positive weights.
    """

    def __init__(self, channels: Sequence[Proposal], weights: Sequence[float] | None = None) -> None:
        self.channels = list(channels)
        if not self.channels:
            raise ConfigError("MultiChannel needs at least one channel.")
        dims = {int(c.dim) for c in self.channels}
        if len(dims) != 1:
            raise ConfigError(f"MultiChannel: channels have different dimensions {sorted(dims)}.")
        w = [1.0] * len(self.channels) if weights is None else [float(v) for v in weights]
        if len(w) != len(self.channels) or min(w) <= 0 or not all(math.isfinite(v) for v in w):
            raise ConfigError(f"MultiChannel: need {len(self.channels)} positive finite weights, got {weights}.")
        self.weights = [v / sum(w) for v in w]
        self.dim = dims.pop()
        self.noise_dim = max(int(c.noise_dim) for c in self.channels)

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        counts = stratified_counts(self.weights, u.shape[1])
        parts, start = [], 0
        for channel, n in zip(self.channels, counts):
            if n:
                parts.append(channel.transform(u[:, start:start + n, : channel.noise_dim], x)[0])
            start += n
        z = torch.cat(parts, dim=1)
        return z, self._mixture(z, x, [n / u.shape[1] for n in counts])

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        return self._mixture(z, x, self.weights)

    def _mixture(self, z: Tensor, x: Tensor | None, weights: Sequence[float]) -> Tensor:
        terms = [math.log(w) + c.log_prob(z, x) for c, w in zip(self.channels, weights) if w > 0]
        return torch.logsumexp(torch.stack(terms), dim=0)
