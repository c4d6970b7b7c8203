r"""The unfolding pipeline (``[analysis] kind = "unfolding"``): OmniFold with uncertainties on a Gaussian toy.

The toy (``[simulator] toy = "unfolding_gaussian"``, :class:`~sbilab.unfolding.toys.GaussianUnfoldingToy`
with its options; ``[truth]`` the data's generator-level ``data_mean``/``data_std``) gives paired
simulation (``[estimator] n_simulations`` rows), data (``[observed] n_events`` rows, seed
``[observed] seed``) and a background Monte Carlo. Every step composes :mod:`sbilab.unfolding`:

1. :func:`~sbilab.unfolding.omnifold` with ``[unfolding] iterations``, classifiers of
   ``[estimator] hidden``/``activation`` trained with the ``[training]`` options, and replicas in
   one batched ensemble per step: ``ensemble_members``, ``bootstrap_data``, ``bootstrap_mc`` and
   one detector systematic, the resolution scaled by ``1 + smearing_systematic`` as exact per-event
   weights (:meth:`~sbilab.unfolding.toys.GaussianUnfoldingToy.smearing_weights`);
2. the published per-event result ``unfolded.h5`` (:class:`~sbilab.unfolding.UnfoldedResult`,
   ATLAS weight columns) and its histogram with the covariance of every replica kind;
3. the ideal iterations (quadrature) and their statistical error as the reference of every
   iteration's mean and width; bin-by-bin IBU and (``generative = true``) generative unfolding
   with its IcINN iterations on the same samples.

Writes ``results.json``/``results.h5`` (:func:`~sbilab.analysis.run.write_results`),
``unfolded.h5``, and the plots ``unfolded.png`` (unfolded vs truth vs detector level, ratio panel,
replica band), ``iterations.png`` (moments per iteration against the ideal ones) and
``diagnostics.png`` (weight quality per step and iteration).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..exceptions import ConfigError
from ..simulators.registry import build_toy
from ..unfolding import (
    ClassifierSettings,
    GenerativeSettings,
    OmniFoldSettings,
    Replicas,
    chi2_ndf,
    generative_unfold,
    ideal_iterations,
    ideal_stat_error,
    omnifold,
    unfold_each_observable,
    weighted_moments,
)
from ..unfolding.binning import bin_index, bin_sums
from .config import AnalysisConfig
from .run import register_pipeline, write_results
from .unfolding_plots import plot_diagnostics, plot_iterations, plot_unfolded

__all__ = ["run_unfolding", "UnfoldingSection"]

_TRUTH = ("data_mean", "data_std")


@dataclass(frozen=True)
class UnfoldingSection:
    """Options of the ``unfolding`` pipeline: the ``[unfolding]`` section.

    Attributes:
        iterations: OmniFold (and IBU, generative) iterations.
        ensemble_members: Nominal trainings (the nominal result is their mean).
        bootstrap_data: Data bootstrap replicas (``false``: none).
        bootstrap_mc: Simulation bootstrap replicas (``false``: none).
        smearing_systematic: Relative change of the resolution for the detector systematic (0: none).
        background_events: Size of the background Monte Carlo.
        generative: Also run generative (cINN) unfolding with its iterations.
        draws: Generator-level draws per data event of the generative method.
        bins: Bins of the histograms (equal width over the 0.5-99.5 % range of the simulation).
    """

    iterations: int = 4
    ensemble_members: int = 2
    bootstrap_data: int | None = 5
    bootstrap_mc: int | None = 5
    smearing_systematic: float = 0.1
    background_events: int = 40_000
    generative: bool = True
    draws: int = 5
    bins: int = 30
    nonnegative: ClassVar[tuple[str, ...]] = ("smearing_systematic",)

    def check(self, where: str) -> None:
        if self.bins < 2:
            raise ConfigError(f"{where} bins = {self.bins} must be at least 2.")


def _check(config: AnalysisConfig) -> None:
    unknown = sorted(set(config.truth) - set(_TRUTH))
    if unknown:
        raise ConfigError(f"{config.path}: [truth] of the unfolding pipeline gives the data's generator-level {_TRUTH}; "
                          f"unknown keys {unknown}.")
    if config.truth.get("data_std", 1.0) <= 0:
        raise ConfigError(f"{config.path}: [truth] data_std must be positive.")


def _moments(values: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in values]


def _histograms(edges: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return bin_sums(bin_index(values.to(torch.float64), edges), weights.to(torch.float64), len(edges) - 1)


@register_pipeline("unfolding", section=("unfolding", UnfoldingSection), toys=("unfolding_gaussian",), check=_check)
def run_unfolding(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the pipeline of the module docstring; returns a printable summary."""
    cfg = config.quick_version() if quick else config
    sec: UnfoldingSection = cfg.unfolding
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    toy = dataclasses.replace(build_toy(cfg.toy, cfg.toy_options, where=f"{cfg.path}: [simulator]"), **cfg.truth)
    g = torch.Generator().manual_seed(cfg.observed.seed)
    n_sim, n_data = cfg.estimator.n_simulations, cfg.observed.n_events
    sim, data = toy.simulation(n_sim, generator=g), toy.data(n_data, generator=g)
    background = toy.background(sec.background_events, data_rows=n_data, generator=g) if toy.background_fraction > 0 else None
    classifier = ClassifierSettings(hidden=cfg.estimator.hidden, activation=cfg.estimator.activation, training=cfg.training)
    systematics = {"smearing_up": toy.smearing_weights(sim, 1 + sec.smearing_systematic)} if sec.smearing_systematic > 0 else {}
    replicas = Replicas(ensemble=sec.ensemble_members, bootstrap_data=sec.bootstrap_data, bootstrap_mc=sec.bootstrap_mc,
                        systematics=systematics, seed=cfg.training.seed)
    log(f"{cfg.name}: OmniFold, {sec.iterations} iterations, {replicas.layout().size} members per step")
    res = omnifold(sim, data.events, background=background, settings=OmniFoldSettings(iterations=sec.iterations, classifier=classifier),
                   replicas=replicas, device=device, progress=progress)
    published = res.to_result(("z",), ("a.u.",))
    published.save(out / "unfolded.h5", overwrite=True, metadata={"analysis": cfg.name})
    # references: ideal iterations and their statistical error (data and simulation statistics)
    ideal = ideal_iterations(toy, iterations=sec.iterations)
    sigma = ideal_stat_error(toy, n_data, iterations=sec.iterations, points=201) * math.sqrt(1 + n_data / n_sim)
    z = sim.gen.x[:, 0]
    omni = torch.stack([weighted_moments(z, res.nominal_weights(k)) for k in range(1, sec.iterations + 1)])
    members = torch.stack([weighted_moments(z, res.weights(k)) for k in range(1, sec.iterations + 1)])  # (I, K, 2)
    lay = res.layout
    spread = {kind: members[:, lay.members(kind)].std(1) for kind in ("bootstrap_data", "bootstrap_mc")
              if len(lay.members(kind)) > 1}
    ibu = unfold_each_observable(sim, data.reco, bins=sec.bins, iterations=sec.iterations, background=background)[0]
    edges = ibu.edges
    centres = 0.5 * (edges[1:] + edges[:-1])
    ibu_moments = torch.stack([weighted_moments(centres, u.clamp_min(0)) for u in ibu.result.unfolded])
    gen_moments, gen_hist = None, None
    if sec.generative:
        log(f"{cfg.name}: generative unfolding, {sec.iterations} iterations")
        gen = generative_unfold(sim, data.events, background=background, device=device, progress=progress,
                                settings=GenerativeSettings(iterations=sec.iterations, draws=sec.draws, classifier=classifier,
                                                            density_training=dataclasses.replace(cfg.training, learning_rate=1e-3)))
        gen_moments = torch.stack([weighted_moments(gen.unfolded(k)[0][:, 0], gen.unfolded(k)[1]) for k in range(1, sec.iterations + 1)])
        gen_hist = _histograms(edges, gen.unfolded()[0][:, 0], gen.unfolded()[1])
    # histograms with the covariance of every replica kind
    band = published.histogram("z", edges)
    truth = _histograms(edges, data.truth[:, 0], torch.ones(len(data.truth)))
    chi2 = chi2_ndf(band.nominal, truth, band.covariance, reference_covariance=torch.diag(truth))
    # a covariance estimated from R replicas has rank <= R - 1: with fewer replicas than bins the missing
    # directions carry only the truth's statistics, and the chi2 is biased high
    rank = int(torch.linalg.matrix_rank(band.covariance, hermitian=True))
    detector = _histograms(edges, data.reco[:, 0], torch.ones(len(data.reco)))
    prior = _histograms(edges, z[sim.pass_gen], sim.weights_or_ones()[sim.pass_gen]) * (n_data / n_sim)
    document: dict[str, Any] = {
        "analysis": cfg.name, "kind": cfg.kind, "quick": quick, "toy": dataclasses.asdict(toy),
        "events": {"simulated": n_sim, "data_rows": n_data, "observed": len(data.reco), "data_fiducial_truth": len(data.truth),
                   "background_mc": 0 if background is None else len(background)},
        "replicas": lay.to_dict(), "settings": res.settings.to_dict(),
        "moments": {"ideal": _moments(ideal.moments[1:]), "stat_error": _moments(sigma), "omnifold": _moments(omni),
                    "omnifold_pull": _moments((omni - ideal.moments[1:]) / sigma), "ibu": _moments(ibu_moments),
                    "generative": None if gen_moments is None else _moments(gen_moments),
                    "replica_spread": {k: _moments(v) for k, v in spread.items()},
                    "truth_sample": [float(data.truth.mean()), float(data.truth.std())]},
        "fake_scale": {"omnifold": res.fake_scale[:, lay.members("ensemble")].mean(-1).tolist(), "ideal": ideal.fake_scale.tolist()},
        "unfolded_total": {"omnifold": float(res.nominal_weights().sum()), "truth": len(data.truth)},
        "histogram": {"edges": edges.tolist(), "omnifold": band.nominal.tolist(), "error_total": band.error.tolist(),
                      "error_data": band.covariance_data.diagonal().sqrt().tolist(),
                      "error_mc": band.covariance_mc.diagonal().sqrt().tolist(),
                      "error_ensemble": band.covariance_ensemble.diagonal().sqrt().tolist(),
                      "shift_smearing_up": band.shifts["smearing_up"].tolist() if "smearing_up" in band.shifts else None,
                      "truth": truth.tolist(), "ibu": ibu.result.final.tolist(), "detector": detector.tolist(), "prior": prior.tolist(),
                      "generative": None if gen_hist is None else gen_hist.tolist()},
        "chi2_omnifold_vs_truth": {"chi2": chi2.chi2, "ndf": chi2.ndf, "p_value": chi2.p_value,
                                   "covariance_rank": rank, "bins": int(band.nominal.numel()),
                                   "complete_covariance": rank >= band.nominal.numel()},
        "diagnostics": [d.to_dict() for d in res.diagnostics],
    }
    write_results(out, document, kind=cfg.kind, metadata={"analysis": cfg.name})
    plotted = plot_unfolded(out / "unfolded.png", document["histogram"], band.nominal, band.error)
    plot_iterations(out / "iterations.png", document["moments"])
    plot_diagnostics(out / "diagnostics.png", res.diagnostics, lay.kinds)
    m = document["moments"]
    lines = [f"{cfg.name}: OmniFold of {len(data.reco)} observed events ({n_sim} simulated), truth N({toy.data_mean}, {toy.data_std})",
             "  k   OmniFold (mean, std)   ideal              pull (data+MC sigma)"]
    for k in range(sec.iterations):
        lines.append(f"  {k + 1}   ({m['omnifold'][k][0]:+.4f}, {m['omnifold'][k][1]:.4f})    "
                     f"({m['ideal'][k][0]:+.4f}, {m['ideal'][k][1]:.4f})   ({m['omnifold_pull'][k][0]:+.2f}, {m['omnifold_pull'][k][1]:+.2f})")
    lines.append(f"  unfolded total {document['unfolded_total']['omnifold']:.0f} vs truth {len(data.truth)}; "
                 f"chi2/ndf vs truth {chi2.chi2:.1f}/{chi2.ndf} (replica covariance + truth statistics)")
    if rank < band.nominal.numel():
        lines.append(f"  note: the replica covariance has rank {rank} for {band.nominal.numel()} bins ({lay.to_dict()}): in the "
                     "missing directions only the truth's statistics enter, so this chi2 is biased high. For a chi2 use more "
                     "bootstrap replicas than bins ([unfolding] bootstrap_data / bootstrap_mc) or fewer bins.")
    lines.append(f"wrote {out / 'results.json'}, {out / 'unfolded.h5'}" + (", plots" if plotted else " (no matplotlib: no plots)"))
    return "\n".join(lines)
