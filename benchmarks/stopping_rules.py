r"""Stopping/keep rules of ``fit`` on two cases with exact answers: a flat loss and an overfitting one.

``--case classifier`` (the default) is the case behind the finding that a
:class:`~sbilab.estimators.Classifier` trained with the old defaults (10 % validation, patience
10, ``keep="best"``) kept an early epoch and gave weights biased in normalisation: sample 0 is
:math:`\mathcal N(0, I_2)`, sample 1 is :math:`\mathcal N((0.5, 0), \mathrm{diag}(1.3^2, 1))`,
10⁴ events each; the classifier (``Classifier.from_events``, defaults) is trained with
``carl_loss`` by ``fit(seed=s)`` with its defaults, and the weights :math:`w = p_1/p_0`
(``classifier_weights``) are applied to 10⁵ fresh sample-0 events. Exact answers:
:math:`E_0[w] = 1` (the normalisation; statistical error on 10⁵ events ≈ 0.002) and the exact
:math:`\log w(x)` (``mse`` = mean squared error of :math:`\log\hat w`).

``--case carl-small``: CARL (``RatioEstimator.from_events``, defaults) on 10³ events of the
Gaussian toy, where a (100, 100) network overfits; ``mse`` = mean squared error of
:math:`\log\hat r(x|\theta)` against the exact log-ratio on 2·10⁴ fresh pairs.

As in ``readme_seeds.py``: one full-budget run per seed, every rule replayed on its validation
losses (and their standard errors) with ``EarlyStopping`` itself; ``default`` is ``TrainingConfig()``.

Usage::

    python benchmarks/stopping_rules.py --json                          # classifier, 5 seeds
    python benchmarks/stopping_rules.py --case carl-small --json        # CARL on 10³ events, 5 seeds
    python benchmarks/stopping_rules.py --quick --json                  # 2 seeds, 2000 events, 10 epochs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_seeds import RULES, Snapshots, replay  # noqa: E402  (the same rules and replay)

from sbilab.estimators import Classifier, RatioEstimator, carl_loss, classifier_training_data, classifier_weights  # noqa: E402
from sbilab.simulators import GaussianLatent, ratio_training_data  # noqa: E402
from sbilab.simulators.exact import ExactLogRatio  # noqa: E402
from sbilab.training import TrainingConfig, fit  # noqa: E402

SHIFT, SCALE = 0.5, 1.3


def log(msg: str) -> None:
    print(f"[stopping_rules] {msg}", file=sys.stderr, flush=True)


def samples(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.randn(n, 2, generator=generator)
    x1 = torch.randn(n, 2, generator=generator) * torch.tensor([SCALE, 1.0]) + torch.tensor([SHIFT, 0.0])
    return x0, x1


def exact_log_w(x: torch.Tensor) -> torch.Tensor:
    """log p1(x)/p0(x) for the two Gaussians."""
    a = x[:, 0]
    return -0.5 * ((a - SHIFT) / SCALE) ** 2 - math.log(SCALE) + 0.5 * a ** 2


def classifier_case(seed: int, n: int) -> tuple[Any, Any, Any, Callable[[Any], dict[str, float]]]:
    """Classifier reweighting N(0, I) -> N((0.5, 0), diag(1.3², 1)): normalisation error and MSE of log w."""
    x0, x1 = samples(n, torch.Generator().manual_seed(seed))
    test = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(10_000 + seed))
    train = classifier_training_data(x0, x1)
    exact = exact_log_w(test)

    def metrics(model: Any) -> dict[str, float]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = classifier_weights(model.logit(test), class_totals=model.class_totals).weights
        return {"norm_error": float(w.mean()) - 1.0, "mse": float(((w.log() - exact) ** 2).mean())}

    return Classifier.from_events(train), carl_loss, train, metrics


def carl_small_case(seed: int, n: int) -> tuple[Any, Any, Any, Callable[[Any], dict[str, float]]]:
    """CARL with few events (n pairs) on the Gaussian toy: MSE of log r̂ against the exact log r (overfitting regime)."""
    sim = GaussianLatent()
    train = ratio_training_data(sim, n // 2, generator=torch.Generator().manual_seed(seed))
    test = ratio_training_data(sim, 10_000, generator=torch.Generator().manual_seed(10_000 + seed))
    exact = ExactLogRatio(sim)(test.x, test.theta)

    def metrics(model: Any) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(((model.log_ratio(test.x, test.theta) - exact) ** 2).mean())}

    return RatioEstimator.from_events(train, sim.space), carl_loss, train, metrics


CASES = {"classifier": classifier_case, "carl-small": carl_small_case}


def run_seed(seed: int, args: argparse.Namespace, configs: dict[str, TrainingConfig]) -> dict[str, Any]:
    est, base_loss, train, metrics = CASES[args.case](seed, args.n)
    loss = Snapshots(base_loss)
    started = time.perf_counter()
    res = fit(est, loss, train, seed=seed, epochs=args.epochs, patience=None, progress=False)
    seconds = time.perf_counter() - started
    val, errors = res.history["val_loss"], res.history["val_loss_error"]
    rules, cache = {}, {}
    for name, cfg in configs.items():
        ran, kept = replay(cfg, val, errors)
        if kept not in cache:
            model = copy.deepcopy(est)
            model.load_state_dict(loss.states[kept - 1])
            cache[kept] = metrics(model.eval())
        rules[name] = {"epochs_run": ran, "kept_epoch": kept, **cache[kept]}
    log(f"{args.case} seed {seed}: {len(val)} epochs in {seconds:.0f} s; " + ", ".join(
        f"{n}: {r['mse']:.4g} (ep {r['kept_epoch']}/{r['epochs_run']})" for n, r in rules.items()))
    return {"seed": seed, "train_seconds": seconds, "val_loss": val, "val_loss_error": errors, "rules": rules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2000 events per class, 10 epochs (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", choices=sorted(CASES), default="classifier")
    parser.add_argument("--n", type=int, help="events per class (classifier) or training events (carl-small)")
    parser.add_argument("--epochs", type=int, help="epoch budget (default: TrainingConfig's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = TrainingConfig()
    n, epochs = (2000, 10) if args.quick else ({"classifier": 10_000, "carl-small": 1000}[args.case], defaults.epochs)
    args.n, args.epochs = args.n or n, args.epochs or epochs
    seeds = list(range(1, 1 + (2 if args.quick else args.seeds)))
    configs = {"default": defaults, **{n: replace(defaults, **o) for n, o in RULES.items()}}
    started = time.perf_counter()
    runs = [run_seed(s, args, configs) for s in seeds]
    summary = {name: {"max_abs_norm_error": max(abs(r["rules"][name].get("norm_error", math.nan)) for r in runs),
                      "median_mse": sorted(r["rules"][name]["mse"] for r in runs)[len(runs) // 2],
                      "max_mse": max(r["rules"][name]["mse"] for r in runs),
                      "mean_epochs_run": sum(r["rules"][name]["epochs_run"] for r in runs) / len(runs)}
               for name in configs}
    out = {"benchmark": "stopping_rules", "case": args.case, "quick": args.quick, "n": args.n, "epochs": args.epochs, "seeds": seeds,
           "summary": summary, "runs": runs, "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(out))
    else:
        for name, s in summary.items():
            print(f"{name:>22}: max |mean w - 1| {s['max_abs_norm_error']:.4f}, MSE median {s['median_mse']:.5f} "
                  f"max {s['max_mse']:.5f}, mean epochs {s['mean_epochs_run']:.1f}")


if __name__ == "__main__":
    main()
