r"""The search pipeline (``[analysis] kind = "search"``): a binned resonance search with pyhf.

Model (the ``resonance_background`` toy, truth = the signal hypothesis): in the window the
expected events are :math:`\nu(x) = \mu S\,p_s(x) + B\,p_b(x)`, with the signal line shape
:math:`p_s` (Breit–Wigner ⊗ Gaussian resolution :math:`\sigma_\mathrm{det}`, normalised in the
window) and the truncated exponential background :math:`p_b`. The observed data are
:math:`\mathrm{Pois}(\mu_\mathrm{true}S)` signal and :math:`\mathrm{Pois}(B)` background events
(seed ``[observed] seed``).

Three observables, each histogrammed into a HistFactory workspace
(:func:`~sbilab.stats.binned.build_workspace`):

``x``        the raw observable in ``x_bins`` fixed-width bins over the window;
``learned``  a :class:`~sbilab.estimators.Classifier` of x, signal (label 1) against background
             (label 0), trained with the cross-entropy (``carl_loss``) by :func:`~sbilab.training.fit`
             on events at the nominal point; its logit
             :math:`\log\hat r(x) \approx \log p_s(x)/p_b(x)` + const, i.e. the classifier output
             :math:`\hat s/(\hat s+\hat b) = \sigma(\log\hat r)` up to a monotone map
             (arXiv:1506.02169);
``exact``    the optimal observable :math:`\log p_s(x)/p_b(x)` from the toy's own densities
             (Neyman–Pearson: for known shapes every test of μ depends on x only through it).

The two ratio observables use ``observable_bins`` bins with equal expected background (the
bins are invariant under monotone maps, so logit and :math:`s/(s+b)` bin identically).
Templates come from ``mc_events`` simulated events at the nominal resolution and at
:math:`\sigma_\mathrm{det}(1\mp u)`, drawn with common random numbers (so the shape variation
is smooth) and split by the process label in the latent path. Every workspace carries: the
normfactor ``mu`` on the signal; background normalisation ``normsys`` (±``background_norm_uncertainty``);
the signal shape ``histosys`` ``sigma_det`` (yields scaled by the window acceptance
:math:`A(\sigma_\mathrm{det})`); MC statistics ``staterror`` (:math:`\sqrt{\sum w^2}` per bin).

Results per observable (asymptotics, :mod:`sbilab.stats.binned`, :math:`\tilde q_\mu`):
observed and expected (median, ±1σ, ±2σ) CLs upper limits on μ (a scan of μ, linear
interpolation as in pyhf), observed CLs at μ = 1, the discovery significance :math:`\sqrt{q_0}`
of the observed data, the expected significance at μ = 1 from the Asimov dataset with nominal
nuisances (``expected_significance``; pyhf's post-fit convention as
``expected_significance_postfit``) and the statistics-only Asimov significance of the same
templates (:func:`~sbilab.stats.asymptotic.asimov_significance` per bin). The reference
``unbinned_exact`` is the statistics-only unbinned Asimov significance and median expected limit
with the exact densities, e.g. :math:`Z_A^2 = 2\int [(Bp_b+Sp_s)\ln(1+Sp_s/Bp_b) - Sp_s]\,dx`:
by the log-sum inequality no binning reaches above it, and profiling systematics only lowers it
(:func:`~sbilab.stats.asymptotic.unbinned_asimov`).

The options are the ``[search]`` section (:class:`SearchSection`), registered with the pipeline;
the toy's processes are read through its methods (``is_signal``, ``signal_log_prob``,
``background_log_prob``, ``with_resolution``), never by index.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, OutOfSupportError
from ..stats.asymptotic import unbinned_asimov
from ..stats.binned import PyhfModel, build_workspace, to_json, workspace_hypotest, workspace_upper_limit
from ..stats.templates import histogram, quantile_edges
from .config import AnalysisConfig
from .estimation import Trained, build_simulator, fit_estimator, truth_point
from .plots import plot_limits
from .run import register_pipeline, write_results

__all__ = ["run_search", "SearchSection", "OBSERVABLE_STYLES"]

OBSERVABLE_STYLES = {"x": ("C0", "raw x"), "learned": ("C1", "classifier s/(s+b)"), "exact": ("k", "exact s/b")}
_F64 = torch.float64


@dataclass(frozen=True)
class SearchSection:
    r"""Options of the ``search`` pipeline: the ``[search]`` section of a binned resonance search with pyhf.

    ``[truth]`` is the signal hypothesis; the observed counts are Poisson draws seeded by
    ``[observed] seed`` (``[observed] n_events`` is not used); ``[estimator]`` and ``[training]``
    configure the signal-vs-background classifier (``method = "carl"``).

    Attributes:
        signal_events: Expected signal events S in the window at the nominal resolution for
            :math:`\mu = 1` (the signal yield is :math:`\mu S`).
        background_events: Expected background events B in the window.
        mu_true: Signal strength at which the observed data are drawn (0: background only).
        x_bins: Fixed-width bins of the raw observable x over the window.
        observable_bins: Bins of the classifier and exact-ratio observables, with equal expected
            background per bin.
        mc_events: Simulated events per template sample (one sample at each of the nominal, low
            and high resolution; the process label splits each into signal and background).
            Their finite number is the MC statistical uncertainty (``staterror``).
        background_norm_uncertainty: Relative background normalisation uncertainty (``normsys``).
        resolution_uncertainty: Relative shift of the detector resolution for the signal-shape
            templates (``histosys`` at :math:`\sigma_\mathrm{det}(1 \mp u)`).
        limit_cl: Confidence level of the CLs upper limits.
        mu_max: Upper end of the scan of the signal strength.
        mu_points: Points of the scan on (0, mu_max].
    """

    signal_events: float = 75.0
    background_events: float = 1000.0
    mu_true: float = 0.0
    x_bins: int = 10
    observable_bins: int = 10
    mc_events: int = 200_000
    background_norm_uncertainty: float = 0.1
    resolution_uncertainty: float = 0.1
    limit_cl: float = 0.95
    mu_max: float = 3.0
    mu_points: int = 31
    nonnegative: ClassVar[tuple[str, ...]] = ("mu_true",)

    def check(self, where: str) -> None:
        """Ranges that the generic type and sign checks do not cover."""
        for key in ("background_norm_uncertainty", "resolution_uncertainty", "limit_cl"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{where} {key} = {value!r} must lie in (0, 1), e.g. {getattr(SearchSection(), key)!r}.")
        if self.mu_points < 2:
            raise ConfigError(f"{where} mu_points = {self.mu_points} must be at least 2, e.g. 31.")


def _check(config: AnalysisConfig) -> None:
    if config.estimator.method != "carl":
        raise ConfigError(f"{config.path}: [analysis] kind = 'search' trains a signal-vs-background classifier; "
                          f"set [estimator] method = 'carl' (got {config.estimator.method!r}).")


def _sample(sim, theta: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` events at ``theta (P,)``: x ``(n,)`` float64 and the signal mask ``(n,)`` from the simulator's process label."""
    ev = sim.simulate(n, theta=theta, generator=torch.Generator().manual_seed(seed))
    return ev.x[:, 0].to(_F64), sim.is_signal(ev)


def _observed(sim, theta: Tensor, n_signal: int, n_background: int, generator: torch.Generator) -> Tensor:
    """``n_signal`` signal and ``n_background`` background events at ``theta``, x ``(n_signal + n_background,)``."""
    sig, bkg = [], []
    while sum(map(len, sig)) < n_signal or sum(map(len, bkg)) < n_background:
        ev = sim.simulate(2 * (n_signal + n_background) + 100, theta=theta, generator=generator)
        label = sim.is_signal(ev)
        sig.append(ev.x[label, 0].to(_F64))
        bkg.append(ev.x[~label, 0].to(_F64))
    return torch.cat([torch.cat(sig)[:n_signal], torch.cat(bkg)[:n_background]])


def _densities(sim, theta: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    r"""``x (N,) -> (log p_s(x|θ), log p_b(x))``, the toy's two process densities, float64."""
    th = theta.to(_F64).reshape(1, -1)

    def log_densities(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(_F64).reshape(-1, 1)
        return sim.signal_log_prob(x, th.expand(len(x), -1)), sim.background_log_prob(x)

    return log_densities


def _train_classifier(cfg: AnalysisConfig, sim, theta: Tensor, *, device: str, progress: bool, log) -> Trained:
    """:class:`~sbilab.estimators.Classifier` of signal (label 1) vs background (label 0) events at ``theta`` (x alone, BCE)."""
    from ..estimators import Classifier, carl_loss, classifier_training_data

    tr, est = cfg.training, cfg.estimator
    started = time.perf_counter()
    x, label = _sample(sim, theta, est.n_simulations, tr.seed)
    x = x.to(torch.get_default_dtype())
    data = classifier_training_data(x[~label], x[label])
    estimator = Classifier.from_events(data, hidden=est.hidden, activation=est.activation, seed=tr.seed)
    log(f"training the signal-vs-background classifier on {len(data)} events ({int(label.sum())} signal)")
    return fit_estimator(estimator, carl_loss, data, tr, device=device, progress=progress, started=started)


def _logit(trained: Trained) -> Callable[[Tensor], Tensor]:
    """``x (N,) -> logit (N,)`` float64 of the trained classifier (:class:`EnsembleMean` of an ensemble's members)."""
    from ..estimators import EnsembleMean

    model = EnsembleMean.of(trained.model)

    def logit(x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x.to(torch.get_default_dtype()).reshape(-1, 1)).to(_F64)

    return logit


class _Templates:
    """Template events of the search: nominal, low and high resolution signal and the background, x ``(n,)`` each."""

    def __init__(self, cfg: AnalysisConfig, sim, truth: Tensor) -> None:
        sc = cfg.search
        self.yields: dict[str, float] = {}
        self.x: dict[str, Tensor] = {}
        for name, factor in (("signal", 1.0), ("signal_lo", 1.0 - sc.resolution_uncertainty), ("signal_hi", 1.0 + sc.resolution_uncertainty)):
            try:
                theta = sim.with_resolution(truth, factor)
            except OutOfSupportError as err:
                raise ConfigError(f"{cfg.path}: [search] resolution_uncertainty = {sc.resolution_uncertainty} moves sigma_det "
                                  f"outside the toy's range ({err}); use a smaller value.") from None
            x, is_signal = _sample(sim, theta, sc.mc_events, cfg.observed.seed + 1)  # one seed: common random numbers
            self.x[name] = x[is_signal]
            self.yields[name] = sc.signal_events * float(sim.acceptance(theta.reshape(1, -1)) / sim.acceptance(truth.to(_F64).reshape(1, -1)))
            if name == "signal":
                self.x["background"], self.yields["background"] = x[~is_signal], sc.background_events

    def workspace(self, h: Callable[[Tensor], Tensor], edges: Tensor, observed: Tensor, cfg: AnalysisConfig, *, without: str | None = None):
        """The HistFactory workspace of observable ``h`` binned by ``edges`` with the observed counts ``observed (B,)``.

        ``without`` drops one systematic (``"bkg_norm"``, ``"sigma_det"`` or ``"staterror"``) to measure its impact.
        """
        counts = {k: histogram(h(v), edges) for k, v in self.x.items()}
        weight = {k: self.yields[k] / len(self.x[k]) for k in self.x}
        nominal = {k: (counts[k] * weight[k]).tolist() for k in counts}
        u = cfg.search.background_norm_uncertainty
        systematics = {
            "normsys": {"background": {"bkg_norm": (1.0 - u, 1.0 + u)}},
            "histosys": {"signal": {"sigma_det": (nominal["signal_lo"], nominal["signal_hi"])}},
            "staterror": {k: (counts[k].sqrt() * weight[k]).tolist() for k in ("signal", "background")},
        }
        dropped = {"bkg_norm": "normsys", "sigma_det": "histosys", "staterror": "staterror"}.get(without)
        return build_workspace(
            signal={"signal": nominal["signal"]}, backgrounds={"background": nominal["background"]}, observed=observed.tolist(),
            **{k: v for k, v in systematics.items() if k != dropped}, poi_bounds=(0.0, 10.0 * cfg.search.mu_max),
        )


def _prefit_discovery(model):
    """The q0 test on the Asimov dataset at μ = 1 with nominal nuisance parameters (the pre-fit expected significance)."""
    nominal = np.asarray(model.model.config.suggested_init(), dtype=float)
    nominal[model.poi_index] = 1.0
    return workspace_hypotest(model, 0.0, data=model.asimov(nominal), test_statistic="q0")


def _analyse(workspace, templates: dict[str, list[float]], cfg: AnalysisConfig) -> dict[str, Any]:
    """Limits, CLs at μ = 1, significances and the CLs scan of one workspace."""
    from ..stats.asymptotic import asimov_significance

    sc = cfg.search
    model = PyhfModel(workspace)
    scan = np.linspace(0.0, sc.mu_max, sc.mu_points + 1)[1:]
    limit = workspace_upper_limit(model, alpha=1.0 - sc.limit_cl, scan=scan)
    tests = [workspace_hypotest(model, float(mu)) for mu in scan]  # the fits are cached: free
    at_one = workspace_hypotest(model, 1.0)
    discovery = workspace_hypotest(model, 0.0, test_statistic="q0")
    prefit = _prefit_discovery(model)
    stat_only = math.sqrt(sum(asimov_significance(s, b) ** 2 for s, b in zip(templates["signal"], templates["background"]) if s > 0))
    _, best, _ = model.fit(model.observed)
    valid = all(t.valid for t in (*tests, at_one, discovery, prefit))
    return {
        "observed_limit": limit.observed,
        "expected_limits": dict(zip(("-2", "-1", "median", "+1", "+2"), limit.expected)),
        "cls_mu1": at_one.cls_obs, "mu_hat": float(best[model.poi_index]),
        "significance_observed": discovery.significance,
        "expected_significance": math.sqrt(max(prefit.q_obs, 0.0)),
        "expected_significance_postfit": math.sqrt(max(discovery.q_asimov, 0.0)),
        "stat_only_significance": stat_only, "valid": valid,
        "scan": {"mu": scan.tolist(), "cls_obs": [t.cls_obs for t in tests],
                 "cls_expected_median": [t.cls_expected[2] for t in tests]},
        "templates": templates,
    }


def _unbinned(log_densities, window: tuple[float, float], s: float, b: float, cl: float) -> dict[str, float]:
    r"""Statistics-only unbinned Asimov significance at μ = 1 and median expected CLs limit with the exact densities (a grid of 19999 points)."""
    x = torch.linspace(window[0], window[1], 20001, dtype=_F64)[1:-1]
    log_s, log_b = log_densities(x)
    significance, limit = unbinned_asimov(log_s.exp().numpy(), log_b.exp().numpy(), float(x[1] - x[0]), s, b, cl=cl)
    return {"expected_significance": significance, "expected_limit": limit}


@register_pipeline("search", section=("search", SearchSection), toys=("resonance_background",), check=_check)
def run_search(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the binned search described by ``config``; write results to ``out``; return a printable summary.

    Writes ``results.h5`` and ``results.json``, ``workspace_<observable>.json`` (pyhf workspaces, loadable for
    reinterpretation), ``estimator.h5`` (the classifier, :mod:`sbilab.publish`) and ``limits.png``.

    Raises:
        ConfigError: the toy has no background (``background_fraction = 0``) or the resolution
            shift leaves the toy's parameter range.
    """
    from ..publish import save

    log = (lambda msg: print(f"[sbilab] {msg}", flush=True)) if progress else (lambda msg: None)
    cfg = config.quick_version() if quick else config
    sc = cfg.search
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sim = build_simulator(cfg)
    if not sim.background_fraction > 0:
        raise ConfigError(f"{cfg.path}: [simulator] background_fraction = {sim.background_fraction}; the search needs simulated "
                          "background events for its templates and classifier, e.g. background_fraction = 0.5.")
    truth = truth_point(cfg, sim).to(_F64)
    gen = torch.Generator().manual_seed(cfg.observed.seed)
    n_sig = int(torch.poisson(torch.tensor(sc.mu_true * sc.signal_events, dtype=_F64), generator=gen))
    n_bkg = int(torch.poisson(torch.tensor(sc.background_events, dtype=_F64), generator=gen))
    x_obs = _observed(sim, truth, n_sig, n_bkg, gen)
    log(f"{cfg.name}: S = {sc.signal_events:g}, B = {sc.background_events:g} expected in the window; "
        f"observed {len(x_obs)} events drawn at mu_true = {sc.mu_true:g} ({n_sig} signal, {n_bkg} background)")

    templates = _Templates(cfg, sim, truth)
    trained = _train_classifier(cfg, sim, truth, device=device, progress=progress, log=log)
    log_densities = _densities(sim, truth)
    observables = {"x": lambda x: x, "learned": _logit(trained),
                   "exact": lambda x: (lambda s, b: s - b)(*log_densities(x))}
    edges = {"x": torch.linspace(*sim.window, sc.x_bins + 1, dtype=_F64)}
    for key in ("learned", "exact"):
        edges[key] = quantile_edges(observables[key](templates.x["background"]), sc.observable_bins)
    results: dict[str, dict] = {}
    for key, h in observables.items():
        t0 = time.perf_counter()
        observed = histogram(h(x_obs), edges[key])
        workspace = templates.workspace(h, edges[key], observed, cfg)
        to_json(workspace, out / f"workspace_{key}.json")
        samples = {s["name"]: s["data"] for s in workspace["channels"][0]["samples"]}
        r = results[key] = {"bins": edges[key].tolist(), **_analyse(workspace, samples, cfg)}
        r["expected_significance_without"] = {}  # the impact of each systematic
        for syst in ("bkg_norm", "sigma_det", "staterror"):
            test = _prefit_discovery(PyhfModel(templates.workspace(h, edges[key], observed, cfg, without=syst)))
            r["expected_significance_without"][syst] = math.sqrt(max(test.q_obs, 0.0))
        log(f"  {key:<8} limit obs {r['observed_limit']:.3f} exp {r['expected_limits']['median']:.3f}, CLs(mu=1) {r['cls_mu1']:.4f}, "
            f"Z obs {r['significance_observed']:.2f} exp {r['expected_significance']:.2f} ({time.perf_counter() - t0:.1f} s)")
    reference = _unbinned(log_densities, sim.window, sc.signal_events, sc.background_events, sc.limit_cl)
    document = {
        "analysis": cfg.name, "kind": cfg.kind, "quick": quick, "truth": cfg.truth, "cl": sc.limit_cl,
        "signal_events": sc.signal_events, "background_events": sc.background_events, "mu_true": sc.mu_true,
        "n_observed": len(x_obs), "systematics": {"bkg_norm": sc.background_norm_uncertainty, "sigma_det": sc.resolution_uncertainty,
                                                  "staterror_mc_events": sc.mc_events},
        "observables": results, "unbinned_exact": reference,
        "training": {"method": "carl", "n_simulations": cfg.estimator.n_simulations, **trained.record()},
        "seconds": time.perf_counter() - started,
    }
    write_results(out, document, kind=cfg.kind, metadata={"analysis": cfg.name})
    save(out / "estimator.h5", trained.model, overwrite=True, metadata={"analysis": cfg.name, "method": "carl", "classes": "signal=1, background=0"})
    plotted = plot_limits(out / "limits.png", results, reference, sc.limit_cl,
                          f"{cfg.name}: S = {sc.signal_events:g}, B = {sc.background_events:g}", OBSERVABLE_STYLES)
    return _summary(cfg, document, out, plotted)


def _summary(cfg: AnalysisConfig, doc: dict, out: Path, plotted: bool) -> str:
    cl = f"{doc['cl']:.0%}"
    lines = [f"{cfg.name}: S = {doc['signal_events']:g}, B = {doc['background_events']:g} in the window, {doc['n_observed']} observed "
             f"events at mu_true = {doc['mu_true']:g}; {cl} CL CLs limits on mu (asymptotic, qtilde)",
             f"{'observable':<10} {'bins':>4} {'observed':>8} {'expected [-2s, -1s, median, +1s, +2s]':>42} {'CLs(mu=1)':>9} "
             f"{'Z obs':>6} {'Z exp':>6} {'Z stat':>6}"]
    for key, r in doc["observables"].items():
        e = r["expected_limits"]
        lines.append(f"{key:<10} {len(r['bins']) - 1:4d} {r['observed_limit']:8.3f} "
                     f"{'[' + ', '.join(f'{e[k]:.3f}' for k in ('-2', '-1', 'median', '+1', '+2')) + ']':>42} {r['cls_mu1']:9.4f} "
                     f"{r['significance_observed']:6.2f} {r['expected_significance']:6.2f} {r['stat_only_significance']:6.2f}"
                     + ("" if r["valid"] else "  [a fit did not converge]"))
    lines.append("expected significance without one systematic: " + "; ".join(
        f"{key} " + ", ".join(f"{k} {v:.2f}" for k, v in r["expected_significance_without"].items()) for key, r in doc["observables"].items()))
    ref = doc["unbinned_exact"]
    lines.append(f"unbinned exact densities, statistics only: expected limit {ref['expected_limit']:.3f}, Z exp {ref['expected_significance']:.2f}")
    if any(math.isnan(v) for r in doc["observables"].values() for v in (r["observed_limit"], *r["expected_limits"].values())):
        lines.append("some limits lie outside the scan (nan): raise [search] mu_max")
    lines.append(f"wrote {out / 'results.json'}, {out / 'results.h5'}, {out}/workspace_<observable>.json, {out / 'estimator.h5'}"
                 + (f", {out / 'limits.png'}" if plotted else " (no matplotlib: no plot)"))
    return "\n".join(lines)
