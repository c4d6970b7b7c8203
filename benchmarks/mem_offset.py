r"""Toy 2: are the learned samplers' per-event integrals biased, or only their pulls? (issue 13, "the toy-2 offset")

Trains the learned samplers as :func:`benchmarks.mem.train_samplers` does (same seeds, so the
same networks as ``benchmarks/mem.py`` at the same sizes), takes the benchmark's toy-2 events
and compares, per event, against the exact integral from deterministic quadrature
(:func:`sbilab.mem.toys.quadrature_integral`):

* the benchmark's own statistic: the learned run (seed 5) minus the analytic run (2¹⁴ samples,
  seed 0) in combined stated errors, and :func:`sbilab.mem.check_agreement` of the same runs;
* the analytic run against the exact values;
* ``--seeds`` independent runs of each learned sampler (2048 samples per event): the mean over
  events and seeds of Î/I − 1 with its standard error from the spread over seeds (a bias), the mean
  pull against the exact value with the stated error and with the seed-spread error, and the
  median over events of the correlation between Î and its stated error over seeds.

``--fits N``: also fits (M, Γ) on the benchmark's 200 events with the analytic proposal
(2048 and 16384 samples) and the learned proposal (2048), integration seeds 0..N-1.

Usage: ``python benchmarks/mem_offset.py [--events 100] [--seeds 20] [--sim-events 40000] [--epochs 15]
[--variance-events 4000] [--variance-epochs 6] [--fits 0]`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mem import train_samplers  # noqa: E402

from sbilab.events import Events  # noqa: E402
from sbilab.mem import FiducialCrossSection, Integral, MatrixElementLikelihood, check_agreement, integrate  # noqa: E402
from sbilab.mem.toys import TwoBody, two_body_model, two_body_proposal, two_body_sampler  # noqa: E402
from sbilab.mem.toys.two_body import quadrature_integral  # noqa: E402
from sbilab.stats import UnbinnedLikelihood  # noqa: E402


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def _agreement(own: Integral, ref: Integral) -> dict:
    c = check_agreement(own, ref)
    return {"mean_relative_difference": c.mean_difference, "standard_error": c.standard_error, "t": c.t, "mean_pull": c.mean_pull,
            "sd_pull": c.sd_pull}


def seeds_vs_exact(lv: torch.Tensor, le: torch.Tensor, exact: torch.Tensor) -> dict:
    """Statistics of ``K`` runs ``lv, le (K, N)`` against the exact ``log I (N,)``."""
    k = lv.shape[0]
    r = (torch.exp(lv - exact) - 1).numpy()
    pull = ((lv - exact) / le).numpy()
    spread = lv.std(0, keepdim=True)
    corr = [np.corrcoef(r[:, i], le[:, i].numpy())[0, 1] for i in range(r.shape[1])]
    return {"mean_relative_difference": float(r.mean()), "standard_error": float(r.mean(1).std(ddof=1) / math.sqrt(k)),
            "mean_pull_stated_error": float(pull.mean()), "sd_pull_stated_error": float(pull.std(ddof=1)),
            "mean_pull_seed_spread_error": float(((lv - exact) / spread).mean()),
            "median_corr_estimate_vs_stated_error": float(np.median(corr)),
            "stated_over_actual_error_median": float(np.median((le.mean(0) / lv.std(0)).numpy()))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--sim-events", type=int, default=40000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--variance-events", type=int, default=4000)
    p.add_argument("--variance-epochs", type=int, default=6)
    p.add_argument("--fits", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    sim, theta = TwoBody(), torch.tensor([100.0, 5.0])
    model = two_body_model(sim.process)
    sizes = {"sim_events": args.sim_events, "epochs": args.epochs, "variance_events": args.variance_events,
             "variance_epochs": args.variance_epochs}
    samplers, _ = train_samplers("toy2", sim, model, sizes, 0)
    x = sim.simulate(args.events, theta=theta, generator=torch.Generator().manual_seed(0)).x.double()  # the benchmark's events
    log("quadrature of", args.events, "events")
    exact = torch.tensor([quadrature_integral(tuple(row), (100.0, 5.0)) for row in x.tolist()], dtype=torch.float64).log()
    zero = torch.zeros_like(exact)
    exact_int = Integral(exact, zero, zero, 1)
    analytic = integrate(model, x, theta, two_body_proposal(sim.process), samples=2**14, seed=0)
    out: dict = {"sizes": sizes, "events": args.events, "seeds": args.seeds, "analytic_run_vs_exact": _agreement(analytic, exact_int)}
    for name, sampler in samplers.items():
        log(name, ":", args.seeds, "runs")
        runs = [integrate(model, x, theta, sampler, samples=2048, seed=5 + k, chunk_calls=2**17) for k in range(args.seeds)]
        lv = torch.stack([r.log_value for r in runs]).double()
        le = torch.stack([r.rel_error for r in runs]).double()
        vs_analytic = [check_agreement(r, analytic) for r in runs]
        out[name] = {"benchmark_run_vs_analytic": _agreement(runs[0], analytic), "seeds_vs_exact": seeds_vs_exact(lv, le, exact),
                     "runs_vs_analytic_t": [c.t for c in vs_analytic], "runs_vs_analytic_mean_pull": [c.mean_pull for c in vs_analytic]}
    if args.fits:
        x200 = sim.simulate(200, theta=sim.space.reference.float(), generator=torch.Generator().manual_seed(20)).x.double()
        fits: dict = {}
        plan = (("analytic_2048", two_body_proposal(sim.process), 2048), ("analytic_16384", two_body_proposal(sim.process), 16384),
                ("learned_proposal_2048", samplers["learned_proposal"], 2048))
        for label, proposal, samples in plan:
            for s in range(args.fits):
                log("fit", label, "seed", s)
                fid = FiducialCrossSection(model, two_body_sampler(sim.process, sim.space), samples=2**16, draws=4, seed=s)
                like = MatrixElementLikelihood(model, proposal, sim.space, samples=samples, sequence="random", seed=s, fiducial=fid,
                                               chunk_calls=2**17)
                f = UnbinnedLikelihood(like, Events.observed(x200), sim.space).fit()
                fits.setdefault(label, []).append({"best": f.best, "errors": f.errors, "valid": f.valid})
        out["fits_200_events"] = fits
    out["wall_seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
