r"""Unbinned maximum-likelihood fits with a learned likelihood ratio, minimised by iminuit.

For observed events :math:`x_i` with weights :math:`w_i` and a (learned or exact) ratio
:math:`\hat r(x|\theta) = \hat p(x|\theta)/p(x|\theta_\mathrm{ref})`,

.. math::
    -2\log L(\theta) = -2\sum_i w_i \log \hat r(x_i|\theta)
        \;+\; 2\,[\nu(\theta) - n\log\nu(\theta)]
        \;+\; \sum_k \Big(\frac{\eta_k - m_k}{s_k}\Big)^2,

up to a θ-independent constant: the second term (extended likelihood, :math:`n=\sum_i w_i`)
enters only when a yield model :math:`\nu(\theta)` is given, the third for nuisance parameters
:math:`\eta_k` with Gaussian constraints :math:`\mathcal N(m_k, s_k)`. Nuisance parameters are
ordinary inputs of the estimator (part of its ``theta``). The cost has ``errordef = 1``
(it is already :math:`-2\log L`), so HESSE/MINOS errors are the usual 68.3% ones.

Precision: an ``nn.Module`` estimator is deep-copied and cast to float64 for evaluation
(the caller's module is untouched), events are cast to float64 and sums are accumulated in
float64 — Minuit's finite-difference HESSE needs a smooth, noise-free cost, which float32
sums over thousands of events do not give. θ-gradients are passed to Minuit (``grad=``),
computed by autograd through the estimator; a callable whose output carries no graph falls
back to Minuit's numerical derivatives.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from iminuit import Minuit
from torch import Tensor, nn

from ..events import Events
from ..exceptions import FitError, OutOfSupportError
from ..simulators.space import ParameterSpace
from .results import FitResult, Profile2DResult, ProfileResult

__all__ = ["UnbinnedLikelihood", "LogRatio", "YieldModel"]

LogRatio = Callable[[Tensor, Tensor], Tensor]
"""``log_ratio(x: (N, D), theta: (N, P)) -> (N,)``: a RatioEstimator or an exact toy ratio."""

YieldModel = Callable[[Tensor], Tensor]
"""``yield_model(theta: (P,)) -> ()``: expected number of events ν(θ), differentiable if possible."""


def _as_float64(log_ratio: LogRatio) -> LogRatio:
    """A float64 copy of a module estimator, or of the module behind a bound method such as
    ``estimator.log_ratio``: a sum over many events in float32 is too coarse for MIGRAD's
    convergence criterion (EDM ~ 1e-5 in -2 log L)."""
    owner = getattr(log_ratio, "__self__", None)
    if isinstance(log_ratio, nn.Module) or isinstance(owner, nn.Module):
        module = copy.deepcopy(log_ratio if isinstance(log_ratio, nn.Module) else owner).double().eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module if isinstance(log_ratio, nn.Module) else getattr(module, log_ratio.__name__)
    return log_ratio


class UnbinnedLikelihood:
    r"""Unbinned (extended) likelihood of observed events under a learned ratio.

    Args:
        log_ratio: ``log_ratio(x: (N, D), theta: (N, P)) -> (N,)``, e.g. a trained
            ``RatioEstimator`` or ``lambda x, th: sim.log_prob(x, th) - sim.log_prob(x, ref)``.
        observed: Observed events (``Events.observed(x)``); their weights are used.
        space: Parameter space of the estimator (names, bounds, reference). Bounds become
            Minuit limits: the estimator is meaningless outside the space it was trained on.
        yield_model: Optional expected yield :math:`\nu(\theta)` for an extended fit.
        constraints: Gaussian constraints ``{name: (mean, sigma)}`` for nuisance parameters.
        fixed: Parameters held fixed, ``{name: value}``.
        limits: Overrides of the space's bounds, ``{name: (lo, hi)}`` (must lie inside it).
        start: Starting values ``{name: value}`` (default: the space's reference point).
        batch_size: Events per estimator call.
        tolerance: MIGRAD tolerance (iminuit ``tol``): it stops when the estimated distance
            to the minimum is below ``0.002 * tolerance`` in :math:`-2\log L`, i.e. the best
            fit is within about ``0.06 * sqrt(tolerance)`` standard deviations of the minimum.

    Raises:
        FitError: unknown parameter names, an empty observed dataset, non-positive constraint
            widths, or a free parameter without finite bounds.
        OutOfSupportError: fixed or starting values outside the space.

    Example:
        >>> from sbilab.simulators.toys import GaussianLatent
        >>> sim = GaussianLatent()
        >>> ref = sim.space.reference
        >>> x = sim.simulate(400, theta=torch.tensor([0.3]), generator=torch.Generator().manual_seed(0)).x
        >>> nll = UnbinnedLikelihood(lambda x, t: sim.log_prob(x, t) - sim.log_prob(x, ref), Events.observed(x), sim.space)
        >>> res = nll.fit()
        >>> abs(res.best["theta"] - float(x.double().mean())) < 1e-4, round(res.errors["theta"], 4)
        (True, 0.1118)
    """

    def __init__(
        self,
        log_ratio: LogRatio,
        observed: Events,
        space: ParameterSpace,
        *,
        yield_model: YieldModel | None = None,
        constraints: Mapping[str, tuple[float, float]] | None = None,
        fixed: Mapping[str, float] | None = None,
        limits: Mapping[str, tuple[float, float]] | None = None,
        start: Mapping[str, float] | None = None,
        batch_size: int = 65536,
        tolerance: float = 0.01,
    ) -> None:
        if not isinstance(observed, Events):
            raise FitError(f"observed must be Events (use Events.observed(x)), got {type(observed).__name__}.")
        if len(observed) == 0:
            raise FitError("observed has no events; an unbinned fit needs at least one observed event.")
        self.space = space
        self.names = tuple(space.names)
        self._log_ratio = _as_float64(log_ratio)
        self._x = observed.x.detach().to(torch.float64)
        self._w = observed.weights_or_ones().detach().to(device=self._x.device, dtype=torch.float64)
        self.n_observed = float(self._w.sum())
        self.yield_model = yield_model
        self.batch_size = int(batch_size)
        self.tolerance = float(tolerance)
        self.constraints = {k: (float(m), float(s)) for k, (m, s) in self._check_names(constraints, "constraints").items()}
        for name, (_, s) in self.constraints.items():
            if not s > 0:
                raise FitError(f"constraints[{name!r}] has width {s}; a Gaussian constraint needs sigma > 0.")
        self.fixed = {k: float(v) for k, v in self._check_names(fixed, "fixed").items()}
        lo, hi = space.low.numpy().copy(), space.high.numpy().copy()
        for name, (a, b) in self._check_names(limits, "limits").items():
            i = self.names.index(name)
            if not (lo[i] <= a < b <= hi[i]):
                raise FitError(
                    f"limits[{name!r}] = ({a}, {b}) must be increasing and inside the space's bounds ({lo[i]}, {hi[i]})."
                )
            lo[i], hi[i] = a, b
        self.limits = list(zip(lo.tolist(), hi.tolist()))
        for i, name in enumerate(self.names):
            if name not in self.fixed and not (math.isfinite(lo[i]) and math.isfinite(hi[i])):
                raise FitError(
                    f"parameter {name!r} has no finite bounds ({lo[i]}, {hi[i]}); pass limits={{{name!r}: (lo, hi)}} "
                    "covering the region the estimator was trained on, or fix it with fixed=."
                )
        start_point = space.reference.numpy().copy()
        for name, v in self._check_names(start, "start").items():
            start_point[self.names.index(name)] = float(v)
        for name, v in self.fixed.items():
            start_point[self.names.index(name)] = v
        space.check(torch.as_tensor(start_point).reshape(1, -1), argument="start/fixed values")
        self.start = start_point
        self._cache: tuple[bytes, float, np.ndarray | None] | None = None
        self.use_gradient = self._probe_gradient()

    # ------------------------------------------------------------------ checks
    def _check_names(self, mapping: Mapping[str, object] | None, argument: str) -> dict[str, object]:
        mapping = dict(mapping or {})
        unknown = [k for k in mapping if k not in self.names]
        if unknown:
            raise FitError(f"{argument} names unknown parameters {unknown}; the parameters are {list(self.names)}.")
        return mapping

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise FitError(f"unknown parameter {name!r}; the parameters are {list(self.names)}.")
        return self.names.index(name)

    def _probe_gradient(self) -> bool:
        th = torch.as_tensor(self.start, dtype=torch.float64).requires_grad_(True)
        with torch.enable_grad():
            out = self._log_ratio(self._x[:2], th.expand(min(2, len(self._x)), -1))
        return isinstance(out, Tensor) and out.requires_grad

    # ------------------------------------------------------------------ cost
    def _evaluate(self, theta: np.ndarray, need_grad: bool) -> tuple[float, np.ndarray | None]:
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._cache is not None and self._cache[0] == key and (self._cache[2] is not None or not need_grad):
            return self._cache[1], self._cache[2]
        need_grad = need_grad and self.use_gradient
        if not np.all(np.isfinite(theta)):  # MINOS can probe NaN points; report them as failed steps
            return math.nan, (np.full(len(self.names), math.nan) if need_grad else None)
        th = torch.tensor(np.asarray(theta, dtype=np.float64), device=self._x.device).requires_grad_(need_grad)
        grad = torch.zeros_like(th) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=self._x.device)
        with torch.set_grad_enabled(need_grad):
            for start in range(0, len(self._x), self.batch_size):
                x = self._x[start : start + self.batch_size]
                w = self._w[start : start + self.batch_size]
                value = -2.0 * (w * self._log_ratio(x, th.expand(len(x), -1)).to(torch.float64)).sum()
                if need_grad:
                    grad = grad + torch.autograd.grad(value, th)[0]
                total = total + value.detach()
            extra = torch.zeros((), dtype=torch.float64, device=self._x.device)
            if self.yield_model is not None:
                nu = torch.as_tensor(self.yield_model(th), dtype=torch.float64)
                extra = extra + 2.0 * (nu - self.n_observed * torch.log(nu))
            for name, (mean, sigma) in self.constraints.items():
                extra = extra + ((th[self.names.index(name)] - mean) / sigma) ** 2
            if need_grad and extra.requires_grad:
                grad = grad + torch.autograd.grad(extra, th)[0]
        value = float(total + extra.detach())
        g = None if grad is None else grad.detach().cpu().numpy()
        self._cache = (key, value, g)
        return value, g

    def __call__(self, theta: Sequence[float] | np.ndarray) -> float:
        r""":math:`-2\log L(\theta)` at ``theta: (P,)`` (order of ``names``)."""
        return self._evaluate(np.asarray(theta, dtype=np.float64), False)[0]

    def gradient(self, theta: Sequence[float] | np.ndarray) -> np.ndarray:
        r""":math:`\nabla_\theta(-2\log L)` at ``theta: (P,)`` by autograd, ``(P,)``."""
        value, grad = self._evaluate(np.asarray(theta, dtype=np.float64), True)
        if grad is None:
            raise FitError("this log_ratio is not differentiable in theta (its output has no autograd graph).")
        return grad

    # ------------------------------------------------------------------ minuit
    def _minuit(self, start: np.ndarray, fixed: Mapping[str, float]) -> Minuit:
        m = Minuit(self.__call__, np.asarray(start, dtype=np.float64), name=self.names, grad=self.gradient if self.use_gradient else None)
        m.errordef = Minuit.LEAST_SQUARES
        m.tol = self.tolerance
        m.limits = self.limits
        for i, name in enumerate(self.names):
            lo, hi = self.limits[i]
            m.errors[name] = 0.1 * (hi - lo) if math.isfinite(hi - lo) else 0.1
            if name in fixed:
                m.values[name] = fixed[name]
                m.fixed[name] = True
        return m

    def _run(self, m: Minuit) -> Minuit:
        if all(m.fixed[n] for n in self.names):
            return m
        m.migrad()
        # Retries before reporting failure: MIGRAD continued from where it stopped with the more
        # careful strategy (this usually settles an EDM just above tolerance), then a SIMPLEX
        # restart for a start far from the minimum.
        for _ in range(2):
            if m.valid:
                return m
            m.strategy = 2
            m.migrad()
        if not m.valid:
            m.simplex()
            m.migrad()
        return m

    def fit(self, *, minos: bool | Sequence[str] = False, start: Mapping[str, float] | None = None, fixed: Mapping[str, float] | None = None) -> FitResult:
        r"""Best fit by MIGRAD, errors by HESSE and optionally MINOS.

        Args:
            minos: ``True`` for MINOS intervals of every free parameter, or a list of names.
            start: Starting values overriding those given at construction.
            fixed: Extra parameters to hold fixed for this fit, ``{name: value}``.

        Returns:
            A :class:`FitResult`; ``valid=False`` with a ``message`` when MIGRAD/HESSE failed
            or the cost was not finite at the minimum.
        """
        fixed_all = {**self.fixed, **{k: float(v) for k, v in self._check_names(fixed, "fixed").items()}}
        point = self.start.copy()
        for name, v in {**self._check_names(start, "start"), **fixed_all}.items():
            point[self.names.index(name)] = float(v)
        self.space.check(torch.as_tensor(point).reshape(1, -1), argument="start/fixed values")
        m = self._run(self._minuit(point, fixed_all))
        free = [n for n in self.names if n not in fixed_all]
        if free:
            m.hesse()
        fval = float(m.fval) if free else self(point)
        finite = math.isfinite(fval)
        valid = bool(m.valid and m.accurate and finite) if free else finite
        message = ""
        if not finite:
            message = "the cost is NaN or infinite at the minimum (estimator outputs are not finite there)"
        elif free and not m.valid:
            message = f"MIGRAD did not find a valid minimum: {str(m.fmin).splitlines()[0] if m.fmin else 'no minimum'}"
            message = _fmin_reason(m) or message
        elif free and not m.accurate:
            message = "HESSE covariance is not accurate (forced positive definite or failed)"
        minos_res: dict[str, tuple[float, float]] = {}
        if minos and free and valid:
            targets = free if minos is True else [n for n in minos if self._index(n) >= 0 and n in free]
            for name in targets:
                try:
                    m.minos(name)
                    me = m.merrors[name]
                    if not me.is_valid:
                        raise RuntimeError("no valid crossing found (the profile may be flat or hit a bound)")
                    minos_res[name] = (float(m.values[name] + me.lower), float(m.values[name] + me.upper))
                except RuntimeError as err:  # MINOS failure is reported, not raised
                    minos_res[name] = (math.nan, math.nan)
                    message = f"MINOS failed for {name}: {err}"
        cov = np.zeros((len(self.names), len(self.names)))
        if free and m.covariance is not None:
            cov = np.array(m.covariance, dtype=float)
        return FitResult(
            names=self.names,
            best={n: float(m.values[n]) for n in self.names},
            # sqrt(diag(cov)), not m.errors: for bounded parameters the latter carries the
            # linearised internal (sine) transformation and is off by ~1e-3 relative.
            errors={n: float(math.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(self.names)},
            covariance=tuple(tuple(row) for row in cov.tolist()),
            minos=minos_res,
            nll_min=fval,
            valid=valid,
            converged=bool(m.fmin.is_valid and not m.fmin.has_reached_call_limit) if (free and m.fmin) else finite,
            fixed=tuple(n for n in self.names if n in fixed_all),
            n_calls=int(m.nfcn),
            message=message,
        )

    # ------------------------------------------------------------------ profiles
    def _check_scan(self, name: str, values: Sequence[float]) -> np.ndarray:
        i = self._index(name)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        lo, hi = self.limits[i]
        if values.size == 0 or (values < lo).any() or (values > hi).any():
            raise OutOfSupportError(
                f"profile values of {name!r} must be non-empty and inside its bounds ({lo}, {hi}); got "
                f"[{values.min() if values.size else ''}, {values.max() if values.size else ''}]."
            )
        return values

    def profile(self, name: str, values: Sequence[float], *, best: FitResult | None = None) -> ProfileResult:
        r"""1-D profile of :math:`-2\Delta\log L` in ``name``, other free parameters re-minimised at each point.

        Args:
            name: Scanned parameter.
            values: Scan points, ``(K,)``.
            best: A global fit to reuse (default: run :meth:`fit`).
        """
        values = self._check_scan(name, values)
        best = best if best is not None else self.fit()
        deltas, valids = [], []
        for v in values:
            res = self.fit(start=best.best, fixed={name: float(v)})
            deltas.append(res.nll_min - best.nll_min)
            valids.append(res.valid)
        return ProfileResult(name, tuple(values.tolist()), tuple(deltas), tuple(valids), best.best[name], best.nll_min)

    def profile2d(self, names: tuple[str, str], x_values: Sequence[float], y_values: Sequence[float], *, best: FitResult | None = None) -> Profile2DResult:
        r"""2-D profile of :math:`-2\Delta\log L` on the grid ``x_values × y_values`` of ``names``."""
        a, b = names
        xs, ys = self._check_scan(a, x_values), self._check_scan(b, y_values)
        best = best if best is not None else self.fit()
        grid, ok = [], []
        for xv in xs:
            row, row_ok = [], []
            for yv in ys:
                res = self.fit(start=best.best, fixed={a: float(xv), b: float(yv)})
                row.append(res.nll_min - best.nll_min)
                row_ok.append(res.valid)
            grid.append(tuple(row))
            ok.append(tuple(row_ok))
        return Profile2DResult((a, b), tuple(xs.tolist()), tuple(ys.tolist()), tuple(grid), tuple(ok), best.nll_min)

    def interval(self, name: str, cl: float = 0.6826894921370859, *, best: FitResult | None = None) -> tuple[float, float]:
        r"""Profile-likelihood interval of ``name``: where :math:`-2\Delta\log L \le \chi^2_1(\mathrm{cl})`.

        The crossings are found by root finding (Brent) on the profile, nuisances re-minimised
        at each trial point; an end beyond the parameter's bound is returned as the bound.
        """
        from scipy.optimize import brentq
        from scipy.stats import chi2

        i = self._index(name)
        best = best if best is not None else self.fit()
        if not best.valid:
            raise FitError(f"the global fit is not valid ({best.message}); cannot build an interval for {name!r}.")
        level = float(chi2.ppf(cl, 1))
        centre = best.best[name]
        step = best.errors[name] if best.errors[name] > 0 else 0.1 * (self.limits[i][1] - self.limits[i][0])

        def excess(v: float) -> float:
            return self.fit(start=best.best, fixed={name: v}).nll_min - best.nll_min - level

        ends = []
        for sign in (-1.0, 1.0):
            bound = self.limits[i][0] if sign < 0 else self.limits[i][1]
            inner, outer = centre, centre + sign * step * math.sqrt(level)
            while (sign * (outer - bound) < 0) and excess(outer) < 0:
                inner, outer = outer, outer + sign * step
            if sign * (outer - bound) >= 0:
                outer = bound
                if excess(outer) < 0:
                    ends.append(bound)
                    continue
            ends.append(float(brentq(excess, min(inner, outer), max(inner, outer), xtol=1e-6 * max(step, 1e-12))))
        return ends[0], ends[1]


def _fmin_reason(m: Minuit) -> str:
    fmin = m.fmin
    if fmin is None:
        return ""
    reasons = [
        label
        for flag, label in (
            (fmin.has_reached_call_limit, "call limit reached"),
            (fmin.is_above_max_edm, f"EDM {fmin.edm:.3g} above tolerance"),
            (not fmin.has_covariance, "no covariance"),
            (fmin.has_parameters_at_limit, "parameters at limit"),
        )
        if flag
    ]
    return "MIGRAD did not converge: " + ", ".join(reasons) if reasons else ""
