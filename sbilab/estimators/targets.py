"""What a :class:`~sbilab.estimators.density.ConditionalDensity` models: its target field and box bounds.

:func:`density_target` picks the target field (``theta``, ``latent`` or ``spectator``) of
:class:`~sbilab.events.Events` for the density and its loss (:func:`~sbilab.estimators.losses.density_loss`);
``_bound`` reads the box bounds of the target given to the density.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, MissingAugmentedDataError

__all__ = ["DensityTarget", "DENSITY_TARGETS", "density_target"]

DensityTarget = Literal["theta", "latent", "spectator"]
DENSITY_TARGETS: tuple[str, ...] = get_args(DensityTarget)
"""The Events fields a :class:`ConditionalDensity` can be trained to model."""

def density_target(events: Events, target: str, *, owner: str = "ConditionalDensity") -> Tensor:
    """The target field ``target`` of ``events``, ``(N, D)``.

    Raises:
        ConfigError: ``target`` is not one of :data:`DENSITY_TARGETS`.
        MissingAugmentedDataError: the events lack that field.
    """
    if target not in DENSITY_TARGETS:
        raise ConfigError(f"{owner}: target must be one of {DENSITY_TARGETS} (an Events field), got {target!r}.")
    value = getattr(events, target, None)
    if value is None:
        raise MissingAugmentedDataError(
            f"{owner}: target={target!r} but these Events have no {target!r} field; build the training Events with "
            f"{target}=... (N, D), or choose another target."
        )
    return value


def _bound(values: Any, features: int, fill: float, name: str) -> Tensor:
    """Bounds as a float64 ``(D,)`` tensor; ``None`` (whole or per entry) means ``fill`` (±inf)."""
    if values is None:
        return torch.full((features,), fill, dtype=torch.float64)
    if isinstance(values, Tensor):
        values = values.tolist()
    try:
        out = torch.tensor([fill if v is None else float(v) for v in values], dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"ConditionalDensity: {name} must be a sequence of {features} numbers (or None/±inf), got {values!r}.") from None
    if out.numel() != features:
        raise ConfigError(f"ConditionalDensity: {name} has {out.numel()} entries for a target of {features} dimension(s).")
    if bool(torch.isnan(out).any()):
        raise ConfigError(f"ConditionalDensity: {name} contains NaN; use None or ±inf for an open side.")
    return out
