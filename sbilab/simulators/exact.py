r"""The exact log-ratio of a toy against its reference point, for fits and validation.

.. math:: \log r(x|\theta) = \log p(x|\theta) - \log p(x|\theta_\mathrm{ref})

from the toy's exact marginal likelihood (:class:`~sbilab.simulators.base.ExactLikelihood`).
Fits call it many times on the same events at different θ, so the reference term of the last
events is computed once and kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..exceptions import ConfigError
from .base import has_exact_likelihood

__all__ = ["ExactLogRatio"]


class ExactLogRatio:
    r"""``ratio(x, theta) -> log p(x|θ) − log p(x|θ_ref)``, ``(N,)`` for ``x (N, D)``, ``theta (N, P)``.

    Keeps :math:`\log p(x|\theta_\mathrm{ref})` of the last ``x`` (by storage, shape, strides,
    dtype and device; the cache holds ``x`` itself, so its memory cannot be reused by other events).

    Args:
        simulator: A toy with ``log_prob(x, theta)`` and a ``space`` with a reference point.

    Raises:
        ConfigError: the simulator has no exact likelihood.

    Example:
        >>> from sbilab.simulators import GaussianLatent
        >>> ratio = ExactLogRatio(GaussianLatent())  # x ~ N(θ, √5), reference θ = 0
        >>> round(float(ratio(torch.tensor([[1.0]]), torch.tensor([[1.0]]))[0]), 6)  # (1 - 0) / (2 * 5)
        0.1
    """

    def __init__(self, simulator: Any) -> None:
        if not has_exact_likelihood(simulator):
            raise ConfigError(f"ExactLogRatio: {type(simulator).__name__} has no exact log_prob(x, theta); only toys do.")
        self.simulator = simulator
        self._key: tuple | None = None
        self._ref: Tensor | None = None
        self._x: Tensor | None = None

    def __call__(self, x: Tensor, theta: Tensor) -> Tensor:
        sim = self.simulator
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
        if key != self._key:
            with torch.no_grad():
                self._ref = sim.log_prob(x, sim.space.reference.to(x.dtype).expand(len(x), -1))
            self._key, self._x = key, x
        return sim.log_prob(x, theta) - self._ref
