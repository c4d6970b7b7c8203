r"""Identity checks of augmented data: false alarms on correct toys, power on a wrong one.

For every toy with a joint likelihood (Gaussian latent, Resonance, Morphing with one and two
couplings, ResonanceBackground, Lifetime) and several seeds, the training data of
:func:`~sbilab.simulators.ratio_training_data` (``n`` pairs) and of
:func:`~sbilab.simulators.augment.score_training_data` (``n`` events at the reference) are built
with the checks off and then checked (:func:`~sbilab.simulators.checks.check_augmented`):

* false alarms: runs in which any judged group's |pull| exceeds 5 (the default threshold);
* the largest judged |pull| per run, and the fraction of all judged groups beyond 3σ (a
  Gaussian pull gives 0.27%, so this says whether the errors are honest);
* groups left unjudged for a heavy tail (joint score only; the joint ratio uses the bridge
  estimate and is always judged).

The Lifetime toy without its acceptance term (``include_acceptance=False``, the mistake the
checks exist for) measures the power: the pulls of the failing checks, and the learned-ratio
check (:func:`~sbilab.stats.ratio_normalisation`) on the exact ratios of the right and of the
wrong model (what an estimator trained on the wrong augmented data converges to).

Usage: ``python benchmarks/identity_checks.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from sbilab.simulators import GaussianLatent, Lifetime, Morphing, Resonance, ResonanceBackground, ratio_training_data
from sbilab.simulators.augment import score_training_data
from sbilab.simulators.checks import check_augmented
from sbilab.stats import ratio_normalisation


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def toys() -> dict[str, object]:
    return {"gaussian": GaussianLatent(), "resonance": Resonance(), "morphing_1": Morphing(1), "morphing_2": Morphing(2),
            "resonance_background": ResonanceBackground(), "lifetime": Lifetime()}


def summarise(checks) -> dict[str, dict[str, float]]:
    out = {}
    for c in checks:
        judged = [t for t in c.tests if t.judged]
        out[c.name] = {"max_abs_pull": max((abs(t.pull) for t in judged), default=math.nan), "groups": len(c.tests),
                       "unjudged": len(c.tests) - len(judged), "beyond_3": sum(abs(t.pull) > 3 for t in judged),
                       "judged": len(judged), "passed": c.passed}
    return out


def false_alarms(n: int, seeds: int) -> dict[str, dict]:
    results = {}
    for name, sim in toys().items():
        runs = []
        started = time.perf_counter()
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            pairs = ratio_training_data(sim, n, generator=g, check="off")
            at_ref = score_training_data(sim, n, generator=g, check="off")
            runs.append({"ratio_training_data": summarise(check_augmented(pairs, sim.space.names)),
                         "score_training_data": summarise(check_augmented(at_ref, sim.space.names))})
        entry = {}
        for data in ("ratio_training_data", "score_training_data"):
            for check in ("joint score", "joint ratio"):
                rows = [r[data][check] for r in runs if check in r[data]]
                if not rows:
                    continue
                entry[f"{data}/{check}"] = {
                    "runs": len(rows), "false_alarms": sum(not r["passed"] for r in rows),
                    "max_abs_pull": max(r["max_abs_pull"] for r in rows),
                    "beyond_3_fraction": sum(r["beyond_3"] for r in rows) / max(1, sum(r["judged"] for r in rows)),
                    "groups_per_run": rows[0]["groups"], "unjudged": sum(r["unjudged"] for r in rows),
                }
        entry["seconds"] = time.perf_counter() - started
        results[name] = entry
        log(name, json.dumps(entry))
    return results


def power(n: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for label, include in (("right", True), ("wrong", False)):
        sim = Lifetime(include_acceptance=include)
        pairs = ratio_training_data(sim, n, generator=torch.Generator().manual_seed(0), check="off")
        checks = {c.name: c for c in check_augmented(pairs, sim.space.names)}
        worst = {name: max(c.tests, key=lambda t: abs(t.pull)) for name, c in checks.items()}
        out[label] = {name: {"passed": checks[name].passed, "worst": t.describe()} for name, t in worst.items()}
    # the exact ratio of each model, as an estimator trained on its augmented data converges to it
    truth = Lifetime()
    ref = truth.space.reference
    g = torch.Generator().manual_seed(1)
    points = torch.tensor([[0.5], [0.75], [1.5], [2.0]], dtype=torch.float64)
    x_ref = truth.simulate(n, theta=ref, generator=g).x.double()
    samples = [truth.simulate(n, theta=p, generator=g).x.double() for p in points]

    def exact(x, th):
        return truth.log_prob(x, th) - truth.log_prob(x, ref)

    def wrong(x, th):  # E[r_joint | x] of the model without the acceptance: r(x) A(tau) / A(tau_ref)
        return exact(x, th) + torch.log(truth.acceptance(th)) - torch.log(truth.acceptance(ref.reshape(1, 1)))

    for label, fn in (("exact_ratio_right", exact), ("exact_ratio_wrong", wrong)):
        check = ratio_normalisation(fn, x_ref, points, samples=samples, names=("tau",))
        out[label] = {"passed": check.passed, "normalisation": check.normalisation, "error": check.error,
                      "plain_mean": check.mean, "message": check.message()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples and few seeds (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, seeds = (4000, 3) if args.quick else (20_000, 10)
    started = time.perf_counter()
    results = {"n": n, "seeds": seeds, "false_alarms": false_alarms(n, seeds), "power": power(n)}
    results["seconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2, default=float))
        return
    print(f"identity checks, {n} pairs / events per run, {seeds} seeds per toy ({results['seconds']:.0f} s)")
    print(f"{'toy':<22} {'data / check':<34} {'false alarms':>12} {'max |pull|':>10} {'>3σ share':>10} {'unjudged':>9}")
    for name, entry in results["false_alarms"].items():
        for key, row in entry.items():
            if key == "seconds":
                continue
            print(f"{name:<22} {key:<34} {row['false_alarms']:>5} / {row['runs']:<4} {row['max_abs_pull']:>10.2f} "
                  f"{row['beyond_3_fraction']:>10.4f} {row['unjudged']:>4} / {row['groups_per_run'] * row['runs']}")
    for label, row in results["power"].items():
        print(f"{label}: {row}")


if __name__ == "__main__":
    main()
