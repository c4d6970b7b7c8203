r"""Local score estimator (SALLY) and its 1-D projection (SALLINO).

.. math:: \hat t(x) \approx t(x|\theta_\mathrm{ref}) = \nabla_\theta \log p(x|\theta)\big|_{\theta_\mathrm{ref}},

learned by regressing the joint score :math:`t(x,z|\theta_\mathrm{ref})` of events drawn at the
reference (:func:`~sbilab.estimators.losses.sally_loss`, data from
:func:`sbilab.simulators.augment.score_training_data`). Near :math:`\theta_\mathrm{ref}` the
score is a sufficient statistic (Brehmer, Cranmer, Louppe, Pavez, arXiv:1805.00013,
arXiv:1805.00020): histogram :math:`\hat t(x)` (SALLY) or its projection
:math:`\hat t(x) \cdot u` on a direction :math:`u` in parameter space (SALLINO) and fit the
histograms downstream.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ShapeMismatchError
from ..nets.conditioned import ConditionedNetwork
from ..nets.mlp import check_widths
from .checks import check_finite
from ..registry import register_publishable
from .ratio import _Estimator

__all__ = ["ScoreEstimator"]


@register_publishable
class ScoreEstimator(_Estimator):
    r"""SALLY network ``forward(x) -> t̂(x)``, ``(N, P)``, the score at the space's reference point.

    Args:
        space: Parameter space; the score is estimated at its ``reference``.
        x_features: ``D`` (or features per particle for set inputs).
        hidden, activation, residual, embedding: Network shape (see :class:`~sbilab.nets.conditioned.ConditionedNetwork`).

    Example:
        >>> from sbilab.simulators import GaussianLatent
        >>> from sbilab.simulators.augment import score_training_data
        >>> sim = GaussianLatent()
        >>> est = ScoreEstimator.from_events(score_training_data(sim, 50, generator=torch.Generator().manual_seed(0)), sim.space)
        >>> est.score(torch.zeros(4, 1)).shape
        torch.Size([4, 1])
    """

    ensemble_reduction = "mean"  # EnsembleMean averages t̂ over members (see sbilab.estimators.ensembles)

    def __init__(self, space: Any, x_features: int, *, hidden: Sequence[int] = (100, 100), activation: str = "silu",
                 residual: bool = False, embedding: dict[str, Any] | None = None) -> None:
        super().__init__()
        options = {"hidden": list(check_widths(hidden, owner="ScoreEstimator", allow_empty=not residual)), "activation": activation, "residual": bool(residual),
                   "embedding": None if embedding is None else dict(embedding)}
        self._setup(space, x_features, options)
        self.net = ConditionedNetwork(self.x_features, 0, self.space.dim, hidden=hidden, activation=activation,
                                      residual=residual, embedding=embedding)

    @classmethod
    def from_events(cls, events: Events, space: Any, **options: Any) -> "ScoreEstimator":
        """A new estimator whose shapes and x-standardisation come from the training ``events``."""
        est = cls(space, events.n_observables, embedding=options.pop("embedding", {"kind": "deepsets"} if events.is_set else None), **options)
        return est.standardize_from(events)

    def _training_theta_width(self) -> int:
        return 0  # t̂(x) does not take θ

    def standardize_from(self, events: Events) -> "ScoreEstimator":
        """Set the x standardisation buffers and the training support from training ``events``."""
        self._check_training_events(events, 0)
        self.net.standardize_from(events.x, events.theta, mask=events.mask, weights=events.weights)
        self._record_support(events)
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``t̂(x)``: ``x (N, D)`` or ``(N, M, F)`` -> ``(N, P)``."""
        return self.net(x, None, mask)

    def score(self, x: Any, *, mask: Any = None) -> Tensor:
        """Validated :math:`\\hat t(x)`, ``(N, P)``. Raises ShapeMismatchError / NonFiniteOutputError."""
        x, extra = self._x(x, mask)
        return check_finite(self(x, *extra), what="ScoreEstimator.score")

    def project(self, x: Any, direction: Any = None, *, mask: Any = None) -> Tensor:
        r"""SALLINO: :math:`\hat t(x) \cdot u` along ``direction`` ``u`` ``(P,)`` (default: the only parameter), ``(N,)``."""
        t = self.score(x, mask=mask)
        if direction is None:
            if self.space.dim != 1:
                raise ShapeMismatchError(f"project: give a direction (P,) with P = {self.space.dim} for parameters {list(self.space.names)}.")
            return t[:, 0]
        u = torch.as_tensor(direction, dtype=t.dtype, device=t.device).reshape(-1)
        if u.numel() != self.space.dim:
            raise ShapeMismatchError(f"project: direction has {u.numel()} entries, expected {self.space.dim} ({list(self.space.names)}).")
        return t @ u

    def fisher_information(self, x: Any, *, mask: Any = None, weights: Any = None) -> Tensor:
        r"""Fisher information per event :math:`\langle \hat t \hat t^T \rangle` over ``x``, ``(P, P)``.

        With ``x`` drawn at the reference this estimates :math:`I(\theta_\mathrm{ref})`
        (arXiv:1805.00020, eq. 9).
        """
        t = self.score(x, mask=mask)
        w = torch.ones(t.shape[0], dtype=t.dtype, device=t.device) if weights is None else torch.as_tensor(weights, dtype=t.dtype, device=t.device)
        return (w[:, None, None] * t[:, :, None] * t[:, None, :]).sum(0) / w.sum()
