r"""Neural posterior estimation with conditional normalizing flows (cINN).

A conditional flow :math:`q_\phi(\theta|x)` is trained on pairs :math:`(\theta, x)` with
:math:`\theta \sim p(\theta)`, :math:`x \sim p(x|\theta)` by minimising
:math:`-\mathbb E \log q_\phi(\theta|x)` (``npe_loss``), which makes it approximate the
posterior :math:`p(\theta|x)` (Papamakarios & Murray, arXiv:1605.06376; Greenberg et al.,
arXiv:1905.07488; Radev et al., arXiv:2003.06281).

Bounded support without rejection: the flow models an unconstrained, standardised variable
:math:`z`; a fixed bijection maps it onto the box of the :class:`ParameterSpace`,

.. math::
    \theta_i = l_i + (h_i - l_i)\,\sigma(\mu_i + s_i z_i) \quad\text{(bounded } i\text{)},
    \qquad \theta_i = \mu_i + s_i z_i \quad\text{(unbounded } i\text{)},

so every sample lies inside the box and
:math:`\log q(\theta|x) = \log q_z(z|x) + \sum_i \log|\partial z_i/\partial\theta_i|`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch
import zuko
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from ..nets.mlp import Standardize
from ..nets.sets import build_embedding
from ..registry import register_publishable
from ..simulators.space import ParameterSpace
from .checks import as_space

__all__ = ["PosteriorEstimator", "PosteriorMixture", "FLOWS"]

FLOWS = ("nsf", "maf", "nsf_coupling", "realnvp")
"""Available flows: autoregressive rational-quadratic splines (arXiv:1906.04032), masked
autoregressive affine (arXiv:1705.07057), spline coupling, affine coupling (arXiv:1605.08803)."""

_EPS = 1e-6


def _build_flow(kind: str, features: int, context: int, *, transforms: int, hidden: Sequence[int], bins: int) -> nn.Module:
    hidden = tuple(int(h) for h in hidden)
    spline = dict(univariate=partial(zuko.transforms.MonotonicRQSTransform, slope=1e-3),
                  shapes=[(bins,), (bins,), (bins - 1,)])
    if kind == "nsf":
        return zuko.flows.NSF(features, context, bins=bins, transforms=transforms, hidden_features=hidden)
    if kind == "maf":
        return zuko.flows.MAF(features, context, transforms=transforms, hidden_features=hidden)
    if kind in ("nsf_coupling", "realnvp"):
        if features < 2:
            raise ConfigError(f"PosteriorEstimator: flow={kind!r} (coupling) needs >= 2 parameters; use flow='nsf' or 'maf'.")
        extra = spline if kind == "nsf_coupling" else {}
        return zuko.flows.NICE(features, context, transforms=transforms, hidden_features=hidden, **extra)
    raise ConfigError(f"PosteriorEstimator: unknown flow {kind!r}; choose one of {FLOWS}.")


@register_publishable
class PosteriorEstimator(nn.Module):
    r"""Conditional normalizing flow :math:`q(\theta|x)` with bounded support and optional embedding.

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
        super().__init__()
        self.space = space = as_space(space)
        self.x_features = int(x_features)
        self.is_set = bool(sets)
        if self.is_set and embedding is None:
            embedding = {"kind": "deepsets"}
        self._options = {"sets": self.is_set, "flow": flow, "transforms": int(transforms), "hidden": [int(h) for h in hidden],
                         "bins": int(bins), "embedding": dict(embedding) if isinstance(embedding, dict) else None}
        self._custom_embedding = isinstance(embedding, nn.Module)
        p = space.dim
        has_low, has_high = torch.isfinite(space.low), torch.isfinite(space.high)
        bounded = has_low & has_high
        dtype = torch.get_default_dtype()
        zero = torch.zeros(p, dtype=torch.float64)
        # one-sided bounds: theta = low + exp(y) or high - exp(y); "low" holds the finite end
        self.register_buffer("low", torch.where(has_low, space.low, torch.where(has_high, space.high, zero)).to(dtype))
        self.register_buffer("width", torch.where(bounded, space.high - space.low, torch.ones(p, dtype=torch.float64)).to(dtype))
        self.register_buffer("bounded", bounded)
        self.register_buffer("lower_only", has_low & ~has_high)
        self.register_buffer("upper_only", has_high & ~has_low)
        self.register_buffer("z_mean", torch.zeros(p))
        self.register_buffer("z_std", torch.ones(p))
        self.x_norm = Standardize(self.x_features)
        self.embedding = build_embedding(embedding, self.x_features, sets=self.is_set, owner="PosteriorEstimator")
        context = self._context_features()
        self.flow = _build_flow(flow, space.dim, context, transforms=int(transforms), hidden=hidden, bins=int(bins))

    # ------------------------------------------------------------------ set-up
    def _context_features(self) -> int:
        if self.embedding is None:
            return self.x_features
        out = getattr(self.embedding, "out_features", None)
        if isinstance(out, int):
            return out
        with torch.no_grad():
            probe = torch.zeros(1, 1, self.x_features) if self.is_set else torch.zeros(1, self.x_features)
            y = self.embedding(probe, torch.ones(1, 1, dtype=torch.bool)) if self.is_set else self.embedding(probe)
        return int(y.shape[-1])

    def _to_y(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``theta (..., P)`` -> unconstrained ``y`` and elementwise ``log|dy/dθ|``."""
        u = ((theta - self.low) / self.width).clamp(_EPS, 1 - _EPS)
        logit = torch.log(u) - torch.log1p(-u)
        dist = torch.where(self.lower_only, theta - self.low, self.low - theta).clamp_min(1e-30)
        y = torch.where(self.bounded, logit, torch.where(self.lower_only | self.upper_only, torch.log(dist), theta))
        log_jac = torch.where(
            self.bounded, -torch.log(self.width) - torch.log(u) - torch.log1p(-u),
            torch.where(self.lower_only | self.upper_only, -torch.log(dist), torch.zeros_like(theta)),
        )
        return y, log_jac

    def _unconstrain(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``theta (..., P)`` -> standardised ``z (..., P)`` and ``log|dz/dθ|`` summed, ``(...)``."""
        y, log_jac = self._to_y(theta)
        z = (y - self.z_mean) / self.z_std
        return z, (log_jac - torch.log(self.z_std)).sum(-1)

    def _constrain(self, z: Tensor) -> Tensor:
        y = z * self.z_std + self.z_mean
        e = torch.exp(y.clamp(max=80.0))
        one_sided = torch.where(self.lower_only, self.low + e, self.low - e)
        return torch.where(self.bounded, self.low + self.width * torch.sigmoid(y),
                           torch.where(self.lower_only | self.upper_only, one_sided, y))

    @classmethod
    def from_events(cls, events: Events, space: Any, **options: Any) -> "PosteriorEstimator":
        """A new estimator whose input shape and standardisation come from the training ``events``."""
        return cls(space, events.n_observables, sets=events.is_set, **options).standardize_from(events)

    @torch.no_grad()
    def standardize_from(self, events: Events) -> "PosteriorEstimator":
        """Fit the standardisation buffers of ``x`` and of the unconstrained ``θ`` to training events."""
        self._check_x(events.x, events.mask)
        theta = events.theta.to(self.low)
        self.space.check(theta, argument="standardize_from: events.theta")
        y, _ = self._to_y(theta)
        self.z_mean.copy_(y.mean(0))
        self.z_std.copy_(y.std(0).clamp_min(1e-6))
        mask = events.mask if self.is_set else None
        x = torch.nan_to_num(events.x) if mask is not None else events.x
        self.x_norm.set_from(x, mask=mask)
        return self

    # ------------------------------------------------------------------ evaluation
    def context(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Context vector of standardised (and embedded) observations, ``(B, C)``."""
        if self.is_set:
            if mask is None:
                mask = ~torch.isnan(x).all(-1)
            xs = torch.where(mask.unsqueeze(-1), self.x_norm(torch.nan_to_num(x)), torch.zeros((), dtype=x.dtype, device=x.device))
            return self.embedding(xs, mask)
        xs = self.x_norm(x)
        return xs if self.embedding is None else self.embedding(xs)

    def forward(self, theta: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Unchecked :math:`\log q(\theta|x)`: ``theta (..., B, P)``, ``x (B, ...)`` -> ``(..., B)``."""
        z, log_jac = self._unconstrain(theta)
        return self.flow(self.context(x, mask)).log_prob(z) + log_jac

    def _check_x(self, x: Tensor, mask: Tensor | None) -> None:
        want = (3 if self.is_set else 2)
        if x.dim() != want or x.shape[-1] != self.x_features:
            raise ShapeMismatchError(
                f"PosteriorEstimator: x has shape {tuple(x.shape)}; the estimator was trained on observations of shape "
                f"{'(B, M, ' if self.is_set else '(B, '}{self.x_features}). Pass x with the training shape."
            )
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ShapeMismatchError(f"PosteriorEstimator: mask has shape {tuple(mask.shape)}; it must be (B, M) = {tuple(x.shape[:2])}.")
        if self.is_set:
            keep = ~torch.isnan(x).all(-1) if mask is None else mask.bool()
            valid = x[keep]
        else:
            valid = x
        if not bool(torch.isfinite(valid).all()):
            raise InvalidEventsError(
                "PosteriorEstimator: the observation x contains NaN or inf values; remove or fix them "
                "(for sets, mark padding with the mask or pad with all-NaN rows)."
            )

    def _batched_x(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, bool]:
        x = torch.as_tensor(x, dtype=self.low.dtype, device=self.low.device)
        single = x.dim() == (2 if self.is_set else 1)
        if single:
            x = x.unsqueeze(0)
            mask = None if mask is None else torch.as_tensor(mask).unsqueeze(0)
        self._check_x(x, mask)
        return x, mask, single

    def log_prob(self, theta: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Checked :math:`\log q(\theta|x)`.

        Args:
            theta: ``(..., B, P)`` parameter points, inside the space.
            x: ``(B, ...)`` observations (``B = 1`` or a single unbatched one broadcasts).
            mask: ``(B, M)`` for set observations (default: entries that are all-NaN are padding).

        Returns:
            ``(..., B)`` log densities.

        Raises:
            ShapeMismatchError: ``x`` or ``theta`` has the wrong shape.
            InvalidEventsError: ``x`` has NaN/inf values.
            OutOfSupportError: some ``theta`` lie outside the parameter space.
        """
        return self.forward(*self._checked(theta, x, mask))

    def _checked(self, theta: Tensor, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``theta``, ``x`` and ``mask`` validated for :meth:`log_prob` (shapes, NaNs, support)."""
        x, mask, _ = self._batched_x(x, mask)
        theta = torch.as_tensor(theta, dtype=self.low.dtype, device=self.low.device)
        if theta.dim() == 0 or theta.shape[-1] != self.space.dim:
            raise ShapeMismatchError(f"PosteriorEstimator.log_prob: theta has shape {tuple(theta.shape)}; expected (..., B, {self.space.dim}).")
        self.space.check(theta.reshape(-1, self.space.dim), argument="PosteriorEstimator.log_prob: theta")
        return theta, x, mask

    @torch.no_grad()
    def sample(self, n: int, x: Tensor, *, mask: Tensor | None = None, generator: torch.Generator | None = None,
               chunk: int = 2**18) -> Tensor:
        """Draw ``n`` posterior samples for each of ``B`` observations at once.

        Args:
            n: Samples per observation.
            x: ``(B, ...)`` observations, or one unbatched observation ``(D,)`` or ``(M, F)``.
            mask: ``(B, M)`` set mask (sets only).
            generator: Source of the base noise.
            chunk: Largest number of rows ``n * B`` pushed through the flow at once.

        Returns:
            ``(n, B, P)`` samples, or ``(n, P)`` for one unbatched observation; always inside
            the parameter space (no rejection).
        """
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"PosteriorEstimator.sample: n must be a positive integer, got {n!r}.")
        x, mask, single = self._batched_x(x, mask)
        dist = self.flow(self.context(x, mask))
        b, p = x.shape[0], self.space.dim
        step = max(1, chunk // b)
        parts = []
        for start in range(0, n, step):
            m = min(step, n - start)
            eps = torch.randn(m, b, p, generator=generator, dtype=self.low.dtype, device="cpu" if generator is None else generator.device)
            parts.append(self._constrain(dist.transform.inv(eps.to(self.low.device))))
        out = torch.cat(parts, 0)
        return out[:, 0] if single else out

    # ------------------------------------------------------------------ publishing
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (weights and buffers are stored separately)."""
        if self._custom_embedding:
            raise ConfigError(
                f"PosteriorEstimator.spec: the embedding {type(self.embedding).__name__} was passed as a module; "
                "only embeddings given as option dicts ({'kind': ...}) can be published."
            )
        return {"space": self.space.to_dict(), "x_features": self.x_features, **self._options}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "PosteriorEstimator":
        """Rebuild an (untrained) estimator from :meth:`spec`."""
        spec = dict(spec)
        try:
            return cls(spec.pop("space"), spec.pop("x_features"), **spec)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"PosteriorEstimator.from_spec: malformed spec ({err}).") from None

    def extra_repr(self) -> str:
        return f"parameters={list(self.space.names)}, x_features={self.x_features}, sets={self.is_set}, flow={self._options['flow']}"


@register_publishable
class PosteriorMixture(nn.Module):
    r"""Equal-weight mixture of an ensemble of posteriors, :math:`q(\theta|x) = \frac1K\sum_k q_k(\theta|x)`.

    Deep ensembles (Lakshminarayanan et al., arXiv:1612.01474) for amortised posteriors: the K
    members of ``fit(PosteriorEstimator, npe_loss, ..., ensemble=K).model`` see the same batches
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
                f"PosteriorMixture: ensemble must be an Ensemble of PosteriorEstimators (fit(..., ensemble=K).model), "
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
