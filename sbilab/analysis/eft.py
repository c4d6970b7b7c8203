r"""The EFT-limits pipeline (``[analysis] kind = "eft_limits"``): couplings of the morphing toy.

Observed data: :math:`n \sim \mathrm{Pois}(L\sigma(\theta_\mathrm{true}))` events drawn at the
true couplings. Expected (Asimov) data: a large sample at the truth weighted to the expected
yield (unbinned), or the expected histograms (binned). Each coupling is profiled over its
whole range (the others re-minimised) and 68%/95% (``[eft] cls``) intervals are read off
(:func:`~sbilab.stats.profile_intervals` on a grid), for five likelihoods:

``unbinned_learned``  extended unbinned likelihood with the learned ratio (``[estimator] method``)
``unbinned_exact``    the same with the toy's exact ratio (the best any method can do)
``histogram``         binned Poisson likelihood of the observable (pT; fixed-width bins up to
                      ``histogram_max`` plus overflow), morphed templates
``sallino_learned``   binned likelihood of the SALLINO observable :math:`\hat t(x)\cdot u`: the
                      learned SALLY score at the SM projected on the most sensitive direction u
                      (leading eigenvector of the SALLY Fisher information; arXiv:1805.00020)
``sallino_exact``     the same with the exact score :math:`t(x|\theta_\mathrm{SM})`

Unbinned fits use the closed-form yield :math:`\nu(\theta) = L\sigma(\theta)`; binned ones the
morphed templates of :class:`~sbilab.stats.templates.MorphedHistogram`. The options are the
``[eft]`` section (:class:`EftSection`), registered with the pipeline. The learned ratio's
normalisation is checked after training (:func:`~sbilab.analysis.estimation.check_trained_normalisation`;
``checks`` in the results, a failure heads the printed summary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import Events
from ..exceptions import ConfigError
from ..stats.templates import MorphedHistogram, quantile_edges
from ..stats import profile_intervals
from .config import AnalysisConfig
from .estimation import (
    build_simulator,
    check_lines,
    check_trained_normalisation,
    exact_log_ratio,
    fit_quality,
    learned_log_ratio,
    train_ratio,
    train_score,
    truth_point,
)
from .plots import plot_profiles
from .run import register_pipeline, write_results

__all__ = ["run_eft_limits", "EftSection", "METHOD_LABELS"]


@dataclass(frozen=True)
class EftSection:
    """Options of the ``eft_limits`` pipeline: the ``[eft]`` section.

    Attributes:
        luminosity: Integrated luminosity (pb⁻¹); the expected yield is ``luminosity * σ(θ)``.
        histogram_bins: Bins of the observable's histogram: fixed width on [0, histogram_max], the last an overflow bin.
        histogram_max: Upper edge of the last fixed-width bin of the observable.
        score_bins: Bins of the SALLINO histogram of the score projection (equal population at the reference).
        template_events: Simulated events at the reference that fill the morphed templates.
        asimov_events: Size of the weighted Asimov sample of the unbinned fits.
        score_simulations: Training events of the SALLY score estimator.
        cls: Confidence levels of the intervals.
    """

    luminosity: float = 300.0
    histogram_bins: int = 8
    histogram_max: float = 175.0
    score_bins: int = 8
    template_events: int = 200_000
    asimov_events: int = 20_000
    score_simulations: int = 50_000
    cls: tuple[float, ...] = (0.683, 0.95)

    def check(self, where: str) -> None:
        if not all(0.0 < c < 1.0 for c in self.cls):
            raise ConfigError(f"{where} cls = {list(self.cls)}; every confidence level must lie in (0, 1), e.g. [0.683, 0.95].")

METHOD_LABELS = {
    "unbinned_learned": ("C1--", "learned ratio, unbinned"),
    "unbinned_exact": ("k-", "exact likelihood, unbinned"),
    "histogram": ("C0-", "histogram of pT"),
    "sallino_learned": ("C2--", "SALLINO (learned score)"),
    "sallino_exact": ("C2:", "SALLINO (exact score)"),
}


def _direction(scores: torch.Tensor) -> torch.Tensor:
    """Leading eigenvector of ``<t t^T>`` over ``scores (N, P)``, sign fixed so its largest entry is positive."""
    fisher = scores.T @ scores / scores.shape[0]
    u = torch.linalg.eigh(fisher).eigenvectors[:, -1]
    return u * torch.sign(u[u.abs().argmax()])


def _scores(model, x: torch.Tensor) -> torch.Tensor:
    """SALLY scores ``(N, P)`` in float64 (:class:`~sbilab.estimators.EnsembleMean`: the members' mean for an ensemble)."""
    from ..estimators import EnsembleMean

    with torch.no_grad():
        return EnsembleMean.of(model)(x.to(torch.get_default_dtype())).to(torch.float64)


def _templates(sim, cfg: AnalysisConfig, score_model) -> tuple[dict[str, MorphedHistogram], dict[str, Any], dict[str, list]]:
    """Morphed templates of pT and of the SALLINO observables from component-weighted events.

    The template events come from the toy's weighted-event proposal :math:`q(x)`, which covers every
    component (events drawn at the SM alone would leave the hard BSM tail nearly empty), with
    component weights :math:`f_c(x)/q(x)`.
    """
    ref = sim.space.reference
    x, _ = sim.sample_weighted(cfg.eft.template_events, ref.reshape(1, -1), generator=torch.Generator().manual_seed(cfg.observed.seed + 7))
    weights = sim.component_shapes(x) / sim.proposal_log_prob(x).exp()[:, None]
    learned_t = _scores(score_model, x)
    exact_t = sim.score(x, ref)
    u = {"sallino_learned": _direction(learned_t), "sallino_exact": _direction(exact_t)}
    observables = {
        "histogram": lambda xx: xx[:, 0].to(torch.float64),
        "sallino_learned": lambda xx: _scores(score_model, xx) @ u["sallino_learned"],
        "sallino_exact": lambda xx: sim.score(xx.to(torch.float64), ref) @ u["sallino_exact"],
    }
    hists = {}
    for key, h in observables.items():
        values = h(x)
        if key == "histogram":  # fixed-width bins with an overflow bin, as an analysis of pT would use
            edges = torch.linspace(0.0, cfg.eft.histogram_max, cfg.eft.histogram_bins, dtype=torch.float64)
            edges = torch.cat([torch.tensor([-torch.inf], dtype=torch.float64), edges[1:], torch.tensor([torch.inf], dtype=torch.float64)])
        else:  # equal-population bins of the score projection at the SM
            edges = quantile_edges(values, cfg.eft.score_bins)
        hists[key] = MorphedHistogram(values, weights, edges, sim.basis, sim.space, luminosity=cfg.eft.luminosity)
    return hists, observables, {k: v.tolist() for k, v in u.items()}


def _likelihoods(sim, cfg, fns, hists, observables, x: torch.Tensor, weights: torch.Tensor | None, binned_counts=None):
    """``{method: UnbinnedLikelihood}`` for events ``x`` (weights: Asimov) or observed events."""
    from ..stats import UnbinnedLikelihood

    lumi = cfg.eft.luminosity
    nlls = {}
    for key, fn in fns.items():
        nlls[key] = UnbinnedLikelihood(fn, Events.observed(x, weights=weights), sim.space,
                                       yield_model=lambda t: sim.expected_events(t.reshape(1, -1), lumi)[0])
    for key, hist in hists.items():
        counts = binned_counts[key] if binned_counts is not None else hist.counts(observables[key](x))
        nlls[key] = hist.likelihood(counts)
    return {k: nlls[k] for k in METHOD_LABELS}


def _global_fit(nll, space):
    """Lowest of MIGRAD fits started at the reference and at the 3^P points at ±half the range (quadratic likelihoods have valleys)."""
    import itertools

    centre, half = space.reference.numpy(), (space.high - space.low).numpy() / 4
    starts = [centre] + [np.clip(centre + half * np.array(s), space.low.numpy(), space.high.numpy())
                         for s in itertools.product((-1.0, 0.0, 1.0), repeat=space.dim) if any(s)]
    fits = [nll.fit(start=dict(zip(space.names, map(float, s)))) for s in starts]
    valid = [f for f in fits if f.valid] or fits
    return min(valid, key=lambda f: f.nll_min)


@register_pipeline("eft_limits", section=("eft", EftSection), toys=("morphing",))
def run_eft_limits(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the EFT-limits analysis described by ``config``; write results to ``out``; return a printable summary."""
    from ..publish import save

    log = (lambda msg: print(f"[sbilab] {msg}", flush=True)) if progress else (lambda msg: None)
    cfg = config.quick_version() if quick else config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sim = build_simulator(cfg)
    truth = truth_point(cfg, sim).to(torch.float64)
    names = list(sim.space.names)
    lumi = cfg.eft.luminosity
    nu_true = float(sim.expected_events(truth.reshape(1, -1), lumi)[0])
    gen = torch.Generator().manual_seed(cfg.observed.seed)
    n_obs = int(torch.poisson(torch.tensor(nu_true, dtype=torch.float64), generator=gen))
    x_obs = sim.simulate(n_obs, theta=truth, generator=gen).x.to(torch.float64)
    x_asimov = sim.simulate(cfg.eft.asimov_events, theta=truth, generator=gen).x.to(torch.float64)
    w_asimov = torch.full((len(x_asimov),), nu_true / len(x_asimov), dtype=torch.float64)
    log(f"{cfg.name}: L = {lumi} /pb, expected {nu_true:.1f} events at {dict(zip(names, truth.tolist()))}, observed {n_obs}")

    ratio = train_ratio(cfg, sim, device=device, progress=progress, log=log)
    checks = {"ratio_normalisation": check_trained_normalisation(ratio, sim, cfg, truth, log=log)}
    score = train_score(cfg, sim, cfg.eft.score_simulations, device=device, progress=progress, log=log)
    hists, observables, directions = _templates(sim, cfg, score.model)
    fns = {"unbinned_learned": learned_log_ratio(ratio, sim), "unbinned_exact": exact_log_ratio(sim)}
    datasets = {
        "observed": _likelihoods(sim, cfg, fns, hists, observables, x_obs, None),
        "expected": _likelihoods(sim, cfg, fns, hists, observables, x_asimov, w_asimov,
                                 {k: h.expected(truth) for k, h in hists.items()}),
    }
    results: dict[str, Any] = {}
    curves: dict[str, list] = {}
    for data_label, nlls in datasets.items():
        for method, nll in nlls.items():
            best = _global_fit(nll, sim.space)
            entry = {"valid": best.valid, "quality": fit_quality(best), "best": best.best, "parameters": {}}
            for name in names:
                i = names.index(name)
                grid = np.linspace(float(sim.space.low[i]), float(sim.space.high[i]), cfg.fit.scan_points)
                profile, intervals = profile_intervals(nll, name, cfg.eft.cls, grid=grid, best=best)
                entry["parameters"][name] = {
                    "best": best.best[name],
                    "intervals": {f"{iv.cl:g}": iv.to_dict() for iv in intervals},
                    "profile": {"values": list(profile.values), "delta_nll": list(profile.delta_nll)},
                }
                style, label = METHOD_LABELS[method]
                curves.setdefault(f"{name} ({data_label})", []).append((profile, style, label))
            results.setdefault(method, {})[data_label] = entry
            log(f"  {data_label:>8} {method:<17} " + "  ".join(
                f"{n}: {entry['parameters'][n]['best']:+.3f} " + " ".join(
                    f"[{iv['lo']:+.3f}, {iv['hi']:+.3f}]" for iv in entry["parameters"][n]["intervals"].values()) for n in names))

    main_cl = f"{cfg.eft.cls[0]:g}"
    parameters = {}
    for name in names:
        learned = results["unbinned_learned"]["observed"]["parameters"][name]
        exact = results["unbinned_exact"]["observed"]["parameters"][name]
        parameters[name] = {"truth": cfg.truth[name], "best": learned["best"], "lo": learned["intervals"][main_cl]["lo"],
                            "hi": learned["intervals"][main_cl]["hi"], "exact_best": exact["best"],
                            "exact_lo": exact["intervals"][main_cl]["lo"], "exact_hi": exact["intervals"][main_cl]["hi"]}
    document = {
        "analysis": cfg.name, "kind": cfg.kind, "quick": quick, "cls": list(cfg.eft.cls), "luminosity": lumi,
        "expected_events": nu_true, "n_observed": n_obs, "truth": cfg.truth, "parameters": parameters,
        "methods": results, "sallino_directions": directions,
        "bins": {k: h.edges.tolist() for k, h in hists.items()},
        "training": {"ratio": {"method": cfg.estimator.method, **ratio.record()}, "sally": score.record()},
        "checks": checks, "checks_passed": all(c["passed"] for c in checks.values()),
        "seconds": time.perf_counter() - started,
    }
    write_results(out, document, kind=cfg.kind, metadata={"analysis": cfg.name})
    save(out / "estimator.h5", ratio.model, overwrite=True, metadata={"analysis": cfg.name, "method": cfg.estimator.method})
    save(out / "score_estimator.h5", score.model, overwrite=True, metadata={"analysis": cfg.name, "method": "sally"})
    from scipy.stats import chi2

    plotted = plot_profiles(out / "limits.png", curves, [float(chi2.ppf(c, 1)) for c in cfg.eft.cls], f"{cfg.name}: profiled couplings")
    return _summary(cfg, results, names, document, out, plotted)


def _summary(cfg: AnalysisConfig, results: dict, names: list[str], doc: dict, out: Path, plotted: bool) -> str:
    cls = [f"{c:g}" for c in cfg.eft.cls]
    notes = check_lines(doc["checks"])
    lines = [n for n in notes if n.startswith("!!!")]
    lines += [f"{cfg.name}: L = {doc['luminosity']:g} /pb, {doc['expected_events']:.1f} expected and {doc['n_observed']} observed events "
             f"at {doc['truth']}; intervals at CL {', '.join(cls)}"]
    for name in names:
        lines.append(f"{name}: {'method':<17} {'data':>8} {'best':>7}  " + "  ".join(f"{c + ' CL':^17}" for c in cls) + f"  {'width/exact':>11}")
        for data_label in ("expected", "observed"):
            exact = results["unbinned_exact"][data_label]["parameters"][name]["intervals"][cls[0]]
            for method in METHOD_LABELS:
                p = results[method][data_label]["parameters"][name]
                ivs = "  ".join(f"[{p['intervals'][c]['lo']:+.3f}, {p['intervals'][c]['hi']:+.3f}]" for c in cls)
                ratio = (p["intervals"][cls[0]]["hi"] - p["intervals"][cls[0]]["lo"]) / (exact["hi"] - exact["lo"])
                lines.append(f"{'':>{len(name) + 2}}{method:<17} {data_label:>8} {p['best']:+7.3f}  {ivs}  {ratio:11.3f}")
    lines += notes
    lines.append(f"wrote {out / 'results.json'}, {out / 'results.h5'}, {out / 'estimator.h5'}, {out / 'score_estimator.h5'}"
                 + (f", {out / 'limits.png'}" if plotted else " (no matplotlib: no plot)"))
    return "\n".join(lines)
