r"""The measurement pipeline behind ``sbilab run``: simulate, train, fit, compare, write.

1. Build the toy simulator named in the configuration and draw the "observed" sample at the
   true parameters (a fixed seed: the same observed data for every method).
2. Draw the augmented training set (:func:`~sbilab.simulators.ratio_training_data`) and train
   a :class:`~sbilab.estimators.RatioEstimator` with the configured loss through
   :func:`~sbilab.training.fit` (or a :class:`~sbilab.estimators.LikelihoodEstimator` for
   NDE/SCANDAL).
3. Fit the observed events with an unbinned likelihood (iminuit) under the learned ratio and
   under the exact likelihood of the toy; profile every parameter (nuisances re-minimised).
4. Write ``results.json`` (per parameter ``best``, ``lo``, ``hi`` and ``exact_best``,
   ``exact_lo``, ``exact_hi``), the trained estimator (HDF5, :mod:`sbilab.publish`) and a plot
   of the :math:`-2\Delta\log L` profiles, learned against exact.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError
from ..simulators import ratio_training_data
from ..simulators.base import Simulator
from .config import AnalysisConfig

__all__ = ["build_simulator", "run_analysis"]


def build_simulator(config: AnalysisConfig) -> Simulator:
    """The toy simulator named by ``[simulator] toy`` with the remaining keys as options."""
    from ..simulators import toys

    classes = {"gaussian": "GaussianLatent", "resonance": "Resonance", "morphing": "Morphing"}
    try:
        return getattr(toys, classes[config.toy])(**config.toy_options)
    except TypeError as err:
        raise ConfigError(f"{config.path}: [simulator] options {config.toy_options} do not fit the {config.toy!r} toy ({err}).") from None


def _truth(config: AnalysisConfig, sim: Simulator) -> Tensor:
    names = list(sim.space.names)
    if sorted(config.truth) != sorted(names):
        raise ConfigError(f"{config.path}: [truth] gives {sorted(config.truth)} but the {config.toy!r} toy has parameters {names}.")
    theta = torch.tensor([[config.truth[n] for n in names]])
    sim.space.check(theta, argument=f"{config.path}: [truth]")
    return theta[0]


def _train(config: AnalysisConfig, sim: Simulator, *, device: str, progress: bool, log: Callable[[str], None]):
    from ..estimators import LikelihoodEstimator, RatioEstimator, get_loss
    from ..training import fit

    tr = config.training
    generator = torch.Generator().manual_seed(tr.seed)
    started = time.perf_counter()
    if tr.method in ("nde", "scandal"):
        from ..simulators import augment

        data = augment(sim, sim.simulate(tr.n_simulations, generator=generator))
        estimator = LikelihoodEstimator.from_events(data, sim.space)
        loss = get_loss(tr.method, alpha=tr.alpha) if tr.method == "scandal" else get_loss("nde")
    else:
        data = ratio_training_data(sim, tr.n_simulations // 2, generator=generator)
        estimator = RatioEstimator.from_events(data, sim.space, hidden=tr.hidden, activation=tr.activation)
        options = {"alpha": tr.alpha} if tr.method in ("rascal", "alices", "cascal") else {}
        loss = get_loss(tr.method, **options)
    log(f"training {tr.method.upper()} on {len(data)} simulated events ({tr.epochs} epochs at most, ensemble of {tr.ensemble})")
    result = fit(estimator, loss, data, epochs=tr.epochs, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                 patience=tr.patience, min_delta=0.0, ensemble=tr.ensemble, seed=tr.seed, device=device, progress=progress)
    model = result.model.to("cpu").eval()
    return estimator, model, result, time.perf_counter() - started


def _learned_log_ratio(model: torch.nn.Module, estimator: torch.nn.Module, sim: Simulator) -> Callable[[Tensor, Tensor], Tensor]:
    from ..estimators import LikelihoodEstimator, ensemble_log_prob, ensemble_log_ratio
    from ..nets.ensemble import Ensemble

    ref = sim.space.reference
    if isinstance(estimator, LikelihoodEstimator):
        if isinstance(model, Ensemble):
            return lambda x, t: ensemble_log_prob(model, x, t)[0] - ensemble_log_prob(model, x, ref.to(x.dtype).expand(len(x), -1))[0]
        return lambda x, t: model.log_prob(x, t) - model.log_prob(x, ref.to(x.dtype).expand(len(x), -1))
    if isinstance(model, Ensemble):
        return lambda x, t: ensemble_log_ratio(model, x, t)[0]
    return model.log_ratio


def _profiles(nll, best, names, errors, cfg, log):
    profiles = {}
    for name in names:
        lo, hi = nll.limits[names.index(name)]
        half = cfg.fit.scan_sigmas * max(errors[name], 1e-6)
        grid = np.linspace(max(lo, best.best[name] - half), min(hi, best.best[name] + half), cfg.fit.scan_points)
        profiles[name] = nll.profile(name, grid, best=best)
        log(f"  profiled {name} on {len(grid)} points")
    return profiles


def _plot(path: Path, learned: dict, exact: dict, level: float, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(learned)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for prof, style, label in ((exact[name], "k-", "exact likelihood"), (learned[name], "C1--", "learned ratio")):
            ax.plot(prof.values, prof.delta_nll, style, label=label)
        ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(name)
        ax.set_ylabel(r"$-2\Delta\log L$ (profiled)")
        ax.set_ylim(0, max(4 * level, 4.0))
        ax.legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_analysis(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the measurement described by ``config``; write results to ``out``; return a printable summary."""
    from scipy.stats import chi2

    from ..publish import save
    from ..stats import UnbinnedLikelihood

    log = (lambda msg: print(f"[sbilab] {msg}", flush=True)) if progress else (lambda msg: None)
    cfg = config.quick_version() if quick else config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sim = build_simulator(cfg)
    truth = _truth(cfg, sim)
    names = list(sim.space.names)
    observed_events = sim.simulate(cfg.observed.n_events, theta=truth, generator=torch.Generator().manual_seed(cfg.observed.seed))
    observed = Events.observed(observed_events.x)
    log(f"{cfg.name}: {len(observed)} observed events at {dict(zip(names, truth.tolist()))}")

    estimator, model, training, train_seconds = _train(cfg, sim, device=device, progress=progress, log=log)
    ref = sim.space.reference
    exact_fn = lambda x, t: sim.log_prob(x, t) - sim.log_prob(x, ref.to(x.dtype).expand(len(x), -1))  # noqa: E731
    fits = {}
    for label, fn in (("learned", _learned_log_ratio(model, estimator, sim)), ("exact", exact_fn)):
        nll = UnbinnedLikelihood(fn, observed, sim.space)
        best = nll.fit()
        log(f"{label} fit: " + ", ".join(f"{n} = {best.best[n]:.4f} ± {best.errors[n]:.4f}" for n in names)
            + ("" if best.valid else f"  [NOT VALID: {best.message}]"))
        fits[label] = (nll, best)
    level = float(chi2.ppf(cfg.fit.cl, 1))
    exact_errors = fits["exact"][1].errors
    profiles = {label: _profiles(nll, best, names, exact_errors, cfg, log) for label, (nll, best) in fits.items()}
    intervals = {label: {n: nll.interval(n, cfg.fit.cl, best=best) for n in names} for label, (nll, best) in fits.items()}

    results: dict[str, Any] = {}
    for n in names:
        lo, hi = intervals["learned"][n]
        elo, ehi = intervals["exact"][n]
        results[n] = {
            "truth": cfg.truth[n],
            "best": fits["learned"][1].best[n], "lo": lo, "hi": hi,
            "exact_best": fits["exact"][1].best[n], "exact_lo": elo, "exact_hi": ehi,
            "width_ratio": (hi - lo) / (ehi - elo),
        }
    document = {
        "analysis": cfg.name, "quick": quick, "cl": cfg.fit.cl, "parameters": results,
        "n_observed": len(observed), "method": cfg.training.method, "n_simulations": cfg.training.n_simulations,
        "training": {"epochs_run": training.epochs_run, "best_epoch": training.best_epoch,
                     "best_val_loss": training.best_val_loss, "seconds": train_seconds, "device": str(training.device)},
        "fit_valid": {label: best.valid for label, (_, best) in fits.items()},
        "profiles": {label: {n: {"values": list(p.values), "delta_nll": list(p.delta_nll)} for n, p in prof.items()}
                     for label, prof in profiles.items()},
    }
    (out / "results.json").write_text(json.dumps(document, indent=2))
    save(out / "estimator.h5", model, overwrite=True, metadata={"analysis": cfg.name, "method": cfg.training.method})
    plotted = _plot(out / "profiles.png", profiles["learned"], profiles["exact"], level, f"{cfg.name}: {cfg.training.method.upper()} vs exact")

    lines = [f"{cfg.name}: {cfg.training.method.upper()} from {cfg.training.n_simulations} simulations, {len(observed)} observed events",
             f"{'param':>8} {'truth':>9} {'learned (' + format(cfg.fit.cl, '.1%') + ' CL)':>30} {'exact likelihood':>30} {'width ratio':>12}"]
    for n, r in results.items():
        lines.append(f"{n:>8} {r['truth']:9.3f} {r['best']:10.3f} [{r['lo']:.3f}, {r['hi']:.3f}]".ljust(50)
                     + f" {r['exact_best']:10.3f} [{r['exact_lo']:.3f}, {r['exact_hi']:.3f}]".ljust(31) + f" {r['width_ratio']:8.3f}")
    lines.append(f"wrote {out / 'results.json'}, {out / 'estimator.h5'}" + (f", {out / 'profiles.png'}" if plotted else " (no matplotlib: no plot)"))
    return "\n".join(lines)
