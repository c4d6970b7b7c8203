r"""A learned detector stage: :class:`StageSurrogate`, trained from paired simulation by :func:`train_stage_surrogate`.

The stage is two core estimators (arXiv:2106.05285 and the fast-simulation review 2203.08806
replace detector simulation the same way):

* a :class:`~sbilab.estimators.ConditionalDensity` :math:`q(x\mid z[,\theta])` of the reconstructed
  observables of *passing* events given the truth (box bounds = the selection's, so every draw
  passes), trained with ``get_loss("density", target="latent")``;
* a :class:`~sbilab.estimators.Classifier` of pass (1) against fail (0) given the truth, whose
  sigmoid is the efficiency :math:`\hat\varepsilon(z) = P(\mathrm{pass}\mid z)` (the classes come
  from one sample, so no prior correction), trained with ``carl_loss``. Without failed events
  the efficiency is 1.

Both see the context ``[truth, θ]`` (θ only for a stage that depends on the parameters). The
stage knows the truth range it was trained on (``truth_box``) and refuses truth outside it
(:class:`~sbilab.exceptions.OutOfSupportError`), as it refuses θ outside its parameter space.
It is publishable: ``sbilab.publish.save``/``load`` round-trip it without any training code.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..estimators import Classifier, ConditionalDensity, carl_loss, get_loss
from ..exceptions import ConfigError, OutOfSupportError, SbilabWarning, ShapeMismatchError
from ..nets.flows import FlowSpec
from ..registry import build_module, module_spec, register_publishable
from ..simulators.space import ParameterSpace
from ..training import fit
from ..paired import PairedEvents
from .pairs import check_pairs, efficiency_events, paired_arrays, stage_context, stage_events

__all__ = ["StageSurrogate", "train_stage_surrogate", "TruthRangeWarning"]


class TruthRangeWarning(SbilabWarning):
    """Some events passed the selection with a truth outside the surrogate's truth range (they are left out; counts in the message)."""


@register_publishable
class StageSurrogate(nn.Module):
    r"""Learned stage :math:`\hat\varepsilon(z[,\theta])\,q(x\mid z[,\theta])` (see the module docs).

    Args:
        density: :math:`q(x\mid [z, \theta])`, ``D`` reco features, ``L + P`` context features.
        efficiency: Classifier of pass vs fail on ``[z, θ]``, or ``None`` (efficiency 1).
        truth_names: Names of the ``L`` truth variables.
        reco_names: Names of the ``D`` reco observables.
        truth_low, truth_high: The truth range it was trained on, ``(L,)`` each.
        space: Parameter space of a θ-dependent stage (``None``: the stage ignores θ).

    Implements the :class:`~sbilab.surrogates.stages.Stage` methods.
    """

    def __init__(self, density: ConditionalDensity, efficiency: Classifier | None = None, *, truth_names: Sequence[str],
                 reco_names: Sequence[str], truth_low: Sequence[float], truth_high: Sequence[float],
                 space: ParameterSpace | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.truth_names, self.reco_names = tuple(truth_names), tuple(reco_names)
        self.space = ParameterSpace.from_dict(dict(space)) if isinstance(space, Mapping) else space
        lo = torch.as_tensor(truth_low, dtype=torch.float64).reshape(-1)
        hi = torch.as_tensor(truth_high, dtype=torch.float64).reshape(-1)
        n_truth, n_theta = len(self.truth_names), (0 if self.space is None else self.space.dim)
        if lo.numel() != n_truth or hi.numel() != n_truth or not bool((lo < hi).all()):
            raise ConfigError(f"StageSurrogate: truth_low {lo.tolist()} and truth_high {hi.tolist()} must give one increasing "
                              f"range per truth variable {list(self.truth_names)}.")
        if density.features != len(self.reco_names) or density.context_features != n_truth + n_theta or density.is_set:
            raise ConfigError(f"StageSurrogate: the density models {density.features} features given {density.context_features}; "
                              f"the stage needs {len(self.reco_names)} reco given {n_truth} truth + {n_theta} parameters.")
        if efficiency is not None and (efficiency.x_features != n_truth + n_theta or efficiency.theta_features):
            raise ConfigError(f"StageSurrogate: the efficiency classifier takes {efficiency.x_features} inputs; it needs the "
                              f"{n_truth + n_theta} columns [truth, θ] (and no separate θ input).")
        self.truth_low, self.truth_high = lo, hi
        self.density, self.efficiency = density, efficiency
        self.training_record: dict[str, Any] = {}

    @property
    def truth_box(self) -> tuple[Tensor, Tensor]:
        """The trained truth range ``(low (L,), high (L,))``, float64."""
        return self.truth_low, self.truth_high

    # ------------------------------------------------------------------ checks
    def _context(self, truth: Any, theta: Any) -> Tensor:
        z = torch.as_tensor(truth)
        z = z.reshape(-1, 1) if z.dim() == 1 and len(self.truth_names) == 1 else z
        if z.dim() != 2 or z.shape[1] != len(self.truth_names):
            raise ShapeMismatchError(f"StageSurrogate: truth has shape {tuple(z.shape)}; expected (N, {len(self.truth_names)}) "
                                     f"with columns {list(self.truth_names)}.")
        lo, hi = (b.to(device=z.device) for b in self.truth_box)
        outside = ((z.detach().double() < lo) | (z.detach().double() > hi)).any(1)
        if bool(outside.any()):
            row = int(torch.nonzero(outside)[0, 0])
            raise OutOfSupportError(
                f"StageSurrogate: {int(outside.sum())} of {z.shape[0]} truth rows lie outside the trained truth range "
                f"{dict(zip(self.truth_names, zip(lo.tolist(), hi.tolist())))} (first row {row}: {z[row].tolist()}). "
                "The surrogate was not trained there: keep truth inside the range, or retrain on a wider one.")
        if self.space is None:
            if theta is not None and torch.as_tensor(theta).numel() > 0:
                raise ShapeMismatchError("StageSurrogate: this stage does not depend on θ (trained without it); do not pass theta.")
            return z
        if theta is None:
            raise ShapeMismatchError(f"StageSurrogate: this stage depends on θ {list(self.space.names)}; pass theta (P,) or (N, P).")
        t = torch.as_tensor(theta)
        t = t.reshape(1, -1).expand(z.shape[0], -1) if t.dim() <= 1 else t
        self.space.check(t.detach(), argument="StageSurrogate theta")
        return stage_context(z, t.to(z.dtype) if z.is_floating_point() else t)

    # ------------------------------------------------------------------ the Stage methods
    def log_prob(self, reco: Any, truth: Any, theta: Any = None) -> Tensor:
        r""":math:`\log q(x\mid z[,\theta])` of passing events, ``(N,)``; ``reco (N, D)``, ``truth (N, L)``.

        Raises:
            OutOfSupportError: truth outside the trained range, θ outside the space, or reco
                outside the density's bounds (the selection).
            ShapeMismatchError: wrong widths.
        """
        c = self._context(truth, theta)
        return self.density.log_prob(torch.as_tensor(reco), c)

    def log_efficiency(self, truth: Any, theta: Any = None) -> Tensor:
        r""":math:`\log\hat\varepsilon(z[,\theta]) = \log\sigma(f(z))`, ``(N,)`` (zeros without an efficiency model)."""
        c = self._context(truth, theta)
        if self.efficiency is None:
            return torch.zeros(c.shape[0], dtype=self.density.low.dtype, device=c.device)
        return F.logsigmoid(self.efficiency.logit(c))

    @torch.no_grad()
    def sample_reco(self, truth: Any, theta: Any = None, *, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws of :math:`q(x\mid z[,\theta])`, ``(N, D)``, always inside the selection."""
        return self.density.sample(1, self._context(truth, theta), generator=generator)[0]

    @torch.no_grad()
    def sample(self, truth: Any, theta: Any = None, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reco ``(N, D)`` and passed ``(N,)`` bool, ``passed ~ Bernoulli(ε̂)``; reco drawn for the passing rows
        only (failing rows hold zeros), so the density is not asked about truth where no event passed in training."""
        p = self.log_efficiency(truth, theta).exp()
        u = torch.rand(p.shape[0], generator=generator, dtype=torch.float64, device="cpu" if generator is None else generator.device)
        passed = u.to(p.device) < p.double()
        reco = torch.zeros(p.shape[0], len(self.reco_names), dtype=self.density.low.dtype, device=p.device)
        if bool(passed.any()):
            z = torch.as_tensor(truth)
            z = z.reshape(-1, 1) if z.dim() == 1 and len(self.truth_names) == 1 else z
            t = None if theta is None else torch.as_tensor(theta)
            t = t if t is None or t.dim() <= 1 else t[passed]
            reco[passed] = self.sample_reco(z[passed], t, generator=generator).to(reco.dtype)
        return reco, passed

    def density_extrapolates(self, truth: Any, theta: Any = None) -> Tensor:
        """Which rows of ``truth (N, L)`` (with θ) lie outside the contexts the density was trained on, ``(N,)`` bool
        (the passing events' truth: narrower than :attr:`truth_box`, where the efficiency was trained)."""
        c = self._context(truth, theta)
        support = self.density.training_support
        if support is None:
            return torch.zeros(c.shape[0], dtype=torch.bool, device=c.device)
        return support.outside(c.detach().to(self.density.low.dtype))

    # ------------------------------------------------------------------ publishing
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (the networks as nested registered specs)."""
        return {"density": module_spec(self.density), "efficiency": None if self.efficiency is None else module_spec(self.efficiency),
                "truth_names": list(self.truth_names), "reco_names": list(self.reco_names),
                "truth_low": self.truth_low.tolist(), "truth_high": self.truth_high.tolist(),
                "space": None if self.space is None else self.space.to_dict()}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "StageSurrogate":
        """Rebuild an (untrained) stage from :meth:`spec`."""
        spec = dict(spec)
        density = build_module(spec.pop("density"))
        efficiency = spec.pop("efficiency")
        return cls(density, None if efficiency is None else build_module(efficiency), **spec)


def _default_box(truth: Tensor, passed: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    z = truth[passed].double()
    lo, hi = z.min(0).values, z.max(0).values
    pad = torch.where(hi > lo, margin * (hi - lo), torch.ones_like(hi))
    return lo - pad, hi + pad


def train_stage_surrogate(
    truth: Any,
    reco: Any = None,
    passed: Any = None,
    *,
    theta: Any = None,
    space: ParameterSpace | None = None,
    truth_low: Sequence[float] | None = None,
    truth_high: Sequence[float] | None = None,
    reco_low: Sequence[float | None] | None = None,
    reco_high: Sequence[float | None] | None = None,
    truth_names: Sequence[str] | None = None,
    reco_names: Sequence[str] | None = None,
    flow: FlowSpec | None = None,
    efficiency_hidden: Sequence[int] = (64, 64),
    epochs: int = 30,
    efficiency_epochs: int = 20,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    validation_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    device: str = "cpu",
) -> StageSurrogate:
    r"""Train a :class:`StageSurrogate` from paired simulation (truth, reco, passed).

    Args:
        truth: ``(N, L)`` truth of every simulated event (failed ones included), or the whole paired
            simulation as :class:`~sbilab.paired.PairedEvents` (``gen`` = truth with θ, ``reco``,
            ``pass_reco``; see :func:`~sbilab.surrogates.pairs.paired_arrays`): then ``reco``,
            ``passed`` and ``theta`` come from it and must not be given.
        reco: ``(N, D)`` their reconstructed values (placeholders where they failed).
        passed: ``(N,)`` bool, the selection (default: all passed, efficiency 1).
        theta: ``(N, P)`` parameters, for a θ-dependent stage (then give ``space``).
        truth_low, truth_high: The truth range to learn (default: that of the passing events,
            widened by 1 % on each side). Events outside it are left out; passing ones among
            them are counted and announced (:class:`TruthRangeWarning`).
        reco_low, reco_high: Bounds of the reco observables (the selection's), so that draws pass.
        flow: Architecture of the density (default ``FlowSpec("nsf", transforms=3, hidden=(64, 64))``).
        efficiency_hidden: Hidden widths of the efficiency classifier.
        epochs, efficiency_epochs: Training epochs of the density and of the classifier.
        validation_fraction: Held-out share for the density's validation loss (the kept epoch is its best).
            The classifier trains on all events for all epochs (no early stop: an early epoch
            kept by a noisy validation loss biases probabilities).
        seed: Seed of initialisation and batches.

    Raises:
        InvalidEventsError: paired arrays of different lengths, non-finite values, no passing event.
        ConfigError: θ given without ``space``, or a malformed range.
        OutOfSupportError: θ outside ``space``.
    """
    if isinstance(truth, PairedEvents):
        if reco is not None or passed is not None or theta is not None:
            raise ConfigError("train_stage_surrogate: with PairedEvents, reco, passed and theta come from the pairs; "
                              "do not pass them as well.")
        truth, reco, passed, theta = paired_arrays(truth)
    elif reco is None:
        raise ConfigError("train_stage_surrogate: reco is missing; give truth and reco arrays, or one PairedEvents.")
    t, r, p, th = check_pairs(truth, reco, passed, theta)
    if th is not None:
        if space is None:
            raise ConfigError("train_stage_surrogate: theta was given without its space; pass space=ParameterSpace(...) "
                              "(the surrogate refuses θ outside it).")
        space.check(th, argument="train_stage_surrogate theta")
    elif space is not None:
        raise ConfigError("train_stage_surrogate: a space was given without theta; pass theta (N, P) for a θ-dependent stage.")
    lo, hi = _default_box(t, p, 0.01) if truth_low is None or truth_high is None else (
        torch.as_tensor(truth_low, dtype=torch.float64), torch.as_tensor(truth_high, dtype=torch.float64))
    inside = ((t.double() >= lo) & (t.double() <= hi)).all(1)
    left_out = int((p & ~inside).sum())
    if left_out:
        warnings.warn(f"train_stage_surrogate: {left_out} of {int(p.sum())} passing events have a truth outside the range "
                      f"[{lo.tolist()}, {hi.tolist()}] and are left out; the surrogate treats such truth as failing. "
                      "Widen truth_low/truth_high if they matter.", TruthRangeWarning, stacklevel=2)
    ts, rs, ps = t[inside], r[inside], p[inside]
    ths = None if th is None else th[inside]
    dense = stage_events(ts, rs, ps, ths)
    options = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, progress=progress, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = ConditionalDensity.from_events(dense, target="latent", low=reco_low, high=reco_high,
                                           flow=flow or FlowSpec("nsf", transforms=3, hidden=(64, 64)))
    res = fit(q, get_loss("density", target="latent"), dense, validation_fraction=validation_fraction, patience=None, **options)
    training: dict[str, Any] = {"events": int(t.shape[0]), "passing": int(p.sum()), "left_out_passing": left_out,
                                "density": {"best_epoch": res.best_epoch, "val_loss": res.best_val_loss}}
    clf = None
    if not bool(ps.all()):
        labelled = efficiency_events(ts, ps, ths)
        clf = Classifier.from_events(labelled, hidden=tuple(efficiency_hidden), seed=seed)
        eff = fit(clf, carl_loss, labelled, **{**options, "epochs": efficiency_epochs}, validation_fraction=0.0, patience=None)
        training["efficiency"] = {"train_loss": eff.history["train_loss"][-1]}
    names_t = tuple(truth_names) if truth_names is not None else tuple(f"z{i}" for i in range(t.shape[1]))
    names_r = tuple(reco_names) if reco_names is not None else tuple(f"x{i}" for i in range(r.shape[1]))
    stage = StageSurrogate(q, clf, truth_names=names_t, reco_names=names_r, truth_low=lo.tolist(), truth_high=hi.tolist(), space=space)
    stage.training_record = training
    return stage.eval()
