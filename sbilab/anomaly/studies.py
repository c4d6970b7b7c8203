r"""The two studies of the exact toys, shared by ``benchmarks/anomaly.py`` and the ``anomaly`` analysis.

:func:`decorrelation_scan` trains DisCo classifiers (:func:`~sbilab.estimators.disco_loss`) on the
:class:`~sbilab.anomaly.toys.DecorrelationToy` for a list of λ and measures, on independent test
events, the mass sculpting (JSD of the background's m before/after the cut keeping 50 % of it),
the background rejection at 50 % signal efficiency, dCor² of score and m, the ABCD closure of
(score, m), and the fractions of background and signal in the regions A–D (what an ABCD
likelihood with signal contamination needs); the exact classifier and the toy's closed forms are
the references.

:func:`sic_study` trains the supervised, idealised and CWoLa classifiers (and CATHODE, given a
factory of background models) on the :class:`~sbilab.anomaly.toys.AnomalyToy` at several signal
fractions and measures their SIC curves on one signal-region test set, against the SIC of the
exact likelihood ratio.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..estimators import disco_loss, distance_correlation
from ..events import Events
from ..exceptions import ConfigError
from .results import NestedResult
from .abcd import REGIONS, abcd_counts, abcd_estimate, threshold_at_efficiency
from .sculpting import js_divergence_floor, mass_sculpting
from .sic import SicCurve, rejection_at, sic_curve
from .toys import AnomalyToy, DecorrelationToy
from .training import classifier_score, labelled_events, train_classifier
from .cathode import BackgroundFlow, fit_background_model
from .weak import cathode_training_data, cwola_training_data, idealised_training_data, sideband_events, supervised_training_data

__all__ = ["Training", "DecorrelationPoint", "DecorrelationScan", "decorrelation_scan", "SicStudy", "sic_study", "METHODS"]

METHODS = ("supervised", "idealised", "cwola", "cathode")


@dataclass(frozen=True)
class Training:
    """Options of every classifier a study trains (passed to :func:`~sbilab.anomaly.training.train_classifier`)."""

    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 30
    batch_size: int = 1024
    learning_rate: float = 5e-3
    ensemble: int = 1
    seed: int = 0
    device: str = "auto"

    def options(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "ensemble": self.ensemble, "seed": self.seed, "device": self.device}


@dataclass(frozen=True)
class DecorrelationPoint(NestedResult):
    """Figures of one classifier of the decorrelation scan (see :func:`decorrelation_scan`)."""

    lam: float
    closure: float
    closure_error: float
    rejection: float
    sculpting: float
    dcor2: float
    mass_after_cut: tuple[float, ...] = ()
    background_regions: tuple[float, ...] = ()
    signal_regions: tuple[float, ...] = ()


@dataclass(frozen=True)
class DecorrelationScan(NestedResult):
    """DisCo figures per λ and the references: the exact classifier's figures and the toy's closed forms."""

    points: tuple[DecorrelationPoint, ...]
    exact: DecorrelationPoint
    exact_closure: float
    optimal_rejection: float
    decorrelated_rejection: float
    sculpting_floor: float
    mass_edges: tuple[float, ...]
    mass_before_cut: tuple[float, ...]


def _figures(lam: float, sb: torch.Tensor, ss: torch.Tensor, m: torch.Tensor, m_signal: torch.Tensor, *, abcd_efficiency: float,
             mass_cut: float, edges: np.ndarray, dcor_events: int) -> DecorrelationPoint:
    cut = threshold_at_efficiency(sb, abcd_efficiency)
    est = abcd_estimate(sb, m, cut_u=cut, cut_v=mass_cut, require_a=True)
    signal = abcd_counts(ss, m_signal, cut_u=cut, cut_v=mass_cut)
    half = threshold_at_efficiency(sb, 0.5)
    hist = np.histogram(m[sb > half].numpy(), edges)[0]
    k = min(dcor_events, len(sb))
    dcor = float(distance_correlation(torch.sigmoid(sb[:k]), m[:k]))
    return DecorrelationPoint(lam=float(lam), closure=est.closure, closure_error=est.closure_error, rejection=rejection_at(ss, sb, 0.5),
                              sculpting=mass_sculpting(m, sb), dcor2=dcor, mass_after_cut=tuple(float(v) for v in hist),
                              background_regions=tuple(est.counts.n[r] / len(sb) for r in REGIONS),
                              signal_regions=tuple(signal.n[r] / len(ss) for r in REGIONS))


def decorrelation_scan(toy: DecorrelationToy, lambdas: Sequence[float], *, n_train: int = 20_000, n_test: int = 50_000,
                       training: Training = Training(), abcd_efficiency: float = 0.2, mass_cut: float = 1.0,
                       dcor_events: int = 4000, seed: int = 0, progress: bool = False) -> DecorrelationScan:
    r"""DisCo at each λ on the decorrelation toy: closure, rejection, sculpting, dCor² (see the module docstring).

    Args:
        toy: The toy.
        lambdas: The λ values (each ≥ 0; 0 is the plain classifier).
        n_train: Training events per class.
        n_test: Test events per class.
        training: Classifier and ``fit`` options.
        abcd_efficiency: Background efficiency of the score cut of the ABCD regions (the mass cut is ``mass_cut``).
        dcor_events: Test background events used for dCor² (its cost is quadratic).
        seed: Seed of the toy samples.

    Raises:
        ConfigError: a negative λ (from the loss).
    """
    g = torch.Generator().manual_seed(seed)
    train = labelled_events(toy.background(n_train, generator=g), toy.signal(n_train, generator=g))
    test_b, test_s = toy.background(n_test, generator=g), toy.signal(n_test, generator=g)
    m, m_signal = test_b.spectator[:, 0], test_s.spectator[:, 0]
    edges = np.quantile(m.numpy(), np.linspace(0, 1, 21))
    edges[0], edges[-1] = float(m.min()), float(m.max())
    options = dict(abcd_efficiency=abcd_efficiency, mass_cut=mass_cut, edges=edges, dcor_events=dcor_events)
    points = []
    for lam in tqdm(list(lambdas), desc="DisCo lambda scan", disable=not progress):
        clf = train_classifier(train, loss=functools.partial(disco_loss, lam=float(lam)), **training.options())
        points.append(_figures(lam, classifier_score(clf, test_b.x), classifier_score(clf, test_s.x), m, m_signal, **options))
    exact = _figures(float("nan"), toy.log_ratio(test_b.x), toy.log_ratio(test_s.x), m, m_signal, **options)
    from scipy.stats import norm

    from .references import bivariate_normal_abcd

    optimal, decorrelated = toy.optimal_rejection(0.5)
    return DecorrelationScan(
        points=tuple(points), exact=exact,
        exact_closure=bivariate_normal_abcd(toy.score_mass_correlation, float(norm.isf(abcd_efficiency)), mass_cut).closure,
        optimal_rejection=optimal, decorrelated_rejection=decorrelated,
        sculpting_floor=js_divergence_floor(n_test),
        mass_edges=tuple(edges.tolist()), mass_before_cut=tuple(float(v) for v in np.histogram(m.numpy(), edges)[0]),
    )


@dataclass(frozen=True)
class SicStudy:
    """SIC curves per method and signal fraction, and of the exact likelihood ratio, on one SR test set.

    Attributes:
        curves: ``{method: {signal_fraction: SicCurve}}`` (``supervised`` does not depend on the fraction).
        optimal: The exact likelihood ratio's curve.
        background_efficiency: Where :meth:`at` reads the curves.
        signal_events: ``{signal_fraction: signal events in the SR of the training data}``.
    """

    curves: dict[str, dict[float, SicCurve]]
    optimal: SicCurve
    background_efficiency: float
    signal_events: dict[float, int] = field(default_factory=dict)

    def at(self) -> dict[str, dict[float, tuple[float, float]]]:
        """``{method: {fraction: (SIC, error)}}`` at ``background_efficiency``, and ``{"optimal": ...}``."""
        out = {m: {f: c.at(self.background_efficiency) for f, c in per.items()} for m, per in self.curves.items()}
        out["optimal"] = {0.0: self.optimal.at(self.background_efficiency)}
        return out

    def fraction_of_optimal(self) -> dict[str, dict[float, float]]:
        """``{method: {fraction: SIC / SIC_optimal}}`` at ``background_efficiency``."""
        best = self.optimal.at(self.background_efficiency)[0]
        return {m: {f: c.at(self.background_efficiency)[0] / best for f, c in per.items()} for m, per in self.curves.items()}


def sic_study(toy: AnomalyToy, signal_fractions: Sequence[float], *, methods: Sequence[str] = ("supervised", "idealised", "cwola"),
              n_background: int = 200_000, n_test_background: int = 200_000, n_test_signal: int = 20_000,
              n_supervised: int = 20_000, background_efficiency: float = 1e-3, training: Training = Training(),
              background_model: Callable[[Events], Any] | None = None, seed: int = 0, progress: bool = False) -> SicStudy:
    r"""SIC of the supervised, idealised, CWoLa (and CATHODE) classifiers at each signal fraction (see the module docstring).

    Args:
        toy: The anomaly toy; its ``window`` is the signal region.
        signal_fractions: S/B in the signal region of the data.
        methods: Any of :data:`METHODS`; ``"cathode"`` needs ``background_model``.
        n_background: Background events of the data over the whole mass range.
        n_test_background, n_test_signal: SR test events.
        n_supervised: Events per class of the supervised reference.
        background_efficiency: Where the curves are compared (must lie above their floor).
        training: Classifier options (``ensemble=K`` trains K members with ``fit``).
        background_model: ``factory(sideband_events) -> model`` with ``sample``/``log_prob`` (CATHODE);
            default: :func:`~sbilab.anomaly.cathode.fit_background_model` with ``BackgroundFlow(seed=training.seed)``.

    Raises:
        ConfigError: an unknown method.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"sic_study: methods {list(methods)}: choose among {list(METHODS)}.")
    if background_model is None:
        flow = BackgroundFlow(seed=training.seed, device=training.device)
        background_model = functools.partial(fit_background_model, options=flow)
    g = torch.Generator().manual_seed(seed)
    lo, hi = toy.window.lo, toy.window.hi
    test_b = toy.background(n_test_background, generator=g, lo=lo, hi=hi)
    test_s = toy.signal(n_test_signal, generator=g, in_signal_region=True)
    floor = min(background_efficiency, 10.0 / n_test_background)

    def curve(model: Any) -> SicCurve:
        return sic_curve(classifier_score(model, test_s.x), classifier_score(model, test_b.x), min_background_efficiency=floor)

    optimal = sic_curve(toy.log_ratio_sr(test_s.x), toy.log_ratio_sr(test_b.x), min_background_efficiency=floor)
    curves: dict[str, dict[float, SicCurve]] = {m: {} for m in methods}
    options = training.options()
    if "supervised" in methods:
        sup = supervised_training_data(toy.signal(n_supervised, generator=g, in_signal_region=True),
                                       toy.background(n_supervised, generator=g, lo=lo, hi=hi))
        sup_curve = curve(train_classifier(sup, **options))
        curves["supervised"] = {float(f): sup_curve for f in signal_fractions}
    signal_events = {}
    for f in tqdm(list(signal_fractions), desc="signal fractions", disable=not progress):
        data = toy.dataset(n_background, float(f), generator=g)
        sr = toy.window.in_signal_region(toy.window.mass(data))
        signal_events[float(f)] = int((data.latent[sr, 0] > 0.5).sum())
        if "idealised" in methods:
            perfect = toy.background(int(sr.sum()), generator=g, lo=lo, hi=hi)
            curves["idealised"][float(f)] = curve(train_classifier(idealised_training_data(data, perfect, toy.window), **options))
        if "cwola" in methods:
            curves["cwola"][float(f)] = curve(train_classifier(cwola_training_data(data, toy.window), **options))
        if "cathode" in methods:
            model = background_model(sideband_events(data, toy.window))
            train = cathode_training_data(data, toy.window, model, generator=g)
            curves["cathode"][float(f)] = curve(train_classifier(train, **options))
    return SicStudy(curves=curves, optimal=optimal, background_efficiency=background_efficiency, signal_events=signal_events)
