r"""A simulator as two stages, truth then detector, and their composition: :class:`Composition`.

A staged simulator draws the truth level :math:`z \sim p(z\mid\theta)` (parton-level kinematics)
and then the detector response: the event passes the selection with the efficiency
:math:`\varepsilon(z[,\theta])` and, if it does, its reconstructed observables follow
:math:`p(x\mid z[,\theta], \mathrm{pass})`. Kept events are the passing ones, so

.. math::
    p(x, z\mid\theta) = \frac{p(z\mid\theta)\,\varepsilon(z)\,p(x\mid z,\mathrm{pass})}{A(\theta)},\qquad
    A(\theta) = \int p(z\mid\theta)\,\varepsilon(z)\,dz,\qquad
    p(x\mid\theta) = \frac{1}{A(\theta)}\int p(z\mid\theta)\,\varepsilon(z)\,p(x\mid z,\mathrm{pass})\,dz.

The detector stage is anything with the :class:`Stage` methods: the original detector of a toy
(exact) or a learned :class:`~sbilab.surrogates.stage.StageSurrogate`. :class:`Composition`
joins a truth level (:class:`TruthLevel`) and a stage into a :class:`~sbilab.simulators.Simulator`:
sampling by accept–reject (as the toys do), the joint likelihood, and — when the truth level
provides a quadrature grid :math:`\{z_k, w_k\}` — the marginal likelihood

.. math::
    \log p(x_i\mid\theta) = \operatorname{logsumexp}_k\bigl[\log w_k + \log p(z_k\mid\theta) + F_{ik}\bigr]
        - \operatorname{logsumexp}_k\bigl[\log w_k + \log p(z_k\mid\theta) + E_k\bigr],

with :math:`F_{ik} = \log\varepsilon(z_k) + \log p(x_i\mid z_k,\mathrm{pass})` and :math:`E_k = \log\varepsilon(z_k)`.
For a θ-independent stage :math:`F` does not depend on θ: :meth:`Composition.likelihood_features`
computes it once per dataset and :meth:`Composition.feature_log_prob` is then cheap and
differentiable in θ (what batched toy fits need).

**Refinement** (DCTR, arXiv:1907.08209): with classifier weights :math:`\hat w(z, x)` of original
over surrogate (:mod:`sbilab.surrogates.refine`), the refined stage is
:math:`p'(x\mid z) = p(x\mid z)\hat w(z,x)/n(z)` with :math:`n(z) = E_{p(x\mid z)}[\hat w]` (estimated
by sampling) and :math:`\varepsilon'(z) = \varepsilon(z)\,n(z)`; so :math:`F_{ik}` gains
:math:`\log\hat w(z_k, x_i)` and :math:`E_k` gains :math:`\log n(z_k)`, and sampled events carry the weights :math:`\hat w`.

Truth values outside the stage's ``truth_box`` (a surrogate's training range) count as failing
the selection, in sampling and in the grid alike.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, ExtrapolationWarning, SamplingError
from ..simulators.base import Simulator, autograd_score
from ..simulators.space import ParameterSpace
from .grid import FeatureTable, grid_log_likelihood
from .pairs import stage_features
from .refine import log_weight

__all__ = ["TruthLevel", "Stage", "Composition", "simulate_pairs"]


@runtime_checkable
class TruthLevel(Protocol):
    """The truth level of a staged simulator.

    Attributes:
        space: The parameter space.
        truth_names: Names of the ``L`` truth variables.
    """

    space: ParameterSpace
    truth_names: tuple[str, ...]

    def sample_truth(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One truth row per row of ``theta (N, P)``; returns ``(N, L)``."""
        ...

    def truth_log_prob(self, truth: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log p(z\mid\theta)` for ``truth (N, L)``, ``theta (N, P)`` (or ``(K, L)`` with ``(N, 1, P)``); differentiable in θ."""
        ...

    def truth_grid(self) -> tuple[Tensor, Tensor]:
        """Quadrature nodes ``(K, L)`` and log weights ``(K,)`` covering the truth values that can pass."""
        ...


@runtime_checkable
class Stage(Protocol):
    """A detector stage: efficiency and response given the truth (exact, or a learned surrogate).

    Attributes:
        reco_names: Names of the ``D`` reconstructed observables.
    """

    reco_names: tuple[str, ...]

    def log_prob(self, reco: Tensor, truth: Tensor, theta: Tensor | None = None) -> Tensor:
        r""":math:`\log p(x\mid z[,\theta],\mathrm{pass})`, ``(N,)``."""
        ...

    def log_efficiency(self, truth: Tensor, theta: Tensor | None = None) -> Tensor:
        r""":math:`\log\varepsilon(z[,\theta])`, ``(N,)``."""
        ...

    def sample_reco(self, truth: Tensor, theta: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws of :math:`p(x\mid z[,\theta],\mathrm{pass})`, ``(N, D)``."""
        ...

    def sample(self, truth: Tensor, theta: Tensor | None = None, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The response of each event: reco ``(N, D)`` and passed ``(N,)`` bool."""
        ...


def simulate_pairs(truth_level: TruthLevel, stage: Stage, theta: Tensor, *, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Paired simulation: truth ``(N, L)``, reco ``(N, D)``, passed ``(N,)`` for every row of ``theta (N, P)``.

    Failed events are kept (``passed`` False): the efficiency is learned from them.
    :func:`~sbilab.surrogates.pairs.to_paired_events` holds them as the core's
    :class:`~sbilab.paired.PairedEvents`.
    """
    truth = truth_level.sample_truth(theta, generator=generator)
    reco, passed = stage.sample(truth, theta if _takes_theta(stage) else None, generator=generator)
    return truth, reco, passed


_EXTRAPOLATED_EFFICIENCY = 0.05


@contextlib.contextmanager
def _grid_extrapolation() -> Iterator[None]:
    """The truth grid reaches truth values where no event passed in training; the density's own
    :class:`~sbilab.exceptions.ExtrapolationWarning` is replaced there by :meth:`Composition._check_grid`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExtrapolationWarning)
        yield


def _takes_theta(stage: Any) -> bool:
    return getattr(stage, "space", None) is not None


def _in_box(truth: Tensor, box: tuple[Tensor, Tensor] | None) -> Tensor:
    if box is None:
        return torch.ones(truth.shape[0], dtype=torch.bool, device=truth.device)
    lo, hi = (b.to(truth) for b in box)
    return ((truth >= lo) & (truth <= hi)).all(-1)


class Composition(Simulator):
    r"""A truth level followed by a detector stage, as one :class:`~sbilab.simulators.Simulator` (see the module docs).

    Args:
        truth: The truth level (the original simulator's generator).
        stage: The detector stage: the original's or a :class:`~sbilab.surrogates.stage.StageSurrogate`.
        refinement: Optional classifier of original (1) vs stage (0) on rows ``[truth, θ, reco]``
            (:func:`~sbilab.surrogates.refine.train_refinement`); refines sampling (event weights) and likelihoods.
        max_rounds: Bound on the accept–reject rounds of :meth:`sample`.
        normaliser_samples: Draws per truth value that estimate :math:`n(z)` of a refinement.
        normaliser_seed: Seed of those draws (the refined likelihood is deterministic).
        chunk: Rows per network call when building likelihood features.

    Example:
        >>> from sbilab.simulators.toys import Resonance
        >>> from sbilab.surrogates import ResonanceDetector, ResonanceTruth
        >>> toy = Resonance()
        >>> staged = Composition(ResonanceTruth(toy), ResonanceDetector(toy))
        >>> x, theta = torch.tensor([[98.0], [103.0]], dtype=torch.float64), torch.tensor([100.0, 5.0], dtype=torch.float64)
        >>> float((staged.log_prob(x, theta) - toy.log_prob(x, theta)).abs().max()) < 1e-6
        True
    """

    def __init__(self, truth: TruthLevel, stage: Stage, *, refinement: Any = None, max_rounds: int = 200,
                 normaliser_samples: int = 1024, normaliser_seed: int = 0, chunk: int = 2**17) -> None:
        for name in ("sample_truth",):
            if not callable(getattr(truth, name, None)):
                raise ConfigError(f"Composition: the truth level {type(truth).__name__} lacks {name}(); see TruthLevel.")
        for name in ("log_prob", "log_efficiency", "sample_reco", "sample"):
            if not callable(getattr(stage, name, None)):
                raise ConfigError(f"Composition: the stage {type(stage).__name__} lacks {name}(); see Stage.")
        self.truth, self.stage, self.refinement = truth, stage, refinement
        self.space = truth.space
        self.observable_names = tuple(stage.reco_names)
        self.max_rounds, self.normaliser_samples = int(max_rounds), int(normaliser_samples)
        self.normaliser_seed, self.chunk = int(normaliser_seed), int(chunk)
        self._box = getattr(stage, "truth_box", None)
        self._grid_cache: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def name(self) -> str:
        return f"Composition({type(self.truth).__name__}, {type(self.stage).__name__}{', refined' if self.refinement is not None else ''})"

    def _stage_theta(self, theta: Tensor) -> Tensor | None:
        return theta if _takes_theta(self.stage) else None

    # ------------------------------------------------------------------ sampling
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """One accepted event per row of ``theta (N, P)``: ``x`` reco ``(N, D)``, ``latent`` truth ``(N, L)``,
        and ``weights`` :math:`\\hat w` with a refinement.

        Raises:
            OutOfSupportError: some θ lie outside the space.
            SamplingError: rows without an accepted event after ``max_rounds``.
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        self.space.check(theta, argument="theta")
        n = theta.shape[0]
        truth: Tensor | None = None
        reco: Tensor | None = None
        pending = torch.arange(n)
        for _ in range(self.max_rounds):
            if pending.numel() == 0:
                break
            th = theta[pending]
            z = torch.as_tensor(self.truth.sample_truth(th, generator=generator))
            ok = _in_box(z, self._box)
            x = z.new_zeros(z.shape[0], len(self.observable_names))
            passed = torch.zeros_like(ok)
            if bool(ok.any()):
                st = self._stage_theta(th[ok])
                x_ok, p_ok = self.stage.sample(z[ok], st, generator=generator)
                x[ok], passed[ok] = x_ok.to(x.dtype), p_ok
            if truth is None:
                truth = z.new_zeros(n, z.shape[1])
                reco = x.new_zeros(n, x.shape[1])
            done = pending[passed]
            truth[done], reco[done] = z[passed].to(truth.dtype), x[passed].to(reco.dtype)
            pending = pending[~passed]
        if pending.numel():
            raise SamplingError(f"Composition.sample: {pending.numel()} of {n} rows got no accepted event in {self.max_rounds} "
                                f"rounds (first θ = {theta[pending[0]].tolist()}); raise max_rounds or use θ with a higher acceptance.")
        dtype = theta.dtype
        assert truth is not None and reco is not None
        weights = None
        if self.refinement is not None:
            weights = self._log_weight(truth, reco, self._stage_theta(theta)).exp().to(dtype)
        return Events(x=reco.to(dtype), theta=theta, latent=truth.to(dtype), weights=weights)

    # ------------------------------------------------------------------ refinement pieces
    def _log_weight(self, truth: Tensor, reco: Tensor, theta: Tensor | None) -> Tensor:
        r""":math:`\log\hat w(z, x)` of the refinement classifier, ``(N,)`` float64 (0 without one)."""
        if self.refinement is None:
            return torch.zeros(truth.shape[0], dtype=torch.float64, device=truth.device)
        f = stage_features(truth, reco, theta)
        return torch.cat([log_weight(self.refinement, f[s:s + self.chunk]) for s in range(0, f.shape[0], self.chunk)])

    @torch.no_grad()
    def _log_normaliser(self, truth: Tensor, theta: Tensor | None) -> Tensor:
        r""":math:`\log n(z) = \log E_{p(x\mid z)}[\hat w(z, x)]` per truth row, ``(N,)``, from ``normaliser_samples`` seeded draws."""
        if self.refinement is None:
            return torch.zeros(truth.shape[0], dtype=torch.float64, device=truth.device)
        s = self.normaliser_samples
        g = torch.Generator().manual_seed(self.normaliser_seed)
        z = truth.repeat_interleave(s, 0)
        th = None if theta is None else theta.repeat_interleave(s, 0)
        with _grid_extrapolation():
            x = self.stage.sample_reco(z, th, generator=g)
        lw = self._log_weight(z, x, th).reshape(-1, s)
        return torch.logsumexp(lw, 1) - math.log(s)

    # ------------------------------------------------------------------ likelihoods
    def _truth_theta(self, theta: Any, n: int) -> Tensor:
        t = torch.as_tensor(theta)
        t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
        t = t.reshape(1, -1).expand(n, -1) if t.dim() <= 1 else t
        self.space.check(t.detach(), argument="theta")
        return t

    def _grid(self) -> tuple[Tensor, Tensor, Tensor]:
        """Grid nodes inside the stage's box ``(K, L)``, log weights ``(K,)`` and :math:`E_k` ``(K,)`` (θ-independent stages)."""
        if self._grid_cache is None:
            if not callable(getattr(self.truth, "truth_grid", None)):
                raise ConfigError(f"Composition: the truth level {type(self.truth).__name__} has no truth_grid(); the marginal "
                                  "likelihood needs one (use joint_log_prob, or a whole-simulator surrogate).")
            nodes, log_w = self.truth.truth_grid()
            keep = _in_box(nodes, self._box)
            nodes, log_w = nodes[keep], log_w[keep].double()
            if _takes_theta(self.stage):  # E depends on θ: evaluated where it is needed
                e = torch.zeros_like(log_w)
            else:
                with torch.no_grad():
                    self._check_grid(nodes)
                    e = self.stage.log_efficiency(nodes, None).double() + self._log_normaliser(nodes, None)
            self._grid_cache = (nodes, log_w, e)
        return self._grid_cache

    @torch.no_grad()
    def _check_grid(self, nodes: Tensor) -> None:
        """Warn (:class:`~sbilab.exceptions.ExtrapolationWarning`) when truth-grid nodes outside the stage density's
        training contexts carry a learned efficiency above 5 %: there the likelihood leans on an extrapolated density."""
        outside_fn = getattr(self.stage, "density_extrapolates", None)
        if outside_fn is None:
            return
        outside = outside_fn(nodes, None)
        if not bool(outside.any()):
            return
        eff = self.stage.log_efficiency(nodes[outside], None).double().exp()
        if float(eff.max()) > _EXTRAPOLATED_EFFICIENCY:
            worst = int(eff.argmax())
            warnings.warn(
                f"Composition: {int(outside.sum())} of {nodes.shape[0]} truth-grid nodes lie outside the truth the stage density "
                f"was trained on, with a learned efficiency up to {float(eff.max()):.3f} (at truth {nodes[outside][worst].tolist()}); "
                "the likelihood there uses an extrapolated density. Train the stage on paired simulation whose passing events "
                "cover the truth range.", ExtrapolationWarning, stacklevel=3)

    def _check_theta_free(self, what: str) -> None:
        if _takes_theta(self.stage):
            raise ConfigError(f"Composition.{what}: the stage depends on θ, so its likelihood features are not θ-independent; "
                              "use log_prob (evaluated at every θ).")

    def log_acceptance(self, theta: Any) -> Tensor:
        r""":math:`\log A(\theta)` by the truth grid, ``(N,)`` float64 for ``theta (N, P)`` or ``(P,)``; differentiable."""
        t = self._truth_theta(theta, 1)
        nodes, log_w, e = self._grid()
        if _takes_theta(self.stage):
            k = nodes.shape[0]
            z, th = nodes.repeat(t.shape[0], 1), t.repeat_interleave(k, 0)
            e = (self.stage.log_efficiency(z, th).double() + self._log_normaliser(z, th)).reshape(t.shape[0], k)
        lp = self._grid_truth_log_prob(nodes, t)  # (N, K)
        return torch.logsumexp(lp + log_w + e, dim=1)

    def _grid_truth_log_prob(self, nodes: Tensor, theta: Tensor) -> Tensor:
        n, k = theta.shape[0], nodes.shape[0]
        z = nodes.to(torch.float64).repeat(n, 1)
        th = theta.to(torch.float64).repeat_interleave(k, 0)
        return self.truth.truth_log_prob(z, th).double().reshape(n, k)

    @torch.no_grad()
    def likelihood_features(self, x: Any) -> Tensor:
        r""":math:`F_{ik} = \log\varepsilon(z_k) + \log p(x_i\mid z_k) [+ \log\hat w(z_k, x_i)]`, ``(N, K)`` float64, for ``x (N, D)``.

        Raises:
            ConfigError: the stage depends on θ (features would too), or the truth level has no grid.
        """
        self._check_theta_free("likelihood_features")
        nodes, _, _ = self._grid()
        x = torch.as_tensor(x)
        x = x.reshape(-1, 1) if x.dim() == 1 else x
        k = nodes.shape[0]
        log_eff = self.stage.log_efficiency(nodes, None).double()
        rows = max(1, self.chunk // k)
        out = []
        with _grid_extrapolation():
            for s in range(0, x.shape[0], rows):
                xs = x[s:s + rows]
                b = xs.shape[0]
                z = nodes.repeat(b, 1)
                xr = xs.repeat_interleave(k, 0)
                lp = self.stage.log_prob(xr, z, None).double() + self._log_weight(z, xr, None)
                out.append(lp.reshape(b, k) + log_eff)
        return torch.cat(out)

    def feature_table(self, low: float, high: float, points: int = 2001) -> FeatureTable:
        """:meth:`likelihood_features` of a one-observable composition tabulated on ``[low, high]`` (see :class:`FeatureTable`).

        Raises:
            ConfigError: more than one reco observable, a θ-dependent stage, or a bad range.
        """
        if len(self.observable_names) != 1:
            raise ConfigError(f"Composition.feature_table: the stage has {len(self.observable_names)} observables; a table "
                              "interpolates one. Use likelihood_features.")
        return FeatureTable(self.likelihood_features, low, high, points)

    def feature_log_prob(self, features: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log p(x\mid\theta)` from :meth:`likelihood_features` rows ``(N, K)`` at ``theta (N, P)``, ``(N,)``; differentiable in θ.

        The signature of a log-ratio (``(M, F), (M, P) -> (M,)``), so it plugs into
        :func:`~sbilab.stats.fit_toys` and :class:`~sbilab.stats.UnbinnedLikelihood` on the
        features. Rows sharing a θ (a toy's events) share the truth-grid evaluation
        (:func:`~sbilab.surrogates.grid.grid_log_likelihood`: exact values, gradients and Hessians).
        """
        nodes, log_w, e = self._grid()
        theta = torch.as_tensor(theta).reshape(features.shape[0], -1)
        out = grid_log_likelihood(features, theta, self.truth.truth_log_prob, nodes.to(torch.float64), log_w, e)
        return out.to(theta.dtype if theta.is_floating_point() else torch.float64)

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        r"""Marginal :math:`\log p(x\mid\theta)` of the composition by the truth grid, ``(N,)``; ``theta (P,)`` or ``(N, P)``.

        Raises:
            OutOfSupportError: θ outside the space.
            ConfigError: the truth level has no grid.
        """
        x = torch.as_tensor(x)
        x = x.reshape(-1, 1) if x.dim() == 1 else x
        theta = self._truth_theta(theta, x.shape[0])
        if not _takes_theta(self.stage):
            return self.feature_log_prob(self.likelihood_features(x), theta).to(x.dtype)
        nodes, log_w, _ = self._grid()
        n, k = x.shape[0], nodes.shape[0]
        z, th, xr = nodes.repeat(n, 1), theta.repeat_interleave(k, 0), x.repeat_interleave(k, 0)
        with _grid_extrapolation():
            f = (self.stage.log_efficiency(z, th).double() + self.stage.log_prob(xr, z, th).double()
                 + self._log_weight(z, xr, th)).reshape(n, k)
        lp = self._grid_truth_log_prob(nodes, theta) + log_w
        return (torch.logsumexp(f + lp, 1) - self.log_acceptance(theta)).to(x.dtype)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        r""":math:`\log p(x, z\mid\theta)` of the events' stored truth (``latent``) at ``theta (N, P)``, ``(N,)``; differentiable in θ."""
        if events.latent is None:
            raise ConfigError("Composition.joint_log_prob: the events have no latent truth; draw them with Composition.sample.")
        theta = self._truth_theta(theta, len(events))
        z, x = events.latent, events.x
        st = self._stage_theta(theta)
        value = (self.truth.truth_log_prob(z.double(), theta.double()).double() + self.stage.log_efficiency(z, st).double()
                 + self.stage.log_prob(x, z, st).double() + self._log_weight(z, x, st) - self._log_normaliser(z, st)
                 - self.log_acceptance(theta))
        return value.to(theta.dtype)

    def score(self, x: Any, theta: Any) -> Tensor:
        r""":math:`\nabla_\theta\log p(x\mid\theta)` of the composition by autograd, ``(N, P)``."""
        return autograd_score(self.log_prob, torch.as_tensor(x), theta, self.space.dim)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "truth": type(self.truth).__name__, "stage": type(self.stage).__name__,
                "refined": self.refinement is not None}
