r"""The anomaly pipeline (``[analysis] kind = "anomaly"``): decorrelation, ABCD with pyhf, weak supervision, a bump hunt.

Four steps, each a call into :mod:`sbilab.anomaly` (this module only composes and reports):

1. **DisCo λ scan** (:func:`~sbilab.anomaly.decorrelation_scan`) on the decorrelation toy:
   mass sculpting, ABCD closure of (score, m), rejection and dCor² per λ, against the exact
   classifier and the toy's closed forms.
2. **ABCD likelihood** (:func:`~sbilab.anomaly.abcd_inference`): a pseudo-experiment with
   ``abcd_background`` background and ``abcd_injected`` x ``abcd_signal`` signal events spread over
   the regions A–D defined by the classifier at λ = ``lambdas[0]`` and at λ = ``abcd_lambda``;
   CLs limits (pyhf, cross-checked with iminuit), significance. With a correlated classifier the
   background in A exceeds :math:`N_B N_C/N_D` and the "excess" is the non-closure.
3. **SIC study** (:func:`~sbilab.anomaly.sic_study`) on the anomaly toy: supervised, idealised and
   CWoLa classifiers at each signal fraction against the exact likelihood ratio.
4. **Bump hunt** (:func:`~sbilab.anomaly.bump_hunt`) on data with ``[truth] signal_fraction``:
   anomaly cut, sideband-fit and ABCD background estimates, pyhf significance, truth alongside.

Writes ``results.json``, ``abcd_workspace.json`` (the pyhf workspace of step 2 at
``abcd_lambda``), ``sic_curves.h5`` (the SIC curves, :func:`sbilab.publish.save_results`), and the figures ``sculpting.png``, ``closure.png``, ``cls.png``, ``sic.png``,
``bump.png`` (with matplotlib).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..anomaly import (AnomalyToy, BackgroundFlow, DecorrelationToy, MassWindow, Training, abcd_bounds, abcd_inference, abcd_workspace,
                       bump_hunt, decorrelation_scan, fit_background_model, sic_study)
from ..anomaly.studies import METHODS as SIC_METHODS
from ..exceptions import ConfigError
from ..stats.binned import to_json
from .anomaly_plots import plot_bump, plot_closure, plot_cls, plot_sculpting, plot_sic
from .config import AnalysisConfig
from .run import register_pipeline

__all__ = ["run_anomaly", "AnomalySection"]


@dataclass(frozen=True)
class AnomalySection:
    r"""Options of the ``anomaly`` pipeline (:mod:`sbilab.analysis.anomaly`): DisCo, ABCD and a weakly supervised bump hunt.

    ``[simulator]`` holds the options of :class:`~sbilab.anomaly.AnomalyToy` (``toy = "anomaly"``),
    ``[truth] signal_fraction`` the injected S/B in the signal region of the search's data,
    ``[training]`` every classifier's network and ``fit`` options.

    Attributes:
        lambdas: DisCo strengths λ ≥ 0 of the scan on the decorrelation toy.
        decorrelation_rho: Correlation of the decorrelation toy's feature x₁ with m.
        decorrelation_events: Training events per class of each DisCo classifier.
        decorrelation_test_events: Test events per class.
        abcd_efficiency: Background efficiency of the score cut of the ABCD regions (with m > 1).
        abcd_lambda: The λ whose classifier defines the ABCD pseudo-experiment (next to λ = lambdas[0]).
        abcd_background: Expected background events of the ABCD pseudo-experiment (all four regions).
        abcd_signal: Expected signal events at μ = 1 (all four regions, contamination included).
        abcd_injected: μ of the signal in the pseudo-data.
        abcd_scan_points: Points of the CLs scan of μ (linear interpolation between them).
        signal_fractions: S/B in the signal region of the SIC study.
        data_events: Background events of the data over the whole mass range (SIC study and search).
        sic_test_events: Signal-region background test events of the SIC curves.
        sic_efficiency: Background efficiency at which SICs are compared.
        sic_methods: Classifiers of the SIC study (of supervised, idealised, cwola, cathode).
        flow_epochs: Epochs of CATHODE's background flow (:class:`~sbilab.anomaly.BackgroundFlow`).
        search_method: ``"cwola"``, ``"cathode"`` or ``"idealised"``: the classifier of the bump hunt.
        selection_efficiency: Fraction of signal-region events kept by the anomaly cut.
    """

    lambdas: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0)
    decorrelation_rho: float = 0.7
    decorrelation_events: int = 20_000
    decorrelation_test_events: int = 100_000
    abcd_efficiency: float = 0.2
    abcd_lambda: float = 30.0
    abcd_background: float = 2000.0
    abcd_signal: float = 40.0
    abcd_injected: float = 1.0
    abcd_scan_points: int = 61
    signal_fractions: tuple[float, ...] = (0.005, 0.01, 0.02)
    data_events: int = 200_000
    sic_test_events: int = 100_000
    sic_efficiency: float = 1e-3
    sic_methods: tuple[str, ...] = ("supervised", "idealised", "cwola", "cathode")
    flow_epochs: int = 40
    search_method: str = "cwola"
    selection_efficiency: float = 0.01
    nonnegative: ClassVar[tuple[str, ...]] = ("lambdas", "abcd_lambda", "abcd_injected")

    def check(self, where: str) -> None:
        """Ranges the generic type and sign checks do not cover (``where`` names file and section)."""
        for key in ("decorrelation_rho", "abcd_efficiency", "sic_efficiency", "selection_efficiency"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"{where} {key} = {getattr(self, key)!r} must lie in (0, 1).")
        if self.search_method not in ("cwola", "cathode", "idealised"):
            raise ConfigError(f"{where} search_method = {self.search_method!r}; choose 'cwola', 'cathode' or 'idealised'.")
        unknown = sorted(set(self.sic_methods) - set(SIC_METHODS))
        if unknown or not self.sic_methods:
            raise ConfigError(f"{where} sic_methods = {list(self.sic_methods)}: choose a non-empty list among {list(SIC_METHODS)}.")
        if where.endswith("[anomaly]") and self.abcd_lambda not in self.lambdas:
            raise ConfigError(f"{where} abcd_lambda = {self.abcd_lambda} is not among lambdas = {list(self.lambdas)}.")



def _toy(cfg: AnalysisConfig) -> AnomalyToy:
    options = dict(cfg.toy_options)
    window = options.pop("window", None)
    try:
        if window is not None:
            options["window"] = MassWindow(*window)
        for key in ("mass_range", "signal_mass", "signal_mean"):
            if key in options:
                options[key] = tuple(float(v) for v in options[key])
        return AnomalyToy(**options)
    except TypeError as err:
        fields = [f.name for f in dataclasses.fields(AnomalyToy)]
        raise ConfigError(f"{cfg.path}: [simulator] options {cfg.toy_options} do not fit the anomaly toy ({err}); "
                          f"its options are {fields} (window = [lo, hi, sideband_width]).") from None


def _signal_fraction(cfg: AnalysisConfig) -> float:
    if set(cfg.truth) != {"signal_fraction"} or not cfg.truth["signal_fraction"] >= 0:
        raise ConfigError(f"{cfg.path}: [truth] must hold exactly signal_fraction = S/B >= 0 in the signal region, got {cfg.truth}.")
    return cfg.truth["signal_fraction"]


def _abcd_experiment(point: Any, an: Any, seed: int) -> tuple[Any, Any]:
    """Pseudo-data drawn from the regions' background and signal fractions of one DisCo classifier; its ABCD inference."""
    g = np.random.default_rng(seed)
    background = an.abcd_background * np.asarray(point.background_regions)
    signal = an.abcd_signal * np.asarray(point.signal_regions)
    observed = g.poisson(background + an.abcd_injected * signal).astype(float)
    return observed, signal


@register_pipeline("anomaly", section=("anomaly", AnomalySection), toys=("anomaly",))
def run_anomaly(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the anomaly analysis described by ``config``; write results to ``out``; return a printable summary.

    Raises:
        ConfigError: toy options that do not fit, a malformed ``[truth]``, or ``abcd_lambda`` not among ``lambdas``.
    """
    log = (lambda msg: print(f"[sbilab] {msg}", flush=True)) if progress else (lambda msg: None)
    cfg = config.quick_version() if quick else config
    an, tr = cfg.anomaly, cfg.training
    if an.abcd_lambda not in an.lambdas:
        raise ConfigError(f"{cfg.path}: abcd_lambda = {an.abcd_lambda} is not among lambdas = {list(an.lambdas)}.")
    toy, fraction = _toy(cfg), _signal_fraction(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    training = Training(hidden=tuple(cfg.estimator.hidden), epochs=tr.epochs, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                        ensemble=tr.ensemble, seed=tr.seed, device=device)
    doc: dict[str, Any] = {"analysis": cfg.name, "kind": cfg.kind, "quick": quick, "truth": cfg.truth,
                           "anomaly": dataclasses.asdict(an), "training": dataclasses.asdict(training)}

    log(f"{cfg.name}: DisCo scan over lambda = {list(an.lambdas)} on the decorrelation toy (rho = {an.decorrelation_rho})")
    scan = decorrelation_scan(DecorrelationToy(rho=an.decorrelation_rho), an.lambdas, n_train=an.decorrelation_events,
                              n_test=an.decorrelation_test_events, training=training, abcd_efficiency=an.abcd_efficiency,
                              seed=cfg.observed.seed, progress=progress)
    doc["decorrelation"] = scan.to_dict()
    for p in scan.points:
        log(f"  lambda {p.lam:>6g}: closure {p.closure:.3f} ± {p.closure_error:.3f}, rejection {p.rejection:.2f}, "
            f"JSD {p.sculpting:.2e}, dCor2 {p.dcor2:.4f}")

    log("ABCD likelihood (pyhf, iminuit cross-check) on pseudo-data")
    doc["abcd"] = {}
    abcd_results = {}
    for lam in dict.fromkeys((an.lambdas[0], an.abcd_lambda)):
        point = next(p for p in scan.points if p.lam == lam)
        observed, signal = _abcd_experiment(point, an, cfg.observed.seed)
        scan_mu = np.linspace(0.0, abcd_bounds(observed, signal)["mu"][1], an.abcd_scan_points)
        res = abcd_results[lam] = abcd_inference(observed, signal, scan=scan_mu)
        doc["abcd"][str(lam)] = {"observed": observed.tolist(), "signal": signal.tolist(), "closure": point.closure, **res.to_dict()}
        log(f"  lambda {lam:g}: observed {observed.tolist()}, limit {res.limit.observed:.2f} (iminuit {res.limit_iminuit.observed:.2f}), "
            f"expected {res.limit.expected[2]:.2f}, Z = {res.significance:.2f}")
        if lam == an.abcd_lambda:
            to_json(abcd_workspace(observed, signal), out / "abcd_workspace.json")

    log(f"SIC study at signal fractions {list(an.signal_fractions)}")
    flow = BackgroundFlow(epochs=an.flow_epochs, seed=tr.seed, device=device)
    study = sic_study(toy, an.signal_fractions, methods=an.sic_methods, n_background=an.data_events, n_test_background=an.sic_test_events,
                      n_test_signal=max(an.sic_test_events // 10, 1000), n_supervised=an.decorrelation_events,
                      background_efficiency=an.sic_efficiency, training=training, seed=cfg.observed.seed + 1, progress=progress,
                      background_model=lambda sidebands: fit_background_model(sidebands, flow))
    doc["sic"] = {"background_efficiency": an.sic_efficiency, "floor": study.optimal.min_background_efficiency,
                  "at": {m: {str(f): v for f, v in per.items()} for m, per in study.at().items()},
                  "fraction_of_optimal": {m: {str(f): v for f, v in per.items()} for m, per in study.fraction_of_optimal().items()},
                  "signal_events_in_sr": {str(f): n for f, n in study.signal_events.items()}}

    log(f"bump hunt ({an.search_method}) at signal fraction {fraction:g}")
    g = torch.Generator().manual_seed(cfg.observed.seed + 2)
    data = toy.dataset(an.data_events, fraction, generator=g)
    background = toy.background(an.data_events, generator=g) if an.search_method == "idealised" else None
    hunt = bump_hunt(data, toy.window, method=an.search_method, background=background, selection_efficiency=an.selection_efficiency,
                     training=training.options(), background_flow=flow, seed=cfg.observed.seed)
    doc["bump_hunt"] = hunt.to_dict()
    doc["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=float))
    _publish_sic(out / "sic_curves.h5", study, cfg.name)

    plotted = all([
        plot_sculpting(out / "sculpting.png", scan),
        plot_closure(out / "closure.png", scan),
        plot_cls(out / "cls.png", abcd_results, an.abcd_lambda),
        plot_sic(out / "sic.png", study),
        plot_bump(out / "bump.png", hunt, toy.window),
    ])
    return _summary(cfg, doc, scan, abcd_results, study, hunt, out, plotted)


def _publish_sic(path: Path, study: Any, name: str) -> None:
    """The SIC curves (efficiencies, SIC and errors per method and signal fraction) as HDF5 + JSON via :mod:`sbilab.publish`."""
    from ..publish import save_results

    arrays, curves = {}, {"optimal": study.optimal}
    for method, per in study.curves.items():
        curves.update({f"{method}_{f:g}": c for f, c in per.items()})
    for key, c in curves.items():
        for field in ("background_efficiency", "signal_efficiency", "sic", "sic_error"):
            arrays[f"{key}.{field}"] = getattr(c, field)
    save_results(path, arrays, {"curves": sorted(curves), "background_efficiency": study.background_efficiency,
                                "floor": study.optimal.min_background_efficiency}, kind="sic_curves",
                 metadata={"analysis": name}, overwrite=True)


def _summary(cfg: AnalysisConfig, doc: dict, scan: Any, abcd: dict, study: Any, hunt: Any, out: Path, plotted: bool) -> str:
    lines = [f"{cfg.name}: DisCo scan (decorrelation toy), ABCD likelihood, SIC study, bump hunt ({doc['seconds']:.0f} s)",
             f"{'lambda':>8} {'closure':>14} {'rejection@50%':>14} {'JSD (bits)':>11} {'dCor2':>8}"]
    for p in scan.points:
        lines.append(f"{p.lam:>8g} {p.closure:>7.3f} ± {p.closure_error:<5.3f} {p.rejection:>14.2f} {p.sculpting:>11.2e} {p.dcor2:>8.4f}")
    lines.append(f"{'exact':>8} {scan.exact.closure:>7.3f} (quadrature {scan.exact_closure:.3f}) rejection {scan.exact.rejection:.2f}; "
                 f"best m-independent rejection {scan.decorrelated_rejection:.2f}")
    for lam, res in abcd.items():
        lines.append(f"ABCD at lambda {lam:g}: 95% CLs limit on mu {res.limit.observed:.2f} (iminuit {res.limit_iminuit.observed:.2f}), "
                     f"expected {res.limit.expected[2]:.2f} [{res.limit.expected[1]:.2f}, {res.limit.expected[3]:.2f}], Z = {res.significance:.2f}")
    lines.append(f"SIC / optimal at background efficiency {study.background_efficiency:g}:")
    for method, per in study.fraction_of_optimal().items():
        lines.append(f"  {method:<11} " + "  ".join(f"S/B {f:g}: {v:.2f}" for f, v in per.items()))
    sb = hunt.sideband
    truth = f" (true background {hunt.true_background}, signal {hunt.true_signal})" if hunt.true_background >= 0 else ""
    lines.append(f"bump hunt ({hunt.method}): {hunt.observed} SR events pass{truth}; sideband fit {sb.predicted:.1f} ± {sb.predicted_error:.1f}"
                 f" -> Z = {hunt.significance.significance:.2f}; ABCD {hunt.abcd.predicted:.1f} ± {hunt.abcd.predicted_error:.1f}"
                 f" -> Z = {hunt.significance_abcd.significance:.2f}")
    lines.append(f"results in {out}/results.json" + ("" if plotted else " (no matplotlib: figures skipped)"))
    return "\n".join(lines)
