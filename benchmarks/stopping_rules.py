r"""Stopping/keep rules of ``fit`` on a classifier whose reweighting has an exact answer.

The case behind the finding that a :class:`~sbilab.estimators.Classifier` trained with the old
defaults (10 % validation, patience 10, ``keep="best"``) kept an early epoch and gave weights
biased in normalisation: sample 0 is :math:`\mathcal N(0, I_2)`, sample 1 is
:math:`\mathcal N((0.5, 0), \mathrm{diag}(1.3^2, 1))`, 10⁴ events each; the classifier
(``Classifier.from_events``, defaults) is trained with ``carl_loss`` by ``fit(seed=s)`` with its
defaults, and the weights :math:`w = p_1/p_0` (``classifier_weights``) are applied to 10⁵ fresh
sample-0 events. Exact answers: :math:`E_0[w] = 1` (the normalisation) and the exact
:math:`\log w(x)`. Reported per rule (as in ``readme_seeds.py``: one full-budget run per seed,
each rule replayed on its validation losses with ``EarlyStopping``): the normalisation error
:math:`\bar w - 1` (its statistical error on 10⁵ events is ≈ 0.001) and the mean squared error
of :math:`\log\hat w`.

Usage::

    python benchmarks/stopping_rules.py --json           # 5 seeds
    python benchmarks/stopping_rules.py --quick --json   # 2 seeds, 2000 events, 10 epochs
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
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_seeds import RULES, Snapshots, replay  # noqa: E402  (the same rules and replay)

from sbilab.estimators import Classifier, carl_loss, classifier_training_data, classifier_weights  # noqa: E402
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


def run_seed(seed: int, args: argparse.Namespace, configs: dict[str, TrainingConfig]) -> dict[str, Any]:
    x0, x1 = samples(args.n, torch.Generator().manual_seed(seed))
    test = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(10_000 + seed))
    train = classifier_training_data(x0, x1)
    clf = Classifier.from_events(train)
    loss = Snapshots(carl_loss)
    started = time.perf_counter()
    res = fit(clf, loss, train, seed=seed, epochs=args.epochs, patience=None, progress=False)
    seconds = time.perf_counter() - started
    val = res.history["val_loss"]
    exact = exact_log_w(test)
    rules, cache = {}, {}
    for name, cfg in configs.items():
        ran, kept = replay(cfg, val)
        if kept not in cache:
            model = copy.deepcopy(clf)
            model.load_state_dict(loss.states[kept - 1])
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = classifier_weights(model.eval().logit(test), class_totals=model.class_totals).weights
            cache[kept] = {"norm_error": float(w.mean()) - 1.0, "mse_log_w": float(((w.log() - exact) ** 2).mean())}
        rules[name] = {"epochs_run": ran, "kept_epoch": kept, **cache[kept]}
    log(f"seed {seed}: {len(val)} epochs in {seconds:.0f} s; " + ", ".join(
        f"{n}: {r['norm_error']:+.4f} (ep {r['kept_epoch']}/{r['epochs_run']})" for n, r in rules.items()))
    return {"seed": seed, "train_seconds": seconds, "val_loss": val, "rules": rules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2000 events per class, 10 epochs (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = TrainingConfig()
    args.n, args.epochs = (2000, 10) if args.quick else (10_000, defaults.epochs)
    seeds = list(range(1, 1 + (2 if args.quick else args.seeds)))
    configs = {"default": defaults, **{n: replace(defaults, **o) for n, o in RULES.items()}}
    started = time.perf_counter()
    runs = [run_seed(s, args, configs) for s in seeds]
    summary = {name: {"max_abs_norm_error": max(abs(r["rules"][name]["norm_error"]) for r in runs),
                      "median_mse_log_w": sorted(r["rules"][name]["mse_log_w"] for r in runs)[len(runs) // 2],
                      "mean_epochs_run": sum(r["rules"][name]["epochs_run"] for r in runs) / len(runs)}
               for name in configs}
    out = {"benchmark": "stopping_rules", "quick": args.quick, "n_per_class": args.n, "epochs": args.epochs, "seeds": seeds,
           "summary": summary, "runs": runs, "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(out))
    else:
        for name, s in summary.items():
            print(f"{name:>22}: max |mean w - 1| {s['max_abs_norm_error']:.4f}, median MSE(log w) "
                  f"{s['median_mse_log_w']:.5f}, mean epochs {s['mean_epochs_run']:.1f}")


if __name__ == "__main__":
    main()
