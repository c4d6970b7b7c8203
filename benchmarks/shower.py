r"""QCD splitting kernels: shower speed, exact-history gold on the primary-emission toy and the full shower.

1. **Speed.** Events per CPU-second of the batched torch shower (``PartonShower``) and of the
   scalar pure-Python reference (same algorithm, ``reference_shower``) at the standard kernel,
   e⁺e⁻ → qq̄ at 91.2 GeV, t0 = 1 GeV², history stored. The batched shower runs 10⁴ and 10⁵
   events; the reference, whose cost per event does not depend on the batch, runs ``--n-reference``
   events and its rate is used for both. CPU time (``time.process_time``) is the primary figure
   because the machine is shared; wall times are printed beside it. Also: the cost per event of
   ``joint_log_prob`` + the joint score (``joint_score``, autograd) on 10⁴ events.
2. **Toy.** On the exact primary-emission toy (x = the set of emissions (ln t, z), deep-sets
   ratio estimators), the MSE of the learned log r̂(x|θ) against the exact log r on held-out
   events (θ from the proposal) for CARL and ALICES at training budgets of 10⁴ and 10⁵ events,
   and the widths of (D, F, C) over ``--toy-events`` observed events at the standard kernel against
   the Cramér–Rao bound from the quadrature Fisher information. Widths are
   :math:`\sqrt{\mathrm{diag}\,H^{-1}}` of the summed learned :math:`-\log L` at the true point
   (``hessian_widths``), the HESSE width of an unbounded fit: C is constrained so weakly
   (CR width ≈ 0.3 at 10⁵ events) that a fit bounded to the box stops at a limit. A width is
   ``null`` where that Hessian is not positive definite (the learned surface is not convex there).
3. **Full shower.** CARL, RASCAL and ALICES on the 9 per-event observables
   (``PartonShower(output="observables")``), trained on ``--shower-budget`` events per class,
   then an ``UnbinnedLikelihood`` fit of N = 10⁴ observed events at the standard kernel per
   method: ``shower_widths`` are its HESSE errors (``null`` for a parameter whose best fit sits at
   a limit of the box), ``shower_widths_at_truth`` the Hessian widths at the truth as in 2; SALLY's Fisher information
   against the joint (history) Fisher information, which bounds it, as Cramér–Rao widths at 10⁴.

Usage: ``python benchmarks/shower.py [--quick] [--json]``. Progress goes to stderr; ``--json``
prints one object with ``speedup_vs_reference``, ``toy_mse``, ``toy_width_vs_cr``,
``shower_widths`` and the details.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from sbilab.analysis.splittings_inference import (
    ALPHA, SetLogRatio, TrainOptions, fit_parameters, hessian_widths, joint_fisher, train_sally, train_splitting_ratio, without_history,
)
from sbilab.simulators import joint_score
from sbilab.simulators.shower import PartonShower, PrimaryEmissions
from sbilab.simulators.shower.reference import reference_shower

SM = (1.0, 1.0, 0.0)
NAMES = ("D", "F", "C")
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

    def exact_log_ratio(x, th):
        return toy.log_prob(x, th) - toy.log_prob(x, ref.to(th))

    exact_widths = hessian_widths(exact_log_ratio, observed.x, torch.tensor(SM))
    log(f"toy: Var(log r) = {exact.var().item():.4f}; CR widths at {args.toy_events}: {cr.tolist()}; exact-likelihood widths {exact_widths.tolist()}")
    mse: dict[str, dict[str, float]] = {}
    widths: dict[str, dict[str, float]] = {}
    for method in args.toy_methods:
        mse[method] = {}
        for budget in args.toy_budgets:
            options = TrainOptions(hidden=(64, 64), epochs=args.epochs, embedding=TOY_SETS, seed=0)
            est, cpu, _ = timed(train_splitting_ratio, toy, method, budget // 2, options)
            with torch.no_grad():
                pred = torch.cat([SetLogRatio(est)(test.x[i:i + 8192], test.theta[i:i + 8192]) for i in range(0, len(test), 8192)])
            key = budget_key(budget)
            mse[method][key] = float(((pred.double() - exact) ** 2).mean())
            log(f"toy {method} at {budget}: MSE {mse[method][key]:.5f} ({cpu:.0f} s CPU)")
        w = hessian_widths(SetLogRatio(est), observed.x, torch.tensor(SM))
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
    sm = torch.tensor(SM)
    observed = shower.simulate(args.shower_events, theta=sm, generator=torch.Generator().manual_seed(200))
    fisher_joint = joint_fisher(shower, observed)
    observed = without_history(observed)
    widths: dict[str, dict[str, float | None]] = {}
    at_truth: dict[str, dict[str, float]] = {}
    fits: dict[str, dict[str, Any]] = {}
    low, high = shower.space.low.tolist(), shower.space.high.tolist()
    for method in args.shower_methods:
        options = TrainOptions(epochs=args.epochs, seed=0, progress=False)
        est, cpu, _ = timed(train_splitting_ratio, shower, method, args.shower_budget, options)
        at_truth[method] = dict(zip(NAMES, hessian_widths(est, observed.x, sm).tolist()))
        res = fit_parameters(est, observed, shower.space)
        fits[method] = {"best": res.best, "errors": res.errors, "valid": res.valid}
        widths[method] = {n: None if min(res.best[n] - low[i], high[i] - res.best[n]) < 1e-4 else res.errors[n]
                          for i, n in enumerate(NAMES)}
        log(f"shower {method}: fit {res.best} ± {res.errors}; widths at truth {at_truth[method]} ({cpu:.0f} s CPU incl. simulation)")
    sally = train_sally(shower, args.shower_budget, TrainOptions(epochs=args.epochs, seed=0))
    with torch.no_grad():
        fisher_sally = sally.fisher_information(observed.x).double()
    n = args.shower_events
    cr_joint = torch.sqrt(torch.diag(torch.linalg.inv(n * fisher_joint)))
    cr_sally = torch.sqrt(torch.diag(torch.linalg.inv(n * fisher_sally)))
    eig = torch.linalg.eigvalsh(fisher_joint - fisher_sally)
    log(f"shower: joint-Fisher CR widths {cr_joint.tolist()}, SALLY CR widths {cr_sally.tolist()}; eigenvalues of I_joint - I_sally {eig.tolist()}")
    return {"shower_widths": widths, "shower_widths_at_truth": at_truth, "shower_fits": fits, "shower_observed_events": n, "shower_budget_per_class": args.shower_budget,
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
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "toy", "shower"])
    args = parser.parse_args()
    if args.quick:
        args.speed_sizes, args.n_reference, args.toy_budgets, args.toy_events = [10_000, 30_000], 300, [2_000, 10_000], 20_000
        args.n_test, args.shower_methods, args.shower_budget, args.shower_events, args.epochs = 5_000, ["carl", "alices"], 3_000, 5_000, 3
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
