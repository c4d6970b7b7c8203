r"""The learned unfoldings of ``benchmarks/unfolding.py``: OmniFold and generative unfolding on the toys,
the many-observable comparison, the batched-replica speed-up and OmniFold's time per iteration.

Every figure is measured in the run that prints it; imported by ``benchmarks/unfolding.py``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import torch

from sbilab import Events
from sbilab.nets.flows import FlowSpec
from sbilab.unfolding import (
    ClassifierSettings,
    GenerativeSettings,
    MultiObservableToy,
    OmniFoldSettings,
    Replicas,
    Response,
    compare_to_truth,
    distances_to_truth,
    full_toy,
    generative_unfold,
    ideal_iterations,
    ideal_stat_error,
    iterative_unfold,
    minimal_toy,
    omnifold,
    unfold_each_observable,
    weighted_moments,
)
from sbilab.unfolding.binning import bin_index, bin_sums
from sbilab.unfolding.steps import DEFAULT_TRAINING

REPORTED = (1, 2, 4)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def classifier(quick: bool) -> ClassifierSettings:
    """The benchmark's classifiers: the library defaults (64x64, 20 epochs, batches of 1024); quick: 5 epochs."""
    return ClassifierSettings() if not quick else ClassifierSettings(training=dataclasses.replace(DEFAULT_TRAINING, epochs=5))


def _moments_dict(values: torch.Tensor) -> dict[str, list[float]]:
    return {str(k): [float(v) for v in values[k - 1]] for k in REPORTED}


def _binned_reference(toy, sim, data, background) -> torch.Tensor:
    """Binned IBU (240 bins in [-6, 6], Sheppard-corrected) on the same samples: (4, 2) moments."""
    edges = torch.linspace(-6, 6, 241, dtype=torch.float64)
    resp = Response.from_events(sim.gen.x, sim.reco.x, gen_edges=edges, reco_edges=edges, pass_gen=sim.pass_gen,
                                pass_reco=sim.pass_reco, weights=sim.weights_or_ones().double())
    counts = bin_sums(bin_index(data.reco[:, 0], edges), torch.ones(len(data.reco), dtype=torch.float64), 240)
    bkg = None if background is None else bin_sums(bin_index(background.x[:, 0], edges), background.weights.double(), 240)
    u = iterative_unfold(counts, resp, iterations=4, background=bkg, covariance=False, response_covariance=False).unfolded
    c = 0.5 * (edges[1:] + edges[:-1])
    mean = (u * c).sum(-1) / u.sum(-1)
    var = (u * (c - mean[:, None]) ** 2).sum(-1) / u.sum(-1) - 0.05**2 / 12
    return torch.stack([mean, var.sqrt()], -1)


def toys(n: int, quick: bool, methods: tuple[str, ...]) -> dict[str, Any]:
    """OmniFold (and the generative method) on both Gaussian toys, 4 iterations, n simulated and n data rows."""
    out: dict[str, Any] = {}
    for name, toy in (("minimal", minimal_toy()), ("full", full_toy())):
        g = torch.Generator().manual_seed(7)
        sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
        background = toy.background(n, data_rows=n, generator=g) if toy.background_fraction > 0 else None
        ideal = ideal_iterations(toy, iterations=4).moments[1:]
        sigma = ideal_stat_error(toy, n, iterations=4, points=201) * 2**0.5  # data and simulation statistics
        reference = _binned_reference(toy, sim, data, background)
        detail: dict[str, Any] = {"events": n, "stat_error_data_and_mc": _moments_dict(sigma),
                                  "binned_ibu_same_samples": _moments_dict(reference)}
        if "omnifold" in methods:
            t = time.perf_counter()
            res = omnifold(sim, data.events, background=background,
                           settings=OmniFoldSettings(iterations=4, classifier=classifier(quick)), progress=False)
            seconds = time.perf_counter() - t
            got = torch.stack([weighted_moments(sim.gen.x[:, 0], res.nominal_weights(k)) for k in range(1, 5)])
            out[f"omnifold_{name}"] = _moments_dict(got)
            detail["omnifold"] = {"pull_vs_ideal": _moments_dict((got - ideal) / sigma),
                                  "minus_binned_same_samples": _moments_dict(got - reference), "seconds": seconds,
                                  "fake_scale": res.fake_scale[:, 0].tolist(),
                                  "diagnostics": [d.to_dict() for d in res.diagnostics]}
            log(f"omnifold {name}: {out[f'omnifold_{name}']} in {seconds:.0f} s")
        if "generative" in methods:
            t = time.perf_counter()
            settings = GenerativeSettings(iterations=4, draws=5, flow=FlowSpec("nsf", transforms=3, hidden=(64, 64)),
                                          density_training=dataclasses.replace(classifier(quick).training, learning_rate=1e-3),
                                          classifier=classifier(quick))
            res = generative_unfold(sim, data.events, background=background, settings=settings, progress=False)
            seconds = time.perf_counter() - t
            got = torch.stack([weighted_moments(res.unfolded(k)[0][:, 0], res.unfolded(k)[1]) for k in range(1, 5)])
            out[f"generative_{name}"] = _moments_dict(got)
            detail["generative"] = {"pull_vs_ideal": _moments_dict((got - ideal) / sigma),
                                    "minus_binned_same_samples": _moments_dict(got - reference), "seconds": seconds}
            log(f"generative {name}: {out[f'generative_{name}']} in {seconds:.0f} s")
        out[f"toy_{name}_details"] = detail
    return out


def many_observable(n: int, quick: bool) -> dict[str, Any]:
    """Delta x 1e3 and W1 per observable against the data's truth: OmniFold, generative, bin-by-bin IBU, the prior."""
    toy = MultiObservableToy()
    g = torch.Generator().manual_seed(2)
    sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
    ibu = unfold_each_observable(sim, data.reco, bins=30, iterations=4)
    edges = [u.edges for u in ibu]
    out: dict[str, Any] = {"observables": list(toy.observables), "events": n, "iterations": 4,
                           "ibu": compare_to_truth(ibu, sim, data.truth),
                           "prior": distances_to_truth(sim.gen.x, torch.ones(n, dtype=torch.float64), data.truth, edges)}
    t = time.perf_counter()
    res = omnifold(sim, data.events, settings=OmniFoldSettings(iterations=4, classifier=classifier(quick)), progress=False)
    out["omnifold"] = {**distances_to_truth(sim.gen.x, res.nominal_weights(), data.truth, edges), "seconds": time.perf_counter() - t}
    log(f"many-observable omnifold: {out['omnifold']}")
    t = time.perf_counter()
    settings = GenerativeSettings(iterations=4, draws=5, flow=FlowSpec("nsf_coupling", transforms=4, hidden=(64, 64)),
                                  density_training=dataclasses.replace(classifier(quick).training, learning_rate=1e-3),
                                  classifier=classifier(quick))
    gen = generative_unfold(sim, data.events, settings=settings, progress=False)
    z, w = gen.unfolded()
    out["generative"] = {**distances_to_truth(z, w, data.truth, edges), "seconds": time.perf_counter() - t,
                         "iteration_1": distances_to_truth(*gen.unfolded(1), data.truth, edges)}
    log(f"many-observable generative: {out['generative']}")
    return out


def replica_speedup(n: int, replicas: int, epochs: int, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """One OmniFold iteration with ``replicas`` members (nominal + data bootstraps): one batched ensemble vs
    one training per replica with the same Poisson weights, at each batch size (64x64 classifiers)."""
    toy = minimal_toy()
    g = torch.Generator().manual_seed(9)
    sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
    rep = Replicas(ensemble=1, bootstrap_data=replicas - 1, seed=3)  # K = replicas members
    weights = rep.data_weights(torch.ones(len(data.reco), dtype=torch.float64))  # the same Poisson weights, (M, K)
    out: dict[str, Any] = {"replicas": replicas, "events": n, "iterations": 1, "epochs": epochs, "hidden": [64, 64], "batch": {}}
    for batch in batch_sizes:
        settings = OmniFoldSettings(iterations=1, classifier=ClassifierSettings(
            training=dataclasses.replace(DEFAULT_TRAINING, epochs=epochs, batch_size=batch)))
        wall, cpu = time.perf_counter(), time.process_time()
        batched = omnifold(sim, data.events, settings=settings, replicas=rep, progress=False)
        t_batched, c_batched = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        sequential = []
        for k in range(replicas):
            res = omnifold(sim, Events.observed(data.reco, weights=weights[:, k]), settings=settings, progress=False)
            sequential.append(weighted_moments(sim.gen.x[:, 0], res.nominal_weights()))
        t_sequential, c_sequential = time.perf_counter() - wall, time.process_time() - cpu
        seq, bat = torch.stack(sequential), weighted_moments(sim.gen.x[:, 0], batched.weights())
        row = {"batched_s": t_batched, "sequential_s": t_sequential, "speedup": t_sequential / t_batched,
               "batched_cpu_s": c_batched, "sequential_cpu_s": c_sequential, "speedup_cpu": c_sequential / c_batched,
               "spread_batched": bat.std(0).tolist(), "spread_sequential": seq.std(0).tolist(),
               "max_moment_difference": float((bat - seq).abs().max())}
        out["batch"][str(batch)] = row
        log(f"replica speed-up, batch {batch}: {row}")
    out["speedup"] = out["batch"][str(DEFAULT_TRAINING.batch_size)]["speedup"] if str(DEFAULT_TRAINING.batch_size) in out["batch"] \
        else next(iter(out["batch"].values()))["speedup"]
    return out


def omnifold_time(sizes: list[int], epochs: int, repeat: int) -> dict[str, Any]:
    """Seconds per OmniFold iteration (both steps, minimal toy) at each size, ``epochs`` per classifier."""
    toy = minimal_toy()
    settings = OmniFoldSettings(iterations=1, classifier=ClassifierSettings(training=dataclasses.replace(DEFAULT_TRAINING, epochs=epochs)))
    out: dict[str, Any] = {"epochs": epochs, "batch_size": DEFAULT_TRAINING.batch_size, "hidden": [64, 64], "sizes": {}}
    for n in sizes:
        g = torch.Generator().manual_seed(3)  # the samples of ibu_time
        sim, data = toy.simulation(n, generator=g), toy.data(n, generator=g)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            omnifold(sim, data.events, settings=settings, progress=False)
            best = min(best, time.perf_counter() - t)
        out["sizes"][str(n)] = {"s_per_iteration": best, "s_per_epoch": best / epochs}
        log(f"omnifold time n={n}: {out['sizes'][str(n)]}")
    return out
