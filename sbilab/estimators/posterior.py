r"""Neural posterior estimation with conditional normalizing flows (cINN).

A conditional flow :math:`q_\phi(\theta|x)` is trained on pairs :math:`(\theta, x)` with
:math:`\theta \sim p(\theta)`, :math:`x \sim p(x|\theta)` by minimising
:math:`-\mathbb E \log q_\phi(\theta|x)` (``npe_loss``), which makes it approximate the
posterior :math:`p(\theta|x)` (Papamakarios & Murray, arXiv:1605.06376; Greenberg et al.,
arXiv:1905.07488; Radev et al., arXiv:2003.06281).

:class:`PosteriorEstimator` is the :class:`~sbilab.estimators.density.ConditionalDensity` of
:math:`y = \theta` given the context :math:`x`. Bounded support without rejection: the flow
models an unconstrained, standardised variable :math:`z`; a fixed bijection maps it onto the box
of the :class:`ParameterSpace`,

.. math::
    \theta_i = l_i + (h_i - l_i)\,\sigma(\mu_i + s_i z_i) \quad\text{(bounded } i\text{)},
    \qquad \theta_i = \mu_i + s_i z_i \quad\text{(unbounded } i\text{)},

so every sample lies inside the box and
:math:`\log q(\theta|x) = \log q_z(z|x) + \sum_i \log|\partial z_i/\partial\theta_i|`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError
from ..nets.flows import FLOW_KINDS, FlowSpec
from ..registry import register_publishable
from ..simulators.space import ParameterSpace
from .checks import as_space
from .density import ConditionalDensity

__all__ = ["PosteriorEstimator", "PosteriorMixture", "FLOWS"]

FLOWS = FLOW_KINDS
"""Available flows (:data:`sbilab.nets.flows.FLOW_KINDS`): autoregressive rational-quadratic splines
(arXiv:1906.04032), masked autoregressive affine (arXiv:1705.07057), spline coupling, affine
coupling (arXiv:1605.08803)."""


@register_publishable
class PosteriorEstimator(ConditionalDensity):
    r"""Conditional normalizing flow :math:`q(\theta|x)` with bounded support and optional embedding.

    The :class:`~sbilab.estimators.density.ConditionalDensity` of ``y = θ`` given the context
    ``x``, bounded by the box of the parameter space.

    Args:
        space: Parameter space (or a simulator, or its ``to_dict()``); its finite bounds
            confine every sample (sigmoid bijection; exp for one-sided bounds).
        x_features: ``D`` for observations ``(D,)``; features per entry ``F`` for sets ``(M, F)``.
        sets: Observations are padded sets ``(M, F)`` (e.g. the events of one dataset, or the
            particles of one event), embedded permutation-invariantly.
        flow: One of :data:`FLOWS` (``"nsf"``, ``"maf"``, ``"nsf_coupling"``, ``"realnvp"``).
            Autoregressive flows (``nsf``, ``maf``) evaluate densities in one pass but sample in
            ``P`` sequential passes; for more than a few parameters and many samples the coupling
            flows (one pass either way) sample far faster.
        transforms: Number of flow transforms.
        hidden: Hidden widths of each transform's conditioner.
        bins: Spline bins (spline flows only).
        embedding: Network from standardised ``x`` to the flow's context:
            ``{"kind": "mlp", "out_features": C, "hidden": [...]}`` for vectors,
            ``{"kind": "deepsets" | "transformer", "out_features": C, ...}`` for sets (default
            ``{"kind": "deepsets"}``), or any ``nn.Module`` (not publishable). ``None`` for
            vectors feeds standardised ``x`` to the flow directly.

    ``forward(theta, x, mask=None)`` returns :math:`\log q(\theta|x)` without input checks (the
    training path, used by ``npe_loss``); :meth:`log_prob` and :meth:`sample` validate shapes,
    NaNs and the support. Build it with :meth:`from_events`, which also sets the standardisation.

    Example:
        >>> space = ParameterSpace(("a",), low=(0.0,), high=(1.0,))
        >>> post = PosteriorEstimator(space, 3, transforms=2, hidden=(16,))
        >>> post.sample(5, torch.zeros(2, 3), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2, 1])
        >>> post.log_prob(torch.full((2, 1), 0.5), torch.zeros(2, 3)).shape
        torch.Size([2])
    """

    ensemble_reduction = "mixture"  # EnsembleMean / PosteriorMixture: the members' equal-weight mixture

    def __init__(
        self,
        space: Any,
        x_features: int,
        *,
        sets: bool = False,
        flow: str = "nsf",
        transforms: int = 5,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        embedding: dict[str, Any] | nn.Module | None = None,
    ) -> None:
        space = as_space(space)
        spec = FlowSpec(flow, int(transforms), tuple(int(h) for h in hidden), int(bins))
        super().__init__(space.dim, int(x_features), sets=sets, flow=spec, low=space.low, high=space.high, embedding=embedding)
        self.space = space
        self.x_features = self.context_features
        self._options = {"sets": self.is_set, "flow": flow, "transforms": int(transforms), "hidden": [int(h) for h in hidden],
                         "bins": int(bins), "embedding": self._embedding_options}

    @classmethod
    def from_events(cls, events: Events, space: Any, **options: Any) -> "PosteriorEstimator":
        """A new estimator whose input shape and standardisation come from the training ``events``."""
        return cls(space, events.n_observables, sets=events.is_set, **options).standardize_from(events)

    def standardize_from(self, events: Events, *, target: str = "theta") -> "PosteriorEstimator":
        """Fit the standardisation buffers of ``x`` and of the unconstrained ``θ`` to training events."""
        if target != "theta":
            raise ConfigError(f"PosteriorEstimator.standardize_from: the target of a posterior is theta, got {target!r}.")
        return super().standardize_from(events, target="theta")

    def _check_target(self, y: Tensor, *, argument: str) -> None:
        """``theta (N, P)`` inside the parameter space (named parameters in the error)."""
        self.space.check(y, argument=f"PosteriorEstimator.{argument.replace('target', 'theta')}")

    # ------------------------------------------------------------------ publishing
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (weights and buffers are stored separately)."""
        self._check_publishable()
        return {"space": self.space.to_dict(), "x_features": self.x_features, **self._options, **self._support_spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "PosteriorEstimator":
        """Rebuild an (untrained) estimator from :meth:`spec`."""
        spec = dict(spec)
        support = spec.pop("training_support", None)
        try:
            return cls(spec.pop("space"), spec.pop("x_features"), **spec)._with_support(support)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"PosteriorEstimator.from_spec: malformed spec ({err}).") from None

    def extra_repr(self) -> str:
        return f"parameters={list(self.space.names)}, x_features={self.x_features}, sets={self.is_set}, flow={self._options['flow']}"


@register_publishable
class PosteriorMixture(nn.Module):
    r"""Equal-weight mixture of an ensemble of posteriors, :math:`q(\theta|x) = \frac1K\sum_k q_k(\theta|x)`.

    Deep ensembles (Lakshminarayanan et al., arXiv:1612.01474) for amortised posteriors: the K
    members of ``Ensemble(PosteriorEstimator(...), K)`` trained by ``fit(ens, npe_loss, ...)`` see the same batches
    and differ by their initialisation; by convexity of the KL divergence the mixture is never further
    from the true posterior, on average, than its members are, and it is usually much closer (on
    sbibm's gaussian_linear at 10⁴ simulations the expected KL of three members, 0.10–0.13, falls to
    0.06–0.07 for their mixture; ``benchmarks/README.md``). Mixtures also tend to be conservative
    rather than overconfident (Hermans et al., arXiv:2110.06581).

    Same interface as :class:`PosteriorEstimator`: checked ``log_prob(theta, x)`` and batched
    ``sample(n, x)``; publishable (``sbilab.publish.save(path, mixture)``, HDF5 + JSON, no pickle).

    Args:
        ensemble: An :class:`~sbilab.nets.ensemble.Ensemble` whose template is a PosteriorEstimator.

    Example:
        >>> from sbilab.nets.ensemble import Ensemble
        >>> space = ParameterSpace(("a",), low=(0.0,), high=(1.0,))
        >>> ens = Ensemble(PosteriorEstimator(space, 3, transforms=1, hidden=(8,)), 3, generator=torch.Generator().manual_seed(0))
        >>> mix = PosteriorMixture(ens)
        >>> mix.sample(5, torch.zeros(2, 3), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2, 1])
    """

    def __init__(self, ensemble: nn.Module) -> None:
        super().__init__()
        from ..nets.ensemble import Ensemble

        template = ensemble.template if isinstance(ensemble, Ensemble) else None
        if not isinstance(template, PosteriorEstimator):
            raise ConfigError(
                f"PosteriorMixture: ensemble must be an Ensemble of PosteriorEstimators (Ensemble(estimator, K), trained by fit), "
                f"got {type(ensemble).__name__}" + (f" of {type(template).__name__}" if template is not None else "") + "."
            )
        self.ensemble = ensemble

    @property
    def template(self) -> PosteriorEstimator:
        return self.ensemble.template

    @property
    def space(self) -> Any:
        return self.template.space

    @property
    def is_set(self) -> bool:
        return self.template.is_set

    @property
    def low(self) -> Tensor:
        return self.template.low

    @property
    def k(self) -> int:
        return int(self.ensemble.k)

    def forward(self, theta: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unchecked mixture ``log q(θ|x)``: ``theta (..., B, P)``, ``x (B, ...)`` -> ``(..., B)``."""
        members = self.ensemble(theta, x) if mask is None else self.ensemble(theta, x, mask)  # (K, ..., B)
        return torch.logsumexp(members, 0) - math.log(self.k)

    def log_prob(self, theta: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Checked mixture :math:`\log q(\theta|x)`; arguments, shapes and errors as :meth:`PosteriorEstimator.log_prob`."""
        return self.forward(*self.template._checked(theta, x, mask))

    @torch.no_grad()
    def sample(self, n: int, x: Tensor, *, mask: Tensor | None = None, generator: torch.Generator | None = None,
               chunk: int = 2**18) -> Tensor:
        """``n`` exact mixture draws per observation, ``(n, B, P)`` (``(n, P)`` for one unbatched ``x``).

        How many draws each member makes is multinomial (shared by the observations, which keeps
        every observation's draws an exact mixture sample); the draws are then shuffled so that any
        prefix is a mixture sample too. Arguments and errors as :meth:`PosteriorEstimator.sample`.
        """
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"PosteriorMixture.sample: n must be a positive integer, got {n!r}.")
        rng_device = "cpu" if generator is None else generator.device  # draws happen where the generator lives
        weights = torch.full((self.k,), 1.0 / self.k, device=rng_device)
        counts = torch.bincount(torch.multinomial(weights, n, replacement=True, generator=generator), minlength=self.k)
        parts = [self.ensemble.member(i).eval().sample(int(c), x, mask=mask, generator=generator, chunk=chunk)
                 for i, c in enumerate(counts.tolist()) if c > 0]
        out = torch.cat(parts, 0)
        order = torch.randperm(n, generator=generator, device=rng_device)
        return out[order.to(out.device)]

    # ------------------------------------------------------------------ publishing
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments: the ensemble's spec (its template's kind and spec, and K)."""
        return {"ensemble": self.ensemble.spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "PosteriorMixture":
        """Rebuild an (untrained) mixture from :meth:`spec`."""
        from ..nets.ensemble import Ensemble

        try:
            return cls(Ensemble.from_spec(spec["ensemble"]))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"PosteriorMixture.from_spec: malformed spec ({err}).") from None

    def extra_repr(self) -> str:
        return f"members={self.k}"
