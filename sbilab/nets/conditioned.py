r"""Parameterised networks :math:`f(x, \theta)` with their input standardisation as buffers.

A parameterised network (Cranmer, Pavez, Louppe, arXiv:1506.02169; Baldi et al.,
arXiv:1601.07913) sees the physics parameters as extra inputs, so one network covers the
whole parameter space. :class:`ConditionedNetwork` standardises ``x`` and ``θ`` with
:class:`~sbilab.nets.mlp.Standardize` buffers, optionally embeds a padded particle set with a
permutation-invariant embedding, concatenates, and applies an MLP. With
``theta_features=0`` it is a plain network of ``x`` (used for score estimators).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..exceptions import ShapeMismatchError
from .mlp import MLP, ResidualMLP, Standardize, check_widths
from .sets import build_embedding

__all__ = ["ConditionedNetwork"]


class ConditionedNetwork(nn.Module):
    r"""MLP of standardised ``(x, θ)``; ``x`` may be a vector or a padded set.

    Args:
        x_features: ``D`` for vector inputs ``(N, D)``; features per particle ``F`` for sets.
        theta_features: ``P`` (0 for a network of ``x`` only).
        out_features: Output size.
        hidden: Hidden widths of the MLP (for ``residual=True``: its width is ``hidden[0]`` and
            the number of residual blocks is ``len(hidden) // 2`` at least 1).
        activation: Activation name; smooth ones (``silu``, ``tanh``) keep second derivatives
            useful for the score terms of RASCAL/ALICES/CASCAL/SCANDAL.
        residual: Use :class:`~sbilab.nets.mlp.ResidualMLP` instead of :class:`~sbilab.nets.mlp.MLP`.
        embedding: For set inputs, ``{"kind": "deepsets" | "transformer", "out_features": E, ...}``
            (other keys go to the embedding class); ``None`` for vector inputs.

    Shapes: ``x: (N, D)`` or ``(N, M, F)`` with ``mask: (N, M)``; ``theta: (N, P)`` -> ``(N, out)``.

    Example:
        >>> net = ConditionedNetwork(2, 1, 1, hidden=(8,))
        >>> net(torch.zeros(4, 2), torch.zeros(4, 1)).shape
        torch.Size([4, 1])
    """

    def __init__(self, x_features: int, theta_features: int, out_features: int, *, hidden: Sequence[int] = (100, 100),
                 activation: str = "silu", residual: bool = False, embedding: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.x_features, self.theta_features, self.out_features = x_features, theta_features, out_features
        self.x_norm = Standardize(x_features)
        self.theta_norm = Standardize(theta_features)
        self.is_set = embedding is not None
        if embedding is not None:
            self.embedding = build_embedding(embedding, x_features, sets=True, owner="ConditionedNetwork")
            inp = int(embedding.get("out_features", 32)) + theta_features
        else:
            self.embedding = None
            inp = x_features + theta_features
        hidden = check_widths(hidden, owner="ConditionedNetwork", allow_empty=not residual)
        if residual:
            self.mlp = ResidualMLP(inp, out_features, hidden=hidden[0], blocks=max(1, len(hidden) // 2), activation=activation)
        else:
            self.mlp = MLP(inp, out_features, hidden=hidden, activation=activation)

    @torch.no_grad()
    def standardize_from(self, x: Tensor, theta: Tensor, *, mask: Tensor | None = None, weights: Tensor | None = None) -> "ConditionedNetwork":
        """Set the standardisation buffers from training inputs ``x`` and ``theta (N, P)``."""
        want = 3 if self.is_set else 2
        if x.dim() != want or x.shape[-1] != self.x_features:
            raise ShapeMismatchError(
                f"standardize_from: x has shape {tuple(x.shape)}, the network expects "
                f"{'(N, M, ' if self.is_set else '(N, '}{self.x_features})."
            )
        self.x_norm.set_from(x, weights=weights, mask=mask if self.is_set else None)
        if self.theta_features:
            self.theta_norm.set_from(theta, weights=weights)
        return self

    def forward(self, x: Tensor, theta: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = self.x_norm(x)
        if self.embedding is not None:
            h = self.embedding(h, mask)
        if self.theta_features:
            h = torch.cat([h, self.theta_norm(theta)], dim=-1)
        return self.mlp(h)
