r"""Weighted events: events carrying one weight per benchmark point, and morphing between them.

Generators such as MadGraph store, for each event drawn from one proposal q(x, z), its weight
:math:`w_b = d\sigma(x,z|\theta_b)/q(x,z)` at a few benchmark points :math:`\theta_b`. When
:math:`d\sigma` is a polynomial in θ (EFT couplings: amplitude linear in the couplings, so the
rate is quadratic), :math:`d\sigma(x,z|\theta) = \sum_c m_c(\theta) f_c(x,z)` with monomials
:math:`m_c`, and the weights at any θ follow exactly from the benchmark weights
(morphing, e.g. ATLAS ATL-PHYS-PUB-2015-047; MadMiner, arXiv:1907.10621):

.. math::
    w(\theta) = \sum_b \alpha_b(\theta)\, w_b, \qquad
    \alpha(\theta) = M^{-1\,T} m(\theta), \qquad M_{bc} = m_c(\theta_b).

From them follow the joint likelihood ratio and joint score of arXiv:1805.12244 with the full
event (x, z) as latent path:

.. math::
    r(x,z|\theta,\theta_\mathrm{ref}) = \frac{w(\theta)/\sigma(\theta)}{w(\theta_\mathrm{ref})/\sigma(\theta_\mathrm{ref})},
    \qquad t(x,z|\theta) = \frac{\nabla w(\theta)}{w(\theta)} - \frac{\nabla \sigma(\theta)}{\sigma(\theta)}.

:class:`WeightedEvents` is a :class:`~sbilab.simulators.base.Simulator`: ``sample(theta)``
resamples the pool with probability ∝ w(θ) (latent = pool index), so it works with
:func:`~sbilab.simulators.augment.ratio_training_data` and :func:`~sbilab.simulators.augment.augment`.
Its :meth:`WeightedEvents.training_data` builds the same balanced set without resampling, by
attaching weights instead (lower variance; the preferred route).
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import MorphingError, ShapeMismatchError
from .base import Simulator
from .space import ParameterSpace

__all__ = ["MorphingBasis", "WeightedEvents"]

_F64 = torch.float64


class MorphingBasis:
    r"""Monomial basis of a polynomial in θ and its morphing matrix for given benchmarks.

    Components are the monomials :math:`\prod_p \theta_p^{e_p}` with :math:`e_p \le` ``max_power[p]``
    and :math:`\sum_p e_p \le` ``max_total_power``, ordered by total degree, then with higher
    powers of earlier parameters first: for two couplings and degree 2,
    :math:`1, \theta_1, \theta_2, \theta_1^2, \theta_1\theta_2, \theta_2^2`.

    Args:
        n_parameters: Number of parameters P.
        max_power: Highest power of each parameter (int, or one per parameter).
        max_total_power: Highest total degree (default: ``max(max_power)``).
        benchmarks: Benchmark points ``(B, P)``; B must equal the number of components C,
            or exceed it with ``least_squares=True`` (pseudo-inverse).
        least_squares: Allow B > C.
        max_condition: Refuse benchmarks whose column-normalised monomial matrix has a
            larger condition number.

    Raises:
        MorphingError: benchmarks of the wrong shape or count, or unable to span the
            polynomial (rank-deficient or ill-conditioned; the message gives the condition number).

    Example:
        >>> basis = MorphingBasis(2, max_power=2, benchmarks=[[0, 0], [1, 0], [0, 1], [-1, 0], [1, 1], [0, -1]])
        >>> basis.n_components, basis.exponents.tolist()[3:]
        (6, [[2, 0], [1, 1], [0, 2]])
        >>> basis.coefficients(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).round(decimals=12).tolist()
        [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(
        self,
        n_parameters: int,
        *,
        max_power: int | Sequence[int] = 2,
        max_total_power: int | None = None,
        benchmarks: Any = None,
        least_squares: bool = False,
        max_condition: float = 1e8,
    ) -> None:
        if int(n_parameters) < 1:
            raise MorphingError(f"MorphingBasis: n_parameters must be >= 1, got {n_parameters}.")
        self.n_parameters = int(n_parameters)
        powers = [int(max_power)] * self.n_parameters if isinstance(max_power, int) else [int(p) for p in max_power]
        if len(powers) != self.n_parameters or min(powers) < 0:
            raise MorphingError(f"MorphingBasis: max_power needs {self.n_parameters} non-negative entries, got {max_power}.")
        total = max(powers) if max_total_power is None else int(max_total_power)
        exps = [e for e in itertools.product(*(range(p + 1) for p in powers)) if sum(e) <= total]
        exps.sort(key=lambda e: (sum(e), [-v for v in e]))
        self.max_power = tuple(powers)
        self.max_total_power = total
        self.exponents = torch.tensor(exps, dtype=torch.long)
        self.least_squares = bool(least_squares)
        self.max_condition = float(max_condition)
        self.benchmarks: Tensor | None = None
        self.matrix: Tensor | None = None
        self.morphing_matrix: Tensor | None = None
        self.condition_number: float | None = None
        if benchmarks is not None:
            self.set_benchmarks(benchmarks)

    @property
    def n_components(self) -> int:
        return int(self.exponents.shape[0])

    def _powers(self, theta: Tensor) -> Tensor:
        """Table of powers θ_p^k, ``(N, P, K+1)``, by repeated products (safe gradients at θ = 0)."""
        table = [torch.ones_like(theta)]
        for _ in range(max(self.max_power)):
            table.append(table[-1] * theta)
        return torch.stack(table, dim=-1)

    def components(self, theta: Tensor) -> Tensor:
        r"""Monomials :math:`m_c(\theta)`, ``(N, C)`` for ``theta (N, P)``; differentiable."""
        theta = self._check_theta(theta)
        table = self._powers(theta)
        idx = self.exponents.to(theta.device).T.unsqueeze(0).expand(theta.shape[0], -1, -1)  # (N, P, C)
        return torch.gather(table, 2, idx).prod(dim=1)

    def component_gradients(self, theta: Tensor) -> Tensor:
        r"""Analytic :math:`\partial m_c/\partial\theta_k`, ``(N, C, P)``."""
        theta = self._check_theta(theta)
        n, p = theta.shape
        table = self._powers(theta)
        exps = self.exponents.to(theta.device)
        idx = exps.T.unsqueeze(0).expand(n, -1, -1)
        factors = torch.gather(table, 2, idx)  # (N, P, C)
        grads = []
        for k in range(p):
            lowered = torch.gather(table[:, k, :], 1, (idx[:, k, :] - 1).clamp(min=0))  # (N, C)
            others = torch.cat([factors[:, :k], factors[:, k + 1:]], dim=1).prod(dim=1)
            grads.append(exps[:, k].to(theta.dtype) * lowered * others)
        return torch.stack(grads, dim=-1)

    def set_benchmarks(self, benchmarks: Any) -> None:
        """Fix the benchmark points ``(B, P)`` and compute the morphing matrix (see class docs)."""
        bench = torch.as_tensor(benchmarks, dtype=_F64)
        c = self.n_components
        if bench.dim() != 2 or bench.shape[1] != self.n_parameters:
            raise MorphingError(f"benchmarks has shape {tuple(bench.shape)}; expected (B, {self.n_parameters}).")
        b = bench.shape[0]
        if b < c or (b > c and not self.least_squares):
            hint = "pass least_squares=True to fit more benchmarks than components" if b > c else "add benchmarks"
            raise MorphingError(f"benchmarks: {b} points for {c} morphing components; exact morphing needs B == C ({hint}).")
        matrix = self.components(bench)
        scaled = matrix / matrix.norm(dim=0, keepdim=True)
        sv = torch.linalg.svdvals(scaled)
        cond = float(sv[0] / sv[-1]) if float(sv[-1]) > 0 else float("inf")
        if not cond <= self.max_condition:
            raise MorphingError(
                f"benchmarks cannot span the degree-{self.max_total_power} polynomial in {self.n_parameters} parameters: "
                f"the {b}x{c} monomial matrix is {'singular' if cond == float('inf') else 'ill-conditioned'} "
                f"(condition number {cond:.3g} > {self.max_condition:.3g}). Benchmarks must be distinct and not lie "
                "on a curve of the polynomial's degree (e.g. all on one line for two couplings); spread them over the "
                "parameter range, e.g. with MorphingBasis.choose_benchmarks(low, high)."
            )
        self.benchmarks, self.matrix, self.condition_number = bench, matrix, cond
        self.morphing_matrix = torch.linalg.pinv(matrix) if b > c else torch.linalg.inv(matrix)  # (C, B)

    def choose_benchmarks(self, low: Any, high: Any, *, n_trials: int = 200, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n_trials`` random sets of C points in the box and return the best-conditioned, ``(C, P)``."""
        low, high = torch.as_tensor(low, dtype=_F64), torch.as_tensor(high, dtype=_F64)
        best, best_cond = None, float("inf")
        for _ in range(int(n_trials)):
            pts = low + (high - low) * torch.rand(self.n_components, self.n_parameters, generator=generator, dtype=_F64)
            mat = self.components(pts)
            sv = torch.linalg.svdvals(mat / mat.norm(dim=0, keepdim=True))
            cond = float(sv[0] / sv[-1]) if float(sv[-1]) > 0 else float("inf")
            if cond < best_cond:
                best, best_cond = pts, cond
        assert best is not None
        return best

    def coefficients(self, theta: Tensor) -> Tensor:
        r"""Morphing coefficients :math:`\alpha_b(\theta)`, ``(N, B)``: :math:`w(\theta) = \alpha(\theta) \cdot w_B`."""
        return self.components(theta) @ self._morphing(theta)

    def coefficient_gradients(self, theta: Tensor) -> Tensor:
        r""":math:`\partial\alpha_b/\partial\theta_k`, ``(N, B, P)``, analytic."""
        return torch.einsum("ncp,cb->nbp", self.component_gradients(theta), self._morphing(theta))

    def _morphing(self, theta: Tensor) -> Tensor:
        if self.morphing_matrix is None:
            raise MorphingError("MorphingBasis has no benchmarks; pass benchmarks=(B, P) or call set_benchmarks().")
        return self.morphing_matrix.to(device=theta.device, dtype=theta.dtype)

    def _check_theta(self, theta: Tensor) -> Tensor:
        theta = torch.as_tensor(theta)
        if not theta.is_floating_point():
            theta = theta.to(_F64)
        if theta.dim() != 2 or theta.shape[1] != self.n_parameters:
            raise ShapeMismatchError(f"theta has shape {tuple(theta.shape)}; expected (N, {self.n_parameters}).")
        return theta

    def spec(self) -> dict[str, Any]:
        return {
            "n_parameters": self.n_parameters,
            "max_power": list(self.max_power),
            "max_total_power": self.max_total_power,
            "benchmarks": None if self.benchmarks is None else self.benchmarks.tolist(),
            "least_squares": self.least_squares,
        }


def _as_rows(theta: Any, n: int) -> Tensor:
    """``theta`` as float64 rows: ``(P,)`` is repeated ``n`` times, ``(K, P)`` is kept (differentiable cast)."""
    theta = theta.to(_F64) if isinstance(theta, Tensor) else torch.as_tensor(theta, dtype=_F64)
    return theta.reshape(1, -1).expand(n, -1) if theta.dim() == 1 else theta


class WeightedEvents(Simulator):
    r"""A pool of events with one weight per benchmark point, usable as a simulator.

    Args:
        x: Observables of the pool, ``(N, D)`` or ``(N, M, F)``.
        weights: Weights at the benchmarks, ``(N, B)``.
        basis: A :class:`MorphingBasis` with benchmarks set (B of them).
        space: Parameter space of the morphing (default: the benchmarks' bounding box,
            reference at the first benchmark).
        observable_names: Names of the D columns of ``x``.
        cross_sections: Known benchmark cross sections ``(B,)``; default: from the weights.
        event_norm: ``"average"`` (mean weight = σ, MadGraph's default) or ``"sum"`` (Σ weights = σ).
        mask: ``(N, M)`` validity mask for set-valued ``x``.

    Example:
        >>> bench = [[0.0], [1.0], [-1.0]]
        >>> x = torch.rand(4, 1, dtype=torch.float64)
        >>> w = torch.stack([1 + 0 * x[:, 0], (1 + x[:, 0]) ** 2, (1 - x[:, 0]) ** 2], 1)  # dσ = (1 + θ x)²
        >>> ev = WeightedEvents.from_arrays(x, w, bench, max_power=2)
        >>> torch.allclose(ev.weights_at(torch.tensor([2.0])), (1 + 2 * x[:, 0]) ** 2)
        True
    """

    def __init__(
        self,
        x: Any,
        weights: Any,
        basis: MorphingBasis,
        *,
        space: ParameterSpace | None = None,
        observable_names: Sequence[str] | None = None,
        cross_sections: Any = None,
        event_norm: str = "average",
        mask: Any = None,
    ) -> None:
        if basis.benchmarks is None:
            raise MorphingError("WeightedEvents: the MorphingBasis has no benchmarks; build it with benchmarks=(B, P).")
        x = torch.as_tensor(x)
        self.x = x if x.is_floating_point() else x.to(torch.get_default_dtype())
        self.event_weights = torch.as_tensor(weights, dtype=_F64)
        n_bench = basis.benchmarks.shape[0]
        if self.event_weights.dim() != 2 or self.event_weights.shape != (self.x.shape[0], n_bench):
            raise MorphingError(
                f"weights has shape {tuple(self.event_weights.shape)}; expected (N, B) = ({self.x.shape[0]}, {n_bench}): "
                "one row per event and one column per benchmark, in the benchmarks' order."
            )
        if not bool(torch.isfinite(self.event_weights).all()):
            raise MorphingError("weights contain NaN or inf; remove those events first.")
        if event_norm not in ("average", "sum"):
            raise MorphingError(f"event_norm must be 'average' or 'sum', got {event_norm!r}.")
        self.basis = basis
        self.mask = None if mask is None else torch.as_tensor(mask).bool()
        self.event_norm = event_norm
        self._mean_weights = self.event_weights.mean(dim=0)
        if cross_sections is None:
            factor = 1.0 if event_norm == "average" else float(self.x.shape[0])
            self.benchmark_cross_sections = self._mean_weights * factor
        else:
            self.benchmark_cross_sections = torch.as_tensor(cross_sections, dtype=_F64).reshape(n_bench)
        if space is None:
            bench = basis.benchmarks
            lo, hi = bench.min(0).values, bench.max(0).values
            hi = torch.where(hi > lo, hi, lo + 1)
            space = ParameterSpace(tuple(f"theta_{i}" for i in range(basis.n_parameters)), lo, hi, reference=bench[0])
        self.space = space
        d = self.x.shape[-1]
        self.observable_names = tuple(observable_names) if observable_names is not None else tuple(f"x{i}" for i in range(d))

    @classmethod
    def from_arrays(
        cls,
        x: Any,
        weights: Any,
        benchmarks: Any,
        *,
        max_power: int | Sequence[int] = 2,
        max_total_power: int | None = None,
        least_squares: bool = False,
        **kwargs: Any,
    ) -> "WeightedEvents":
        """Build the basis from ``benchmarks (B, P)`` and wrap ``x`` and ``weights (N, B)``; kwargs go to the constructor."""
        bench = torch.as_tensor(benchmarks, dtype=_F64)
        bench = bench.reshape(-1, 1) if bench.dim() == 1 else bench
        basis = MorphingBasis(bench.shape[1], max_power=max_power, max_total_power=max_total_power,
                              benchmarks=bench, least_squares=least_squares)
        return cls(x, weights, basis, **kwargs)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    # ------------------------------------------------------------------ weights and cross sections
    def weights_at(self, theta: Any, index: Tensor | None = None) -> Tensor:
        r"""Event weights :math:`w(\theta)`, ``(N,)`` float64; ``theta`` is ``(P,)`` (all events) or ``(N, P)`` (one row each).

        ``index`` selects pool events (then ``theta`` has one row per index). Differentiable in θ.
        All methods compute in float64.
        """
        w = self.event_weights if index is None else self.event_weights[index.long()]
        theta = _as_rows(theta, w.shape[0])
        return (self.basis.coefficients(theta) * w.to(theta.device)).sum(dim=1)

    def cross_section(self, theta: Any) -> Tensor:
        r"""Total cross section :math:`\sigma(\theta) = \alpha(\theta)\cdot\sigma_B`, ``(K,)`` for ``theta (K, P)`` or ``(P,)``."""
        theta = _as_rows(theta, 1)
        return self.basis.coefficients(theta) @ self.benchmark_cross_sections.to(theta.device)

    def _log_w(self, theta: Tensor, index: Tensor | None, normalised: bool, what: str) -> Tensor:
        theta = _as_rows(theta, len(self) if index is None else index.shape[0])
        w = self.weights_at(theta, index)
        bad = w <= 0
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise MorphingError(
                f"{what}: {int(bad.sum())} events have weight <= 0 at theta (first: event {first}, theta "
                f"{theta[first].tolist()}); "
                "log-ratios need positive weights. Drop those events or stay inside the region where the morphing is positive."
            )
        log_w = torch.log(w)
        if normalised:
            log_w = log_w - torch.log(self.cross_section(theta))
        return log_w

    def joint_log_ratio(self, theta: Any, reference: Any = None, *, index: Tensor | None = None, normalised: bool = True) -> Tensor:
        r"""Per-event :math:`\log r(x,z|\theta,\theta_\mathrm{ref})`, ``(N,)``.

        With ``normalised=False``: :math:`\log w(\theta)/w(\theta_\mathrm{ref})` (ratio of rates
        instead of densities).
        """
        ref = self.space.reference if reference is None else reference
        n = len(self) if index is None else index.shape[0]
        num = self._log_w(_as_rows(theta, n), index, normalised, "joint_log_ratio")
        den = self._log_w(_as_rows(ref, n), index, normalised, "joint_log_ratio")
        return num - den

    def joint_score(self, theta: Any, *, index: Tensor | None = None, normalised: bool = True) -> Tensor:
        r"""Per-event :math:`\nabla_\theta \log w(\theta) - \nabla_\theta\log\sigma(\theta)`, ``(N, P)``, analytic.

        With ``normalised=False`` the cross-section term is left out.
        """
        w = self.event_weights if index is None else self.event_weights[index.long()]
        theta = _as_rows(theta, w.shape[0])
        w = w.to(theta.device)
        alpha = self.basis.coefficients(theta)
        dalpha = self.basis.coefficient_gradients(theta)
        score = torch.einsum("nbp,nb->np", dalpha, w) / (alpha * w).sum(1, keepdim=True)
        if normalised:
            sig = self.benchmark_cross_sections.to(theta.device)
            score = score - torch.einsum("nbp,b->np", dalpha, sig) / (alpha @ sig).unsqueeze(1)
        return score

    # ------------------------------------------------------------------ simulator protocol
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """Resample one pool event per row of ``theta (N, P)`` with probability ∝ w(θ_row); latent = pool index.

        Draws are with replacement, so events repeat; prefer :meth:`training_data` when possible.
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        pool = self.event_weights
        chunk = max(1, int(2e7 // pool.shape[0]))
        picks = []
        for start in range(0, theta.shape[0], chunk):
            probs = self.basis.coefficients(theta[start:start + chunk].to(_F64)) @ pool.T
            if bool((probs < 0).any()):
                raise MorphingError(
                    "WeightedEvents.sample: some events have negative weight at the requested theta, so they cannot "
                    "be resampled; use training_data() (weighted) or a region where the morphing is positive."
                )
            picks.append(torch.multinomial(probs, 1, generator=generator)[:, 0])
        index = torch.cat(picks)
        mask = None if self.mask is None else self.mask[index]
        return Events(x=self.x[index], theta=theta, latent=index.to(_F64).unsqueeze(1), mask=mask)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        r"""log p(x, z|θ) up to a θ-independent constant: log w(θ) − log σ(θ), ``(N,)``, for the pool index in ``events.latent``."""
        index = events.latent[:, 0].round().long()
        return self._log_w(theta, index, True, "joint_log_prob").to(theta.dtype)

    def to_events(self, theta: Any, *, reference: Any = None) -> Events:
        r"""The whole pool at one point ``theta (P,)``: weights :math:`w(\theta)/\bar w(\theta)` (mean 1), joint ratio and score."""
        theta = torch.as_tensor(theta, dtype=_F64).reshape(-1)
        rows = theta.expand(len(self), -1)
        w = self.weights_at(theta)
        return Events(
            x=self.x, theta=rows.to(torch.get_default_dtype()), weights=w / w.mean(), mask=self.mask,
            log_r_joint=self.joint_log_ratio(rows, reference), score_joint=self.joint_score(rows),
        )

    def training_data(self, n: int | None = None, *, generator: torch.Generator | None = None, reference: Any = None) -> Events:
        r"""Balanced weighted training set of ratio estimators (no resampling), ``2 n`` events.

        ``n`` pool events get θ_i from the proposal and ``label = 1`` with weight
        :math:`w(\theta_i)/\bar w(\theta_i)`; ``n`` other pool events get ``label = 0``, their own
        proposal point θ'_i and weight :math:`w(\theta_\mathrm{ref})/\bar w(\theta_\mathrm{ref})`
        (:math:`\bar w` = mean over the pool, so each class has the right density for every θ and
        the weighted classifier optimum is :math:`\sigma(\log r)`). Every event carries the joint
        log-ratio and joint score at its θ. ``n=None`` uses the whole pool in each class.
        """
        size = len(self)
        n = size if n is None else int(n)
        if not 0 < n <= size:
            raise MorphingError(f"training_data: n must be in 1..{size} (the pool size), got {n}.")
        ref = (self.space.reference if reference is None else torch.as_tensor(reference, dtype=_F64)).reshape(1, -1)
        dtype = torch.get_default_dtype()
        parts = []
        for label in (1, 0):
            index = torch.randperm(size, generator=generator)[:n]
            theta = self.space.sample(n, generator=generator).to(_F64)
            at = theta if label == 1 else ref.expand(n, -1)
            w = self.weights_at(at, index)
            mean_w = self.basis.coefficients(at) @ self._mean_weights
            parts.append(Events(
                x=self.x[index], theta=theta.to(dtype), weights=(w / mean_w).to(dtype),
                label=torch.full((n,), float(label), dtype=dtype), latent=index.to(_F64).unsqueeze(1),
                log_r_joint=self.joint_log_ratio(theta, ref[0], index=index).to(dtype),
                score_joint=self.joint_score(theta, index=index).to(dtype),
                mask=None if self.mask is None else self.mask[index],
            ))
        both = Events.concatenate(parts)
        return both[torch.randperm(2 * n, generator=generator)]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "basis": self.basis.spec(), "event_norm": self.event_norm, "n_events": len(self)}
