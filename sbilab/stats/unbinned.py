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

The likelihood itself is an :class:`~sbilab.stats.model.UnbinnedModel` — the same object
:func:`~sbilab.stats.fit_toys` evaluates for toys; pass one, or the parts (``log_ratio``,
``space``, ``yield_model``, ``constraints``, ``limits``) to have it built. Observed events that
are padded sets reach the log-ratio with their mask (``log_ratio(x, theta, mask=mask)``).

Precision: an ``nn.Module`` estimator is deep-copied and cast to float64 for evaluation
(the caller's module is untouched), events are cast to float64 and sums are accumulated in
float64 — Minuit's finite-difference HESSE needs a smooth, noise-free cost, which float32
sums over thousands of events do not give. θ-gradients are passed to Minuit (``grad=``),
computed by autograd through the estimator; a callable whose output carries no graph falls
back to Minuit's numerical derivatives. With autograd available, MIGRAD's minimum is polished
by Newton steps on the autograd Hessian and the covariance is the inverse of that Hessian
(exact, as :func:`~sbilab.stats.fit_toys` computes it); near a bound, or where the Hessian is
not positive definite, HESSE's covariance is kept.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from iminuit import Minuit
from torch import Tensor

from ..events import Events
from ..exceptions import FitError, OutOfSupportError
from ..simulators.space import ParameterSpace
from .intervals import ONE_SIGMA, profile_intervals, warn_one_sided
from ..estimators.support import TrainingSupport
from .model import LogRatio, UnbinnedModel, YieldModel, as_model
from .quality import bound_issue, check_observed, fmin_reason, parameters_at_bound
from .results import FitResult, Profile2DResult, ProfileResult

__all__ = ["UnbinnedLikelihood", "LogRatio", "YieldModel"]


class UnbinnedLikelihood:
    r"""Unbinned (extended) likelihood of observed events under a learned ratio.

    Args:
        log_ratio: An :class:`~sbilab.stats.model.UnbinnedModel`, or the per-event log-ratio
            ``log_ratio(x: (N, D), theta: (N, P)) -> (N,)`` (for padded sets also given
            ``mask=(N, M)``), e.g. a trained ``RatioEstimator`` or
            ``lambda x, th: sim.log_prob(x, th) - sim.log_prob(x, ref)``.
        observed: Observed events (``Events.observed(x)``); their weights (and set mask) are used.
        space: Parameter space of the estimator (names, bounds, reference). Bounds become
            Minuit limits: the estimator is meaningless outside the space it was trained on.
            Not given with a model (it has its own).
        yield_model: Optional expected yield :math:`\nu(\theta)` for an extended fit.
        constraints: Gaussian constraints ``{name: (mean, sigma)}`` for nuisance parameters.
        fixed: Parameters held fixed, ``{name: value}``.
        limits: Overrides of the space's bounds, ``{name: (lo, hi)}`` (must lie inside it).
        start: Starting values ``{name: value}`` (default: the space's reference point).
        batch_size: Events per estimator call.
        tolerance: MIGRAD tolerance (iminuit ``tol``): it stops when the estimated distance
            to the minimum is below ``0.002 * tolerance`` in :math:`-2\log L`, i.e. the best
            fit is within about ``0.06 * sqrt(tolerance)`` standard deviations of the minimum
            (then polished by Newton steps when autograd gradients are available).
        support: The training support to check the observed events against (default: the one
            the estimator behind ``log_ratio`` recorded; see :mod:`sbilab.stats.quality`).
        max_outside: Largest weighted fraction of observed events allowed outside that support
            before fits are reported not valid (default 0; 1 switches the check off).

    Fits are reported not valid (``valid=False`` and the reason in ``message``) when an optimum
    lies at a bound of the range, observed weights are negative, or more than ``max_outside``
    of the observed events lie outside the estimator's training support (:mod:`sbilab.stats.quality`).

    Raises:
        FitError: unknown parameter names, an empty observed dataset, non-positive constraint
            widths, a free parameter without finite bounds, model parts given twice, or
            ``max_outside`` outside ``[0, 1]``.
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
        log_ratio: LogRatio | UnbinnedModel,
        observed: Events,
        space: ParameterSpace | None = None,
        *,
        yield_model: YieldModel | None = None,
        constraints: Mapping[str, tuple[float, float]] | None = None,
        fixed: Mapping[str, float] | None = None,
        limits: Mapping[str, tuple[float, float]] | None = None,
        start: Mapping[str, float] | None = None,
        batch_size: int = 65536,
        tolerance: float = 0.01,
        support: TrainingSupport | None = None,
        max_outside: float = 0.0,
    ) -> None:
        if not isinstance(observed, Events):
            raise FitError(f"observed must be Events (use Events.observed(x)), got {type(observed).__name__}.")
        if len(observed) == 0:
            raise FitError("observed has no events; an unbinned fit needs at least one observed event.")
        self.model = as_model(log_ratio, space, yield_model=yield_model, constraints=constraints, limits=limits)
        self._model64 = self.model.double()
        self.space = self.model.space
        self.names = self.model.names
        self.yield_model = self.model.yield_model
        self.constraints = self.model.constraints
        x = observed.x.detach().to(torch.float64)
        self._x = x.unsqueeze(0)  # one dataset: (1, N, D) or (1, N, M, F)
        self._w = observed.weights_or_ones().detach().to(device=x.device, dtype=torch.float64).unsqueeze(0)
        self._mask = None if observed.mask is None else observed.mask.to(x.device).unsqueeze(0)
        self.n_observed = float(self._w.sum())
        self.quality = check_observed(self.model.log_ratio, observed, support=support, max_outside=max_outside)
        self.batch_size = int(batch_size)
        self.tolerance = float(tolerance)
        self.fixed = {k: float(v) for k, v in self._check_names(fixed, "fixed").items()}
        lo, hi = self.model.low.numpy().copy(), self.model.high.numpy().copy()
        self.limits = list(zip(lo.tolist(), hi.tolist()))
        for i, name in enumerate(self.names):
            if name not in self.fixed and not (math.isfinite(lo[i]) and math.isfinite(hi[i])):
                raise FitError(
                    f"parameter {name!r} has no finite bounds ({lo[i]}, {hi[i]}); pass limits={{{name!r}: (lo, hi)}} "
                    "covering the region the estimator was trained on, or fix it with fixed=."
                )
        start_point = self.space.reference.numpy().copy()
        for name, v in self._check_names(start, "start").items():
            start_point[self.names.index(name)] = float(v)
        for name, v in self.fixed.items():
            start_point[self.names.index(name)] = v
        self.space.check(torch.as_tensor(start_point).reshape(1, -1), argument="start/fixed values")
        self.start = start_point
        self._cache: tuple[bytes, float, np.ndarray | None] | None = None
        self.use_gradient = self._probe_gradient()

    # ------------------------------------------------------------------ checks
    def _check_names(self, mapping: Mapping[str, object] | None, argument: str) -> dict[str, object]:
        return self.model._check_names(mapping, argument)

    def _index(self, name: str) -> int:
        return self.model.index(name)

    def _probe_gradient(self) -> bool:
        th = torch.as_tensor(self.start, dtype=torch.float64).reshape(1, -1).requires_grad_(True)
        k = min(2, self._x.shape[1])
        with torch.enable_grad():
            events = self._model64.event_term(th, self._x[:, :k], mask=None if self._mask is None else self._mask[:, :k])
            extra = self._model64.global_term(th, torch.full((1,), self.n_observed, dtype=torch.float64))
        has_global = self.yield_model is not None or bool(self.constraints)
        return bool(events.requires_grad and (extra.requires_grad or not has_global))

    # ------------------------------------------------------------------ cost
    def _derivatives(self, theta: np.ndarray, *, hessian: bool, free: Tensor | None = None) -> tuple[float, np.ndarray, np.ndarray | None]:
        th = torch.tensor(np.asarray(theta, dtype=np.float64), device=self._x.device).reshape(1, -1)
        v, g, h = self._model64.derivatives(th, self._x, weights=self._w, mask=self._mask, free=free, hessian=hessian,
                                            chunk_events=self.batch_size)
        return float(v[0]), g[0].cpu().numpy(), None if h is None else h[0].cpu().numpy()

    def _evaluate(self, theta: np.ndarray, need_grad: bool) -> tuple[float, np.ndarray | None]:
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._cache is not None and self._cache[0] == key and (self._cache[2] is not None or not need_grad):
            return self._cache[1], self._cache[2]
        need_grad = need_grad and self.use_gradient
        if not np.all(np.isfinite(theta)):  # MINOS can probe NaN points; report them as failed steps
            return math.nan, (np.full(len(self.names), math.nan) if need_grad else None)
        if need_grad:
            value, g, _ = self._derivatives(theta, hessian=False)
        else:
            th = torch.tensor(np.asarray(theta, dtype=np.float64), device=self._x.device).reshape(1, -1)
            with torch.no_grad():
                value = float(self._model64.twice_nll(th, self._x, weights=self._w, mask=self._mask, chunk_events=self.batch_size)[0])
            g = None
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

    def fit(self, *, minos: bool | Sequence[str] = False, start: Mapping[str, float] | None = None, fixed: Mapping[str, float] | None = None,
            polish: bool = True) -> FitResult:
        r"""Best fit by MIGRAD (Newton-polished), errors from the autograd Hessian (else HESSE), optionally MINOS.

        Args:
            minos: ``True`` for MINOS intervals of every free parameter, or a list of names.
            start: Starting values overriding those given at construction.
            fixed: Extra parameters to hold fixed for this fit, ``{name: value}``.
            polish: Newton-polish MIGRAD's minimum and take the covariance from the autograd
                Hessian (when available). Profile scans pass ``False``: their many points need
                only MIGRAD's minimum value (within ~1e-5 of the exact one in
                :math:`-2\log L`), and the Hessians would cost about a third more time.

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
        polished = self._polish(np.array(m.values, dtype=np.float64), free) if (polish and free and finite and m.valid) else None
        if polished is not None:
            point, fval, exact_cov = polished
        valid = bool(m.valid and (m.accurate or polished is not None) and finite) if free else finite
        message = ""
        if not finite:
            message = "the cost is NaN or infinite at the minimum (estimator outputs are not finite there)"
        elif free and not m.valid:
            message = f"MIGRAD did not find a valid minimum: {str(m.fmin).splitlines()[0] if m.fmin else 'no minimum'}"
            message = fmin_reason(m) or message
        elif free and not m.accurate and polished is None:
            message = "HESSE covariance is not accurate (forced positive definite or failed)"
        best = point if polished is not None else np.array(m.values, dtype=np.float64)
        best_dict = {n: float(best[i]) for i, n in enumerate(self.names)}
        at_bound = parameters_at_bound(self.names, best_dict, self.limits, free) if finite else []
        issues = [bound_issue(name, best_dict[name], self.limits[self._index(name)]) for name in at_bound] + list(self.quality.issues)
        if issues:
            valid = False
            message = "; ".join(([message] if message else []) + issues)
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
        if polished is not None:
            cov = exact_cov
        elif free and m.covariance is not None:
            cov = np.array(m.covariance, dtype=float)
        return FitResult(
            names=self.names,
            best=best_dict,
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
            at_bound=tuple(at_bound),
            outside_support=self.quality.outside_support,
            notes=self.quality.notes,
        )

    def _polish(self, point: np.ndarray, free: Sequence[str], steps: int = 4) -> tuple[np.ndarray, float, np.ndarray] | None:
        r"""Newton steps from MIGRAD's minimum on the autograd gradient and Hessian of the model.

        Returns ``(best (P,), -2 log L there, covariance (P, P) = 2 H^{-1} on the free
        parameters)``, or ``None`` (MIGRAD's point and HESSE kept) when the likelihood has no
        autograd graph, the Hessian is not positive definite, or a step would leave the limits.
        """
        if not self.use_gradient:
            return None
        idx = [self.names.index(n) for n in free]
        mask = torch.zeros(len(self.names), dtype=torch.bool)
        mask[idx] = True
        lo, hi = np.array([a for a, _ in self.limits]), np.array([b for _, b in self.limits])
        theta = point.copy()
        value, g, h = self._derivatives(theta, hessian=True, free=mask)
        for _ in range(steps):
            hf = h[np.ix_(idx, idx)]
            if not (math.isfinite(value) and np.all(np.isfinite(hf)) and np.all(np.linalg.eigvalsh(hf) > 0)):
                return None
            step = -np.linalg.solve(hf, g[idx])
            if float(-g[idx] @ step) < 1e-12:  # Newton decrement: -2 log L is within 1e-12 of its minimum
                break
            trial = theta.copy()
            trial[idx] += step
            if np.any(trial < lo) or np.any(trial > hi):
                return None
            v_trial, g_trial, h_trial = self._derivatives(trial, hessian=True, free=mask)
            if not v_trial <= value + 1e-12 * max(1.0, abs(value)):
                break
            theta, value, g, h = trial, v_trial, g_trial, h_trial
        hf = h[np.ix_(idx, idx)]
        if not np.all(np.linalg.eigvalsh(hf) > 0):
            return None
        cov = np.zeros((len(self.names), len(self.names)))
        cov[np.ix_(idx, idx)] = 2.0 * np.linalg.inv(hf)
        return theta, value, cov

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

        Each point is a MIGRAD minimum (not Newton-polished: see :meth:`fit`).

        Args:
            name: Scanned parameter.
            values: Scan points, ``(K,)``.
            best: A global fit to reuse (default: run :meth:`fit`).
        """
        values = self._check_scan(name, values)
        best = best if best is not None else self.fit()
        deltas, valids = [], []
        for v in values:
            res = self.fit(start=best.best, fixed={name: float(v)}, polish=False)
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
                res = self.fit(start=best.best, fixed={a: float(xv), b: float(yv)}, polish=False)
                row.append(res.nll_min - best.nll_min)
                row_ok.append(res.valid)
            grid.append(tuple(row))
            ok.append(tuple(row_ok))
        return Profile2DResult((a, b), tuple(xs.tolist()), tuple(ys.tolist()), tuple(grid), tuple(ok), best.nll_min)

    def interval(self, name: str, cl: float = ONE_SIGMA, *, best: FitResult | None = None) -> tuple[float, float]:
        r"""Profile-likelihood interval of ``name``: where :math:`-2\Delta\log L \le \chi^2_1(\mathrm{cl})`.

        The ends are found by :func:`~sbilab.stats.intervals.profile_intervals` stepping out from
        the best fit (Brent root finding on the profile, nuisances re-minimised at each trial
        point); an end beyond the parameter's bound is returned as the bound, and the interval
        is then one-sided: :class:`~sbilab.exceptions.OneSidedIntervalWarning` says so. The
        search takes a bounded number of fits even when the optimum sits at a bound. For several
        levels, a grid scan or the ``at_bound`` flags, call ``profile_intervals`` itself.
        """
        _, (found,) = profile_intervals(self, name, [cl], best=best)
        warn_one_sided(found, name)
        return found.lo, found.hi

