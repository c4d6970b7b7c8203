r"""A learned detector stage on the resonance toy: speed, two-sample AUC before/after refinement, inference, amplification.

In one run, against the original toy (:class:`~sbilab.simulators.toys.Resonance`: Breit–Wigner
truth, Gaussian detector σ = 2, window 85 < x < 115):

* **stage surrogate**: a :class:`~sbilab.surrogates.StageSurrogate` (ConditionalDensity of the
  reco mass given the truth mass, Classifier efficiency) trained on paired simulation
  (truth, reco, pass) with θ drawn over the toy's default space; composed with the toy's own
  truth level it is a simulator (:class:`~sbilab.surrogates.Composition`);
* **speed**: events/s of the composed surrogate and of the original (``speedup`` =
  surrogate/original; the toy's detector is one Gaussian draw, so a learned stage is *slower*
  here — the figure is honest, not flattering);
* **AUC** of a fresh classifier between held-out surrogate and original events ``[M, Γ, m, x]``
  before and after DCTR refinement (classifier weights on ``[m, x]`` from independent samples),
  overall and per θ region, with bootstrap errors; the refinement's log-weights against the exact
  log-ratio of the toy's detector over the surrogate (correlation, spreads);
* **inference**: ``--toys`` experiments of 1000 events at θ = (100, 5), each fitted with the exact
  likelihood, the surrogate's and the refined surrogate's marginal likelihoods (truth grid,
  features tabulated once), by :func:`~sbilab.stats.fit_toys`: mean width ratios, coverage of
  the per-parameter profile intervals and of the joint region, mean shift of the best fits;
* **amplification** (arXiv:2008.06545) of a whole-simulator surrogate trained on N events at
  θ = (100, 5), N = 10³, 10⁴, 10⁵: equivalent original events / N for the fractions of 20
  equal-probability bins and for the mean, from the exact density (quadrature).

Usage: ``python benchmarks/surrogates.py [--quick] [--json] [--toys N] [--seed S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from sbilab.nets.flows import FlowSpec
from sbilab.simulators.toys import Resonance
from sbilab.surrogates import (
    Composition,
    LikelihoodModel,
    ResonanceDetector,
    ResonanceTruth,
    compare_inference,
    histogram_amplification,
    mean_amplification,
    ratio_agreement,
    refinement_weights,
    simulate_pairs,
    stage_features,
    stage_log_ratio,
    train_refinement,
    train_simulator_surrogate,
    train_stage_surrogate,
    validate,
)

TRUTH = torch.tensor([100.0, 5.0], dtype=torch.float64)
N_EVENTS = 1000
LEVELS = (0.683, 0.95)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def settings(quick: bool) -> dict:
    if quick:
        return dict(pairs=8_000, flow=FlowSpec("nsf", transforms=1, hidden=(32, 32)), epochs=4, eff_epochs=15, refine=8_000,
                    refine_epochs=4, validation=8_000, regions={"M": 2}, toys=24, amplification={1000: 1}, amp_draws=200_000,
                    classifier=(32, 32), clf_epochs=3, resolution=0.02, bootstrap=50)
    return dict(pairs=100_000, flow=FlowSpec("nsf", transforms=3, hidden=(64, 64), bins=8), epochs=15, eff_epochs=20, refine=100_000,
                refine_epochs=20, validation=60_000, regions={"M": 2, "Gamma": 2}, toys=500,
                amplification={1000: 3, 10_000: 3, 100_000: 2}, amp_draws=1_000_000, classifier=(64, 64), clf_epochs=10,
                resolution=0.01, bootstrap=200)


def rate(fn, n: int) -> float:
    """Events per second of ``fn(n)`` (best of two runs after a warm-up)."""
    fn(min(n, 1000))
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return n / best


def exact_truth(toy: Resonance, bins: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Equal-probability bin edges of p(x|θ=TRUTH), their probabilities, and the exact mean and variance (quadrature)."""
    grid = torch.linspace(*toy.window, 300_001, dtype=torch.float64)[1:-1]
    dx = float(grid[1] - grid[0])
    p = toy.log_prob(grid.reshape(-1, 1), TRUTH).exp() * dx
    p = p / p.sum()
    cdf = torch.cumsum(p, 0)
    quantiles = torch.arange(1, bins, dtype=torch.float64) / bins
    inner = grid[torch.searchsorted(cdf, quantiles)].tolist()
    edges = torch.tensor([toy.window[0], *inner, toy.window[1]], dtype=torch.float64)
    idx = torch.bucketize(grid, edges, right=True) - 1
    probs = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx.clamp(0, bins - 1), p)
    mean = float((p * grid).sum())
    return edges, probs, mean, float((p * (grid - mean) ** 2).sum())


def amplification(toy: Resonance, cfg: dict, seed: int) -> dict:
    edges, probs, mean, var = exact_truth(toy, 20)
    out: dict[str, dict] = {}
    for n_train, replicas in cfg["amplification"].items():
        samples = []
        for r in range(replicas):
            g = torch.Generator().manual_seed(seed + 1000 * r + n_train)
            events = toy.simulate(n_train, theta=TRUTH.float(), generator=g)
            batch = int(min(512, max(32, n_train // 8)))
            epochs = int(min(150, max(10, math.ceil(3000 * batch / n_train))))
            t0 = time.time()
            sur = train_simulator_surrogate(events, toy.space, low=list(toy.window[:1]), high=list(toy.window[1:]),
                                            flow=FlowSpec("nsf", transforms=2, hidden=(32, 32)), epochs=epochs, batch_size=batch,
                                            learning_rate=5e-3, patience=15, seed=seed + r)
            draws = sur.sample(TRUTH.float().expand(cfg["amp_draws"], 2), generator=g).x[:, 0]
            samples.append(draws)
            log(f"  N = {n_train}, replica {r}: {epochs} epochs (best {sur.training_record['best_epoch']}) in {time.time() - t0:.0f} s")
        hist = histogram_amplification(samples, n_train, edges=edges, probabilities=probs)
        first = mean_amplification(samples, n_train, mean=mean, variance=var)
        out[str(n_train)] = {"histogram": hist.to_dict(), "mean": first.to_dict()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trainings and few toys (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--toys", type=int, default=None, help="toy experiments of 1000 events (default 500, quick 24)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for the validation reports and plots (default: none written)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = settings(args.quick)
    n_toys = args.toys or cfg["toys"]
    start = time.time()
    toy = Resonance()  # stage training and validation over the default space (95-105, 2-8)
    truth, detector = ResonanceTruth(toy), ResonanceDetector(toy)
    g = torch.Generator().manual_seed(args.seed)

    log(f"paired simulation ({cfg['pairs']} events) and stage training ...")
    t0 = time.time()
    z, x, passed = simulate_pairs(truth, detector, toy.space.sample(cfg["pairs"], generator=g), generator=g)
    stage = train_stage_surrogate(z, x, passed, truth_low=[truth.truth_range[0]], truth_high=[truth.truth_range[1]],
                                  reco_low=[toy.window[0]], reco_high=[toy.window[1]], truth_names=["m"], reco_names=["x"],
                                  flow=cfg["flow"], epochs=cfg["epochs"], efficiency_epochs=cfg["eff_epochs"],
                                  efficiency_hidden=(64, 64), batch_size=512, learning_rate=2e-3, seed=args.seed)
    train_time = time.time() - t0
    log(f"  {train_time:.0f} s; {stage.training_record}")
    surrogate = Composition(truth, stage)

    log("sampling speed ...")
    theta_speed = TRUTH.float().expand(100_000, 2)
    rate_orig = rate(lambda n: toy.sample(theta_speed[:n], generator=torch.Generator().manual_seed(1)), 100_000)
    rate_sur = rate(lambda n: surrogate.sample(theta_speed[:n], generator=torch.Generator().manual_seed(1)), 100_000)

    log("refinement classifier ...")
    theta_ref = toy.space.sample(cfg["refine"], generator=g)
    sur_r = surrogate.sample(theta_ref, generator=g)
    orig_r = toy.sample(theta_ref, generator=g)
    refiner = train_refinement(stage_features(sur_r.latent, sur_r.x), stage_features(orig_r.latent, orig_r.x), hidden=cfg["classifier"],
                               epochs=cfg["refine_epochs"], batch_size=512, learning_rate=2e-3, seed=args.seed + 1)

    log("validation before and after refinement ...")
    theta_val = toy.space.sample(cfg["validation"], generator=g)
    sur_v = surrogate.sample(theta_val, generator=g)
    orig_v = toy.sample(theta_val, generator=g)
    weights = refinement_weights(refiner, stage_features(sur_v.latent, sur_v.x), ess_threshold=0.5)
    calibration = ratio_agreement(weights.ratio.log(), stage_log_ratio(detector, stage, sur_v.latent.double(), sur_v.x.double()))
    options = dict(names=["M", "Gamma", "m", "x"], regions=cfg["regions"], resolution=cfg["resolution"], hidden=cfg["classifier"],
                   epochs=cfg["clf_epochs"], n_bootstrap=cfg["bootstrap"], seed=args.seed + 2)
    before = validate(sur_v, orig_v, **options)
    after = validate(sur_v.replace(weights=weights.weights.to(sur_v.x.dtype)), orig_v, **options,
                     extra={"refinement": weights.to_dict()})
    log(f"  AUC before {before.auc.auc:.4f} ± {before.auc.error:.4f}, after {after.auc.auc:.4f} ± {after.auc.error:.4f}")

    log(f"inference: {n_toys} toys x {N_EVENTS} events, exact vs surrogate vs refined ...")
    fit_toy = Resonance(low=(98.5, 3.0), high=(101.5, 7.5), reference=(100.0, 5.0))  # fits within ±10σ of the truth
    fit_truth = ResonanceTruth(fit_toy)
    table = (toy.window[0], toy.window[1], 2001)
    composed = Composition(fit_truth, stage)
    refined = Composition(fit_truth, stage, refinement=refiner)
    models = {"original": LikelihoodModel(fit_toy.log_prob), "surrogate": LikelihoodModel.of_composition(composed, table=table),
              "refined": LikelihoodModel.of_composition(refined, table=table)}
    toys = fit_toy.sample(TRUTH.float().expand(n_toys * N_EVENTS, 2), generator=g).x.double().reshape(n_toys, N_EVENTS, 1)
    table_error = composed.feature_table(*table).max_error(composed.likelihood_features, toys[0, :200])
    t0 = time.time()
    inference = compare_inference(models, toys, fit_toy.space, TRUTH, observed=toys[0], levels=LEVELS, block_toys=50)
    inference_time = time.time() - t0

    log("amplification ...")
    amp = amplification(toy, cfg, args.seed + 7)

    if args.out:
        before.write(Path(args.out), name="validation_before")
        after.write(Path(args.out), name="validation_after")

    def worst(model: str) -> dict[str, float]:
        by = inference.coverage_by_parameter[model]
        return {str(level): max((by[p][level] for p in by), key=lambda c: abs(c - level)) for level in LEVELS}

    result = {
        "speedup": rate_sur / rate_orig,
        "events_per_s": {"surrogate": rate_sur, "original": rate_orig},
        "auc_before": before.auc.auc, "auc_before_error": before.auc.error,
        "auc_after": after.auc.auc, "auc_error": after.auc.error,
        "auc_regions_before": {r.label: [r.auc, r.error] for r in before.regions},
        "auc_regions_after": {r.label: [r.auc, r.error] for r in after.regions},
        "refinement_ess_fraction": weights.effective_sample_size / len(weights.weights),
        "refinement_normalisation": weights.normalisation,
        "refinement_vs_exact_ratio": calibration,
        "chi2_per_ndf": {h.name: h.chi2_per_ndf for h in before.histograms},
        "width_ratio": inference.width_ratio("surrogate"),
        "width_ratio_refined": inference.width_ratio("refined"),
        "coverage": worst("surrogate"),
        "coverage_original": worst("original"),
        "coverage_refined": worst("refined"),
        "coverage_by_parameter": {m: {p: {str(k): v for k, v in c.items()} for p, c in by.items()}
                                  for m, by in inference.coverage_by_parameter.items()},
        "coverage_joint": {m: {str(k): v for k, v in c.items()} for m, c in inference.coverage.items()},
        "coverage_error": {str(level): inference.coverage_error(level) for level in LEVELS},
        "shift_in_widths": inference.shift, "shift_error": inference.shift_error,
        "observed_fit": inference.observed,
        "feature_table_max_error": table_error,
        "amplification": {n: v["histogram"]["factor"] for n, v in amp.items()},
        "amplification_mean": {n: v["mean"]["factor"] for n, v in amp.items()},
        "amplification_detail": amp,
        "toys": n_toys, "training_pairs": cfg["pairs"], "train_time_s": train_time, "inference_time_s": inference_time,
        "wall_time_s": time.time() - start, "quick": args.quick,
    }
    if args.json:
        print(json.dumps(result, indent=1, default=float))
    else:
        log(json.dumps({k: result[k] for k in ("speedup", "auc_before", "auc_after", "auc_error", "width_ratio", "coverage",
                                                 "coverage_original", "amplification")}, indent=1, default=float))
    log(f"wall time {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
