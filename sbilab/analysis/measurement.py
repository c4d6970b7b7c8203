r"""The measurement pipeline (``[analysis] kind = "measurement"``): simulate, train, fit, compare, write.

1. Build the toy simulator named in the configuration and draw the "observed" sample at the
   true parameters (a fixed seed: the same observed data for every method).
2. Train the configured estimator (:func:`~sbilab.analysis.estimation.train_ratio`) and check
   its normalisation :math:`E_\mathrm{ref}[\hat r(x|\theta)] = 1`
   (:func:`~sbilab.analysis.estimation.check_trained_normalisation`; reported under ``checks``, with
   ``checks_passed``, and a failure heads the printed summary).
3. Fit the observed events with an unbinned likelihood (iminuit) under the learned ratio and
   under the exact likelihood of the toy; profile every parameter. Nuisance parameters
   (``[nuisances]``) are re-minimised at every profile point and pay their Gaussian constraint
   :math:`((\eta - m)/s)^2`; the same fits are repeated with the nuisances fixed at their
   nominal values, so the widening of the intervals by the nuisances is reported, together
   with its asymptotic expectation from the toy's Fisher information
   (:func:`~sbilab.stats.cramer_rao` with the constraints, and with the nuisances fixed).
4. Write ``results.h5`` and ``results.json`` (:func:`~sbilab.analysis.run.write_results`; per
   parameter ``best``, ``lo``, ``hi`` and ``exact_best``, ``exact_lo``, ``exact_hi``; with
   nuisances also the ``fixed_nuisances`` intervals and the widening ratios; the profiles), the
   trained estimator (HDF5, :mod:`sbilab.publish`) and a plot of the :math:`-2\Delta\log L`
   profiles, learned against exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..events import Events
from .config import AnalysisConfig
from .estimation import (build_simulator, check_lines, check_trained_normalisation, exact_log_ratio, fit_lines, fit_quality, learned_log_ratio,
                         train_ratio, truth_point)
from ..stats import Interval, profile_intervals
from .plots import plot_profiles
from .run import register_pipeline, write_results

__all__ = ["run_measurement"]


def _fit(fn, observed: Events, sim, cfg: AnalysisConfig, fixed: dict[str, float], log) -> tuple[Any, Any]:
    from ..stats import UnbinnedLikelihood

    constraints = {k: v for k, v in cfg.nuisances.items() if k not in fixed}
    nll = UnbinnedLikelihood(fn, observed, sim.space, constraints=constraints, fixed=fixed, max_outside=cfg.fit.max_outside)
    best = nll.fit()
    free = [n for n in nll.names if n not in fixed]
    log(("  " + ", ".join(f"{n} = {best.best[n]:.4f} ± {best.errors[n]:.4f}" for n in free))
        + ("" if best.valid else f"  [NOT VALID: {best.message}]"))
    return nll, best


def _scan(nll, best, names: list[str], widths: dict[str, float], cfg: AnalysisConfig) -> dict[str, tuple[Any, Interval]]:
    """Profile every parameter on best ± scan_sigmas × width and read off the interval (crossings refined)."""
    out = {}
    for name in names:
        lo, hi = nll.limits[nll.names.index(name)]
        half = cfg.fit.scan_sigmas * max(widths[name], 1e-6)
        grid = np.linspace(max(lo, best.best[name] - half), min(hi, best.best[name] + half), max(cfg.fit.scan_points, 3))
        profile, (interval,) = profile_intervals(nll, name, [cfg.fit.cl], grid=grid, best=best)
        out[name] = (profile, interval)
    return out


@register_pipeline("measurement")
def run_measurement(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the measurement described by ``config``; write results to ``out``; return a printable summary."""
    from scipy.stats import chi2

    from ..publish import save
    from ..stats import cramer_rao

    log = (lambda msg: print(f"[sbilab] {msg}", flush=True)) if progress else (lambda msg: None)
    cfg = config.quick_version() if quick else config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sim = build_simulator(cfg)
    truth = truth_point(cfg, sim)
    names = list(sim.space.names)
    pois = [n for n in names if n not in cfg.nuisances]
    observed_events = sim.simulate(cfg.observed.n_events, theta=truth, generator=torch.Generator().manual_seed(cfg.observed.seed))
    observed = Events.observed(observed_events.x)
    log(f"{cfg.name}: {len(observed)} observed events at {dict(zip(names, truth.tolist()))}"
        + (f"; nuisances {cfg.nuisances}" if cfg.nuisances else ""))

    trained = train_ratio(cfg, sim, device=device, progress=progress, log=log)
    checks = {"ratio_normalisation": check_trained_normalisation(trained, sim, cfg, truth, log=log)}
    functions = {"learned": learned_log_ratio(trained, sim), "exact": exact_log_ratio(sim)}
    nominal = {k: m for k, (m, _) in cfg.nuisances.items()}
    fits, fixed_fits = {}, {}
    for label, fn in functions.items():
        log(f"{label} fit" + (" (nuisances profiled)" if nominal else ""))
        fits[label] = _fit(fn, observed, sim, cfg, {}, log)
        if nominal:
            log(f"{label} fit (nuisances fixed at {nominal})")
            fixed_fits[label] = _fit(fn, observed, sim, cfg, nominal, log)

    fisher = None
    if hasattr(sim, "fisher_information"):  # asymptotic ±1σ: nuisances profiled under their constraints, and fixed
        info = sim.fisher_information(truth.to(torch.float64))
        fisher = {"profiled": cramer_rao(info, len(observed), names=names, constraints=cfg.nuisances).tolist(),
                  "fixed": cramer_rao(info, len(observed), names=names, fixed=list(cfg.nuisances)).tolist()}
    widths = {n: fits["exact"][1].errors[n] for n in names}
    scans = {label: _scan(nll, best, names, widths, cfg) for label, (nll, best) in fits.items()}
    fixed_scans = {label: _scan(nll, best, pois, widths, cfg) for label, (nll, best) in fixed_fits.items()}
    profiles = {label: {n: p for n, (p, _) in scan.items()} for label, scan in scans.items()}
    fixed_profiles = {label: {n: p for n, (p, _) in scan.items()} for label, scan in fixed_scans.items()}
    log("profiles done")

    results: dict[str, Any] = {}
    exact_error = lambda n: fits["exact"][1].errors[n]  # noqa: E731
    for i, n in enumerate(names):
        learned, exact = scans["learned"][n][1], scans["exact"][n][1]
        lo, hi, elo, ehi = learned.lo, learned.hi, exact.lo, exact.hi
        r = {"truth": cfg.truth[n], "best": fits["learned"][1].best[n], "lo": lo, "hi": hi,
             "exact_best": fits["exact"][1].best[n], "exact_lo": elo, "exact_hi": ehi,
             "width_ratio": (hi - lo) / (ehi - elo), "error": fits["learned"][1].errors[n], "exact_error": exact_error(n),
             "at_scan_edge": learned.lo_at_bound or learned.hi_at_bound}
        if fisher is not None:
            r["fisher_half_width"] = fisher["profiled"][i] * math.sqrt(chi2.ppf(cfg.fit.cl, 1))
        if n in cfg.nuisances:
            r["constraint"] = {"mean": cfg.nuisances[n][0], "sigma": cfg.nuisances[n][1]}
        elif fixed_fits:
            fl, fe = fixed_scans["learned"][n][1], fixed_scans["exact"][n][1]
            flo, fhi, eflo, efhi = fl.lo, fl.hi, fe.lo, fe.hi
            r["fixed_nuisances"] = {"best": fixed_fits["learned"][1].best[n], "lo": flo, "hi": fhi,
                                    "exact_best": fixed_fits["exact"][1].best[n], "exact_lo": eflo, "exact_hi": efhi}
            r["widening"] = (hi - lo) / (fhi - flo)
            r["exact_widening"] = (ehi - elo) / (efhi - eflo)
            if fisher is not None:
                r["fixed_nuisances"]["fisher_half_width"] = fisher["fixed"][i] * math.sqrt(chi2.ppf(cfg.fit.cl, 1))
                r["fisher_widening"] = fisher["profiled"][i] / fisher["fixed"][i]
        results[n] = r

    def dump(prof: dict) -> dict:
        return {n: {"values": list(p.values), "delta_nll": list(p.delta_nll)} for n, p in prof.items()}

    document = {
        "analysis": cfg.name, "kind": cfg.kind, "quick": quick, "cl": cfg.fit.cl, "parameters": results,
        "nuisances": {k: {"mean": m, "sigma": s} for k, (m, s) in cfg.nuisances.items()},
        "n_observed": len(observed), "method": cfg.estimator.method, "n_simulations": cfg.estimator.n_simulations,
        "training": trained.record(),
        "checks": checks, "checks_passed": all(c["passed"] for c in checks.values()),
        "fit_valid": {label: best.valid for label, (_, best) in fits.items()},
        "fit_quality": {label: fit_quality(best) for label, (_, best) in fits.items()},
        "profiles": {label: dump(p) for label, p in profiles.items()},
        "profiles_fixed_nuisances": {label: dump(p) for label, p in fixed_profiles.items()},
    }
    write_results(out, document, kind=cfg.kind, metadata={"analysis": cfg.name})
    save(out / "estimator.h5", trained.model, overwrite=True, metadata={"analysis": cfg.name, "method": cfg.estimator.method})
    curves = {n: [(profiles["exact"][n], "k-", "exact likelihood"), (profiles["learned"][n], "C1--", "learned ratio")] for n in names}
    for n in pois:
        for label, style in (("exact", "k:"), ("learned", "C1:")):
            if label in fixed_profiles:
                curves[n].append((fixed_profiles[label][n], style, f"{label}, nuisances fixed"))
    plotted = plot_profiles(out / "profiles.png", curves, [float(chi2.ppf(cfg.fit.cl, 1))],
                            f"{cfg.name}: {cfg.estimator.method.upper()} vs exact")
    return _summary(cfg, results, len(observed), out, plotted, checks, document["fit_quality"])


def _summary(cfg: AnalysisConfig, results: dict[str, Any], n_observed: int, out: Path, plotted: bool, checks: dict[str, Any],
             quality: dict[str, dict[str, Any]]) -> str:
    notes = check_lines(checks)
    lines = [n for n in notes if n.startswith("!!!")] + fit_lines(quality)  # a failed check first: it explains a bad fit
    lines += [f"{cfg.name}: {cfg.estimator.method.upper()} from {cfg.estimator.n_simulations} simulations, {n_observed} observed events",
             f"{'param':>10} {'truth':>9} {'learned (' + format(cfg.fit.cl, '.1%') + ' CL)':>30} {'exact likelihood':>30} {'width ratio':>12}"]
    for n, r in results.items():
        lines.append(f"{n:>10} {r['truth']:9.3f} {r['best']:10.3f} [{r['lo']:.3f}, {r['hi']:.3f}]".ljust(52)
                     + f" {r['exact_best']:10.3f} [{r['exact_lo']:.3f}, {r['exact_hi']:.3f}]".ljust(31) + f" {r['width_ratio']:8.3f}")
    fixed = {n: r for n, r in results.items() if "fixed_nuisances" in r}
    if fixed:
        lines.append(f"nuisances fixed at nominal {sorted(cfg.nuisances)}; widening = width(profiled) / width(fixed)")
        lines.append(f"{'param':>10} {'learned, fixed':>24} {'exact, fixed':>24} {'widening (learned)':>19} {'(exact)':>8} {'(Fisher)':>9}")
        for n, r in fixed.items():
            f = r["fixed_nuisances"]
            lines.append(f"{n:>10} {f['best']:9.3f} [{f['lo']:.3f}, {f['hi']:.3f}]".ljust(35)
                         + f" {f['exact_best']:9.3f} [{f['exact_lo']:.3f}, {f['exact_hi']:.3f}]".ljust(25)
                         + f" {r['widening']:18.3f} {r['exact_widening']:8.3f} {r.get('fisher_widening', math.nan):9.3f}")
    lines += notes
    lines.append(f"wrote {out / 'results.json'}, {out / 'results.h5'}, {out / 'estimator.h5'}"
                 + (f", {out / 'profiles.png'}" if plotted else " (no matplotlib: no plot)"))
    return "\n".join(lines)
