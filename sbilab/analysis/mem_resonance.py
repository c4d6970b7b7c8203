r"""The MEM pipeline (``[analysis] kind = "mem_resonance"``): matrix-element method vs learned ratio on the same events.

Toy 1 of the matrix-element method (the registered ``resonance`` toy: Breit–Wigner line,
Gaussian resolution, fiducial window), where the exact likelihood is known. ``[mem] toys``
datasets of ``[observed] n_events`` events are drawn at ``[truth]`` and every dataset is fitted
for (M, Γ) by :func:`~sbilab.stats.fit_toys` (batched Newton, HESSE-like widths) with four
per-event log-likelihood ratios:

``exact``   the toy's Voigt likelihood;
``mem``     the MEM with the analytic detector and the physics proposal
            (:func:`~sbilab.mem.toys.resonance_likelihood`, randomised QMC, ``[mem] samples``);
``ml_mem``  the ML-accelerated MEM: transfer function :math:`W_\mathrm{acc}(x|m)` and acceptance
            :math:`\epsilon(m)` learned from ``[mem] pairs`` simulated (reco, parton) pairs
            (:func:`~sbilab.mem.toys.learned_resonance_model`), proposal :math:`q(m|x)` learned from
            ``[mem] proposal_events`` simulated events (:func:`~sbilab.mem.fit_proposal`) and mixed
            with the Breit–Wigner at the reference (share ``[mem] defensive``), ``[mem]
            learned_samples`` samples per event, the coverage check on ``[mem] coverage_events``;
``alices``  the learned ratio of ``[estimator]`` (:func:`~sbilab.analysis.estimation.train_ratio`).

Reported per method: mean width, bias :math:`\langle\hat\theta - \theta\rangle` with its error,
pull spread, widths over the Cramér–Rao bound, per-event agreement with the exact log-ratio at
``[mem] compare_at`` (RMS on one dataset), CPU seconds per event (first evaluation of one
dataset, fits) and the one-off training time. Writes ``results.json``/``results.h5``
(:func:`~sbilab.analysis.run.write_results`) and ``log_ratio.png``, ``fits.png``,
``transfer.png``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError
from ..mem import ACCEPTANCE_TRAINING, PROPOSAL_TRAINING, TRANSFER_TRAINING, MultiChannel, fit_proposal, integration_noise
from ..mem.toys import learned_resonance_model, peak_channel, resonance_likelihood, resonance_model
from ..nets.flows import FlowSpec
from ..stats import fit_toys
from .config import AnalysisConfig
from .estimation import build_simulator, exact_log_ratio, learned_log_ratio, train_ratio, truth_point
from .run import register_pipeline, write_results

__all__ = ["run_mem_resonance", "MemSection", "MEM_METHODS"]

MEM_METHODS = ("exact", "mem", "ml_mem", "alices")
NAMES = ("M", "Gamma")


@dataclass(frozen=True)
class MemSection:
    """Options of the ``mem_resonance`` pipeline: the ``[mem]`` section.

    Attributes:
        toys: Datasets of ``[observed] n_events`` events fitted by every method.
        samples: Randomised-QMC samples per event of the analytic MEM.
        learned_samples: Samples per event of the ML-MEM (learned proposal).
        pairs: Simulated (reco, parton) pairs for the learned transfer function and acceptance.
        proposal_events: Simulated events for the learned proposal.
        flow_transforms, flow_hidden: Size of the learned flows (spline flows, two hidden layers).
        learned_epochs: Epochs of every ML-MEM network.
        defensive: Share of the defensive component (the Breit–Wigner at the reference) in the proposal.
        coverage_events: Events of the ML-MEM's coverage check (against the defensive component alone).
        noise_seeds: Integration seeds of the ML-MEM refits of the first dataset (integration noise).
        compare_at: The (M, Γ) where per-event log-ratios are compared with the exact one.
    """

    toys: int = 20
    samples: int = 1024
    learned_samples: int = 256
    pairs: int = 20_000
    proposal_events: int = 20_000
    flow_transforms: int = 3
    flow_hidden: int = 32
    learned_epochs: int = 30
    defensive: float = 0.1
    coverage_events: int = 32
    noise_seeds: int = 3
    compare_at: tuple[float, ...] = (101.0, 6.0)

    def check(self, where: str) -> None:
        if not 0.0 < self.defensive < 1.0:
            raise ConfigError(f"{where} defensive = {self.defensive} must lie in (0, 1), e.g. 0.1.")
        if self.learned_samples < 2 or self.noise_seeds < 2 or len(self.compare_at) != 2:
            raise ConfigError(f"{where} needs learned_samples >= 2, noise_seeds >= 2 and compare_at = [M, Gamma].")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def _ml_mem(cfg: AnalysisConfig, sim, mem: MemSection, log) -> tuple[Any, dict[str, Any]]:
    """The ML-MEM likelihood: learned transfer function, acceptance and proposal (trained once)."""
    tr = cfg.training
    flow = FlowSpec("nsf", transforms=mem.flow_transforms, hidden=(mem.flow_hidden, mem.flow_hidden))
    transfer_tr = dataclasses.replace(TRANSFER_TRAINING, epochs=mem.learned_epochs, seed=tr.seed)
    acceptance_tr = dataclasses.replace(ACCEPTANCE_TRAINING, epochs=mem.learned_epochs, seed=tr.seed + 1)
    proposal_tr = dataclasses.replace(PROPOSAL_TRAINING, epochs=mem.learned_epochs, seed=tr.seed + 2)
    log(f"ML-MEM: learning W(x|m) and eps(m) from {mem.pairs} pairs, q(m|x) from {mem.proposal_events} events")
    model, t_detector = _timed(lambda: learned_resonance_model(sim, pairs=mem.pairs, flow=flow, hidden=(mem.flow_hidden, mem.flow_hidden),
                                                               training=transfer_tr, acceptance_training=acceptance_tr, seed=tr.seed))
    events = sim.simulate(mem.proposal_events, theta=sim.space.reference, generator=torch.Generator().manual_seed(tr.seed + 3))
    flow_q, t_proposal = _timed(lambda: fit_proposal(events, bounds=resonance_model(sim).bounds, flow=flow, training=proposal_tr))
    proposal = MultiChannel([flow_q, peak_channel(sim)], [1 - mem.defensive, mem.defensive])

    def build(seed: int):
        return resonance_likelihood(sim, model=model, proposal=proposal, samples=mem.learned_samples, sequence="random", draws=1,
                                    fiducial_samples=2**16, seed=seed, coverage=peak_channel(sim),
                                    coverage_events=mem.coverage_events)

    return build, {"model": model, "training_cpu_seconds": {"transfer_and_acceptance": t_detector, "proposal": t_proposal}}


def _summary_of(best: Tensor, cov: Tensor, ok: Tensor, truth: Tensor, cr: Tensor) -> dict[str, Any]:
    width = torch.sqrt(torch.diagonal(cov[ok], dim1=1, dim2=2))
    diff = best[ok] - truth
    n = int(ok.sum())
    return {name: {"width": float(width[:, i].mean()), "width_vs_cramer_rao": float(width[:, i].mean() / cr[i]),
                   "bias": float(diff[:, i].mean()), "bias_error": float(diff[:, i].std() / math.sqrt(max(n, 1))),
                   "pull_sd": float((diff[:, i] / width[:, i]).std()), "mean_best": float(best[ok][:, i].mean())}
            for i, name in enumerate(NAMES)} | {"converged": f"{n}/{len(ok)}"}


def _strict(value: Any) -> Any:
    """``value`` with non-finite floats as None (undefined widths at a bound), recursively: strict JSON."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


@register_pipeline("mem_resonance", section=("mem", MemSection), toys=("resonance",))
def run_mem_resonance(config: AnalysisConfig, *, out: Path, quick: bool = False, device: str = "auto", progress: bool = True) -> str:
    """Run the pipeline of the module docstring; returns a printable summary."""
    cfg = config.quick_version() if quick else config
    mem: MemSection = cfg.mem
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    sim = build_simulator(cfg)
    truth = truth_point(cfg, sim).to(torch.float64)
    n = cfg.observed.n_events
    data = sim.simulate(mem.toys * n, theta=truth.float(), generator=torch.Generator().manual_seed(cfg.observed.seed)).x.double()
    data = data.reshape(mem.toys, n, -1)
    cr = torch.sqrt(torch.diagonal(torch.linalg.inv(n * sim.fisher_information(truth.reshape(1, -1)).reshape(2, 2).double())))
    training: dict[str, Any] = {}
    build_ml, info = _ml_mem(cfg, sim, mem, log)
    training["ml_mem"] = info["training_cpu_seconds"]
    log(f"ALICES: training on {cfg.estimator.n_simulations} simulations")
    trained, t_alices = _timed(lambda: train_ratio(cfg, sim, device=device, progress=progress, log=log))
    training["alices"] = {"ratio": t_alices}
    alices = learned_log_ratio(trained, sim)
    ratios = {"exact": exact_log_ratio(sim), "mem": resonance_likelihood(sim, samples=mem.samples, seed=cfg.training.seed),
              "ml_mem": build_ml(cfg.training.seed), "alices": lambda x, t: alices(x.float(), t.float()).double()}
    results: dict[str, Any] = {}
    compare = torch.tensor(list(mem.compare_at), dtype=torch.float64)
    exact_first = None
    for method in MEM_METHODS:
        fn = ratios[method]
        with torch.no_grad():
            values, first = _timed(lambda: fn(data[0], compare.expand(n, 2)).detach().double())
        exact_first = values if method == "exact" else exact_first
        log(f"{method}: fitting {mem.toys} datasets of {n} events")
        (best, _, ok, cov), fit_seconds = _timed(lambda: fit_toys(fn, data, sim.space, return_covariance=True, block_events=n))
        results[method] = _summary_of(best, cov, ok, truth, cr) | {
            "cpu_seconds_per_event_first_evaluation": first / n, "cpu_seconds_per_event_fit": fit_seconds / (mem.toys * n),
            "rms_log_ratio_vs_exact": float(((values - exact_first) ** 2).mean().sqrt()), "best_per_toy": best.tolist()}
        log("  " + ", ".join(f"{k}: width {results[method][k]['width']:.4f}, bias {results[method][k]['bias']:+.4f}" for k in NAMES))
    coverage = ratios["ml_mem"].coverage_check
    noise = integration_noise(build_ml, Events.observed(data[0]), sim.space, seeds=tuple(range(mem.noise_seeds)))
    doc = {"analysis": cfg.name, "kind": cfg.kind, "quick": quick, "truth": dict(zip(NAMES, truth.tolist())), "events_per_dataset": n,
           "datasets": mem.toys, "cramer_rao": dict(zip(NAMES, cr.tolist())), "compare_at": list(mem.compare_at), "methods": results,
           "training_cpu_seconds": training, "ml_mem_coverage": None if coverage is None else coverage.to_dict(),
           "ml_mem_integration_noise": {"relative_spread": noise.relative_spread, "best": noise.best},
           "ml_mem_ess_fraction_median": float((ratios["ml_mem"].integral(data[0], truth).ess / mem.learned_samples).median())}
    doc = _strict(doc)
    write_results(out, doc, kind=cfg.kind, metadata={"analysis": cfg.name})
    plotted = _plots(out, sim, data[0], compare, ratios, info["model"], results, truth)
    lines = [f"{cfg.name}: (M, Gamma) from {mem.toys} datasets of {n} events at {doc['truth']}, Cramér–Rao {dict(zip(NAMES, cr.tolist()))}"]
    for method in MEM_METHODS:
        r = doc["methods"][method]
        lines.append(f"  {method:>7}: " + "; ".join(f"{k} width {_fmt(r[k]['width'])} ({_fmt(r[k]['width_vs_cramer_rao'], 3)} CR), bias "
                                                   f"{_fmt(r[k]['bias'], sign=True)} ± {_fmt(r[k]['bias_error'])}" for k in NAMES)
                     + f"; {r['cpu_seconds_per_event_first_evaluation'] * 1e3:.3g} ms/event")
    lines.append(f"  ML-MEM coverage check passed: {None if coverage is None else coverage.passed}; integration noise "
                 + ", ".join(f"{k} {v:.3f}σ" for k, v in noise.relative_spread.items()))
    lines.append(f"wrote {out / 'results.json'}, {out / 'results.h5'}" + (", plots" if plotted else " (no matplotlib: no plots)"))
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    return "n/a" if value is None else f"{value:{'+' if sign else ''}.{digits}f}"


def _plots(out: Path, sim, x: Tensor, compare: Tensor, ratios: dict, model, results: dict, truth: Tensor) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from scipy.stats import norm

    x = x[:2000]
    with torch.no_grad():
        values = {m: ratios[m](x, compare.expand(x.shape[0], 2)).detach().double() for m in MEM_METHODS}
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for method in MEM_METHODS[1:]:
        ax.plot(values["exact"].numpy(), values[method].numpy(), ".", ms=2, label=method)
    lim = (float(values["exact"].min()), float(values["exact"].max()))
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set(xlabel=r"exact $\log r(x|\theta_1)$", ylabel="per-event log-ratio", title=f"θ1 = {compare.tolist()}")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "log_ratio.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (ax, name) in enumerate(zip(axes, NAMES)):
        for method in MEM_METHODS:
            best = torch.tensor(results[method]["best_per_toy"])[:, i]
            ax.hist(best.numpy(), bins=15, histtype="step", label=method)
        ax.axvline(float(truth[i]), color="k", ls="--")
        ax.set_xlabel(f"fitted {name}")
    axes[0].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "fits.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    grid = torch.linspace(85.0, 115.0, 301, dtype=torch.float64).reshape(-1, 1)
    for m in (86.0, 100.0, 112.0):
        y = torch.full_like(grid, m)
        learned = model.transfer.log_prob(grid, y, torch.zeros(len(grid), 0)).exp() * model.process.efficiency(y)
        axes[0].plot(grid[:, 0].numpy(), learned.numpy(), label=f"learned, m = {m:g}")
        axes[0].plot(grid[:, 0].numpy(), norm.pdf(grid[:, 0].numpy(), m, sim.sigma_det), "k:", lw=0.8)
    axes[0].set(xlabel="x", ylabel=r"$\epsilon(m)\,W_\mathrm{acc}(x|m)$ (dotted: exact)")
    axes[0].legend(frameon=False, fontsize=8)
    m = torch.linspace(70.0, 130.0, 241, dtype=torch.float64).reshape(-1, 1)
    lo, hi = sim.window
    axes[1].plot(m[:, 0].numpy(), model.process.efficiency(m).numpy(), label="learned")
    axes[1].plot(m[:, 0].numpy(), norm.cdf((hi - m[:, 0].numpy()) / sim.sigma_det) - norm.cdf((lo - m[:, 0].numpy()) / sim.sigma_det), "k:",
                 label="exact")
    axes[1].set(xlabel="parton mass m", ylabel=r"acceptance $\epsilon(m)$")
    axes[1].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=110)
    plt.close(fig)
    return True
