r"""The surrogate pipeline (``[analysis] kind = "surrogate"``): the resonance measurement with a learned detector stage.

1. Paired simulation of the resonance toy's two stages (truth mass m, reconstructed x, pass) with
   θ over the toy's space; a :class:`~sbilab.surrogates.StageSurrogate` (density of x given m,
   efficiency classifier) is trained on it and composed with the toy's own truth level
   (:class:`~sbilab.surrogates.Composition`): the *surrogate simulator*.
2. A DCTR refinement classifier (surrogate vs original on ``[m, x]``) from independent samples;
   its log-weights are compared with the exact log-ratio of the toy's detector over the surrogate
   (:func:`~sbilab.surrogates.stage_log_ratio`, :func:`~sbilab.surrogates.ratio_agreement`).
3. Validation on held-out events, before and after refinement: two-sample AUC overall and per
   θ region, histograms with ratios and χ²/ndf, moments (:func:`~sbilab.surrogates.validate`).
4. The measurement of (M, Γ) from the same observed events with the exact likelihood, the
   surrogate's and the refined surrogate's (iminuit best fits and HESSE errors), and over
   ``[surrogate] toys`` toy experiments: width ratios, coverage of the profile intervals at
   ``[fit] cl`` and 95 %, shifts (:func:`~sbilab.surrogates.compare_inference`).
5. Writes ``results.json``, ``stage_surrogate.h5`` and ``refinement.h5`` (publishable; the
   surrogate reloads as ``Composition(ResonanceTruth(toy), sbilab.publish.load(...))``) and the
   validation reports with their plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..nets.flows import FlowSpec
from ..publish import save
from ..surrogates import (
    Composition,
    LikelihoodModel,
    ResonanceDetector,
    ResonanceTruth,
    compare_inference,
    ratio_agreement,
    refinement_weights,
    simulate_pairs,
    stage_log_ratio,
    stage_features,
    train_refinement,
    train_stage_surrogate,
    validate,
)
from ..exceptions import ConfigError
from .config import AnalysisConfig
from .estimation import build_simulator, truth_point
from .run import register_pipeline, write_results

__all__ = ["run_surrogate", "SurrogateSection"]


@dataclass(frozen=True)
class SurrogateSection:
    r"""Options of the ``surrogate`` pipeline: the ``[surrogate]`` section.

    ``[training]`` gives ``batch_size``, ``learning_rate`` and ``seed`` of every network; ``[truth]``,
    ``[observed]`` and ``[fit] cl`` the measurement.

    Attributes:
        pairs: Paired (truth, reco, pass) simulations the stage is trained on (θ over the toy's space).
        flow_transforms, flow_hidden, flow_bins: The stage density (a spline flow, :class:`~sbilab.nets.flows.FlowSpec`).
        stage_epochs: Epochs of the density (the best validation epoch is kept).
        efficiency_epochs: Epochs of the efficiency classifier.
        classifier_hidden: Hidden widths of the efficiency, refinement and two-sample classifiers.
        refine_events: Events of each sample (surrogate, original) training the refinement classifier.
        refine_epochs: Its epochs.
        validation_events: Held-out events of each sample for the validation.
        validation_epochs: Epochs of each two-sample classifier.
        auc_resolution: Largest acceptable statistical error of a two-sample AUC.
        auc_regions: Quantile regions of each parameter with their own AUC (0: none).
        toys: Toy experiments (``[observed] n_events`` each) for widths and coverage.
        table_points: Points of the tabulated likelihood features over the window.
    """

    pairs: int = 100_000
    flow_transforms: int = 3
    flow_hidden: tuple[int, ...] = (64, 64)
    flow_bins: int = 8
    stage_epochs: int = 15
    efficiency_epochs: int = 20
    classifier_hidden: tuple[int, ...] = (64, 64)
    refine_events: int = 100_000
    refine_epochs: int = 20
    validation_events: int = 60_000
    validation_epochs: int = 10
    auc_resolution: float = 0.01
    auc_regions: int = 2
    toys: int = 200
    table_points: int = 2001
    nonnegative: ClassVar[tuple[str, ...]] = ("auc_regions",)

    def check(self, where: str) -> None:
        """Ranges that the generic type and sign checks do not cover."""
        if not 0.0 < self.auc_resolution < 0.5:
            raise ConfigError(f"{where} auc_resolution = {self.auc_resolution!r} must lie in (0, 0.5), e.g. 0.01.")
        if self.auc_regions == 1:
            raise ConfigError(f"{where} auc_regions = 1 is one region, the whole sample; write 0 (none) or at least 2.")


@register_pipeline("surrogate", section=("surrogate", SurrogateSection), toys=("resonance",))
def run_surrogate(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the surrogate analysis described by ``config``; write results to ``out``; return a printable summary."""
    log = (lambda msg: print(f"[sbilab] {msg}", flush=True)) if progress else (lambda msg: None)
    cfg = config.quick_version() if quick else config
    sc, tr = cfg.surrogate, cfg.training
    dev = "cpu" if device == "auto" else device
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    toy = build_simulator(cfg)
    truth = truth_point(cfg, toy).to(torch.float64)
    names = list(toy.space.names)
    level, detector = ResonanceTruth(toy), ResonanceDetector(toy)
    g = torch.Generator().manual_seed(tr.seed)

    log(f"{cfg.name}: paired simulation of {sc.pairs} events, training the detector-stage surrogate")
    t0 = time.time()
    z, x, passed = simulate_pairs(level, detector, toy.space.sample(sc.pairs, generator=g), generator=g)
    flow = FlowSpec("nsf", transforms=sc.flow_transforms, hidden=sc.flow_hidden, bins=sc.flow_bins)
    stage = train_stage_surrogate(z, x, passed, truth_low=[level.truth_range[0]], truth_high=[level.truth_range[1]],
                                  reco_low=[toy.window[0]], reco_high=[toy.window[1]], truth_names=["m"], reco_names=["x"], flow=flow,
                                  efficiency_hidden=sc.classifier_hidden, epochs=sc.stage_epochs, efficiency_epochs=sc.efficiency_epochs,
                                  batch_size=tr.batch_size, learning_rate=tr.learning_rate, seed=tr.seed, progress=progress, device=dev)
    stage = stage.cpu()
    surrogate = Composition(level, stage)
    log(f"  trained in {time.time() - t0:.0f} s: {stage.training_record}")

    log(f"refinement classifier on {sc.refine_events} surrogate and original events")
    theta_r = toy.space.sample(sc.refine_events, generator=g)
    sur_r, orig_r = surrogate.sample(theta_r, generator=g), toy.sample(theta_r, generator=g)
    refiner = train_refinement(stage_features(sur_r.latent, sur_r.x), stage_features(orig_r.latent, orig_r.x),
                               hidden=sc.classifier_hidden, epochs=sc.refine_epochs, batch_size=tr.batch_size,
                               learning_rate=tr.learning_rate, seed=tr.seed + 1, progress=progress, device=dev).cpu()

    log(f"validation on {sc.validation_events} held-out events of each")
    theta_v = toy.space.sample(sc.validation_events, generator=g)
    sur_v, orig_v = surrogate.sample(theta_v, generator=g), toy.sample(theta_v, generator=g)
    weights = refinement_weights(refiner, stage_features(sur_v.latent, sur_v.x), ess_threshold=0.5)
    # the refinement's log-weights against the exact log-ratio of the toy's detector over the surrogate
    calibration = ratio_agreement(weights.ratio.log(), stage_log_ratio(detector, stage, sur_v.latent.double(), sur_v.x.double()))
    regions = {n: sc.auc_regions for n in names} if sc.auc_regions else None
    options = dict(names=[*names, "m", "x"], regions=regions, resolution=sc.auc_resolution, hidden=sc.classifier_hidden,
                   epochs=sc.validation_epochs, seed=tr.seed + 2)
    before = validate(sur_v, orig_v, **options)
    after = validate(sur_v.replace(weights=weights.weights.to(sur_v.x.dtype)), orig_v, **options,
                     extra={"refinement": weights.to_dict()})
    written = before.write(out, name="validation_before") + after.write(out, name="validation_after")
    log(f"  AUC before {before.auc.auc:.4f} ± {before.auc.error:.4f}, after refinement {after.auc.auc:.4f} ± {after.auc.error:.4f}")

    log(f"measurement on {cfg.observed.n_events} observed events and {sc.toys} toys: exact vs surrogate vs refined")
    table = (toy.window[0], toy.window[1], sc.table_points)
    refined = Composition(level, stage, refinement=refiner)
    models = {"original": LikelihoodModel(toy.log_prob), "surrogate": LikelihoodModel.of_composition(surrogate, table=table),
              "refined": LikelihoodModel.of_composition(refined, table=table)}
    observed = toy.simulate(cfg.observed.n_events, theta=truth.float(), generator=torch.Generator().manual_seed(cfg.observed.seed))
    x_obs = observed.x.double()
    toys = toy.simulate(sc.toys * cfg.observed.n_events, theta=truth.float(), generator=g).x.double().reshape(sc.toys, -1, 1)
    inference = compare_inference(models, toys, toy.space, truth, observed=x_obs, levels=(cfg.fit.cl, 0.95), block_toys=50,
                                  progress=progress)

    save(out / "stage_surrogate.h5", stage, overwrite=True, metadata={"analysis": cfg.name, "toy": "resonance", "stage": "detector"})
    save(out / "refinement.h5", refiner, overwrite=True, metadata={"analysis": cfg.name, "features": ["m", "x"]})
    document = {
        "analysis": cfg.name, "kind": cfg.kind, "quick": quick, "truth": dict(zip(names, truth.tolist())), "cl": cfg.fit.cl,
        "n_observed": cfg.observed.n_events, "stage_training": stage.training_record,
        "auc_before": before.auc.to_dict(), "auc_after": after.auc.to_dict(),
        "auc_regions_before": [r.to_dict() for r in before.regions], "auc_regions_after": [r.to_dict() for r in after.regions],
        "chi2_per_ndf": {h.name: h.chi2_per_ndf for h in before.histograms},
        "refinement": weights.to_dict(), "refinement_vs_exact_ratio": calibration, "observed_fits": inference.observed, "toys": inference.to_dict(),
        "files": sorted(p.name for p in written) + ["stage_surrogate.h5", "refinement.h5", "results.json", "results.h5"],
    }
    write_results(out, document, kind=cfg.kind, metadata={"analysis": cfg.name})
    return _summary(cfg, document, inference, out)


def _summary(cfg: AnalysisConfig, doc: dict[str, Any], inference: Any, out: Path) -> str:
    a, b = doc["auc_before"], doc["auc_after"]
    lines = [f"{cfg.name}: detector stage replaced by a learned surrogate ({cfg.surrogate.pairs} paired simulations)",
             f"two-sample AUC surrogate vs original: {a['auc']:.4f} ± {a['error']:.4f} before, {b['auc']:.4f} ± {b['error']:.4f} "
             f"after refinement (ESS {doc['refinement']['effective_sample_size'] / doc['refinement']['n_events']:.1%})",
             f"{'param':>6} {'exact likelihood':>20} {'surrogate':>20} {'refined':>20}   (observed events, best fit ± HESSE)"]
    for n in inference.parameters:
        cells = [f"{doc['observed_fits'][m]['best'][n]:8.3f} ± {doc['observed_fits'][m]['errors'][n]:.3f}".rjust(20)
                 for m in ("original", "surrogate", "refined")]
        lines.append(f"{n:>6} " + " ".join(cells))
    level = inference.levels[0]
    lines.append(f"over {inference.n_toys} toys: width ratio surrogate/exact "
                 + ", ".join(f"{p} {r:.3f}" for p, r in inference.width_ratio("surrogate").items())
                 + f"; coverage at {level:.3f} (profile, per parameter): "
                 + "; ".join(f"{m} " + ", ".join(f"{p} {c[level]:.3f}" for p, c in inference.coverage_by_parameter[m].items())
                             for m in ("original", "surrogate", "refined")))
    invalid = {m: f["reason"] or "not valid" for m, f in doc["observed_fits"].items() if not f["valid"]}
    if invalid:
        lines.insert(0, "FIT NOT VALID on the observed events: " + "; ".join(f"{m}: {r}" for m, r in invalid.items()))
    lines.append(f"wrote {out / 'results.json'}, results.h5, stage_surrogate.h5, refinement.h5 and the validation reports in {out}")
    return "\n".join(lines)
