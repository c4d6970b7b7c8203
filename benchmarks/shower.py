r"""QCD splitting kernels: shower speed, exact-history gold on the primary-emission toy and the full shower.

1. **Speed.** Events per CPU-second of the batched torch shower (``PartonShower``) and of the
   scalar pure-Python reference (same algorithm, ``reference_shower``) at the standard kernel,
   e⁺e⁻ → qq̄ at 91.2 GeV, t0 = 1 GeV², history stored. The batched shower runs 10⁴ and 10⁵
   events; the reference, whose cost per event does not depend on the batch, runs ``--n-reference``
   events and its rate is used for both. CPU time (``time.process_time``) is the primary figure
   because the machine is shared; wall times are printed beside it. Each size is one ``sample`` call
   (chunks of 2·10⁴ showered one after the other and padded once), validation of the ``Events``
   included. Also: the cost per event of
   ``joint_log_prob`` + the joint score (``joint_score``, autograd) on 10⁴ events.
2. **Toy.** On the exact primary-emission toy (x = the set of emissions (ln t, z), deep-sets
   ratio estimators), the MSE of the learned log r̂(x|θ) against the exact log r on held-out
   events (θ from the proposal) for CARL and ALICES at training budgets of 10⁴ and 10⁵ events,
   and the widths of (D, F, C) over ``--toy-events`` observed events at the standard kernel against
   the Cramér–Rao bound from the quadrature Fisher information. Widths are
   :math:`\sqrt{\mathrm{diag}\,H^{-1}}` of the summed learned :math:`-\log L` at the true point
   (``hessian_widths``) of the ratio normalised on ``--reference-events`` reference events, the HESSE width of an unbounded fit: C is constrained so weakly
   (CR width ≈ 0.3 at 10⁵ events) that a fit bounded to the box stops at a limit. A width is
   ``null`` where that Hessian is not positive definite (the learned surface is not convex there).
3. **Full shower.** CARL, RASCAL and ALICES on the 9 per-event observables
   (``PartonShower(output="observables")``), trained on ``--shower-budget`` events per class, each
   normalised on ``--reference-events`` independent events at the reference
   (``NormalizedLogRatio`` via ``splittings.normalised``). **Bias:** ``--closure-sets`` independent
   data sets of N = 10⁴ events at the standard kernel are fitted (``UnbinnedLikelihood``) with the
   raw and with the normalised ratio; ``shower_bias`` holds the pulls (best − truth)/HESSE error
   and their means (``splittings.closure``); as in the analysis, only parameters whose joint (history)
   Cramér–Rao width at N is ≤ 0.2 × their range are judged (``closure_passed``; at N = 10⁴: D, F). ``shower_widths`` are the HESSE errors of the first
   data set's normalised fit (``null`` for a parameter at a limit of the box),
   ``shower_widths_at_truth`` the Hessian widths at the truth as in 2; SALLY's Fisher information
   against the joint (history) Fisher information, which bounds it, as Cramér–Rao widths at 10⁴.

Usage: ``python benchmarks/shower.py [--quick] [--json]``. Progress goes to stderr; ``--json``
prints one object with ``speedup_vs_reference``, ``toy_mse``, ``toy_width_vs_cr``,
``shower_bias``, ``shower_widths`` and the details.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from sbilab.analysis.splittings import normalised, train_splitting_ratio
from sbilab.stats.closure import closure, hessian_widths
from sbilab.estimators import ScoreEstimator, get_loss
from sbilab.events import Events
from sbilab.simulators import joint_score, score_training_data
from sbilab.simulators.shower import PartonShower, PrimaryEmissions
from sbilab.simulators.shower.reference import reference_shower
from sbilab.stats import fisher_from_scores
from sbilab.training import TrainingConfig, fit

SM = (1.0, 1.0, 0.0)
NAMES = ("D", "F", "C")
ALPHA = {"carl": None, "rascal": 1.0, "alices": 0.1}
TOY_SETS = {"kind": "deepsets", "out_features": 32, "hidden": [64, 64], "latent": 32, "pooling": "sum"}


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def finite(value: Any) -> Any:
    """The value with NaN/inf floats replaced by None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def budget_key(n: int) -> str:
    """``"1e4"`` for 10 000, else the number itself."""
    k = round(math.log10(n))
    return f"1e{k}" if n == 10**k else str(n)


def training(args) -> TrainingConfig:
    """The benchmark's training options: a fixed budget of epochs, the best validation epoch kept."""
    return TrainingConfig(epochs=args.epochs, batch_size=512, learning_rate=2e-3, patience=None, seed=0)


def without_history(events: Events) -> Events:
    return events.replace(latent=None, latent_mask=None)


def timed(fn, *args, **kwargs) -> tuple[Any, float, float]:
    """(result, CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def speed(args) -> dict[str, Any]:
    shower = PartonShower()
    _, ref_cpu, ref_wall = timed(reference_shower, SM, args.n_reference, seed=1)
    ref_rate = args.n_reference / ref_cpu
    log(f"reference: {args.n_reference} events, {ref_cpu:.2f} s CPU ({ref_wall:.2f} s wall): {ref_rate:.0f} events/s")
    out: dict[str, Any] = {"reference_events_per_s": ref_rate, "reference_events": args.n_reference, "batched_events_per_s": {},
                           "batched_wall_s": {}, "speedup_vs_reference": {}}
    for n in args.speed_sizes:
        theta = torch.tensor([SM]).expand(n, 3)
        events, cpu, wall = timed(shower.sample, theta, torch.Generator().manual_seed(2))
        key = budget_key(n)
        out["batched_events_per_s"][key] = n / cpu
        out["batched_wall_s"][key] = wall
        out["speedup_vs_reference"][key] = n / cpu / ref_rate
        log(f"batched: {n} events, {cpu:.2f} s CPU ({wall:.2f} s wall): {n / cpu:.0f} events/s, x{n / cpu / ref_rate:.1f}")
        del events
    ev = shower.simulate(10_000, theta=torch.tensor(SM), generator=torch.Generator().manual_seed(3))
    _, cpu_lp, _ = timed(shower.joint_log_prob, ev, ev.theta)
    _, cpu_score, _ = timed(joint_score, shower, ev)
    out["joint_log_prob_us_per_event"] = 1e6 * cpu_lp / len(ev)
    out["joint_score_us_per_event"] = 1e6 * cpu_score / len(ev)
    log(f"joint_log_prob {out['joint_log_prob_us_per_event']:.2f} us/event, joint score {out['joint_score_us_per_event']:.2f} us/event")
    return out


def toy_study(args) -> dict[str, Any]:
    toy = PrimaryEmissions()
    ref = toy.space.reference
    test = toy.simulate(args.n_test, generator=torch.Generator().manual_seed(100))
    exact = toy.log_prob(test.x, test.theta, test.mask) - toy.log_prob(test.x, ref, test.mask)
    observed = toy.simulate(args.toy_events, theta=torch.tensor(SM), generator=torch.Generator().manual_seed(101))
    cr = torch.sqrt(torch.diag(torch.linalg.inv(args.toy_events * toy.fisher_information(torch.tensor(SM)))))

    def exact_log_ratio(x, th, mask=None):
        return toy.log_prob(x, th, mask) - toy.log_prob(x, ref.to(th), mask)

    sm = torch.tensor(SM, dtype=torch.float64)
    exact_widths = hessian_widths(exact_log_ratio, toy.space, observed.x, sm, mask=observed.mask)
    log(f"toy: Var(log r) = {exact.var().item():.4f}; CR widths at {args.toy_events}: {cr.tolist()}; exact-likelihood widths {exact_widths.tolist()}")
    mse: dict[str, dict[str, float]] = {}
    widths: dict[str, dict[str, float]] = {}
    for method in args.toy_methods:
        mse[method] = {}
        for budget in args.toy_budgets:
            est, cpu, _ = timed(train_splitting_ratio, toy, method, budget // 2, training(args), alpha=ALPHA[method], hidden=(64, 64),
                                embedding=TOY_SETS)
            with torch.no_grad():
                pred = torch.cat([est(test.x[i:i + 8192], test.theta[i:i + 8192], test.mask[i:i + 8192]) for i in range(0, len(test), 8192)])
            key = budget_key(budget)
            mse[method][key] = float(((pred.double() - exact) ** 2).mean())
            log(f"toy {method} at {budget}: MSE {mse[method][key]:.5f} ({cpu:.0f} s CPU)")
        w = hessian_widths(normalised(est, toy, args.reference_events, seed=102), toy.space, observed.x, sm, mask=observed.mask)
        widths[method] = {name: float(w[i] / cr[i]) for i, name in enumerate(NAMES)}
        log(f"toy {method}: widths / CR {widths[method]}")
    top = max(args.toy_budgets)
    best = min(mse, key=lambda m: mse[m][budget_key(top)])
    return {"toy_mse": mse, "toy_width_vs_cr": widths[best], "toy_best_method": best, "toy_width_vs_cr_all": widths,
            "toy_exact_width_vs_cr": {n: float(exact_widths[i] / cr[i]) for i, n in enumerate(NAMES)},
            "toy_cr_widths": dict(zip(NAMES, cr.tolist())), "toy_observed_events": args.toy_events,
            "toy_var_log_r": float(exact.var())}


def shower_study(args) -> dict[str, Any]:
    shower = PartonShower(output="observables")
    sm = torch.tensor(SM, dtype=torch.float64)
    n = args.shower_events
    datasets = [shower.simulate(n, theta=sm.float(), generator=torch.Generator().manual_seed(200 + k)) for k in range(args.closure_sets)]
    fisher_joint = fisher_from_scores(torch.cat([joint_score(shower, datasets[0][i:i + 20_000]) for i in range(0, n, 20_000)]))
    datasets = [without_history(d) for d in datasets]
    observed = datasets[0]
    # judge only what the data constrain, by the analysis's rule (joint Cramér–Rao width <= 0.2 x range)
    cr_joint = torch.sqrt(torch.diag(torch.linalg.inv(n * fisher_joint)))
    judge = {"expected_widths": cr_joint, "max_width_fraction": 0.2}
    widths: dict[str, dict[str, float | None]] = {}
    at_truth: dict[str, dict[str, float]] = {}
    fits: dict[str, dict[str, Any]] = {}
    bias: dict[str, dict[str, Any]] = {}
    low, high = shower.space.low.tolist(), shower.space.high.tolist()
    for method in args.shower_methods:
        est, cpu, _ = timed(train_splitting_ratio, shower, method, args.shower_budget, training(args), alpha=ALPHA[method])
        fn = normalised(est, shower, args.reference_events, seed=300)
        raw = closure(est, shower.space, datasets, sm, **judge)
        check = closure(fn, shower.space, datasets, sm, **judge)
        bias[method] = {"mean_pull_raw": raw["mean_pull"], "mean_pull_normalised": check["mean_pull"],
                        "pulls_raw": raw["pulls"], "pulls_normalised": check["pulls"], "closure_passed": check["passed"],
                        "fits_raw": raw["fits"], "fits_normalised": check["fits"],
                        "problems": check["problems"], "judged": check["judged"], "not_judged": check["not_judged"]}
        at_truth[method] = dict(zip(NAMES, hessian_widths(fn, shower.space, observed.x, sm).tolist()))
        first = check["fits"][0]
        fits[method] = first
        widths[method] = {name: None if min(first["best"][name] - low[i], high[i] - first["best"][name]) < 1e-4 else first["errors"][name]
                          for i, name in enumerate(NAMES)}
        log(f"shower {method}: mean pull over {args.closure_sets} data sets raw {raw['mean_pull']}, normalised {check['mean_pull']}; "
            f"fit {first['best']} +- {first['errors']}; widths at truth {at_truth[method]} ({cpu:.0f} s CPU training incl. simulation)")
    generator = torch.Generator().manual_seed(0)
    data = Events.concatenate([without_history(score_training_data(shower, min(20_000, args.shower_budget - s), generator=generator))
                               for s in range(0, args.shower_budget, 20_000)])
    torch.manual_seed(0)
    sally = ScoreEstimator.from_events(data, shower.space, hidden=(100, 100))
    sally = fit(sally, get_loss("sally"), data, **training(args).to_dict(), progress=False).model.eval()
    with torch.no_grad():
        fisher_sally = sally.fisher_information(observed.x).double()
    cr_sally = torch.sqrt(torch.diag(torch.linalg.inv(n * fisher_sally)))
    eig = torch.linalg.eigvalsh(fisher_joint - fisher_sally)
    log(f"shower: joint-Fisher CR widths {cr_joint.tolist()}, SALLY CR widths {cr_sally.tolist()}; eigenvalues of I_joint - I_sally {eig.tolist()}")
    return {"shower_bias": bias, "shower_widths": widths, "shower_widths_at_truth": at_truth, "shower_fits": fits, "shower_observed_events": n,
            "shower_budget_per_class": args.shower_budget, "shower_reference_events": args.reference_events,
            "shower_closure_sets": args.closure_sets,
            "joint_fisher_widths": dict(zip(NAMES, cr_joint.tolist())), "sally_fisher_widths": dict(zip(NAMES, cr_sally.tolist())),
            "joint_minus_sally_eigenvalues": eig.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run in under a minute (smaller sizes and budgets)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--speed-sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--n-reference", type=int, default=3000)
    parser.add_argument("--toy-budgets", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--toy-methods", nargs="+", default=["carl", "alices"])
    parser.add_argument("--toy-events", type=int, default=100_000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--shower-methods", nargs="+", default=list(ALPHA))
    parser.add_argument("--shower-budget", type=int, default=100_000, help="training events per class")
    parser.add_argument("--shower-events", type=int, default=10_000, help="observed events N")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--reference-events", type=int, default=200_000, help="reference events normalising each learned ratio")
    parser.add_argument("--closure-sets", type=int, default=4, help="independent observed data sets at the truth (bias = mean pull)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "toy", "shower"])
    args = parser.parse_args()
    if args.quick:
        args.speed_sizes, args.n_reference, args.toy_budgets, args.toy_events = [10_000, 30_000], 300, [2_000, 10_000], 20_000
        args.n_test, args.shower_methods, args.shower_budget, args.shower_events, args.epochs = 5_000, ["carl", "alices"], 3_000, 5_000, 3
        args.reference_events, args.closure_sets = 20_000, 2
    torch.set_num_threads(1)
    out: dict[str, Any] = {"quick": args.quick, "threads": 1}
    if "speed" not in args.skip:
        out.update(speed(args))
    if "toy" not in args.skip:
        out.update(toy_study(args))
    if "shower" not in args.skip:
        out.update(shower_study(args))
    if args.json:
        print(json.dumps(finite(out), indent=1))


if __name__ == "__main__":
    main()
