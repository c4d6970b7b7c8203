r"""The one unbinned likelihood: :class:`UnbinnedModel`, evaluated by every fitter.

For a dataset of events :math:`x_i` with weights :math:`w_i` (:math:`n = \sum_i w_i`) and a
(learned or exact) per-event log-ratio :math:`\log\hat r(x|\theta) = \log\hat p(x|\theta) -
\log p(x|\theta_\mathrm{ref})`,

.. math::
    -2\log L(\theta) = \underbrace{-2\sum_i w_i \log\hat r(x_i|\theta)}_{\text{events}}
        \;+\; \underbrace{2\,[\nu(\theta) - n\log\nu(\theta)]
        \;+\; \sum_k \Big(\frac{\theta_k - m_k}{s_k}\Big)^2}_{\text{global}},

up to a θ-independent constant: the yield term (extended likelihood) enters when a yield model
:math:`\nu(\theta)` is given, the last sum for nuisance parameters with Gaussian constraints
:math:`\mathcal N(m_k, s_k)`. :class:`~sbilab.stats.UnbinnedLikelihood` (one dataset, iminuit)
and :func:`~sbilab.stats.fit_toys` (``T`` toy datasets, batched Newton) both evaluate this
object, so a coverage or Neyman study with nuisance parameters uses exactly the likelihood a
user fits to the data.

Sets of particles: when the events are padded sets ``x (.., M, F)``, the log-ratio is called
as ``log_ratio(x, theta, mask=mask)`` with the ``(.., M)`` validity mask (all true when the
events carry none), so padded entries never count as particles.

Example:
    >>> from sbilab.simulators import ParameterSpace
    >>> space = ParameterSpace(("mu",), low=(-3.0,), high=(3.0,))
    >>> model = UnbinnedModel(lambda x, t: t[:, 0] * x[:, 0] - t[:, 0] ** 2 / 2, space)  # N(mu, 1) vs N(0, 1)
    >>> x = torch.tensor([[[0.5], [1.5]]], dtype=torch.float64)  # one toy of two events
    >>> model.twice_nll(torch.tensor([[1.0]], dtype=torch.float64), x).tolist()  # -2 (1*2 - 2/2)
    [-2.0]
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..exceptions import FitError, ShapeMismatchError
from ..simulators.space import ParameterSpace

__all__ = ["UnbinnedModel", "LogRatio", "YieldModel", "event_log_ratio", "summed_log_ratio", "check_data", "as_model", "as_float64"]

LogRatio = Callable[..., Tensor]
r"""``log_ratio(x: (N, D), theta: (N, P)) -> (N,)`` for vector events, and
``log_ratio(x: (N, M, F), theta: (N, P), *, mask: (N, M)) -> (N,)`` for padded sets: a
:class:`~sbilab.RatioEstimator`, its ``log_ratio`` method, or an exact toy ratio."""

YieldModel = Callable[[Tensor], Tensor]
"""``yield_model(theta: (P,)) -> ()``: expected number of events ν(θ), differentiable if possible."""


def _module_of(fn: Callable) -> nn.Module | None:
    owner = getattr(fn, "__self__", None)
    return fn if isinstance(fn, nn.Module) else owner if isinstance(owner, nn.Module) else None


def as_float64(fn: Callable | None) -> Callable | None:
    """A float64 copy of a module (or of the module behind a bound method such as
    ``estimator.log_ratio``); other callables unchanged. A sum over many events in float32 is
    too coarse for MIGRAD's convergence criterion (EDM ~ 1e-5 in -2 log L)."""
    module = None if fn is None else _module_of(fn)
    if module is None:
        return fn
    copied = copy.deepcopy(module).double().eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied if isinstance(fn, nn.Module) else getattr(copied, fn.__name__)


def _dtype_of(fn: Callable) -> torch.dtype | None:
    """Floating dtype of the module behind ``fn`` (its first floating parameter or buffer), else None."""
    module = _module_of(fn)
    if module is None:
        return None
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _chunks(t: int, n: int, chunk_events: int) -> Iterator[tuple[slice, slice]]:
    """(toy slice, event slice) pieces of at most ~``chunk_events`` events."""
    if n >= chunk_events:
        for i in range(t):
            for s in range(0, n, chunk_events):
                yield slice(i, i + 1), slice(s, s + chunk_events)
    else:
        per = max(1, chunk_events // max(n, 1))
        for s in range(0, t, per):
            yield slice(s, s + per), slice(0, n)


def check_data(theta: Tensor, x: Tensor, weights: Tensor | None, mask: Tensor | None, dim: int | None = None) -> None:
    """ShapeMismatchError unless ``theta (T, P)``, ``x (T, N, D)``/``(T, N, M, F)``, ``weights (T, N)``, ``mask (T, N, M)`` agree."""
    p = theta.shape[-1] if dim is None else dim
    if x.dim() not in (3, 4) or theta.dim() != 2 or tuple(theta.shape) != (x.shape[0], p):
        raise ShapeMismatchError(
            f"x must be (T, N, D) or (T, N, M, F) and theta (T, {p}) with the same T; got {tuple(x.shape)} and {tuple(theta.shape)}."
        )
    if weights is not None and tuple(weights.shape) != tuple(x.shape[:2]):
        raise ShapeMismatchError(f"weights must be (T, N) = {tuple(x.shape[:2])}, got {tuple(weights.shape)}.")
    if mask is not None and (x.dim() != 4 or tuple(mask.shape) != tuple(x.shape[:3])):
        raise ShapeMismatchError(f"mask must be (T, N, M) = {tuple(x.shape[:3])} with sets x (T, N, M, F); got {tuple(mask.shape)}.")


def event_log_ratio(log_ratio: LogRatio, theta: Tensor, x: Tensor, *, weights: Tensor | None = None,
                    mask: Tensor | None = None) -> Tensor:
    r""":math:`\sum_i w_i\log\hat r(x_{ti}|\theta_t)` of one chunk, float64, ``(T,)``; differentiable in ``theta``.

    The log-ratio runs in its module's dtype (float32 networks stay float32); the sum is float64.
    Sets ``x (T, N, M, F)`` are passed with ``mask=`` (all true when ``mask`` is None).
    """
    t, n = x.shape[:2]
    dtype = _dtype_of(log_ratio) or theta.dtype
    xs = x.to(dtype).reshape(t * n, *x.shape[2:])
    th = theta.to(dtype)
    th = th.expand(n, -1) if t == 1 else th.repeat_interleave(n, dim=0)  # one dataset: a view, no copy
    if x.dim() == 4:
        m = torch.ones(x.shape[:3], dtype=torch.bool, device=x.device) if mask is None else mask
        values = log_ratio(xs, th, mask=m.reshape(t * n, -1))
    else:
        values = log_ratio(xs, th)
    values = torch.as_tensor(values).to(torch.float64).reshape(t, n)
    if weights is not None:
        values = weights.to(torch.float64) * values
    return values.sum(1)


def summed_log_ratio(log_ratio: LogRatio, theta: Tensor, x: Tensor, *, weights: Tensor | None = None,
                     mask: Tensor | None = None, chunk_events: int = 262_144) -> Tensor:
    r""":math:`\sum_i w_i\log\hat r(x_{ti}|\theta_t)` per dataset, float64, ``(T,)``, in chunks of ``chunk_events`` events."""
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=theta.device)
    for ts, es in _chunks(x.shape[0], x.shape[1], chunk_events):
        value = event_log_ratio(log_ratio, theta[ts], x[ts, es], weights=None if weights is None else weights[ts, es],
                                mask=None if mask is None else mask[ts, es])
        out = out.index_add(0, torch.arange(ts.start, ts.start + len(value), device=out.device), value)
    return out


class UnbinnedModel:
    r"""Log-ratio, yield, constraints and bounds: the unbinned likelihood :math:`-2\log L(\theta)`.

    Args:
        log_ratio: Per-event log-ratio (see :data:`LogRatio`), differentiable in θ for
            gradient-based fits.
        space: Parameter space (names, bounds, reference point).
        yield_model: Optional expected yield :math:`\nu(\theta)` for an extended fit.
        constraints: Gaussian constraints ``{name: (mean, sigma)}`` of nuisance parameters.
        limits: Narrower bounds ``{name: (lo, hi)}`` inside the space's (e.g. the region the
            estimator was trained on).

    Data of the methods: ``theta (T, P)`` one point per dataset; ``x (T, N, D)`` or padded sets
    ``(T, N, M, F)``; ``weights (T, N)`` (default ones; pad datasets of different sizes with
    zero-weight events whose ``x`` the log-ratio evaluates finitely); ``mask (T, N, M)`` bool.

    Raises:
        FitError: unknown parameter names, non-positive constraint widths, or limits that are
            not increasing or not inside the space.
    """

    def __init__(
        self,
        log_ratio: LogRatio,
        space: ParameterSpace,
        *,
        yield_model: YieldModel | None = None,
        constraints: Mapping[str, tuple[float, float]] | None = None,
        limits: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if not isinstance(space, ParameterSpace):
            raise FitError(f"space must be a ParameterSpace, got {type(space).__name__}.")
        self.log_ratio = log_ratio
        self.space = space
        self.names = tuple(space.names)
        self.yield_model = yield_model
        self.constraints = {k: (float(m), float(s)) for k, (m, s) in self._check_names(constraints, "constraints").items()}
        for name, (_, s) in self.constraints.items():
            if not s > 0:
                raise FitError(f"constraints[{name!r}] has width {s}; a Gaussian constraint needs sigma > 0.")
        low, high = space.low.clone(), space.high.clone()
        for name, (a, b) in self._check_names(limits, "limits").items():
            i = self.names.index(name)
            if not (float(low[i]) <= a < b <= float(high[i])):
                raise FitError(
                    f"limits[{name!r}] = ({a}, {b}) must be increasing and inside the space's bounds ({float(low[i])}, {float(high[i])})."
                )
            low[i], high[i] = a, b
        self.low, self.high = low, high
        self._limits = {k: (float(a), float(b)) for k, (a, b) in (limits or {}).items()}
        self._warned_vmap = False

    # ------------------------------------------------------------------ description
    @property
    def dim(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of parameter ``name``; FitError naming the parameters if unknown."""
        if name not in self.names:
            raise FitError(f"unknown parameter {name!r}; the parameters are {list(self.names)}.")
        return self.names.index(name)

    def _check_names(self, mapping: Mapping[str, object] | None, argument: str) -> dict[str, object]:
        mapping = dict(mapping or {})
        unknown = [k for k in mapping if k not in self.names]
        if unknown:
            raise FitError(f"{argument} names unknown parameters {unknown}; the parameters are {list(self.names)}.")
        return mapping

    def double(self) -> "UnbinnedModel":
        """The same model with module log-ratio and yield evaluated by float64 copies (the caller's modules untouched)."""
        return UnbinnedModel(as_float64(self.log_ratio), self.space, yield_model=as_float64(self.yield_model),
                             constraints=self.constraints, limits=self._limits)

    def __repr__(self) -> str:
        return (f"UnbinnedModel(names={self.names}, extended={self.yield_model is not None}, "
                f"constraints={self.constraints})")

    # ------------------------------------------------------------------ terms
    def event_term(self, theta: Tensor, x: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        r""":math:`-2\sum_i w_i\log\hat r(x_{ti}|\theta_t)` per dataset (one chunk), float64, ``(T,)``; differentiable in ``theta``."""
        return -2.0 * event_log_ratio(self.log_ratio, theta, x, weights=weights, mask=mask)

    def expected_yield(self, theta: Tensor) -> Tensor:
        r""":math:`\nu(\theta_t)`, ``(T,)`` float64, from ``theta (T, P)`` (one call per row, vectorised by ``torch.func.vmap``)."""
        assert self.yield_model is not None
        if theta.shape[0] == 1:
            return torch.as_tensor(self.yield_model(theta[0]), dtype=torch.float64).reshape(1)
        try:
            return torch.func.vmap(lambda th: torch.as_tensor(self.yield_model(th), dtype=torch.float64))(theta).reshape(-1)
        except RuntimeError as err:  # data-dependent Python control flow, .item(), numpy inside the yield model
            if not self._warned_vmap:
                warnings.warn(f"yield_model cannot be vectorised with torch.func.vmap ({err}); evaluating it row by row.", stacklevel=2)
                self._warned_vmap = True
            return torch.stack([torch.as_tensor(self.yield_model(th), dtype=torch.float64).reshape(()) for th in theta])

    def global_term(self, theta: Tensor, n: Tensor) -> Tensor:
        r"""Yield and constraint terms :math:`2[\nu - n\log\nu] + \sum_k((\theta_k - m_k)/s_k)^2`, ``(T,)`` float64.

        Args:
            theta: ``(T, P)``.
            n: Observed (weighted) number of events per dataset, ``(T,)``.
        """
        theta = theta.to(torch.float64)
        out = torch.zeros(theta.shape[0], dtype=torch.float64, device=theta.device)
        if self.yield_model is not None:
            nu = self.expected_yield(theta).to(theta.device)
            out = out + 2.0 * (nu - n.to(torch.float64) * torch.log(nu))
        for name, (mean, sigma) in self.constraints.items():
            out = out + ((theta[:, self.names.index(name)] - mean) / sigma) ** 2
        return out

    # ------------------------------------------------------------------ whole likelihood
    def n_events(self, x: Tensor, weights: Tensor | None) -> Tensor:
        """Weighted number of events per dataset, ``(T,)`` float64."""
        if weights is None:
            return torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64, device=x.device)
        return weights.to(torch.float64).sum(1)

    def twice_nll(self, theta: Tensor, x: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None,
                  chunk_events: int = 262_144) -> Tensor:
        r""":math:`-2\log L(\theta_t)` of every dataset, ``(T,)`` float64; differentiable in ``theta``."""
        check_data(theta, x, weights, mask, self.dim)
        events = -2.0 * summed_log_ratio(self.log_ratio, theta, x, weights=weights, mask=mask, chunk_events=chunk_events)
        return events + self.global_term(theta, self.n_events(x, weights))

    def derivatives(self, theta: Tensor, x: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None,
                    free: Tensor | None = None, hessian: bool = True, chunk_events: int = 262_144,
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
        r""":math:`-2\log L`, its gradient and Hessian in θ by autograd, per dataset.

        Derivatives are accumulated chunk by chunk (they are sums over events), so memory stays
        bounded by ``chunk_events`` events' autograd graph.

        Args:
            free: ``(P,)`` bool; Hessian rows of other parameters are left zero (default: all free).
            hessian: Also return the Hessian.

        Returns:
            ``value (T,)``, ``grad (T, P)``, ``hess (T, P, P)`` or ``None``; float64.

        Raises:
            FitError: the likelihood has no autograd graph in ``theta``.
        """
        check_data(theta, x, weights, mask, self.dim)
        t, p = theta.shape
        theta = theta.detach().to(torch.float64)
        free = torch.ones(p, dtype=torch.bool) if free is None else free
        value = torch.zeros(t, dtype=torch.float64, device=theta.device)
        grad = torch.zeros(t, p, dtype=torch.float64, device=theta.device)
        hess = torch.zeros(t, p, p, dtype=torch.float64, device=theta.device) if hessian else None

        def accumulate(rows: slice, fn: Callable[[Tensor], Tensor]) -> None:
            with torch.enable_grad():
                th = theta[rows].clone().requires_grad_(True)
                v = fn(th)
                if not v.requires_grad:
                    raise FitError("the likelihood is not differentiable in theta (the log-ratio or yield output has no autograd graph).")
                (g,) = torch.autograd.grad(v.sum(), th, create_graph=hessian)
                value[rows] += v.detach()
                grad[rows] += g.detach()
                if hess is not None:
                    for i in range(p):
                        if bool(free[i]) and g.requires_grad:
                            (h,) = torch.autograd.grad(g[:, i].sum(), th, retain_graph=True, allow_unused=True)
                            if h is not None:
                                hess[rows, i] += h

        for ts, es in _chunks(t, x.shape[1], chunk_events):
            accumulate(ts, lambda th: self.event_term(th, x[ts, es], weights=None if weights is None else weights[ts, es],
                                                      mask=None if mask is None else mask[ts, es]))
        if self.yield_model is not None or self.constraints:
            n = self.n_events(x, weights)
            accumulate(slice(0, t), lambda th: self.global_term(th, n))
        return value, grad, hess


def as_model(log_ratio: LogRatio | UnbinnedModel, space: ParameterSpace | None, **terms: object) -> UnbinnedModel:
    """``log_ratio`` if it is a model (then ``space`` and ``terms`` must be unset), else a model built from the parts."""
    if isinstance(log_ratio, UnbinnedModel):
        given = [k for k, v in terms.items() if v] + (["space"] if space is not None and space is not log_ratio.space else [])
        if given:
            raise FitError(f"{given} are part of the UnbinnedModel; set them when building the model, not here.")
        return log_ratio
    if space is None:
        raise FitError("a log_ratio callable needs its ParameterSpace (space=...); or pass an UnbinnedModel.")
    return UnbinnedModel(log_ratio, space, **terms)  # type: ignore[arg-type]
