r"""Unfolding: IBU against pyunfold, the ideal iterations, OmniFold and generative unfolding, many observables.

In one run (1 torch thread by default; ``--only`` picks sections ``ibu,toys,many_observable,replicas,timing``):

* ``ibu_docstring``: pyunfold's documented example (data [100, 150] ± [10, 12.2], response
  [[0.9, 0.1], [0.1, 0.9]], efficiencies 1 ± 0.01, uniform prior, 4 iterations) unfolded by
  :func:`sbilab.unfolding.iterative_unfold`; ``ibu_docstring_errors`` holds the propagated errors
  (exact first-order propagation), pyunfold's own ``stat_err`` when it is installed, the Monte
  Carlo spread of 10⁵ fluctuated data sets, and the ``k → ∞`` limit against R⁻¹d.
* ``ideal_minimal`` / ``ideal_full``: (mean, std) of the ideal iterations k = 1, 2, 4 of the two
  Gaussian toys (:mod:`sbilab.unfolding.toys`) by quadrature (:func:`ideal_iterations`).
* ``stat_error_minimal`` (``stat_error_full``): [σ_mean, σ_std] after 4 iterations for 10⁵ data
  events (data statistics, exact response) by linear propagation on the quadrature grid
  (:func:`ideal_stat_error`); ``stat_error_minimal_mc``: the spread of the same moments over
  replicas of 10⁵ toy data events, each unfolded by binned IBU (200 bins in [−5, 5], response
  from 10⁶ simulated events), all replicas in one batched call.
* ``omnifold_minimal`` / ``omnifold_full`` (and ``generative_minimal`` / ``generative_full``):
  (mean, std) after k = 1, 2, 4 iterations of :func:`sbilab.unfolding.omnifold` (and of
  :func:`sbilab.unfolding.generative_unfold`) on 10⁵ simulated and 10⁵ data rows;
  ``toy_*_details``: pulls against the ideal iterations in units of the data + simulation
  statistical error, the binned IBU of the same samples (240 bins) as the finite-sample
  reference, times, diagnostics.
* ``many_observable``: Δ×10³ and W1 per observable of :class:`MultiObservableToy` (6 correlated
  observables, nonlinear detector, data at another generator setting) against the data's truth,
  for OmniFold (``"omnifold"``, 4 iterations), generative unfolding (``"generative"``, 4 IcINN
  iterations, 5 draws per event), bin-by-bin IBU (``"ibu"``, 30 bins, 4 iterations) and the
  simulation itself (``"prior"``), all on IBU's bins and ranges.
* ``replica_speedup``: one OmniFold iteration (10⁴ events, 5 epochs per classifier) with 25 members
  (nominal + 24 data bootstraps) as one batched ensemble vs 25 separate trainings with the same
  Poisson weights, wall and CPU seconds, at the default batch size (1024; ``speedup``) and at 256.
* ``ibu_time``: seconds from events to the unfolded histogram with its data and response
  covariances (50 bins, 4 iterations) at 10⁵ and 10⁶ events, sbilab (torch) vs pyunfold (numpy
  histogram2d + ``iterative_unfold``); ``ibu_replicas_time``: 100 Poisson replicas of the data
  unfolded in one batched sbilab call (without per-replica covariances: the replicas' spread is the
  uncertainty; and with both covariances per replica) vs 100 pyunfold calls (which always compute
  them); ``omnifold_time``: seconds per OmniFold iteration (two classifier trainings of 5 epochs
  and the reweighting) at 10⁵ and 10⁶ events.

Usage: ``python benchmarks/unfolding.py [--quick] [--json] [--threads 1] [--only toys,replicas]``.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch

from sbilab.unfolding import (
    Response,
    full_toy,
    ideal_iterations,
    ideal_stat_error,
    iterative_unfold,
    minimal_toy,
)
from sbilab.unfolding.binning import bin_index, bin_sums

import unfolding_methods as methods  # noqa: E402 - the learned unfoldings, beside this file

try:
    import pyunfold
except ImportError:  # optional peer
    pyunfold = None


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def docstring_example(replicas: int) -> dict[str, Any]:
    d = torch.tensor([100.0, 150.0], dtype=torch.float64)
    sd = torch.tensor([10.0, 12.2], dtype=torch.float64)
    matrix = [[0.9, 0.1], [0.1, 0.9]]
    response = Response.from_matrix(matrix, mc_counts=[1e4, 1e4])
    out = iterative_unfold(d, response, iterations=4, data_covariance=sd**2)
    scale = 0.01  # linear regime of the fluctuations, scaled back
    g = torch.Generator().manual_seed(0)
    mc = iterative_unfold(d + scale * sd * torch.randn(replicas, 2, generator=g, dtype=torch.float64), response, iterations=4,
                          covariance=False).final.std(0) / scale
    limit = iterative_unfold(d, response, iterations=500, covariance=False).final
    errors: dict[str, Any] = {"stat_error": out.stat_error.tolist(), "response_error": out.response_error.tolist(),
                              "stat_error_monte_carlo": mc.tolist(), "monte_carlo_replicas": replicas,
                              "infinite_iterations": limit.tolist(),
                              "inverse": torch.linalg.solve(torch.tensor(matrix, dtype=torch.float64), d).tolist()}
    if pyunfold is not None:
        ref = pyunfold.iterative_unfold(data=d.numpy(), data_err=sd.numpy(), response=np.array(matrix), response_err=np.full((2, 2), 0.01),
                                        efficiencies=np.ones(2), efficiencies_err=np.full(2, 0.01))
        errors["pyunfold"] = {"unfolded": ref["unfolded"].tolist(), "stat_err": ref["stat_err"].tolist(),
                              "sys_err": ref["sys_err"].tolist(), "num_iterations": int(ref["num_iterations"])}
    return {"ibu_docstring": out.final.tolist(), "ibu_docstring_errors": errors}


def stat_error_mc(replicas: int, n: int) -> list[float]:
    """Spread of (mean, std) after 4 iterations over toy data replicas of ``n`` events, binned IBU."""
    toy = minimal_toy()
    g = torch.Generator().manual_seed(1)
    sim = toy.simulation(1_000_000, generator=g)
    bins = 200
    edges = torch.linspace(-5, 5, bins + 1, dtype=torch.float64)
    response = Response.from_events(sim.gen.x, sim.reco.x, gen_edges=edges, reco_edges=edges)
    counts = []
    for _ in range(replicas):
        data = toy.data(n, generator=g)
        counts.append(bin_sums(bin_index(data.reco[:, 0], edges), torch.ones(len(data.reco), dtype=torch.float64), bins))
    u = iterative_unfold(torch.stack(counts), response, iterations=4, covariance=False, response_covariance=False).final
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = (u * c).sum(-1) / u.sum(-1)
    std = ((u * (c - mean[:, None]) ** 2).sum(-1) / u.sum(-1)).sqrt()
    return [float(mean.std()), float(std.std())]


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timing(sizes: list[int], repeat: int, replicas: int) -> dict[str, Any]:
    toy = minimal_toy()
    bins = 50
    edges = torch.linspace(-4, 4, bins + 1, dtype=torch.float64)
    out: dict[str, Any] = {"bins": bins, "iterations": 4, "sizes": {}}
    for n in sizes:
        g = torch.Generator().manual_seed(3)
        sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
        gen, reco, x = sim.gen.x[:, 0], sim.reco.x[:, 0], data.reco[:, 0]

        def ours() -> torch.Tensor:
            resp = Response.from_events(gen, reco, gen_edges=edges, reco_edges=edges)
            counts = bin_sums(bin_index(x, edges), torch.ones(len(x), dtype=torch.float64), bins)
            return iterative_unfold(counts, resp, iterations=4).final

        row: dict[str, Any] = {"sbilab_s": _timed(ours, repeat)}
        if pyunfold is not None:
            gn, rn, xn, en = gen.numpy(), reco.numpy(), x.numpy(), edges.numpy()

            def theirs() -> np.ndarray:
                joint, _, _ = np.histogram2d(rn, gn, [en, en])
                truth, _ = np.histogram(gn, en)
                response = joint / np.maximum(truth, 1)
                eff = response.sum(0)
                counts, _ = np.histogram(xn, en)
                return pyunfold.iterative_unfold(data=counts, data_err=np.sqrt(counts), response=response,
                                                 response_err=np.sqrt(joint) / np.maximum(truth, 1), efficiencies=eff,
                                                 efficiencies_err=np.maximum(eff, 1e-12) / np.sqrt(np.maximum(truth, 1)),
                                                 prior=truth / truth.sum(), ts_stopping=1e-300, max_iter=4)["unfolded"]

            row["pyunfold_s"] = _timed(theirs, repeat)
            row["speedup_vs_pyunfold"] = row["pyunfold_s"] / row["sbilab_s"]
            row["max_abs_difference"] = float(np.abs(ours().numpy() - theirs()).max())
        out["sizes"][str(n)] = row
        log(f"ibu_time n={n}: {row}")
    # replicas of the data, one batched call vs a loop of pyunfold calls
    g = torch.Generator().manual_seed(4)
    sim, data = toy.simulation(100_000, generator=g), toy.data(100_000, generator=g)
    resp = Response.from_events(sim.gen.x, sim.reco.x, gen_edges=edges, reco_edges=edges)
    counts = bin_sums(bin_index(data.reco[:, 0], edges), torch.ones(len(data.reco), dtype=torch.float64), bins)
    reps = torch.poisson(counts.expand(replicas, -1), generator=g)
    rep: dict[str, Any] = {"replicas": replicas,
                           "sbilab_batched_s": _timed(lambda: iterative_unfold(reps, resp, iterations=4, covariance=False,
                                                                               response_covariance=False), repeat),
                           "sbilab_batched_with_covariances_s": _timed(lambda: iterative_unfold(reps, resp, iterations=4), repeat)}
    if pyunfold is not None:
        r = resp.matrix.numpy()
        eff = r.sum(0)
        truth = resp.truth.numpy()

        def loop() -> None:
            for row in reps.numpy():
                pyunfold.iterative_unfold(data=row, data_err=np.sqrt(row), response=r, response_err=0.01 * r, efficiencies=eff,
                                          efficiencies_err=np.maximum(eff, 1e-12) / np.sqrt(np.maximum(truth, 1)), prior=truth / truth.sum(),
                                          ts_stopping=1e-300, max_iter=4)

        rep["pyunfold_loop_s"] = _timed(loop, 1)
        rep["speedup_vs_pyunfold"] = rep["pyunfold_loop_s"] / rep["sbilab_batched_s"]
        rep["speedup_vs_pyunfold_with_covariances"] = rep["pyunfold_loop_s"] / rep["sbilab_batched_with_covariances_s"]
    log(f"ibu_replicas_time: {rep}")
    return {"ibu_time": out, "ibu_replicas_time": rep}


SECTIONS = ("ibu", "toys", "many_observable", "replicas", "timing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples, fewer epochs and replicas (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        parser.error(f"unknown sections {sorted(only - set(SECTIONS))}; choose from {SECTIONS}")
    torch.set_num_threads(args.threads)
    quick = args.quick
    t0 = time.perf_counter()
    result: dict[str, Any] = {"quick": quick, "threads": args.threads, "pyunfold": getattr(pyunfold, "__version__", None)}
    if "ibu" in only:
        result.update(docstring_example(20_000 if quick else 1_000_000))
        log("docstring example done")
    result["ideal_minimal"] = ideal_iterations(minimal_toy(), iterations=4).moments_dict((1, 2, 4))
    result["ideal_full"] = ideal_iterations(full_toy(), iterations=4).moments_dict((1, 2, 4))
    se = ideal_stat_error(minimal_toy(), 100_000, iterations=4)
    result["stat_error_minimal"] = se[-1].tolist()
    result["stat_error_minimal_by_iteration"] = {str(k): se[k - 1].tolist() for k in (1, 2, 4)}
    result["stat_error_full"] = ideal_stat_error(full_toy(), 100_000, iterations=4)[-1].tolist()
    if "ibu" in only:
        result["stat_error_minimal_mc"] = {"replicas": 20 if quick else 200, "events": 100_000,
                                           "error": stat_error_mc(20 if quick else 200, 100_000)}
        log("ideal iterations and stat errors done")
    if "toys" in only:
        result.update(methods.toys(4_000 if quick else 100_000, quick, ("omnifold",) if quick else ("omnifold", "generative")))
    if "many_observable" in only:
        result["many_observable"] = methods.many_observable(4_000 if quick else 50_000, quick)
        log("many-observable toy done")
    if "replicas" in only:
        result["replica_speedup"] = methods.replica_speedup(2_000 if quick else 10_000, 5 if quick else 25, 1 if quick else 5,
                                                            (1024,) if quick else (1024, 256))
    if "timing" in only:
        result.update(timing([100_000] if quick else [100_000, 1_000_000], 1 if quick else 3, 5 if quick else 100))
        result["omnifold_time"] = methods.omnifold_time([10_000] if quick else [100_000, 1_000_000], 1 if quick else 5, 1)
    result["wall_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(result))
    else:
        log(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
