r"""Common random numbers for per-event integrals: noise keyed by the event's content.

A maximum-likelihood fit of a Monte Carlo integral is only well posed if the estimate is a
smooth, deterministic function of the parameters: the same random numbers must be used at
every α (common random numbers). Here they are also independent of how events are batched
(``UnbinnedLikelihood`` evaluates all events at once, ``fit_toys`` re-evaluates subsets of
toys): the noise of an event is a function of the event alone.

For event :math:`i` with key :math:`k_i` (a 32-bit hash of the bits of its float64 row) the
``S`` uniform points of replica :math:`r` are a shared base point set shifted modulo one
(Cranley–Patterson rotation, Cranley & Patterson, SIAM J. Numer. Anal. 13 (1976) 904):

.. math::
    u_{irj} = \{ b_{j} + s(k_i, r) \}, \qquad s(k, r) \in [0, 1)^d \text{ from a counter hash of } (k, r).

With ``sequence="random"`` the base is i.i.d. uniform (one replica; a shifted i.i.d. set is
again i.i.d. uniform, so each event's estimate is plain Monte Carlo and its error the sample
standard deviation over :math:`\sqrt S`). With ``sequence="sobol"`` the base is a scrambled
Sobol' set and the shifts make it randomised quasi-Monte Carlo (Owen, arXiv:2011.05281): errors
fall faster than :math:`S^{-1/2}` for smooth integrands in few dimensions, and the error of an
event is the spread of its ``replicas`` independently shifted estimates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..exceptions import ConfigError

__all__ = ["Sequence", "event_keys", "CommonNoise"]

Sequence = Literal["random", "sobol"]

_M32 = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**31: products of 32-bit values stay inside int64
_GOLDEN = 0x9E3779B9


def _mix(h: Tensor) -> Tensor:
    """A 32-bit integer finaliser on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * _MULT) & _M32
    h = h ^ (h >> 16)
    h = (h * _MULT) & _M32
    return h ^ (h >> 16)


def event_keys(x: Tensor, seed: int = 0) -> Tensor:
    """A 32-bit key per event from the bits of its row in float64, ``(N,)`` int64.

    The key depends only on the row's values and ``seed`` (not on its position in the batch), so
    an event gets the same noise whichever batch it is evaluated in.

    Args:
        x: Events, ``(N, D)`` (any float dtype; rows are compared in float64).
        seed: Selects an independent family of keys.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> bool((event_keys(x)[1] == event_keys(x[1:])[0]).item())
        True
    """
    bits = x.detach().to(torch.float64).reshape(x.shape[0], -1).contiguous().view(torch.int64)
    h = torch.full((x.shape[0],), int(seed) & _M32, dtype=torch.int64, device=x.device)
    h = _mix(h ^ _GOLDEN)
    for c in range(bits.shape[1]):
        h = _mix(h ^ (bits[:, c] & _M32))
        h = _mix(h ^ ((bits[:, c] >> 32) & _M32))
    return h


@functools.lru_cache(maxsize=16)
def _base_points(dim: int, n: int, sequence: str, seed: int) -> Tensor:
    if sequence == "sobol":
        return torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@dataclass(frozen=True)
class CommonNoise:
    r"""Uniform noise ``(N, R, S // R, dim)`` for events, a deterministic function of each event.

    Args:
        dim: Number of uniform variables per sample.
        samples: Samples per event ``S`` (all replicas together; a multiple of ``replicas``).
        sequence: ``"random"`` (i.i.d. base, one replica) or ``"sobol"`` (scrambled Sobol' base,
            randomised QMC with ``replicas`` random shifts per event).
        replicas: Independent shifts per event for ``"sobol"`` (≥ 2, to estimate the error).
        seed: Seed of the base set and of the keys; another seed gives independent noise.

    Raises:
        ConfigError: non-positive sizes, an unknown sequence, fewer than two Sobol' replicas or
            ``samples`` not a multiple of ``replicas``.

    Example:
        >>> noise = CommonNoise(dim=2, samples=64, sequence="sobol", replicas=4)
        >>> u = noise(torch.tensor([[0.5], [1.5]]))
        >>> tuple(u.shape), bool(((u > 0) & (u < 1)).all())
        ((2, 4, 16, 2), True)
    """

    dim: int
    samples: int
    sequence: Sequence = "random"
    replicas: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or self.samples < 2:
            raise ConfigError(f"CommonNoise: dim must be >= 1 and samples >= 2, got dim={self.dim}, samples={self.samples}.")
        if self.sequence not in ("random", "sobol"):
            raise ConfigError(f"CommonNoise: sequence must be 'random' or 'sobol', got {self.sequence!r}.")
        if self.sequence == "random" and self.replicas != 1:
            raise ConfigError("CommonNoise: sequence='random' uses one replica (the sample variance gives its error); pass replicas=1.")
        if self.sequence == "sobol" and self.replicas < 2:
            raise ConfigError("CommonNoise: sequence='sobol' needs replicas >= 2 to estimate its error (e.g. replicas=8).")
        if self.samples % self.replicas:
            raise ConfigError(f"CommonNoise: samples={self.samples} is not a multiple of replicas={self.replicas}.")

    @property
    def per_replica(self) -> int:
        return self.samples // self.replicas

    def base(self, device: torch.device | None = None) -> Tensor:
        """The shared base point set, ``(S // R, dim)`` float64."""
        points = _base_points(self.dim, self.per_replica, self.sequence, int(self.seed))
        return points.to(device) if device is not None else points

    def shifts(self, keys: Tensor) -> Tensor:
        """Per-event, per-replica shifts in [0, 1), ``(N, R, dim)`` float64, from ``keys (N,)``."""
        counter = torch.arange(self.replicas * self.dim, dtype=torch.int64, device=keys.device).reshape(1, self.replicas, self.dim)
        h = _mix(_mix(keys.reshape(-1, 1, 1) ^ ((counter * _GOLDEN + 0x632BE5AB) & _M32)) ^ 0x85EBCA6B)
        return (h.to(torch.float64) + 0.5) / 2.0**32

    def __call__(self, x: Tensor) -> Tensor:
        r"""Noise for events ``x (N, D)``: ``(N, R, S // R, dim)`` float64 in the open interval (0, 1)."""
        keys = event_keys(x, self.seed)
        u = self.base(keys.device).unsqueeze(0).unsqueeze(0) + self.shifts(keys).unsqueeze(2)
        u = u - torch.floor(u)
        eps = 2.0**-40
        return u.clamp(eps, 1.0 - eps)
