r"""An optional Gaussian detector: smearing of particle energies and directions.

.. math::
    E' = \max\big(E\,(1 + \sigma_E\,\epsilon), 0\big), \qquad
    \hat n' = \frac{\hat n + \sigma_\theta\,\vec\xi_\perp}{|\hat n + \sigma_\theta\,\vec\xi_\perp|},

with :math:`\epsilon \sim \mathcal N(0, 1)` and :math:`\vec\xi_\perp` a standard normal vector
projected orthogonal to :math:`\hat n` (so the polar angle to the original direction has width
≈ :math:`\sigma_\theta` for small :math:`\sigma_\theta`). Particles stay massless. The smearing
density does not depend on θ, so joint likelihood ratios of smeared events are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...exceptions import ConfigError

__all__ = ["Smearing"]


@dataclass(frozen=True)
class Smearing:
    """Gaussian smearing of energies (relative width) and directions (radians).

    Args:
        energy: Relative energy resolution :math:`\\sigma_E` (e.g. 0.05).
        angle: Angular resolution :math:`\\sigma_\\theta` in radians (e.g. 0.01).

    Example:
        >>> p = torch.tensor([[[10.0, 0.0, 0.0, 10.0]]], dtype=torch.float64)
        >>> out = Smearing(0.0, 0.0).apply(p, torch.ones(1, 1, dtype=torch.bool))
        >>> bool(torch.equal(out, p))
        True
    """

    energy: float = 0.0
    angle: float = 0.0

    def __post_init__(self) -> None:
        for name in ("energy", "angle"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) < 1.0):
                raise ConfigError(f"Smearing.{name} = {value!r}: a resolution must be a number in [0, 1), e.g. 0.05.")

    def apply(self, p: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Smeared copies of the massless momenta ``p (N, M, 4)``; padding (``mask (N, M)`` False) stays zero."""
        n, m, _ = p.shape
        noise = torch.randn(n, m, 4, generator=generator, dtype=p.dtype)
        energy = (p[..., 0] * (1.0 + self.energy * noise[..., 0])).clamp(min=0.0)
        direction = p[..., 1:] / p[..., 1:].norm(dim=-1, keepdim=True).clamp(min=1e-300)
        xi = noise[..., 1:]
        xi = xi - (xi * direction).sum(-1, keepdim=True) * direction
        direction = direction + self.angle * xi
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-300)
        out = torch.cat([energy.unsqueeze(-1), energy.unsqueeze(-1) * direction], dim=-1)
        return torch.where(mask.unsqueeze(-1), out, torch.zeros_like(out))
