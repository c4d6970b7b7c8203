r"""Neural likelihood (NDE / SCANDAL): a conditional normalising flow :math:`\hat p(x|\theta)`.

A zuko flow (neural spline flow by default, arXiv:1906.04032; or MAF, arXiv:1705.07057) over
standardised ``x`` conditioned on standardised θ. Trained with
:func:`~sbilab.estimators.losses.nde_loss` (negative log-likelihood) or
:func:`~sbilab.estimators.losses.scandal_loss`, which adds
:math:`\alpha\lVert\nabla_\theta \log\hat p(x|\theta) - t(x,z|\theta)\rVert^2` through the flow's
conditioning (Brehmer, Louppe, Pavez, Cranmer, arXiv:1805.12244). It also acts as a ratio
estimator, :math:`\log\hat r(x|\theta) = \log\hat p(x|\theta) - \log\hat p(x|\theta_\mathrm{ref})`,
and as a fast generative surrogate of the simulator (:meth:`LikelihoodEstimator.sample`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ShapeMismatchError
from ..nets.flows import FlowSpec, build_flow
from ..nets.mlp import Standardize
from .checks import check_finite, check_theta
from ..registry import register_publishable
from .ratio import _Estimator

__all__ = ["LikelihoodEstimator", "DensityRatio"]


@register_publishable
class LikelihoodEstimator(_Estimator):
    r"""Conditional flow; ``forward(x, theta) -> log p̂(x|θ)``, ``(N,)``.

    Args:
        space: Parameter space (its reference is the denominator of :meth:`log_ratio`).
        x_features: ``D`` (vector observables only).
        flow: A flow kind of :data:`sbilab.nets.flows.FLOW_KINDS`: ``"nsf"`` (rational-quadratic
            splines), ``"maf"`` (affine), or the coupling kinds ``"nsf_coupling"``, ``"realnvp"``
            (faster sampling; ``D >= 2``).
        transforms: Number of flow transforms.
        hidden: Hidden widths of each transform's conditioner.
        bins: Spline bins (spline flows only).

    Example:
        >>> from sbilab.simulators import GaussianLatent
        >>> sim = GaussianLatent()
        >>> ev = sim.simulate(64, generator=torch.Generator().manual_seed(0))
        >>> est = LikelihoodEstimator.from_events(ev, sim.space, hidden=(16,))
        >>> est.sample(torch.tensor([0.5]), 10, generator=torch.Generator().manual_seed(1)).shape
        torch.Size([10, 1])
    """

    ensemble_reduction = "mixture"  # EnsembleMean: log of the members' mean density (see sbilab.estimators.ensembles)

    def __init__(self, space: Any, x_features: int, *, flow: str = "nsf", transforms: int = 3,
                 hidden: Sequence[int] = (64, 64), bins: int = 8) -> None:
        super().__init__()
        spec = FlowSpec(flow, int(transforms), tuple(int(h) for h in hidden), int(bins))
        options = {"flow": flow, "transforms": int(transforms), "hidden": [int(h) for h in hidden], "bins": int(bins)}
        self._setup(space, x_features, options)
        p = self.space.dim
        self.x_norm = Standardize(self.x_features)
        self.theta_norm = Standardize(p)
        self.flow = build_flow(spec, self.x_features, p)

    @classmethod
    def from_events(cls, events: Events, space: Any, **options: Any) -> "LikelihoodEstimator":
        """A new estimator whose shapes and standardisation come from the training ``events``."""
        if events.is_set:
            raise ShapeMismatchError("LikelihoodEstimator models vector observables (N, D); embed particle sets into "
                                     "fixed-size features first, or use RatioEstimator with a set embedding.")
        return cls(space, events.n_observables, **options).standardize_from(events)

    def standardize_from(self, events: Events) -> "LikelihoodEstimator":
        """Set the x and θ standardisation buffers and the training support from training ``events``."""
        self._check_training_events(events, self.space.dim)
        self.x_norm.set_from(events.x, weights=events.weights)
        self.theta_norm.set_from(events.theta, weights=events.weights)
        self._record_support(events)
        return self

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """``log p̂(x|θ)``: ``x (N, D)``, ``theta (N, P)`` -> ``(N,)`` (density in the original units of x)."""
        return self.flow(self.theta_norm(theta)).log_prob(self.x_norm(x)) - self.x_norm.std.log().sum()

    def _inputs(self, x: Any, theta: Any, argument: str = "theta") -> tuple[Tensor, Tensor]:
        x, _ = self._x(x)
        return x, check_theta(theta, x.shape[0], self.space, like=self.theta_ref, argument=argument)

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        """Validated :math:`\\log\\hat p(x|\\theta)`, ``(N,)``; ``theta`` is ``(P,)`` or ``(N, P)``.

        Raises:
            ShapeMismatchError, OutOfSupportError, NonFiniteOutputError.
        """
        x, theta = self._inputs(x, theta)
        return check_finite(self(x, theta), what="LikelihoodEstimator.log_prob")

    def log_ratio(self, x: Any, theta: Any, theta1: Any = None) -> Tensor:
        r"""Validated :math:`\log\hat p(x|\theta) - \log\hat p(x|\theta_1)` (default :math:`\theta_1 = \theta_\mathrm{ref}`), ``(N,)``."""
        x, t0 = self._inputs(x, theta)
        t1 = self.theta_ref.expand(x.shape[0], -1) if theta1 is None else self._inputs(x, theta1, "theta1")[1]
        return check_finite(self(x, t0) - self(x, t1), what="LikelihoodEstimator.log_ratio")

    def score(self, x: Any, theta: Any) -> Tensor:
        r"""Validated :math:`\nabla_\theta \log\hat p(x|\theta)`, ``(N, P)``."""
        x, theta = self._inputs(x, theta)
        with torch.enable_grad():
            theta = theta.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self(x, theta).sum(), theta)
        return check_finite(g, what="LikelihoodEstimator.score")

    def sample(self, theta: Any, n: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        r"""Draw ``n`` events from :math:`\hat p(x|\theta)`.

        Args:
            theta: One point ``(P,)`` -> returns ``(n, D)``; or ``N`` points ``(N, P)`` -> ``(n, N, D)``.
            n: Draws per point.
            generator: Source of the base-distribution noise (reproducible sampling).
        """
        t = torch.as_tensor(theta)
        single = t.dim() <= 1
        t = t.reshape(1, -1) if single else t
        t = check_theta(t, t.shape[0], self.space, like=self.theta_ref)
        with torch.no_grad():
            dist = self.flow(self.theta_norm(t))
            z = torch.randn(n, t.shape[0], self.x_features, generator=generator, dtype=t.dtype).to(t.device)
            x = self.x_norm.inverse(dist.transform.inv(z))
        return x[:, 0] if single else x

    def sample_events(self, theta: Any, *, generator: torch.Generator | None = None) -> Events:
        """One surrogate event per row of ``theta (N, P)``, as :class:`~sbilab.events.Events` (like ``Simulator.sample``)."""
        t = check_theta(theta, torch.as_tensor(theta).shape[0], self.space, like=self.theta_ref)
        return Events(x=self.sample(t, 1, generator=generator)[0], theta=t)


class DensityRatio(nn.Module):
    r"""The log-ratio of a conditional density against a fixed reference point, as a module.

    .. math:: \log\hat r(x|\theta) = \log\hat p(x|\theta) - \log\hat p(x|\theta_\mathrm{ref})

    ``forward(x (N, D), theta (N, P)) -> (N,)``, unchecked (the fast path that fits evaluate; a
    module, so that they can cast it to float64). ``density`` is a :class:`LikelihoodEstimator`
    or an :class:`~sbilab.estimators.ensembles.EnsembleMean` of them (their mixture);
    :meth:`LikelihoodEstimator.log_ratio` is the checked version for one estimator.

    Args:
        density: ``density(x, theta) -> log p̂(x|θ) (N,)``.
        reference: :math:`\theta_\mathrm{ref}`, ``(P,)``.
    """

    def __init__(self, density: nn.Module, reference: Tensor) -> None:
        super().__init__()
        self.density = density
        self.register_buffer("reference", torch.as_tensor(reference).detach().clone())

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.density(x, theta) - self.density(x, self.reference.to(x.dtype).expand(len(x), -1))
