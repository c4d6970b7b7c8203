r"""Matrix-element method: integrand calls to 1 % per-event precision, time per event, widths vs Cramér–Rao.

In one run:

* **calls to 1 %** (``calls_ratio_vs_plain``): for the same events, the integrand calls each
  integrator needs for a 1 % relative error of the per-event integral — plain Monte Carlo over
  the process's box, the VEGAS-like adaptive grid (per-event grids adapted from uniform,
  adaptation calls included), the physics-based analytic proposal (multi-channel,
  Breit–Wigner-mapped, transfer-function inverted), the ``learned_proposal`` (a conditional flow
  q(z|x) trained once by maximum likelihood on simulated (x, z), mixed 9:1 with the process at
  the reference as defensive component) and the ``flow`` sampler trained on the integrand's
  variance (toy 2: the learned proposal refined by ``fit_sampler``, same defensive mixture; W:
  one flow per physics channel in the channel's noise space, MadNIS-style, ``fit_channel_flows``;
  see :func:`train_samplers`). Calls = adaptation + S (δ_S / 0.01)² from a run of S i.i.d.
  samples (Monte Carlo scaling); the learned samplers' one-off training is reported apart
  (``training``), as it is amortised over all events. On the 6-D W → ℓν case plain MC and the
  uniform-start grid see essentially no sample in the peak (1e-10 of the box), so their calls
  come from their exact variance, :math:`(\int g^2/p \,/ I^2 - 1)/0.01^2`, estimated with the
  analytic proposal's samples (:func:`sbilab.mem.variance_calls`); on toy 2 that formula is
  checked against the direct plain-MC run (``plain_formula_vs_direct``). Ratios are the median
  over events of plain / method. ``ess_fraction``: effective sample size per event over the
  samples (10 %, 50 %, 90 % quantiles over events); ``learned_vs_analytic`` (unbiasedness,
  :func:`sbilab.mem.check_agreement`): the mean over events of learned/analytic − 1, its standard
  error from the spread over events and their ratio ``t`` (``passed``: |t| ≤ 3); next to it the
  mean and sd of the per-event pulls (difference in combined stated errors), which heavy-tailed
  weights bias negative for an unbiased estimator (estimate and stated error correlate), so
  they are no test of bias (benchmarks/README.md, "the toy-2 offset"); ``toy2_vs_exact``: the
  same check of the analytic and learned runs against the exact integrals (quadrature).
* **seconds per event** (``seconds_per_event``): CPU wall time per event to reach 1 % with each
  method (seconds per integrand call, measured, times its calls), and of the toy-1 likelihood
  at its fit setting (1024 randomised-QMC samples, ~1e-4), one torch thread.
* **toy 1 widths** (``toy1_width_vs_cr``): mean HESSE-like width of MEM fits of ``--toys``
  datasets of 1000 events (batched Newton fits, :func:`sbilab.stats.fit_toys`) over the
  Cramér–Rao bounds σ(M) = 0.1434, σ(Γ) = 0.3238, next to the exact likelihood's on the same
  datasets; the MEM's expected widths from its Fisher information (Gauss–Legendre over x); and
  the integration noise (spread of refits with independent seeds over the statistical error).
* **fits on toy 2 and W → ℓν** (full run only, ``fit_integration_noise``): (M, Γ) (toy 2) and
  M at Γ = 2.1 (W) from 200 events at 2048 samples per event, refitted with three integration
  seeds, with the analytic proposal and with the best learned sampler of each case.

Usage: ``python benchmarks/mem.py [--quick] [--json] [--events N] [--toys T] [--seed S]
[--sim-events N] [--epochs E] [--variance-events N] [--variance-epochs E] [--no-refits]`` (the
four size the learned samplers' training; ``--no-refits`` skips the 200-event fits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

import numpy as np
import torch

from sbilab.events import Events
from sbilab.mem import (PROPOSAL_TRAINING, SAMPLER_TRAINING, BoxProposal, FiducialCrossSection, Integral, MatrixElementLikelihood, MultiChannel,
                        adapt_vegas, calls_for_precision, check_agreement, fit_proposal, fit_sampler, integrate, integration_noise,
                        variance_calls)
from sbilab.mem.remapped import fit_channel_flows
from sbilab.mem.toys import (TwoBody, WAnchor, WGenerator, WToLeptonNeutrino, resonance_likelihood, two_body_model, two_body_proposal,
                             two_body_sampler, w_proposal)
from sbilab.mem.toys.two_body import TwoBodyPrior, quadrature_integral
from sbilab.nets.flows import FlowSpec
from sbilab.simulators.toys import Resonance
from sbilab.stats import fit_toys

CR = {"M": 0.1434, "Gamma": 0.3238}


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def _median(t: torch.Tensor) -> float:
    return float(torch.as_tensor(t, dtype=torch.float64).median())


# ---------------------------------------------------------------------------- learned samplers
LEARNED = ("learned_proposal", "flow")


def train_samplers(case: str, sim, model, sizes: dict, seed: int) -> tuple[dict, dict]:
    """The learned samplers of a case, trained once (no per-event training), and what training cost.

    ``learned_proposal``: a conditional flow q(z|x) fitted by maximum likelihood to simulated
    (x, z) at the reference (toy 2: on the box; W: in the frame of :class:`WAnchor`), mixed 9:1
    with the process at the reference (defensive). ``flow``: trained on the integrand's variance
    (toy 2: the learned proposal refined by :func:`fit_sampler`, defensive mixture again; W: one
    flow per physics channel in its noise space, :func:`fit_channel_flows`, MadNIS).
    ``sizes``: ``sim_events``, ``epochs`` (maximum likelihood) and ``variance_events``,
    ``variance_epochs`` (variance training).
    """
    ref = sim.space.reference
    n_sim, epochs = sizes["sim_events"], sizes["epochs"]
    n_var, var_epochs = sizes["variance_events"], sizes["variance_epochs"]
    info: dict = {}
    t0 = time.perf_counter()
    events = sim.simulate(n_sim, theta=ref.float(), generator=torch.Generator().manual_seed(seed + 30))
    if case == "toy2":
        defensive = TwoBodyPrior(sim.process, *ref.tolist())
        flow = fit_proposal(events, bounds=model.bounds, flow=FlowSpec("nsf_coupling", transforms=6, hidden=(64, 64)),
                            training=dataclasses.replace(PROPOSAL_TRAINING, epochs=epochs, seed=seed))
    else:
        defensive = WGenerator(model.process, *ref.tolist())
        flow = fit_proposal(events, anchor=WAnchor(model), flow=FlowSpec("nsf_coupling", transforms=6, hidden=(64, 64)),
                            training=dataclasses.replace(PROPOSAL_TRAINING, epochs=epochs, seed=seed))
    info["learned_proposal"] = {"training_seconds": time.perf_counter() - t0, "simulated_events": n_sim, "epochs": epochs}
    samplers = {"learned_proposal": MultiChannel([flow, defensive], [0.9, 0.1])}
    t0 = time.perf_counter()
    x_var = sim.simulate(n_var, theta=ref.float(), generator=torch.Generator().manual_seed(seed + 31)).x.double()
    train = Events(x=x_var, theta=ref.double().expand(n_var, -1))
    training = dataclasses.replace(SAMPLER_TRAINING, epochs=var_epochs, batch_size=128, learning_rate=1e-3, seed=seed)
    if case == "toy2":
        refined = fit_sampler(flow, model, train, samples=32, training=training)
        samplers["flow"] = MultiChannel([refined, defensive], [0.9, 0.1])
        calls = n_var * var_epochs * 32  # training and validation events, every epoch
    else:
        analytic = w_proposal(model)
        samplers["flow"] = fit_channel_flows(analytic.channels, model, train, weights=analytic.weights, samples=32,
                                             flow=FlowSpec("nsf_coupling", transforms=4, hidden=(64, 64)), training=training)
        calls = n_var * var_epochs * 32 * len(analytic.channels)
    info["flow"] = {"training_seconds": time.perf_counter() - t0 + (info["learned_proposal"]["training_seconds"] if case == "toy2" else 0.0),
                    "variance_training_events": n_var, "epochs": var_epochs, "training_integrand_calls": calls}
    return samplers, info


# ---------------------------------------------------------------------------- calls to 1 %
def calls_table(model, proposal, x, theta, *, plain_samples: int | None, vegas: dict, analytic_samples: int, seed: int,
                learned: dict, learned_samples: int, exact: Integral | None = None) -> dict:
    """Per-event calls to 1 %, seconds per call and ESS for plain MC, the adaptive grid, the analytic and the learned samplers.

    ``exact``: the exact integrals of the events (toy 2: quadrature), against which every IS estimate is checked too."""
    out: dict = {"seconds_per_call": {}, "ess_fraction": {}}
    t0 = time.perf_counter()
    analytic = integrate(model, x, theta, proposal, samples=analytic_samples, seed=seed)
    out["seconds_per_call"]["analytic"] = (time.perf_counter() - t0) / (x.shape[0] * analytic_samples)
    out["analytic"] = calls_for_precision(analytic)
    out["ess_fraction"]["analytic"] = analytic.ess / analytic_samples
    box = BoxProposal(model.bounds)
    formula = variance_calls(model, x, theta, box, proposal, samples=4 * analytic_samples, seed=seed + 1)
    t0 = time.perf_counter()
    plain_run = integrate(model, x, theta, box, samples=plain_samples or 4096, seed=seed + 2)
    out["seconds_per_call"]["plain"] = (time.perf_counter() - t0) / (x.shape[0] * (plain_samples or 4096))
    if plain_samples:
        direct = calls_for_precision(plain_run)
        out["plain"] = direct
        out["plain_formula_vs_direct"] = _median(formula / direct)
    else:
        out["plain"] = formula
    grid, adapt_calls = adapt_vegas(model, x, theta, generator=torch.Generator().manual_seed(seed), **vegas)
    t0 = time.perf_counter()
    res = integrate(model, x, theta, grid, samples=vegas["samples"], extra_calls=adapt_calls, seed=seed + 3)
    out["seconds_per_call"]["vegas"] = (time.perf_counter() - t0) / (x.shape[0] * vegas["samples"])
    if plain_samples:
        out["vegas"] = calls_for_precision(res)
    else:
        out["vegas"] = adapt_calls + variance_calls(model, x, theta, grid, proposal, samples=4 * analytic_samples, seed=seed + 4)
    runs: dict = {}
    for name, sampler in learned.items():
        t0 = time.perf_counter()
        res = runs[name] = integrate(model, x, theta, sampler, samples=learned_samples, seed=seed + 5, chunk_calls=2**17)
        out["seconds_per_call"][name] = (time.perf_counter() - t0) / (x.shape[0] * learned_samples)
        out[name] = calls_for_precision(res)
        out["ess_fraction"][name] = res.ess / learned_samples
        # unbiasedness: the mean relative difference to the analytic estimates over its standard error
        # (check_agreement); the per-event pulls' mean is biased negative by heavy-tailed weights and kept for information
        check = check_agreement(res, analytic)
        out.setdefault("agreement_vs_analytic", {})[name] = {
            "mean_relative_difference": check.mean_difference, "standard_error": check.standard_error, "t": check.t,
            "passed": check.passed, "mean_pull": check.mean_pull, "sd_pull": check.sd_pull}
    if exact is not None:
        for name, res in (("analytic", analytic), *runs.items()):
            check = check_agreement(res, exact)
            out.setdefault("agreement_vs_exact", {})[name] = {
                "mean_relative_difference": check.mean_difference, "standard_error": check.standard_error, "t": check.t,
                "passed": check.passed, "mean_pull": check.mean_pull, "sd_pull": check.sd_pull}
    return out


METHODS = ("plain", "vegas", "analytic") + LEARNED


def summarise(table: dict) -> tuple[dict, dict, dict, dict]:
    """Medians of calls, ratios plain/method, seconds per event at 1 % and ESS quantiles per method."""
    medians = {m: _median(table[m]) for m in METHODS}
    ratios = {m: _median(table["plain"] / table[m]) for m in METHODS if m != "plain"}
    seconds = {m: table["seconds_per_call"][m] * medians[m] for m in METHODS}
    ess = {m: {q: float(torch.quantile(v.to(torch.float64), p)) for q, p in (("q10", 0.1), ("median", 0.5), ("q90", 0.9))}
           for m, v in table["ess_fraction"].items()}
    return medians, ratios, seconds, ess


# ---------------------------------------------------------------------------- toy 1
def toy1(quick: bool, n_toys: int, seed: int) -> dict:
    sim = Resonance()
    mem = resonance_likelihood(sim, samples=1024, seed=seed)
    ref = sim.space.reference
    p103 = float(mem.log_prob(torch.tensor([[103.0]], dtype=torch.float64), ref).exp())
    x = torch.linspace(85.5, 114.5, 59, dtype=torch.float64).reshape(-1, 1)
    mem_cold = resonance_likelihood(sim, samples=1024, seed=seed + 1)
    t0 = time.perf_counter()
    mem_cold.log_prob(x, ref)  # first call: proposal samples drawn (later calls at other θ reuse them)
    seconds = (time.perf_counter() - t0) / x.shape[0]
    max_dev = float((mem.log_prob(x, ref) - sim.log_prob(x, ref.expand(59, 2))).abs().max())
    # expected widths: Fisher information of the MEM likelihood by Gauss-Legendre over the window
    t, w = np.polynomial.legendre.leggauss(16)
    edges = np.linspace(85.0, 115.0, 16)
    nodes = torch.tensor(((edges[1:] + edges[:-1])[:, None] / 2 + (edges[1:] - edges[:-1])[:, None] / 2 * t).ravel()).reshape(-1, 1)
    weights = torch.tensor(((edges[1:] - edges[:-1])[:, None] / 2 * w).ravel())
    theta = ref.expand(nodes.shape[0], 2).clone().requires_grad_(True)
    log_p = mem.log_prob(nodes, theta)
    (score,) = torch.autograd.grad(log_p.sum(), theta)
    fisher = torch.einsum("n,ni,nj->ij", weights * log_p.detach().exp(), score, score)
    expected = torch.sqrt(torch.diagonal(torch.linalg.inv(1000 * fisher))).tolist()
    # fits of n_toys datasets of 1000 events, MEM and exact
    data = sim.simulate(1000 * n_toys, theta=ref.float(), generator=torch.Generator().manual_seed(seed + 10)).x.double().reshape(n_toys, 1000, 1)
    log("toy 1: fitting", n_toys, "datasets of 1000 events (MEM and exact)")
    t0 = time.perf_counter()
    th_mem, _, conv_mem, cov_mem = fit_toys(mem, data, sim.space, return_covariance=True, block_events=1000)
    fit_seconds = time.perf_counter() - t0
    exact = lambda xx, tt: sim.log_prob(xx, tt) - sim.log_prob(xx, ref)  # noqa: E731
    th_ex, _, conv_ex, cov_ex = fit_toys(exact, data, sim.space, return_covariance=True)
    ok = conv_mem & conv_ex
    w_mem = torch.sqrt(torch.diagonal(cov_mem[ok], dim1=1, dim2=2))
    w_ex = torch.sqrt(torch.diagonal(cov_ex[ok], dim1=1, dim2=2))
    shift = ((th_mem - th_ex)[ok] / w_ex).abs().max(0).values
    noise = integration_noise(lambda s: resonance_likelihood(sim, samples=512, seed=s), Events.observed(data[0] if not quick else data[0, :400]),
                              sim.space, seeds=(0, 1) if quick else (0, 1, 2, 3))
    names = ("M", "Gamma")
    return {
        "toy1_p103": p103,
        "toy1_p103_exact": 0.067734165,
        "toy1_max_rel_dev_per_event": max_dev,
        "toy1_seconds_per_event": seconds,
        "toy1_width_vs_cr": {n: float(w_mem[:, i].mean()) / CR[n] for i, n in enumerate(names)},
        "toy1_exact_width_vs_cr": {n: float(w_ex[:, i].mean()) / CR[n] for i, n in enumerate(names)},
        "toy1_width_vs_exact": {n: float((w_mem[:, i] / w_ex[:, i]).mean()) for i, n in enumerate(names)},
        "toy1_max_best_fit_shift_vs_exact_in_sigma": {n: float(shift[i]) for i, n in enumerate(names)},
        "toy1_expected_width_vs_cr": {n: expected[i] / CR[n] for i, n in enumerate(names)},
        "toy1_toys_converged": f"{int(ok.sum())}/{n_toys}",
        "toy1_fit_seconds_per_toy": fit_seconds / n_toys,
        "toy1_integration_noise_relative_spread": noise.relative_spread,
    }


def fit_noise(n_events: int, samples: int, seeds: tuple[int, ...], seed: int, samplers: dict) -> dict:
    """Fits of (M, Γ) on toy 2 and of M on W → ℓν, refitted with independent integration seeds, per sampler.

    ``samplers[case]`` maps a label to a proposal; the analytic one is always included. The
    learned samplers are trained once (fixed): the seeds vary the samples only.
    """
    out: dict = {}
    sim2 = TwoBody()
    model2 = two_body_model(sim2.process)
    sim_w = WToLeptonNeutrino()
    fiducial = {
        "toy2": lambda s: FiducialCrossSection(model2, two_body_sampler(sim2.process, sim2.space), samples=2**16, draws=4, seed=s),
        "physics": lambda s: FiducialCrossSection(sim_w.model, WGenerator(sim_w.model.process, 80.4, 2.1), samples=2**17, sequence="sobol",
                                                  draws=8, seed=s),
    }
    cases = {"toy2": (sim2, model2, two_body_proposal(sim2.process)), "physics": (sim_w, sim_w.model, w_proposal(sim_w.model))}
    # W: Γ is held at its true value — 200 events constrain it to ±1.2 GeV, so a free fit often
    # ends on the bound Γ = 1 and the spread over seeds would measure the bound, not the noise
    fixed = {"toy2": None, "physics": {"fixed": {"Gamma": 2.1}}}
    for case, (sim, model, analytic) in cases.items():
        x = sim.simulate(n_events, theta=sim.space.reference.float(), generator=torch.Generator().manual_seed(seed + 20)).x.double()
        out[case] = {}
        for label, proposal in {"analytic": analytic, **samplers[case]}.items():
            log(f"{case}, {label}: fits of {n_events} events with seeds {seeds}")

            def factory(s: int, proposal=proposal, model=model, sim=sim, case=case):
                return MatrixElementLikelihood(model, proposal, sim.space, samples=samples, sequence="random", seed=s, fiducial=fiducial[case](s),
                                               chunk_calls=2**17)

            t0 = time.perf_counter()
            noise = integration_noise(factory, Events.observed(x), sim.space, seeds=seeds, fit_options=fixed[case])
            out[case][label] = {"best": noise.best, "errors": noise.errors, "relative_spread": noise.relative_spread, "valid": noise.valid,
                                "seconds_per_fit": (time.perf_counter() - t0) / len(seeds)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few events and toys (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--events", type=int, default=None, help="events per case for the calls table (default 100, quick 12)")
    parser.add_argument("--toys", type=int, default=None, help="toy-1 datasets of 1000 events (default 50, quick 3)")
    parser.add_argument("--sim-events", type=int, default=None, help="simulated events of the learned proposal (default 40000, quick 4000)")
    parser.add_argument("--epochs", type=int, default=None, help="its maximum-likelihood epochs (default 15, quick 3)")
    parser.add_argument("--variance-events", type=int, default=None, help="events of the variance training (default 4000, quick 256)")
    parser.add_argument("--variance-epochs", type=int, default=None, help="its epochs (default 6, quick 1)")
    parser.add_argument("--no-refits", action="store_true", help="skip the 200-event fits with three integration seeds (full run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_events = args.events or (12 if args.quick else 100)
    n_toys = args.toys or (3 if args.quick else 50)
    start = time.perf_counter()
    result: dict = {"quick": args.quick, "events": n_events, "threads": args.threads}
    learned_samples = 512 if args.quick else 2048
    defaults = (4000, 3, 256, 1) if args.quick else (40000, 15, 4000, 6)
    given = (args.sim_events, args.epochs, args.variance_events, args.variance_epochs)
    sizes = {k: v if v is not None else d for k, v, d in zip(("sim_events", "epochs", "variance_events", "variance_epochs"), given, defaults)}
    result["training_sizes"] = sizes

    sim2 = TwoBody()
    model2 = two_body_model(sim2.process)
    log("toy 2: training the learned samplers")
    samplers2, training2 = train_samplers("toy2", sim2, model2, sizes, args.seed)
    log("toy 2: calls to 1 %")
    x2 = sim2.simulate(n_events, theta=torch.tensor([100.0, 5.0]), generator=torch.Generator().manual_seed(args.seed)).x.double()
    exact2 = torch.tensor([quadrature_integral(tuple(row), (100.0, 5.0)) for row in x2.tolist()], dtype=torch.float64).log()
    exact2 = Integral(exact2, torch.zeros_like(exact2), torch.zeros_like(exact2), 1)  # ~0.5 s per event
    table2 = calls_table(model2, two_body_proposal(sim2.process), x2, torch.tensor([100.0, 5.0]),
                         plain_samples=2**15 if args.quick else 2**17, analytic_samples=2**12 if args.quick else 2**14,
                         vegas=dict(bins=32, iterations=5, samples=4096) if args.quick else dict(bins=64, iterations=8, samples=8192), seed=args.seed,
                         learned=samplers2, learned_samples=learned_samples, exact=exact2)
    sim_w = WToLeptonNeutrino()
    log("W -> l nu: training the learned samplers")
    samplers_w, training_w = train_samplers("physics", sim_w, sim_w.model, sizes, args.seed)
    log("W -> l nu: calls to 1 %")
    xw = sim_w.simulate(n_events, theta=torch.tensor([80.4, 2.1]), generator=torch.Generator().manual_seed(args.seed + 1)).x.double()
    table_w = calls_table(sim_w.model, w_proposal(sim_w.model), xw, torch.tensor([80.4, 2.1]), plain_samples=None,
                          analytic_samples=2**12 if args.quick else 2**14,
                          vegas=dict(bins=32, iterations=5, samples=4096) if args.quick else dict(bins=64, iterations=8, samples=8192), seed=args.seed,
                          learned=samplers_w, learned_samples=learned_samples)
    medians, ratios, seconds, ess = {}, {}, {}, {}
    for case, table in (("toy2", table2), ("physics", table_w)):
        medians[case], ratios[case], seconds[case], ess[case] = summarise(table)
    result["calls_ratio_vs_plain"] = ratios
    result["calls_at_1pct_median"] = medians
    result["ess_fraction"] = ess
    result["learned_samples_per_event"] = learned_samples
    result["learned_vs_analytic"] = {"toy2": table2["agreement_vs_analytic"], "physics": table_w["agreement_vs_analytic"]}
    result["toy2_vs_exact"] = table2["agreement_vs_exact"]
    result["training"] = {"toy2": training2, "physics": training_w}
    result["plain_formula_vs_direct_toy2"] = table2["plain_formula_vs_direct"]

    log("toy 1: likelihood, fits, widths")
    result.update(toy1(args.quick, n_toys, args.seed))
    result["seconds_per_event"] = {"toy1": result["toy1_seconds_per_event"], **seconds}
    if not (args.quick or args.no_refits):
        result["fit_integration_noise"] = fit_noise(200, 2048, (0, 1, 2), args.seed,
                                                    {"toy2": {"learned_proposal": samplers2["learned_proposal"]},
                                                     "physics": {"flow": samplers_w["flow"]}})
    result["wall_seconds"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
