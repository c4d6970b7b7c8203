r"""The QCD splitting-kernel pipeline (``[analysis] kind = "qcd_splittings"``): (D, F, C) from jets.

1. **Toy check.** On the exact primary-emission toy
   (:class:`~sbilab.simulators.shower.PrimaryEmissions`), CARL and the ``[training] method``
   (with the gold of the exact joint likelihood) are trained; their log r̂ is compared with the
   exact one on held-out events (MSE, plot) and their widths over ``[observed] n_events`` toy
   events with the exact likelihood's and the Cramér–Rao bound.
2. **Shower.** ``[observed] n_events`` events of :class:`~sbilab.simulators.shower.PartonShower`
   (9 per-event observables, no hadronisation) at ``[truth]`` are fitted with
   :class:`~sbilab.stats.UnbinnedLikelihood` under CARL (no gold) and the configured gold method;
   widths :math:`\sqrt{\mathrm{diag}\,H^{-1}}` at the truth sit beside the Cramér–Rao widths of the
   joint (history) Fisher information and of SALLY's.
3. **Posterior.** A cINN :math:`q(\theta|\{x_i\})` over data sets of :data:`SET_SIZE` events
   (deep sets over the events, NSF; :func:`~.splittings_inference.train_posterior`) trained on
   ``[training] n_simulations`` events, checked by SBC and expected coverage on held-out sets, and
   applied to the first :data:`SET_SIZE` observed events.

Writes ``results.json``, ``estimator.h5`` (the gold ratio estimator, :mod:`sbilab.publish`),
``observables.png`` (observables at several θ), ``toy_log_ratio.png`` (learned vs exact) and
``posterior.png`` (draws with the truth).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..events import Events
from ..exceptions import ConfigError
from ..publish import save
from ..simulators.shower import OBSERVABLES, PartonShower, PrimaryEmissions
from .config import AnalysisConfig
from .estimation import truth_point
from .run import register_pipeline
from .splittings_inference import (
    ALPHA, SetLogRatio, TrainOptions, calibrate_posterior, dataset_events, fit_parameters, hessian_widths, joint_fisher,
    train_posterior, train_sally, train_splitting_ratio, without_history,
)

__all__ = ["run_qcd_splittings", "SET_SIZE"]

SET_SIZE = 50
"""Events per data set of the cINN posterior."""
TOY_EMBEDDING = {"kind": "deepsets", "out_features": 32, "hidden": [64, 64], "latent": 32, "pooling": "sum"}
NAMES = ("D", "F", "C")


def _options(cfg: AnalysisConfig, **extra: Any) -> TrainOptions:
    tr = cfg.training
    return TrainOptions(hidden=tuple(cfg.estimator.hidden), epochs=tr.epochs, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                        seed=tr.seed, **extra)


def _widths(values: torch.Tensor) -> dict[str, float | None]:
    """Per-parameter widths; ``None`` (JSON null) where a width is undefined (a Hessian not positive definite)."""
    return {name: (float(v) if math.isfinite(float(v)) else None) for name, v in zip(NAMES, values)}


def _strict(value: Any) -> Any:
    """``value`` with non-finite floats as None, recursively: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _toy(cfg: AnalysisConfig, truth: torch.Tensor, methods: tuple[str, ...], log) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    toy = PrimaryEmissions()
    ref = toy.space.reference
    n = cfg.observed.n_events
    test = toy.simulate(5000, generator=torch.Generator().manual_seed(cfg.observed.seed + 1))
    exact = (toy.log_prob(test.x, test.theta, test.mask) - toy.log_prob(test.x, ref, test.mask)).float()
    observed = toy.simulate(n, theta=truth, generator=torch.Generator().manual_seed(cfg.observed.seed))

    def exact_ratio(x, th):
        return toy.log_prob(x, th) - toy.log_prob(x, ref.to(th))

    cr = torch.sqrt(torch.diag(torch.linalg.inv(n * toy.fisher_information(truth))))
    out: dict[str, Any] = {"cramer_rao": _widths(cr), "exact_widths": _widths(hessian_widths(exact_ratio, observed.x, truth)),
                           "var_log_r": float(exact.var()), "methods": {}}
    predictions = {"exact": exact}
    for method in methods:
        est = train_splitting_ratio(toy, method, cfg.estimator.n_simulations // 2, _options(cfg, embedding=TOY_EMBEDDING))
        with torch.no_grad():
            predictions[method] = SetLogRatio(est)(test.x, test.theta)
        out["methods"][method] = {"mse": float(((predictions[method] - exact) ** 2).mean()),
                                  "widths": _widths(hessian_widths(SetLogRatio(est), observed.x, truth))}
        log(f"toy {method}: MSE {out['methods'][method]['mse']:.4g}, widths {out['methods'][method]['widths']} (CR {out['cramer_rao']})")
    return out, predictions


def _shower(cfg: AnalysisConfig, shower: PartonShower, truth: torch.Tensor, methods: tuple[str, ...], log) -> tuple[dict[str, Any], Any]:
    observed = shower.simulate(cfg.observed.n_events, theta=truth, generator=torch.Generator().manual_seed(cfg.observed.seed))
    n = len(observed)
    fisher = joint_fisher(shower, observed)
    observed = without_history(observed)
    out: dict[str, Any] = {"n_observed": n, "joint_fisher_widths": _widths(torch.sqrt(torch.diag(torch.linalg.inv(n * fisher)))),
                           "joint_fisher_widths_1000_events": _widths(torch.sqrt(torch.diag(torch.linalg.inv(1000 * fisher)))),
                           "methods": {}}
    gold = None
    for method in methods:
        est = train_splitting_ratio(shower, method, cfg.estimator.n_simulations // 2, _options(cfg))
        res = fit_parameters(est, observed, shower.space)
        out["methods"][method] = {"best": res.best, "errors": res.errors, "valid": res.valid, "reason": res.reason, "notes": list(res.notes),
                                  "widths": _widths(hessian_widths(est, observed.x, truth)),
                                  "widths_1000_events": _widths(hessian_widths(est, observed.x[:1000], truth))}
        log(f"shower {method}: fit {res.best} (valid {res.valid}), widths {out['methods'][method]['widths']}")
        gold = est
    sally = train_sally(shower, cfg.estimator.n_simulations // 2, _options(cfg))
    with torch.no_grad():
        fisher_sally = sally.fisher_information(observed.x).double()
    out["sally_fisher_widths"] = _widths(torch.sqrt(torch.diag(torch.linalg.inv(n * fisher_sally))))
    out["joint_minus_sally_eigenvalues"] = torch.linalg.eigvalsh(fisher - fisher_sally).tolist()
    log(f"shower: CR widths joint {out['joint_fisher_widths']}, SALLY {out['sally_fisher_widths']}")
    return out, (gold, observed)


def _posterior(cfg: AnalysisConfig, shower: PartonShower, observed: Events, truth: torch.Tensor, log) -> tuple[dict[str, Any], torch.Tensor]:
    n_sets = max(cfg.estimator.n_simulations // SET_SIZE, 40)
    generator = torch.Generator().manual_seed(cfg.training.seed + 7)
    data = dataset_events(shower, n_sets, SET_SIZE, generator=generator)
    test = dataset_events(shower, max(n_sets // 10, 20), SET_SIZE, generator=generator)
    posterior = train_posterior(data, shower.space, _options(cfg))
    sbc_result, coverage = calibrate_posterior(posterior, test, seed=cfg.training.seed)
    x = observed.x[:SET_SIZE].unsqueeze(0)
    with torch.no_grad():
        draws = posterior.sample(2000, x, generator=torch.Generator().manual_seed(cfg.observed.seed))[:, 0]
    out = {"sets": n_sets, "set_size": SET_SIZE, "sbc": {"statistic": sbc_result.statistic, "tolerance": sbc_result.tolerance,
                                                          "passed": sbc_result.passed},
           "coverage": {"statistic": coverage.statistic, "tolerance": coverage.tolerance, "passed": coverage.passed},
           "observed_mean": _widths(draws.mean(0)), "observed_std": _widths(draws.std(0)),
           "architecture": f"deep sets (mean pooling, {list(cfg.estimator.hidden)} MLPs, 32 outputs) over {SET_SIZE} events x "
                           f"{len(OBSERVABLES)} observables -> conditional NSF (4 transforms)"}
    log(f"posterior: SBC {sbc_result.statistic:.3f} (tol {sbc_result.tolerance:.3f}), coverage {coverage.statistic:.3f}; "
        f"mean {out['observed_mean']} ± {out['observed_std']}")
    return out, draws


def _plots(out: Path, shower: PartonShower, truth: torch.Tensor, predictions: dict[str, torch.Tensor], draws: torch.Tensor,
           n_events: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = {"truth": truth, "D = 1.4": truth + torch.tensor([0.4, 0.0, 0.0]).clamp(max=1.5 - truth),
              "F = 0.6": truth + torch.tensor([0.0, -0.4, 0.0]).clamp(min=0.5 - truth)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, point in points.items():
        x = shower.simulate(n_events, theta=point, generator=torch.Generator().manual_seed(5)).x
        for ax, col, bins in zip(axes, ("tau", "log_y23", "multiplicity"), (40, 40, range(2, 16))):
            ax.hist(x[:, OBSERVABLES.index(col)].numpy(), bins=bins, histtype="step", density=True, label=label)
            ax.set_xlabel(col)
    axes[0].legend(frameon=False)
    fig.suptitle("parton-level observables at several (D, F, C) (no hadronisation)")
    fig.tight_layout()
    fig.savefig(out / "observables.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for method, values in predictions.items():
        if method != "exact":
            ax.plot(predictions["exact"].numpy(), values.numpy(), ".", ms=2, label=method.upper())
    lim = float(predictions["exact"].abs().max())
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
    ax.set(xlabel=r"exact $\log r(x|\theta)$", ylabel=r"learned $\log\hat r(x|\theta)$", title="primary-emission toy")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "toy_log_ratio.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for i, (ax, name) in enumerate(zip(axes, NAMES)):
        ax.hist(draws[:, i].numpy(), bins=40, density=True, histtype="stepfilled", alpha=0.6)
        ax.axvline(float(truth[i]), color="k", ls="--", label="truth")
        ax.set_xlabel(name)
    axes[0].legend(frameon=False)
    fig.suptitle(f"cINN posterior from {SET_SIZE} observed events")
    fig.tight_layout()
    fig.savefig(out / "posterior.png", dpi=110)
    plt.close(fig)
    return True


@register_pipeline("qcd_splittings", toys=("shower",))
def run_qcd_splittings(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the pipeline of the module docstring; returns a printable summary.

    Raises:
        ConfigError: ``[estimator] method`` is not a ratio method with gold (``rascal``, ``alices``) or ``carl``.
    """
    cfg = config.quick_version() if quick else config
    if cfg.estimator.method not in ALPHA:
        raise ConfigError(f"{cfg.path}: [estimator] method = {cfg.estimator.method!r}; the qcd_splittings pipeline trains "
                          f"ratio estimators, choose one of {sorted(ALPHA)}.")
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    try:
        shower = PartonShower(output="observables", **cfg.toy_options)
    except TypeError as err:
        raise ConfigError(f"{cfg.path}: [simulator] options {cfg.toy_options} do not fit PartonShower ({err}).") from None
    truth = truth_point(cfg, shower).to(torch.float64)
    methods = tuple(dict.fromkeys(("carl", cfg.estimator.method)))
    toy, predictions = _toy(cfg, truth, methods, log)
    showered, (gold, observed) = _shower(cfg, shower, truth, methods, log)
    post, draws = _posterior(cfg, shower, observed, truth.float(), log)
    document = {"analysis": cfg.name, "kind": cfg.kind, "quick": quick, "truth": dict(zip(NAMES, truth.tolist())),
                "n_simulations": cfg.estimator.n_simulations, "hadronisation": False, "toy": toy, "shower": showered,
                "posterior": post}
    (out / "results.json").write_text(json.dumps(_strict(document), indent=2, allow_nan=False))
    save(out / "estimator.h5", gold, overwrite=True, metadata={"analysis": cfg.name, "method": cfg.estimator.method})
    plotted = _plots(out, shower, truth.float(), predictions, draws, min(4000, len(observed)))
    lines = [f"{cfg.name}: (D, F, C) from {len(observed)} parton-level events (no hadronisation), truth {document['truth']}"]
    for method, r in showered["methods"].items():
        lines.append(f"  {method:>7}: fit " + ", ".join(f"{k} = {r['best'][k]:.3f} ± {r['errors'][k]:.3f}" for k in NAMES)
                     + "; widths at truth " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in r["widths"].items()))
    lines.append("  Cramér–Rao, joint history: " + ", ".join(f"{k} {v:.3f}" for k, v in showered["joint_fisher_widths"].items())
                 + "; SALLY: " + ", ".join(f"{k} {v:.3f}" for k, v in showered["sally_fisher_widths"].items()))
    lines.append("  toy: MSE " + ", ".join(f"{m} {r['mse']:.3g}" for m, r in toy["methods"].items())
                 + f"; posterior SBC passed {post['sbc']['passed']}, coverage passed {post['coverage']['passed']}")
    lines.append(f"wrote {out / 'results.json'}, {out / 'estimator.h5'}" + (", plots" if plotted else " (no matplotlib: no plots)"))
    return "\n".join(lines)

