r"""Parameterised likelihood-ratio estimator :math:`\log\hat r(x|\theta)`.

.. math:: \log r(x|\theta) = \log p(x|\theta) - \log p(x|\theta_\mathrm{ref}),

learned by a network of :math:`(x, \theta)` from events drawn at θ and at the reference
(:func:`sbilab.simulators.ratio_training_data`) with any of the ratio losses of
:mod:`sbilab.estimators.losses` (CARL, ROLR, RASCAL, ALICE, ALICES, CASCAL). The network output
is the classifier logit, so :math:`\sigma(\log\hat r)` is the probability of "drawn at θ".

Doubly parameterised (``doubly=True``): :math:`\log\hat r(x|\theta_0,\theta_1) = h(x,\theta_0,\theta_1)
- h(x,\theta_1,\theta_0)`, antisymmetric by construction; ``theta`` is then ``(N, 2P)`` =
``[θ0, θ1]`` and ``score_joint`` holds :math:`(t(x,z|\theta_0), -t(x,z|\theta_1))`
(:func:`sbilab.simulators.augment.doubly_ratio_training_data`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ShapeMismatchError
from ..nets.conditioned import ConditionedNetwork
from ..nets.mlp import check_widths
from ..registry import register_publishable
from .checks import as_space, check_finite, check_theta, check_x
from .support import TrainingSupport, warn_outside

__all__ = ["RatioEstimator"]


class _Estimator(nn.Module):
    """Shared plumbing: space, spec, standardisation, training support, validated inputs."""

    _options: dict[str, Any]
    training_support: TrainingSupport | None
    """Range of the training x (:mod:`sbilab.estimators.support`), set by ``standardize_from``; ``None`` before."""

    def _setup(self, space: Any, x_features: int, options: dict[str, Any]) -> None:
        self.space = as_space(space)
        self.x_features = int(x_features)
        self._options = options
        self.training_support = None
        self.register_buffer("theta_ref", self.space.reference.to(torch.get_default_dtype()).clone())

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments and the training support (weights and standardisation buffers are saved separately)."""
        support = {} if self.training_support is None else {"training_support": self.training_support.to_dict()}
        return {"space": self.space.to_dict(), "x_features": self.x_features, **self._options, **support}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "_Estimator":
        """Rebuild an untrained estimator from :meth:`spec` (a spec without a training support, from an older file, leaves it ``None``)."""
        spec = dict(spec)
        support = spec.pop("training_support", None)
        est = cls(spec.pop("space"), spec.pop("x_features"), **spec)
        est.training_support = None if support is None else TrainingSupport.from_dict(support)
        return est

    def _record_support(self, events: Events) -> None:
        self.training_support = TrainingSupport.from_data(events.x, mask=events.mask, weights=events.weights)

    @property
    def is_set(self) -> bool:
        return self._options.get("embedding") is not None

    def _x(self, x: Any, mask: Any = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        x, mask = check_x(x, features=self.x_features, is_set=self.is_set, like=self.theta_ref, mask=mask)
        warn_outside(self.training_support, x, mask, owner=type(self).__name__)
        return x, (() if mask is None else (mask,))

    def _training_theta_width(self) -> int:
        """Columns of ``theta`` in the training events (0: θ is not an input)."""
        return self.space.dim

    def check_training_events(self, events: Events) -> None:
        """Raise :class:`ShapeMismatchError` unless ``events`` have the x and θ shapes this estimator was built for.

        :func:`~sbilab.training.fit` calls it before the first epoch, so that a mismatch is named
        instead of failing inside torch.
        """
        self._check_training_events(events, self._training_theta_width())

    def _check_training_events(self, events: Events, theta_width: int) -> None:
        if events.is_set != self.is_set or events.n_observables != self.x_features:
            raise ShapeMismatchError(
                f"{type(self).__name__}: events have x of shape {tuple(events.x.shape)} but the estimator was built for "
                f"{'sets (N, M, ' if self.is_set else '(N, '}{self.x_features}); build it with from_events(events, ...)."
            )
        if theta_width and events.theta.shape[1] != theta_width:
            raise ShapeMismatchError(
                f"{type(self).__name__}: events have theta with {events.theta.shape[1]} columns, expected {theta_width}."
            )


@register_publishable
class RatioEstimator(_Estimator):
    r"""Parameterised ratio estimator; ``forward(x, theta) -> log r̂(x|θ)``, ``(N,)``.

    Args:
        space: The trained :class:`~sbilab.simulators.space.ParameterSpace` (or a simulator, or
            its ``to_dict()``); its reference is the denominator :math:`\theta_\mathrm{ref}`.
        x_features: ``D`` (or features per particle ``F`` for set inputs).
        hidden, activation, residual: Network shape (see :class:`~sbilab.nets.conditioned.ConditionedNetwork`).
        doubly: Doubly parameterised in :math:`(\theta_0, \theta_1)`.
        embedding: Set embedding options for particle-set inputs, e.g. ``{"kind": "deepsets", "out_features": 32}``.

    Build it with :meth:`from_events`, which also sets the standardisation buffers from the
    training events. ``forward`` is the fast, unvalidated training path; :meth:`log_ratio`
    checks shapes and that θ lies in the trained space, and that the output is finite.

    Example:
        >>> from sbilab.simulators import GaussianLatent, ratio_training_data
        >>> sim = GaussianLatent()
        >>> ev = ratio_training_data(sim, 100, generator=torch.Generator().manual_seed(0))
        >>> est = RatioEstimator.from_events(ev, sim.space, hidden=(16,))
        >>> est.log_ratio(torch.zeros(3, 1), torch.tensor([0.5])).shape
        torch.Size([3])
    """

    ensemble_reduction = "mean"  # EnsembleMean averages log r̂ over members (see sbilab.estimators.ensembles)

    def __init__(self, space: Any, x_features: int, *, hidden: Sequence[int] = (100, 100), activation: str = "silu",
                 residual: bool = False, doubly: bool = False, embedding: dict[str, Any] | None = None) -> None:
        super().__init__()
        options = {"hidden": list(check_widths(hidden, owner="RatioEstimator", allow_empty=not residual)), "activation": activation, "residual": bool(residual),
                   "doubly": bool(doubly), "embedding": None if embedding is None else dict(embedding)}
        self._setup(space, x_features, options)
        self.doubly = bool(doubly)
        p = self.space.dim
        self.net = ConditionedNetwork(self.x_features, 2 * p if doubly else p, 1, hidden=hidden, activation=activation,
                                      residual=residual, embedding=embedding)

    @classmethod
    def from_events(cls, events: Events, space: Any, **options: Any) -> "RatioEstimator":
        """A new estimator whose shapes and standardisation come from the training ``events``."""
        est = cls(space, events.n_observables, embedding=options.pop("embedding", {"kind": "deepsets"} if events.is_set else None), **options)
        return est.standardize_from(events)

    def _training_theta_width(self) -> int:
        return 2 * self.space.dim if self.doubly else self.space.dim

    def standardize_from(self, events: Events) -> "RatioEstimator":
        """Set the x and θ standardisation buffers and the training support from training ``events`` (weights respected)."""
        p = self.space.dim
        self._check_training_events(events, 2 * p if self.doubly else p)
        theta, x, w, mask = events.theta, events.x, events.weights, events.mask
        if self.doubly:  # both orderings, so that h(x, θ0, θ1) and h(x, θ1, θ0) see the same scale
            theta = torch.cat([theta, torch.cat([theta[:, p:], theta[:, :p]], dim=1)])
            x = torch.cat([x, x])
            w = None if w is None else torch.cat([w, w])
            mask = None if mask is None else torch.cat([mask, mask])
        self.net.standardize_from(x, theta, mask=mask, weights=w)
        self._record_support(events)
        return self

    def forward(self, x: Tensor, theta: Tensor, mask: Tensor | None = None) -> Tensor:
        """``log r̂``: ``x (N, D)`` or ``(N, M, F)``, ``theta (N, P)`` (``(N, 2P)`` if doubly) -> ``(N,)``."""
        if not self.doubly:
            return self.net(x, theta, mask)[..., 0]
        p = theta.shape[-1] // 2
        swapped = torch.cat([theta[..., p:], theta[..., :p]], dim=-1)
        return self.net(x, theta, mask)[..., 0] - self.net(x, swapped, mask)[..., 0]

    def _theta(self, x: Tensor, theta: Any, theta1: Any) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        t0 = check_theta(theta, n, self.space, like=self.theta_ref, argument="theta")
        t1 = self.theta_ref.expand(n, -1) if theta1 is None else check_theta(theta1, n, self.space, like=self.theta_ref, argument="theta1")
        return t0, t1

    def log_ratio(self, x: Any, theta: Any, theta1: Any = None, *, mask: Any = None) -> Tensor:
        r"""Validated :math:`\log\hat r(x|\theta, \theta_1)`, ``(N,)``.

        Args:
            x: ``(N, D)`` (or ``(N, M, F)`` with ``mask (N, M)``).
            theta: Numerator point, ``(P,)`` or ``(N, P)``.
            theta1: Denominator point (default: the reference). For a singly parameterised
                estimator :math:`\log\hat r(x|\theta) - \log\hat r(x|\theta_1)`.

        Raises:
            ShapeMismatchError: ``x`` or ``theta`` do not have the trained dimensions.
            OutOfSupportError: a θ lies outside the trained parameter space.
            NonFiniteOutputError: the network returns NaN/inf.
        """
        x, extra = self._x(x, mask)
        t0, t1 = self._theta(x, theta, theta1)
        if self.doubly:
            out = self(x, torch.cat([t0, t1], dim=1), *extra)
        else:
            out = self(x, t0, *extra)
            if theta1 is not None:
                out = out - self(x, t1, *extra)
        return check_finite(out, what="RatioEstimator.log_ratio")

    def score(self, x: Any, theta: Any, *, mask: Any = None) -> Tensor:
        r"""Estimated score :math:`\nabla_\theta \log\hat r(x|\theta) = \hat t(x|\theta)`, ``(N, P)`` (validated)."""
        x, extra = self._x(x, mask)
        t0, t1 = self._theta(x, theta, None)
        with torch.enable_grad():
            t0 = t0.detach().clone().requires_grad_(True)
            out = self(x, torch.cat([t0, t1], dim=1) if self.doubly else t0, *extra)
            (g,) = torch.autograd.grad(out.sum(), t0)
        return check_finite(g, what="RatioEstimator.score")
