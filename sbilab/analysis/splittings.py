r"""The QCD splitting-kernel pipeline (``[analysis] kind = "qcd_splittings"``): (D, F, C) from jets.

A composition of the core (arXiv:2012.09873 for the physics; 1805.00020 for the gold):

1. **Toy check.** On the exact primary-emission toy (:class:`~sbilab.simulators.shower.PrimaryEmissions`,
   x = the set of emissions), CARL and the ``[estimator] method`` (gold of the exact joint
   likelihood) are trained; log r̂ is compared with the exact log r (MSE, plot), and fits of
   ``[observed] n_events`` toy events with the normalised learned ratio with the exact fit and
   the Cramér–Rao widths.
2. **Shower.** :class:`~sbilab.simulators.shower.PartonShower` events (9 parton-level
   observables, no hadronisation) train CARL and the gold method; each ratio is normalised on
   ``[qcd_splittings] reference_events`` independent reference events
   (:class:`~sbilab.calibration.NormalizedLogRatio`: without it the per-θ offset of a learned
   logit, :math:`N\log E_\mathrm{ref}[\hat r]`, biases a fit of :math:`10^4` events by many
   standard deviations) and fitted with :class:`~sbilab.stats.UnbinnedLikelihood`. The check
   :func:`~sbilab.stats.ratio_normalisation` (:math:`E_\mathrm{ref}[\hat r] = 1`?) runs on the raw and
   on the corrected ratio at six points, on reference events independent of both. **Closure:**
   ``closure_datasets`` independent data sets at the truth are fitted too; the pulls must be
   consistent with N(0, 1) (:func:`~sbilab.stats.closure.closure`), otherwise the result is marked invalid and, with
   ``strict``, the run fails. Only parameters the data constrain are judged: one whose expected 1σ
   width (Cramér–Rao of the joint history's Fisher information: exact, not learned, a lower bound)
   exceeds ``judge_width_fraction`` of its range is profiled but reported "not constrained at this
   N" (:func:`~sbilab.stats.closure.judged_parameters`; at 10⁴ events, C). Hessian widths at the truth for 10³ and N events sit beside the
   Cramér–Rao widths of the joint (history) and of SALLY's Fisher information.
3. **Posterior.** A cINN :math:`q(\theta|\{x_e\})` of data sets of ``set_size`` events, each event
   its set of partons in the thrust frame (:func:`~sbilab.simulators.shower.observables.thrust_frame`):
   :class:`~sbilab.nets.NestedDeepSets` (deep sets over each event's partons, then over the
   events) into a conditional NSF; checked by SBC and expected coverage
   (:mod:`sbilab.stats.diagnostics`) on held-out data sets, applied to the first observed events.

Writes ``results.json``/``results.h5``, ``estimator.h5`` (the gold ratio estimator),
``observables.png``, ``toy_log_ratio.png`` and ``posterior.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..calibration import NormalizedLogRatio
from ..estimators import PosteriorEstimator, RatioEstimator, ScoreEstimator, get_loss, loss_info
from ..events import Events
from ..exceptions import ConfigError, FitError
from ..publish import save
from ..simulators import datasets_from_events, joint_score, ratio_training_data, score_training_data, simulate_datasets
from ..simulators.base import Simulator
from ..simulators.shower import PartonShower, PrimaryEmissions
from ..stats import UnbinnedLikelihood, cramer_rao, fisher_from_scores, ratio_normalisation
from ..stats.diagnostics import expected_coverage, sbc
from ..stats.closure import closure, hessian_widths, judged_parameters
from ..training import TrainingConfig, fit
from .config import AnalysisConfig
from .estimation import truth_point
from .run import register_pipeline, write_results
from .splittings_plots import plot_all

__all__ = ["run_qcd_splittings", "SplittingsSection", "train_splitting_ratio", "normalised",
           "NAMES"]

NAMES = ("D", "F", "C")
TOY_EMBEDDING = {"kind": "deepsets", "out_features": 32, "hidden": [64, 64], "latent": 32, "pooling": "sum"}


@dataclass(frozen=True)
class SplittingsSection:
    """Options of the ``qcd_splittings`` pipeline: the ``[qcd_splittings]`` section.

    Attributes:
        reference_events: Independent events at the reference that normalise each learned ratio
            (:class:`~sbilab.calibration.NormalizedLogRatio`); its Monte Carlo error moves a fit
            of N events by about sqrt(N / reference_events) standard deviations.
        closure_datasets: Independent data sets of ``[observed] n_events`` at the truth fitted for the closure test.
        pull_limit: The closure fails if a pull exceeds this, or a mean pull exceeds it over sqrt(closure_datasets).
        strict: Raise :class:`~sbilab.exceptions.FitError` (after writing the results) when the closure fails.
        judge_width_fraction: The closure judges a parameter only if its expected 1σ width at
            ``[observed] n_events`` (Cramér–Rao of the joint history's Fisher information: the
            simulator's own, not learned, and a lower bound on every method's width) is at most
            this fraction of its range; wider ones are profiled and reported "not constrained at
            this N" (at 10⁴ events C: 0.46 against 0.2 x 2). When none is judged the closure fails.
        set_size: Events per data set of the cINN posterior.
        block: Parton slots per event in the posterior's input (events with more partons are refused).
        posterior_sets: Training data sets of the posterior.
    """

    reference_events: int = 100_000
    closure_datasets: int = 4
    pull_limit: float = 3.0
    strict: bool = True
    judge_width_fraction: float = 0.2
    set_size: int = 50
    block: int = 32
    posterior_sets: int = 2000

    def check(self, where: str) -> None:
        if min(self.reference_events, self.closure_datasets, self.set_size, self.block, self.posterior_sets) < 1 or not self.pull_limit > 0 or not self.judge_width_fraction > 0:
            raise ConfigError(f"{where}: every count must be positive, pull_limit > 0 and judge_width_fraction > 0 "
                              f"(e.g. 0.25: widths up to a quarter of the range are judged), got {self}.")


# ---------------------------------------------------------------------------- compositions
def _without_history(events: Events) -> Events:
    return events.replace(latent=None, latent_mask=None)


def _chunked(make: Callable[[int], Events], n: int, chunk: int = 20_000) -> Events:
    """``make(k)`` for pieces of at most ``chunk`` events, histories dropped, concatenated (bounded memory)."""
    parts = [_without_history(make(min(chunk, n - start))) for start in range(0, n, chunk)]
    return parts[0] if len(parts) == 1 else Events.concatenate(parts)


def train_splitting_ratio(simulator: Simulator, method: str, n: int, training: TrainingConfig, *, alpha: float | None = None,
                hidden: tuple[int, ...] = (100, 100), embedding: dict[str, Any] | None = None, device: str = "cpu",
                progress: bool = False) -> RatioEstimator:
    r"""A :class:`~sbilab.estimators.RatioEstimator` of :math:`\log r(x|\theta)` trained with ``method`` on ``n`` events per class.

    ``alpha`` weighs the score term of RASCAL/ALICES (default: the loss's own); the gold comes from
    the simulator's ``joint_log_prob`` (:func:`~sbilab.simulators.ratio_training_data`).
    """
    info = loss_info(method)
    gold = bool(set(info.needs) & {"log_r_joint", "score_joint"})
    generator = torch.Generator().manual_seed(training.seed)
    data = _chunked(lambda k: ratio_training_data(simulator, k, generator=generator, augmented=gold), n)
    with torch.random.fork_rng():
        torch.manual_seed(training.seed)
        estimator = RatioEstimator.from_events(data, simulator.space, hidden=hidden,
                                               **({"embedding": dict(embedding)} if embedding and data.is_set else {}))
    loss = get_loss(method, **({"alpha": alpha} if alpha is not None and "alpha" in info.options else {}))
    return fit(estimator, loss, data, **training.to_dict(), device=device, progress=progress).model.to("cpu").eval()


def normalised(estimator: nn.Module, simulator: Simulator, n: int, *, seed: int) -> NormalizedLogRatio:
    """``estimator`` normalised on ``n`` fresh events at the simulator's reference point (seeded)."""
    ref = simulator.simulate(n, theta=simulator.space.reference, generator=torch.Generator().manual_seed(seed))
    return NormalizedLogRatio(estimator, ref.x, reference_mask=ref.mask)


def _widths(values: Tensor) -> dict[str, float | None]:
    return {name: (float(v) if math.isfinite(float(v)) else None) for name, v in zip(NAMES, values)}


# ---------------------------------------------------------------------------- steps
def _toy(cfg: AnalysisConfig, section: SplittingsSection, truth: Tensor, methods: tuple[str, ...], device: str, log) -> tuple[dict, dict]:
    toy = PrimaryEmissions()
    ref, n = toy.space.reference, cfg.observed.n_events
    test = toy.simulate(5000, generator=torch.Generator().manual_seed(cfg.observed.seed + 1))
    exact = toy.log_prob(test.x, test.theta, test.mask) - toy.log_prob(test.x, ref, test.mask)
    observed = toy.simulate(n, theta=truth, generator=torch.Generator().manual_seed(cfg.observed.seed))

    def exact_ratio(x, th, mask=None):
        return toy.log_prob(x, th, mask) - toy.log_prob(x, ref.to(th), mask)

    best = UnbinnedLikelihood(exact_ratio, Events.observed(observed.x, mask=observed.mask), toy.space).fit()
    out: dict[str, Any] = {"cramer_rao": _widths(cramer_rao(toy.fisher_information(truth), n)),
                           "exact_widths": _widths(hessian_widths(exact_ratio, toy.space, observed.x, truth, mask=observed.mask)),
                           "exact_fit": {"best": best.best, "errors": best.errors}, "var_log_r": float(exact.var()), "methods": {}}
    predictions = {"exact": exact.float()}
    for method in methods:
        est = train_splitting_ratio(toy, method, cfg.estimator.n_simulations // 2, cfg.training, alpha=_alpha(cfg, method), hidden=(64, 64),
                          embedding=TOY_EMBEDDING, device=device)
        with torch.no_grad():
            predictions[method] = est(test.x, test.theta, test.mask).float()
        fn = normalised(est, toy, section.reference_events, seed=cfg.observed.seed + 3)
        result = UnbinnedLikelihood(fn, Events.observed(observed.x, mask=observed.mask), toy.space, tolerance=0.01).fit()
        out["methods"][method] = {
            "mse": float(((predictions[method].double() - exact) ** 2).mean()),
            "widths": _widths(hessian_widths(fn, toy.space, observed.x, truth, mask=observed.mask)),
            "fit": {"best": result.best, "errors": result.errors},
            "shift_from_exact_fit_in_sigma": {k: (result.best[k] - best.best[k]) / best.errors[k] for k in NAMES}}
        log(f"toy {method}: MSE {out['methods'][method]['mse']:.3g}, widths {out['methods'][method]['widths']} (CR {out['cramer_rao']})")
    return out, predictions


def _alpha(cfg: AnalysisConfig, method: str) -> float | None:
    return cfg.estimator.alpha if method == cfg.estimator.method else None


def _check_points(shower: PartonShower, truth: Tensor) -> Tensor:
    """The truth and the truth moved by ±0.2 in D and F and by +0.5 in C (inside the box), ``(6, 3)``."""
    steps = torch.tensor([[0, 0, 0], [-0.2, 0, 0], [0.2, 0, 0], [0, -0.2, 0], [0, 0.2, 0], [0, 0, 0.5]], dtype=torch.float64)
    return torch.maximum(torch.minimum(truth + steps, shower.space.high.double()), shower.space.low.double())


def _shower(cfg: AnalysisConfig, section: SplittingsSection, shower: PartonShower, truth: Tensor, methods: tuple[str, ...], device: str,
            log) -> tuple[dict, RatioEstimator, Events]:
    n, seed = cfg.observed.n_events, cfg.observed.seed
    datasets = [shower.simulate(n, theta=truth, generator=torch.Generator().manual_seed(seed + k)) for k in range(section.closure_datasets)]
    observed = datasets[0]
    fisher = fisher_from_scores(joint_score(shower, observed))
    datasets = [_without_history(d) for d in datasets]
    out: dict[str, Any] = {"n_observed": n, "joint_fisher_widths": _widths(cramer_rao(fisher, n)),
                           "joint_fisher_widths_1000_events": _widths(cramer_rao(fisher, 1000)), "methods": {}}
    generator = torch.Generator().manual_seed(cfg.training.seed + 5)
    data = _chunked(lambda k: score_training_data(shower, k, generator=generator), cfg.estimator.n_simulations // 2)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.training.seed)
        sally = ScoreEstimator.from_events(data, shower.space, hidden=tuple(cfg.estimator.hidden))
    sally = fit(sally, get_loss("sally"), data, **cfg.training.to_dict(), device=device, progress=False).model.to("cpu").eval()
    with torch.no_grad():
        fisher_sally = sally.fisher_information(observed.x).double()
    out["sally_fisher_widths"] = _widths(cramer_rao(fisher_sally, n))
    out["joint_minus_sally_eigenvalues"] = torch.linalg.eigvalsh(fisher - fisher_sally).tolist()
    # the joint (history) Fisher information is the simulator's own, exact and not learned: its Cramér–Rao width is a
    # lower bound on any estimator's, so a parameter it leaves unconstrained is unconstrained for every method, and an
    # under-trained estimator cannot excuse itself (SALLY's learned information shrinks when SALLY is under-trained)
    expected = cramer_rao(fisher, n)
    unjudged = judged_parameters(shower.space, expected, section.judge_width_fraction)
    out["closure_judging"] = {"rule": f"judged iff expected 1-sigma width at N = {n} <= {section.judge_width_fraction:g} x range",
                              "width_source": "Cramer-Rao of the joint (history) Fisher information: a lower bound on every method's width",
                              "expected_widths": _widths(expected), "judge_width_fraction": section.judge_width_fraction,
                              "judged": [k for k in NAMES if k not in unjudged], "not_judged": unjudged}
    check_ref = _without_history(shower.simulate(n, theta=shower.space.reference, generator=torch.Generator().manual_seed(seed + 202)))
    gold = None
    for method in methods:
        est = train_splitting_ratio(shower, method, cfg.estimator.n_simulations // 2, cfg.training, alpha=_alpha(cfg, method),
                          hidden=tuple(cfg.estimator.hidden), device=device)
        fn = normalised(est, shower, section.reference_events, seed=seed + 101)
        check = closure(fn, shower.space, datasets, truth, pull_limit=section.pull_limit, expected_widths=expected,
                        max_width_fraction=section.judge_width_fraction)
        first = check["fits"][0]
        points = _check_points(shower, truth)
        out["methods"][method] = {"best": first["best"], "errors": first["errors"], "valid": first["accepted"] and check["passed"],
                                  "reason": ("" if first["accepted"] else first["reason"])
                                            or ("" if check["passed"] else "closure test failed: " + "; ".join(check["problems"])),
                                  "notes": first["notes"],
                                  "closure": check,
                                  "normalisation_raw": ratio_normalisation(est, check_ref.x, points, names=NAMES).to_dict(),
                                  "normalisation_corrected": ratio_normalisation(fn, check_ref.x, points, names=NAMES).to_dict(),
                                  "widths": _widths(hessian_widths(fn, shower.space, observed.x, truth)),
                                  "widths_1000_events": _widths(hessian_widths(fn, shower.space, observed.x[:1000], truth))}
        log(f"shower {method}: fit {first['best']} ± {first['errors']}; closure passed {check['passed']} {check['problems']}")
        gold = est
    return out, gold, observed


def _posterior(cfg: AnalysisConfig, section: SplittingsSection, truth: Tensor, device: str, log) -> tuple[dict, Tensor]:
    frame = PartonShower(output="thrust_frame", **cfg.toy_options)
    k, block = section.set_size, section.block
    generator = torch.Generator().manual_seed(cfg.training.seed + 7)
    data = simulate_datasets(frame, section.posterior_sets, k, generator=generator, block=block)
    test = simulate_datasets(frame, max(section.posterior_sets // 10, 50), k, generator=generator, block=block)
    embedding = {"kind": "nested_deepsets", "block": block, "out_features": 32, "inner": 16, "hidden": [64, 64], "latent": 32}
    with torch.random.fork_rng():
        torch.manual_seed(cfg.training.seed)
        posterior = PosteriorEstimator.from_events(data, frame.space, transforms=4, hidden=tuple(cfg.estimator.hidden), embedding=embedding)
    posterior = fit(posterior, get_loss("npe"), data, **cfg.training.to_dict(), device=device, progress=False).model.to("cpu").eval()
    g = torch.Generator().manual_seed(cfg.training.seed + 8)
    with torch.no_grad():
        draws = posterior.sample(200, test.x, mask=test.mask, generator=g)
        ranks, coverage = sbc(draws, test.theta), expected_coverage(posterior(draws, test.x, test.mask),
                                                                     posterior(test.theta.unsqueeze(0), test.x, test.mask)[0])
        seen = frame.simulate(k, theta=truth.float(), generator=torch.Generator().manual_seed(cfg.observed.seed))
        x = datasets_from_events(seen, k, block=block)
        observed_draws = posterior.sample(2000, x.x, mask=x.mask, generator=g)[:, 0]
    out = {"sets": section.posterior_sets, "set_size": k, "block": block,
           "sbc": {"statistic": ranks.statistic, "tolerance": ranks.tolerance, "passed": ranks.passed},
           "coverage": {"statistic": coverage.statistic, "tolerance": coverage.tolerance, "passed": coverage.passed},
           "observed_mean": _widths(observed_draws.mean(0)), "observed_std": _widths(observed_draws.std(0)),
           "architecture": (f"per event: deep sets (sum pooling) over its partons' thrust-frame (x_E, x_L, x_T), "
                            f"{block} slots -> 16; per data set: deep sets (mean pooling) over its {k} events -> 32; "
                            f"MLPs (64, 64); conditional NSF, 4 autoregressive spline transforms, on the (D, F, C) box")}
    log(f"posterior: SBC {ranks.statistic:.3f} (tol {ranks.tolerance:.3f}), coverage {coverage.statistic:.3f}; "
        f"mean {out['observed_mean']} ± {out['observed_std']}")
    return out, observed_draws


# ---------------------------------------------------------------------------- the pipeline
@register_pipeline("qcd_splittings", section=("qcd_splittings", SplittingsSection), toys=("shower",))
def run_qcd_splittings(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the pipeline of the module docstring; returns a printable summary.

    Raises:
        ConfigError: ``[estimator] method`` does not train a ratio estimator, or the simulator options do not fit.
        FitError: (``strict``, not ``quick``) the closure test failed: the learned likelihood is biased.
    """
    cfg = config.quick_version() if quick else config
    section: SplittingsSection = cfg.sections.get("qcd_splittings", SplittingsSection())
    if loss_info(cfg.estimator.method).estimator != "ratio":
        raise ConfigError(f"{cfg.path}: [estimator] method = {cfg.estimator.method!r}; the qcd_splittings pipeline trains "
                          "ratio estimators (e.g. 'carl', 'rascal', 'alices').")
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    try:
        shower = PartonShower(output="observables", **cfg.toy_options)
    except TypeError as err:
        raise ConfigError(f"{cfg.path}: [simulator] options {cfg.toy_options} do not fit PartonShower ({err}).") from None
    truth = truth_point(cfg, shower).to(torch.float64)
    methods = tuple(dict.fromkeys(("carl", cfg.estimator.method)))
    toy, predictions = _toy(cfg, section, truth, methods, device, log)
    showered, gold, observed = _shower(cfg, section, shower, truth, methods, device, log)
    post, draws = _posterior(cfg, section, truth, device, log)
    failed = {m: r["closure"]["problems"] for m, r in showered["methods"].items() if not r["closure"]["passed"]}
    document = {"analysis": cfg.name, "kind": cfg.kind, "quick": quick, "truth": dict(zip(NAMES, truth.tolist())),
                "n_simulations": cfg.estimator.n_simulations, "hadronisation": False, "valid": not failed,
                "toy": toy, "shower": showered, "posterior": post}
    write_results(out, document, kind=cfg.kind)
    save(out / "estimator.h5", gold, overwrite=True, metadata={"analysis": cfg.name, "method": cfg.estimator.method})
    plotted = plot_all(out, shower, truth.float(), predictions, draws, min(4000, len(observed)), names=NAMES, set_size=section.set_size)
    lines = [f"{cfg.name}: (D, F, C) from {len(observed)} parton-level events (no hadronisation), truth {document['truth']}"]
    for method, r in showered["methods"].items():
        lines.append(f"  {method:>7}: fit " + ", ".join(f"{k} = {r['best'][k]:.3f} ± {r['errors'][k]:.3f}" for k in NAMES)
                     + f"; closure {'passed' if r['closure']['passed'] else 'FAILED'} (judged: {', '.join(r['closure']['judged']) or 'none'})")
    judging = showered["closure_judging"]
    if judging["not_judged"]:
        lines.append(f"  NOT JUDGED by the closure (not constrained at N = {len(observed)}): "
                     + "; ".join(f"{k}: {why}" for k, why in judging["not_judged"].items()))
    lines.append("  Cramér–Rao, joint history: " + ", ".join(f"{k} {v:.3f}" for k, v in showered["joint_fisher_widths"].items())
                 + "; SALLY: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in showered["sally_fisher_widths"].items()))
    lines.append("  toy: MSE " + ", ".join(f"{m} {r['mse']:.3g}" for m, r in toy["methods"].items())
                 + f"; posterior SBC passed {post['sbc']['passed']}, coverage passed {post['coverage']['passed']}")
    lines.append(f"wrote {out / 'results.json'}, {out / 'estimator.h5'}" + (", plots" if plotted else " (no matplotlib: no plots)"))
    if failed:
        lines.append("BIASED: the closure test failed for " + "; ".join(f"{m}: {', '.join(p)}" for m, p in failed.items())
                     + " -- the learned likelihood is not accurate enough for this data set; do not use these fits.")
        if section.strict and not quick:
            raise FitError("\n".join(lines))
    return "\n".join(lines)
