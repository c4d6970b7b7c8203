r"""Input validation of the public (``log_ratio``, ``score``, ``log_prob``, ...) estimator methods.

``forward`` is the fast, unvalidated path used in training; the public methods call these
helpers first. Each raises a named :class:`~sbilab.exceptions.SbilabError` saying what to do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..exceptions import NonFiniteOutputError, ShapeMismatchError
from ..simulators.space import ParameterSpace

__all__ = ["check_x", "check_theta", "check_finite", "as_space"]


def as_space(space: Any) -> ParameterSpace:
    """A :class:`ParameterSpace` from a space, a simulator (its ``.space``) or a ``to_dict()`` spec."""
    if isinstance(space, dict):
        return ParameterSpace.from_dict(space)
    space = getattr(space, "space", space)
    if not isinstance(space, ParameterSpace):
        raise ShapeMismatchError(
            f"space must be a ParameterSpace, a simulator with .space, or a ParameterSpace.to_dict() spec; "
            f"got {type(space).__name__}."
        )
    return space


def _real(value: Any, argument: str) -> Tensor:
    """``value`` as a tensor; a complex one is refused (casting would drop its imaginary part)."""
    value = torch.as_tensor(value)
    if value.is_complex():
        raise ShapeMismatchError(
            f"{argument} is complex ({value.dtype}); estimators take real inputs and the imaginary part would be dropped. "
            f"Pass real and imaginary parts as separate columns (as in training), or {argument}.real if that is meant."
        )
    return value


def check_x(x: Any, *, features: int, is_set: bool, like: Tensor, mask: Any = None, argument: str = "x") -> tuple[Tensor, Tensor | None]:
    """Validate ``x`` against the trained input shape; cast to the dtype/device of ``like``.

    Returns:
        ``x`` as ``(N, D)`` (or ``(N, M, F)``) and the mask (``None`` for vector inputs).

    Raises:
        ShapeMismatchError: ``x`` (or ``mask``) does not have the trained shape.
        ShapeMismatchError: ``x`` is complex.
    """
    x = _real(x, argument).to(device=like.device, dtype=like.dtype)
    if is_set:
        if x.dim() != 3 or x.shape[-1] != features:
            raise ShapeMismatchError(
                f"{argument} has shape {tuple(x.shape)}, but the estimator was trained on padded particle sets "
                f"(N, M, {features}); pass events with the same per-particle features as in training."
            )
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else torch.as_tensor(mask, device=x.device).bool()
        if mask.shape != x.shape[:2]:
            raise ShapeMismatchError(f"mask has shape {tuple(mask.shape)}; it must be (N, M) = {tuple(x.shape[:2])} like x.")
        return x, mask
    if x.dim() == 1 and features == 1:
        x = x.reshape(-1, 1)
    if x.dim() != 2 or x.shape[1] != features:
        raise ShapeMismatchError(
            f"{argument} has shape {tuple(x.shape)}, but the estimator was trained with {features} observable(s) "
            f"per event; pass x of shape (N, {features}) with the columns in the training order."
        )
    return x, None


def check_theta(theta: Any, n: int, space: ParameterSpace, *, like: Tensor, argument: str = "theta") -> Tensor:
    """Validate ``theta`` (``(P,)`` broadcast to all events, or ``(N, P)``) against the trained space."""
    theta = _real(theta, argument).to(device=like.device, dtype=like.dtype)
    p = space.dim
    if theta.dim() == 0 and p == 1:
        theta = theta.reshape(1)
    if theta.dim() == 1:
        if theta.shape[0] != p:
            raise ShapeMismatchError(
                f"{argument} has {theta.shape[0]} values, but the estimator was trained on {p} parameter(s) "
                f"{list(space.names)}; pass (P,) or (N, P) with P = {p}."
            )
        theta = theta.expand(n, p)
    if theta.dim() != 2 or theta.shape[1] != p or theta.shape[0] != n:
        raise ShapeMismatchError(
            f"{argument} has shape {tuple(theta.shape)}; expected ({n}, {p}) (one row per event) or ({p},) "
            f"for parameters {list(space.names)}."
        )
    space.check(theta, argument=argument)
    return theta


def check_finite(value: Tensor, *, what: str) -> Tensor:
    """Raise :class:`NonFiniteOutputError` if ``value`` has NaN or inf entries."""
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        rows = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() else bad.reshape(1)
        raise NonFiniteOutputError(
            f"{what}: the network returned NaN/inf for {int(rows.sum())} of {rows.numel()} events "
            f"(first at row {int(torch.nonzero(rows)[0, 0])}). The weights have probably diverged: retrain with a "
            "smaller learning rate, or check the inputs are on the scale seen in training."
        )
    return value
