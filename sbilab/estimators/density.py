r"""Conditional density estimation :math:`q(y|c)` with a normalising flow: :class:`ConditionalDensity`.

Any target :math:`y \in \mathbb R^{D}` given any context :math:`c`, a vector ``(N, C)`` or a
masked set ``(N, M, F)`` (embedded permutation-invariantly, :mod:`sbilab.nets.sets`). Trained by
:func:`sbilab.training.fit` with :func:`~sbilab.estimators.losses.density_loss`
(:math:`-\mathbb E_w \log q(y|c)`, event weights honoured) on :class:`~sbilab.events.Events`
whose **context is** ``x`` (with ``mask`` for sets) and whose **target is a field** named when
the loss is made: ``theta``, ``latent`` or ``spectator``. Posterior estimation
(:class:`~sbilab.estimators.posterior.PosteriorEstimator`, arXiv:1905.07488) is the case
:math:`y = \theta`; the applications below are other cases, with no code of their own.

Box bounds without rejection: the flow (:mod:`sbilab.nets.flows`) models a standardised,
unconstrained :math:`z`; a fixed bijection maps it into the box :math:`[l, h]` of ``y``,

.. math::
    y_i = l_i + (h_i - l_i)\,\sigma(\mu_i + s_i z_i) \ \text{(two-sided)},\quad
    y_i = l_i \pm e^{\mu_i + s_i z_i} \ \text{(one-sided)},\quad
    y_i = \mu_i + s_i z_i \ \text{(free)},

so every sample lies inside the box and
:math:`\log q(y|c) = \log q_z(z|c) + \sum_i \log|\partial z_i/\partial y_i|`; :math:`\mu, s`
standardise the unconstrained variable on the training data.

How the applications compose it (sketches; ``fit`` and ``get_loss`` as in :mod:`sbilab.training`)::

    # cINN unfolding, q(gen | reco) (arXiv:2006.06685): paired simulation with the detector
    # level as context x and the generator level as target (latent), MC weights as weights;
    # only events passing both selections. Fakes (reco passes, gen fails) and efficiency (gen
    # passes, reco fails) stay outside the density: each data event is weighted by P(not fake |
    # reco) and each unfolded draw by 1 / P(passes reco | gen), both from Classifiers on sim.
    sim = Events(x=reco, theta=reco.new_zeros(len(reco), 0), latent=gen, weights=w_mc)
    q = ConditionalDensity.from_events(sim, target="latent", low=gen_low, high=gen_high,
                                       flow=FlowSpec("nsf_coupling", transforms=6, hidden=(128, 128)))
    q = fit(q, get_loss("density", target="latent"), sim, epochs=100).model
    draws = q.sample(8, data.x, generator=torch.Generator().manual_seed(0))  # (8, N_data, D_gen)
    unfolded = draws.reshape(-1, draws.shape[-1])                 # gen-level events, weight 1/8 each
    # iterated (IcINN, arXiv:2212.08674): reweight sim's gen level towards `unfolded` with a
    # Classifier, refit q on the reweighted sim (new weights, same call), sample again.

    # MEM transfer function W(reco | parton) and proposal q(parton | reco) (arXiv:2210.00019,
    # 2310.07752) from (reco, parton) pairs of any simulator, parton level in Events.latent:
    pairs = simulator.sample(theta)
    flipped = Events(x=pairs.latent, theta=pairs.theta, latent=pairs.x)  # context = parton
    transfer = fit(ConditionalDensity.from_events(flipped, target="latent"),
                   get_loss("density", target="latent"), flipped).model
    proposal = fit(ConditionalDensity.from_events(pairs, target="latent", low=z_low, high=z_high),
                   get_loss("density", target="latent"), pairs).model
    z = proposal.sample(256, x_obs)                              # (S, B, D_parton), no per-event training
    log_w = (log_me2(z, alpha) + transfer.log_prob(x_obs.expand(256, -1, -1).flatten(0, 1),
             z.flatten(0, 1)).view(256, -1) - proposal.log_prob(z, x_obs))
    log_p = torch.logsumexp(log_w, 0) - math.log(256)            # per-event MEM integral, (B,)
    # a detector surrogate p(reco | truth) is `transfer` again, sampled: transfer.sample(1, truth)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError, OutOfSupportError, ShapeMismatchError
from ..nets.flows import FlowSpec, build_flow
from ..nets.mlp import Standardize
from ..nets.sets import build_embedding
from ..registry import register_publishable
from .support import TrainingSupport, warn_outside
from .targets import DENSITY_TARGETS, DensityTarget, _bound, density_target

__all__ = ["ConditionalDensity", "DensityTarget", "DENSITY_TARGETS", "density_target"]

_EPS = 1e-6  # clamp of the box bijection

@register_publishable
class ConditionalDensity(nn.Module):
    r"""Conditional normalising flow :math:`q(y|c)` with optional box bounds on ``y`` and a context embedding.

    Args:
        features: Dimension ``D`` of the target ``y``.
        context_features: ``C`` for vector contexts ``(C,)``; features per entry ``F`` for sets ``(M, F)``.
        sets: The context is a padded set ``(M, F)`` with a mask, embedded permutation-invariantly.
        flow: The flow architecture (:class:`~sbilab.nets.flows.FlowSpec` or its dict; default ``FlowSpec()``).
        low: Lower bounds of ``y``, ``(D,)``; ``None`` or ``-inf`` entries are open. Default: unbounded.
        high: Upper bounds of ``y``, ``(D,)``; ``None`` or ``+inf`` entries are open.
        embedding: Network from the standardised context to the flow's conditioning vector:
            ``{"kind": "mlp", "out_features": E, "hidden": [...]}`` for vectors,
            ``{"kind": "deepsets" | "transformer", "out_features": E, ...}`` for sets (default
            ``{"kind": "deepsets"}``), or any ``nn.Module`` (not publishable). ``None`` for
            vectors feeds the standardised context to the flow directly.

    ``forward(y, c, mask=None)`` is the unchecked training path (:func:`density_loss`);
    :meth:`log_prob` and :meth:`sample` validate shapes, NaNs and bounds. Build it with
    :meth:`from_events`, which also fits the standardisation to the training data.

    Example:
        >>> q = ConditionalDensity(2, 3, low=[0.0, None], high=[1.0, None], flow=FlowSpec(transforms=2, hidden=(16,)))
        >>> draws = q.sample(5, torch.zeros(4, 3), generator=torch.Generator().manual_seed(0))
        >>> draws.shape, bool(((draws[..., 0] > 0) & (draws[..., 0] < 1)).all())
        (torch.Size([5, 4, 2]), True)
        >>> q.log_prob(draws[0], torch.zeros(4, 3)).shape
        torch.Size([4])
    """

    ensemble_reduction = "mixture"  # EnsembleMean: log of the members' mean density (a normalised mixture)

    def __init__(
        self,
        features: int,
        context_features: int,
        *,
        sets: bool = False,
        flow: FlowSpec | Mapping[str, Any] | None = None,
        low: Sequence[float | None] | Tensor | None = None,
        high: Sequence[float | None] | Tensor | None = None,
        embedding: dict[str, Any] | nn.Module | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value in (("features", features), ("context_features", context_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r}.")
        self.features, self.context_features, self.is_set = int(features), int(context_features), bool(sets)
        self.flow_spec = flow if isinstance(flow, FlowSpec) else FlowSpec.from_dict(flow or {})
        if self.is_set and embedding is None:
            embedding = {"kind": "deepsets"}
        self._embedding_options = dict(embedding) if isinstance(embedding, dict) else None
        self._custom_embedding = isinstance(embedding, nn.Module)
        lo, hi = _bound(low, self.features, -math.inf, "low"), _bound(high, self.features, math.inf, "high")
        if bool((lo >= hi).any()) or bool((lo == math.inf).any()) or bool((hi == -math.inf).any()):
            i = int(torch.nonzero((lo >= hi) | (lo == math.inf) | (hi == -math.inf))[0, 0])
            raise ConfigError(f"{owner}: bounds of y[{i}] are low={lo[i].item()}, high={hi[i].item()}; each needs low < high.")
        self._bounds = (lo, hi)
        p = self.features
        has_low, has_high = torch.isfinite(lo), torch.isfinite(hi)
        bounded = has_low & has_high
        dtype = torch.get_default_dtype()
        zero = torch.zeros(p, dtype=torch.float64)
        # one-sided bounds: y = low + exp(u) or high - exp(u); "low" holds the finite end
        self.register_buffer("low", torch.where(has_low, lo, torch.where(has_high, hi, zero)).to(dtype))
        self.register_buffer("width", torch.where(bounded, hi - lo, torch.ones(p, dtype=torch.float64)).to(dtype))
        self.register_buffer("bounded", bounded)
        self.register_buffer("lower_only", has_low & ~has_high)
        self.register_buffer("upper_only", has_high & ~has_low)
        self.register_buffer("z_mean", torch.zeros(p))
        self.register_buffer("z_std", torch.ones(p))
        self.x_norm = Standardize(self.context_features)
        self.training_support: TrainingSupport | None = None  # range of the training contexts, set by standardize_from
        self.embedding = build_embedding(embedding, self.context_features, sets=self.is_set, owner=owner)
        self.flow = build_flow(self.flow_spec, p, self._conditioning_features())

    @property
    def bounds(self) -> tuple[Tensor, Tensor]:
        """The box of ``y``: ``(low, high)``, float64 ``(D,)`` each, ±inf where open."""
        return self._bounds[0].clone(), self._bounds[1].clone()

    # ------------------------------------------------------------------ set-up
    def _conditioning_features(self) -> int:
        if self.embedding is None:
            return self.context_features
        out = getattr(self.embedding, "out_features", None)
        if isinstance(out, int):
            return out
        with torch.no_grad():
            probe = torch.zeros(1, 1, self.context_features) if self.is_set else torch.zeros(1, self.context_features)
            y = self.embedding(probe, torch.ones(1, 1, dtype=torch.bool)) if self.is_set else self.embedding(probe)
        return int(y.shape[-1])

    def _to_u(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``y (..., D)`` -> unconstrained ``u`` and elementwise ``log|du/dy|``."""
        s = ((y - self.low) / self.width).clamp(_EPS, 1 - _EPS)
        logit = torch.log(s) - torch.log1p(-s)
        dist = torch.where(self.lower_only, y - self.low, self.low - y).clamp_min(1e-30)
        u = torch.where(self.bounded, logit, torch.where(self.lower_only | self.upper_only, torch.log(dist), y))
        log_jac = torch.where(
            self.bounded, -torch.log(self.width) - torch.log(s) - torch.log1p(-s),
            torch.where(self.lower_only | self.upper_only, -torch.log(dist), torch.zeros_like(y)),
        )
        return u, log_jac

    def _unconstrain(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``y (..., D)`` -> standardised ``z (..., D)`` and ``log|dz/dy|`` summed, ``(...)``."""
        u, log_jac = self._to_u(y)
        z = (u - self.z_mean) / self.z_std
        return z, (log_jac - torch.log(self.z_std)).sum(-1)

    def _constrain(self, z: Tensor) -> Tensor:
        u = z * self.z_std + self.z_mean
        e = torch.exp(u.clamp(max=80.0))
        one_sided = torch.where(self.lower_only, self.low + e, self.low - e)
        return torch.where(self.bounded, self.low + self.width * torch.sigmoid(u),
                           torch.where(self.lower_only | self.upper_only, one_sided, u))

    @classmethod
    def from_events(cls, events: Events, *, target: DensityTarget = "theta", **options: Any) -> "ConditionalDensity":
        """A new density of ``events.<target>`` given ``events.x``, shaped and standardised on ``events``.

        ``options`` are the constructor's keywords (``flow``, ``low``, ``high``, ``embedding``).
        """
        y = density_target(events, target, owner=f"{cls.__name__}.from_events")
        return cls(int(y.shape[-1]), events.n_observables, sets=events.is_set, **options).standardize_from(events, target=target)

    def check_training_events(self, events: Events) -> None:
        """Raise unless the context ``events.x`` has the shape this density was built for (fit calls it before training)."""
        self._check_context(events.x, events.mask if self.is_set else None)

    @torch.no_grad()
    def standardize_from(self, events: Events, *, target: DensityTarget = "theta") -> "ConditionalDensity":
        """Fit the standardisation of the context ``events.x`` and of the unconstrained target (unweighted)."""
        self._check_context(events.x, events.mask)
        y = density_target(events, target, owner=f"{type(self).__name__}.standardize_from").to(self.low)
        if y.dim() != 2 or y.shape[1] != self.features:
            raise ShapeMismatchError(
                f"{type(self).__name__}.standardize_from: events.{target} has shape {tuple(y.shape)}; the density models "
                f"(N, {self.features}). Build it with from_events(events, target={target!r})."
            )
        if len(events) < 2:
            raise InvalidEventsError(f"{type(self).__name__}.standardize_from: needs at least 2 events, got {len(events)}.")
        self._check_target(y, argument=f"standardize_from: events.{target}")
        u, _ = self._to_u(y)
        self.z_mean.copy_(u.mean(0))
        self.z_std.copy_(u.std(0).clamp_min(1e-6))
        mask = events.mask if self.is_set else None
        x = torch.nan_to_num(events.x) if mask is not None else events.x
        self.x_norm.set_from(x, mask=mask)
        self.training_support = TrainingSupport.from_data(events.x, mask=mask)
        return self

    # ------------------------------------------------------------------ evaluation
    def context(self, c: Tensor, mask: Tensor | None = None) -> Tensor:
        """Conditioning vector of the standardised (and embedded) context, ``(B, E)``."""
        if self.is_set:
            if mask is None:
                mask = ~torch.isnan(c).all(-1)
            cs = torch.where(mask.unsqueeze(-1), self.x_norm(torch.nan_to_num(c)), torch.zeros((), dtype=c.dtype, device=c.device))
            return self.embedding(cs, mask)
        cs = self.x_norm(c)
        return cs if self.embedding is None else self.embedding(cs)

    def forward(self, y: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Unchecked :math:`\log q(y|c)`: ``y (..., B, D)``, ``c (B, ...)`` -> ``(..., B)``."""
        z, log_jac = self._unconstrain(y)
        return self.flow(self.context(c, mask)).log_prob(z) + log_jac

    def _check_context(self, c: Tensor, mask: Tensor | None) -> None:
        name = type(self).__name__
        want = 3 if self.is_set else 2
        if c.dim() != want or c.shape[-1] != self.context_features:
            raise ShapeMismatchError(
                f"{name}: the context x has shape {tuple(c.shape)}; the estimator was trained on contexts of shape "
                f"{'(B, M, ' if self.is_set else '(B, '}{self.context_features}). Pass x with the training shape."
            )
        if mask is not None and not self.is_set:
            raise ShapeMismatchError(f"{name}: a mask was given for a vector context; masks belong to set contexts (B, M, F).")
        if mask is not None and tuple(mask.shape) != tuple(c.shape[:2]):
            raise ShapeMismatchError(f"{name}: mask has shape {tuple(mask.shape)}; it must be (B, M) = {tuple(c.shape[:2])}.")
        valid = c[~torch.isnan(c).all(-1) if mask is None else mask.bool()] if self.is_set else c
        if not bool(torch.isfinite(valid).all()):
            raise InvalidEventsError(
                f"{name}: the context x contains NaN or inf values; remove or fix them "
                "(for sets, mark padding with the mask or pad with all-NaN rows)."
            )

    def _check_target(self, y: Tensor, *, argument: str) -> None:
        """Raise unless every row of ``y (N, D)`` is finite and inside the bounds."""
        if not bool(torch.isfinite(y).all()):
            raise InvalidEventsError(f"{type(self).__name__}: {argument} contains NaN or inf values; remove or fix them.")
        lo, hi = (b.to(device=y.device, dtype=torch.float64) for b in self._bounds)
        outside = (y.double() < lo) | (y.double() > hi)
        if bool(outside.any()):
            rows, dim = outside.any(-1), int(torch.nonzero(outside)[0, 1])
            raise OutOfSupportError(
                f"{type(self).__name__}: {argument}: {int(rows.sum())} of {y.shape[0]} rows lie outside the bounds "
                f"(first in dimension {dim}: bounds [{lo[dim].item()}, {hi[dim].item()}]). Pass values inside the bounds "
                "the density was built with."
            )

    def _batched_context(self, c: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
        c = torch.as_tensor(c, dtype=self.low.dtype, device=self.low.device)
        single = c.dim() == (2 if self.is_set else 1)
        if single:
            c = c.unsqueeze(0)
            mask = None if mask is None else torch.as_tensor(mask).unsqueeze(0)
        if mask is not None:
            mask = torch.as_tensor(mask, device=c.device)
        self._check_context(c, mask)
        warn_outside(self.training_support, c, mask, owner=type(self).__name__)
        return c, mask, single

    def _checked(self, y: Tensor, c: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``y``, ``c`` and ``mask`` validated for :meth:`log_prob` (shapes, NaNs, bounds)."""
        c, mask, _ = self._batched_context(c, mask)
        y = torch.as_tensor(y, dtype=self.low.dtype, device=self.low.device)
        b = c.shape[0]
        if y.dim() == 0 or y.shape[-1] != self.features or (y.dim() >= 2 and b != 1 and y.shape[-2] not in (1, b)):
            raise ShapeMismatchError(
                f"{type(self).__name__}.log_prob: the target has shape {tuple(y.shape)} for {b} context(s); "
                f"expected (..., {b}, {self.features})."
            )
        self._check_target(y.reshape(-1, self.features), argument="log_prob: target")
        return y, c, mask

    def log_prob(self, y: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Checked :math:`\log q(y|c)`.

        Args:
            y: ``(..., B, D)`` target points, inside the bounds.
            c: ``(B, C)`` or ``(B, M, F)`` contexts (``B = 1`` or one unbatched context broadcasts).
            mask: ``(B, M)`` for set contexts (default: entries that are all-NaN are padding).

        Returns:
            ``(..., B)`` log densities.

        Raises:
            ShapeMismatchError: ``y``, ``c`` or ``mask`` has the wrong shape.
            InvalidEventsError: ``c`` or ``y`` has NaN/inf values.
            OutOfSupportError: some ``y`` lie outside the bounds.
        """
        return self.forward(*self._checked(y, c, mask))

    @torch.no_grad()
    def sample(self, n: int, c: Tensor, *, mask: Tensor | None = None, generator: torch.Generator | None = None,
               chunk: int = 2**18) -> Tensor:
        """Draw ``n`` samples of ``y`` for each of ``B`` contexts at once.

        Args:
            n: Samples per context.
            c: ``(B, ...)`` contexts, or one unbatched context ``(C,)`` or ``(M, F)``.
            mask: ``(B, M)`` set mask (sets only).
            generator: Source of the base noise; the noise is drawn on its device (CPU if ``None``).
            chunk: Largest number of rows ``n * B`` pushed through the flow at once.

        Returns:
            ``(n, B, D)`` samples, or ``(n, D)`` for one unbatched context; always inside the
            bounds (no rejection).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{type(self).__name__}.sample: n must be a positive integer, got {n!r}.")
        c, mask, single = self._batched_context(c, mask)
        dist = self.flow(self.context(c, mask))
        b, p = c.shape[0], self.features
        step = max(1, chunk // b)
        parts = []
        for start in range(0, n, step):
            m = min(step, n - start)
            eps = torch.randn(m, b, p, generator=generator, dtype=self.low.dtype, device="cpu" if generator is None else generator.device)
            parts.append(self._constrain(dist.transform.inv(eps.to(self.low.device))))
        out = torch.cat(parts, 0)
        return out[:, 0] if single else out

    def sample_from_noise(self, noise: Tensor, c: Tensor, *, mask: Tensor | None = None) -> Tensor:
        r"""Push standard-normal base noise through the flow: the reparameterised sample :math:`y = T^{-1}(e; c)`.

        Deterministic in ``noise`` and differentiable in the parameters (so a loss may
        differentiate through the draws), unlike :meth:`sample`. :meth:`forward` at the result
        gives its log-density. Importance samplers that feed common random numbers (the
        matrix-element method, :class:`sbilab.mem.FlowProposal`) draw through it.

        Args:
            noise: Base noise :math:`e \sim \mathcal N(0, 1)`, ``(..., B, D)``.
            c: ``(B, C)`` or ``(B, M, F)`` contexts.
            mask: ``(B, M)`` set mask (sets only).

        Returns:
            ``(..., B, D)`` points inside the bounds.

        Raises:
            ShapeMismatchError: ``noise`` is not ``(..., B, D)`` for these contexts.
        """
        c, mask, _ = self._batched_context(c, mask)
        noise = torch.as_tensor(noise, dtype=self.low.dtype, device=self.low.device)
        if noise.dim() < 2 or noise.shape[-1] != self.features or noise.shape[-2] not in (1, c.shape[0]):
            raise ShapeMismatchError(f"{type(self).__name__}.sample_from_noise: noise has shape {tuple(noise.shape)}; "
                                     f"expected (..., {c.shape[0]}, {self.features}) for {c.shape[0]} context(s).")
        return self._constrain(self.flow(self.context(c, mask)).transform.inv(noise))

    # ------------------------------------------------------------------ publishing
    def _check_publishable(self) -> None:
        if self._custom_embedding:
            raise ConfigError(
                f"{type(self).__name__}.spec: the embedding {type(self.embedding).__name__} was passed as a module; "
                "only embeddings given as option dicts ({'kind': ...}) can be published."
            )

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (open bounds as ``None``; weights and buffers are stored separately)."""
        self._check_publishable()
        lo, hi = ([None if math.isinf(v) else v for v in b.tolist()] for b in self._bounds)
        return {"features": self.features, "context_features": self.context_features, "sets": self.is_set,
                "flow": self.flow_spec.to_dict(), "low": lo, "high": hi, "embedding": self._embedding_options,
                **self._support_spec()}

    def _support_spec(self) -> dict[str, Any]:
        return {} if self.training_support is None else {"training_support": self.training_support.to_dict()}

    def _with_support(self, support: Mapping[str, Any] | None) -> "ConditionalDensity":
        """Set the training support from a spec entry (``None``: a file written before supports were recorded)."""
        self.training_support = None if support is None else TrainingSupport.from_dict(support)
        return self

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "ConditionalDensity":
        """Rebuild an (untrained) density from :meth:`spec`.

        Raises:
            ConfigError: the spec lacks a key or has unknown ones.
        """
        known = {"features", "context_features", "sets", "flow", "low", "high", "embedding", "training_support"}
        if not isinstance(spec, Mapping) or not {"features", "context_features"} <= set(spec) or set(spec) - known:
            raise ConfigError(f"{cls.__name__}.from_spec: malformed spec; it needs features and context_features, "
                              f"and may hold only {sorted(known)}.")
        options = dict(spec)
        support = options.pop("training_support", None)
        return cls(options.pop("features"), options.pop("context_features"), **options)._with_support(support)

    def extra_repr(self) -> str:
        return f"features={self.features}, context_features={self.context_features}, sets={self.is_set}, flow={self.flow_spec.kind}"
