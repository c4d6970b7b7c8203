r"""The README example with 10 seeds: learned vs exact likelihood, and which stopping rule keeps it honest.

For every seed ``s`` the README's "In a few lines" example runs as written — the resonance toy,
10⁵ ALICES pairs (α = 0.1) drawn with ``s``, a ``RatioEstimator.from_events`` trained by
``fit(..., seed=s)`` with its defaults, 1000 observed events at (M, Γ) = (100, 5) drawn with
``1000 + s`` — and the same observed events are fitted with the learned ratio and with the toy's
exact likelihood (MIGRAD + MINOS both). Reported per seed: both best fits, the MINOS widths
(hi − lo), the learned/exact width ratios and the pulls (best_learned − best_exact)/σ_exact, with
σ_exact the exact fit's HESSE error. The learned fit is *within the exact likelihood's
statistical scatter* when every |pull| < 1 and every width ratio lies in [0.8, 1.25].

Stopping rules are compared without training once per rule: every seed trains once for the
whole epoch budget (the cosine schedule depends only on the budget, so a run that stops early
is the prefix of the full run), with the weights of every epoch kept; each rule is then
replayed on the recorded validation losses with :class:`~sbilab.training.stopping.EarlyStopping`
itself, and the epoch it would keep is fitted. The row ``default`` is the rule of
``TrainingConfig()``'s defaults — what the README example actually runs.

Usage::

    python benchmarks/readme_seeds.py --json            # 10 seeds, 10⁵ pairs (≈ 20 min/seed on a busy 2-core CPU)
    python benchmarks/readme_seeds.py --quick --json    # 2 seeds, 10⁴ pairs, 8 epochs: a smoke run
    python benchmarks/readme_seeds.py --first-seed 7 --seeds 2 --jsonl a.jsonl   # seeds in parallel processes ...
    python benchmarks/readme_seeds.py --from-jsonl a.jsonl b.jsonl --json        # ... summarised together
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sbilab import Events
from sbilab.estimators import RatioEstimator, get_loss
from sbilab.simulators import Resonance, ratio_training_data
from sbilab.simulators.exact import ExactLogRatio
from sbilab.stats import UnbinnedLikelihood
from sbilab.training import TrainingConfig, fit
from sbilab.training.stopping import EarlyStopping

TRUTH = (100.0, 5.0)
N_OBSERVED = 1000
# candidate rules: overrides of TrainingConfig's stopping/keep options ("default" is added: TrainingConfig())
RULES: dict[str, dict[str, Any]] = {
    "patience10-best": dict(patience=10, keep="best"),
    "patience10-smoothed": dict(patience=10, keep="smoothed"),
    "patience25-best": dict(patience=25, keep="best"),
    "patience25-smoothed": dict(patience=25, keep="smoothed"),
    "none-best": dict(patience=None, keep="best"),
    "none-smoothed": dict(patience=None, keep="smoothed"),
    "none-last": dict(patience=None, keep="last"),
    "none-auto": dict(patience=None, keep="auto"),
    "patience10-smoothed0.9": dict(patience=10, keep="smoothed", smoothing=0.9),
    "none-smoothed0.9": dict(patience=None, keep="smoothed", smoothing=0.9),
}
STOPPING_FIELDS = ("patience", "keep", "smoothing", "min_delta", "validation_fraction")


def log(msg: str) -> None:
    print(f"[readme_seeds] {msg}", file=sys.stderr, flush=True)


def replay(config: TrainingConfig, val_losses: list[float], val_errors: list[float]) -> tuple[int, int]:
    """(epochs run, epoch kept) of ``config``'s stopping rule on recorded validation losses and their standard errors."""
    stopper = EarlyStopping(1, config)
    for epoch, (loss, error) in enumerate(zip(val_losses, val_errors), 1):
        stopper.update(epoch, [loss], [error])
        if stopper.should_stop:
            break
    stopper.finish()
    return stopper.last_epoch, stopper.best_epoch[0]


@torch.no_grad()
def validation_errors(est: torch.nn.Module, states: list[dict], loss: Any, validation: Events) -> list[float]:
    """Standard error of the mean validation loss of every epoch's weights (what fit's history records)."""
    errors = []
    model = copy.deepcopy(est).eval()
    for state in states:
        model.load_state_dict(state)
        per_event = torch.cat([loss(model, validation[i:i + 4096]).detach() for i in range(0, len(validation), 4096)])
        errors.append(float(per_event.double().std(correction=0) / math.sqrt(len(per_event))))
    return errors


class Snapshots:
    """The ALICES loss, keeping a copy of the weights whenever validation starts (once per epoch)."""

    def __init__(self, loss: Any) -> None:
        self.loss, self.states, self.was_training = loss, [], False

    def __call__(self, model: torch.nn.Module, batch: Events) -> torch.Tensor:
        if model.training:
            self.was_training = True
        elif self.was_training:  # first validation batch after an epoch of training
            self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            self.was_training = False
        return self.loss(model, batch)


def fit_summary(log_ratio: Any, observed: Events, space: Any) -> dict[str, Any]:
    result = UnbinnedLikelihood(log_ratio, observed, space).fit(minos=True)
    return {"best": result.best, "error": result.errors, "minos": {n: list(v) for n, v in result.minos.items()},
            "valid": result.valid, "message": result.message}


def compare(learned: dict[str, Any], exact: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in exact["best"]:
        lo, hi = learned["minos"].get(name, (math.nan, math.nan))
        elo, ehi = exact["minos"][name]
        out[name] = {"best": learned["best"][name], "width": hi - lo, "width_ratio": (hi - lo) / (ehi - elo),
                     "pull": (learned["best"][name] - exact["best"][name]) / exact["error"][name]}
    out["within"] = bool(learned["valid"]) and all(
        abs(out[n]["pull"]) < 1.0 and 0.8 <= out[n]["width_ratio"] <= 1.25 for n in exact["best"])
    return out


def run_seed(seed: int, args: argparse.Namespace, configs: dict[str, TrainingConfig]) -> dict[str, Any]:
    sim = Resonance()
    started = time.perf_counter()
    # --- the README example, seeded by `seed`
    train = ratio_training_data(sim, args.n, generator=torch.Generator().manual_seed(seed))
    est = RatioEstimator.from_events(train, sim.space)
    loss = Snapshots(get_loss("alices", alpha=0.1))
    saved = Path(args.states or ".") / f"seed{seed}.pt"
    if args.reuse_states and saved.exists():  # the weights of every epoch of an earlier identical run
        stored = torch.load(saved, weights_only=True)
        loss.states, val = stored["states"], stored["val_loss"].tolist()
        _, validation = train.split(TrainingConfig().validation_fraction, generator=torch.Generator().manual_seed(seed))
        errors = stored["val_loss_error"].tolist() if "val_loss_error" in stored else validation_errors(
            est, loss.states, loss.loss, validation)
        log(f"seed {seed}: weights of {len(val)} epochs read from {saved}")
    else:  # the whole budget (patience=None); every rule below is a prefix of this run
        res = fit(est, loss, train, seed=seed, epochs=args.epochs, patience=None, progress=False)
        val, errors = res.history["val_loss"], res.history["val_loss_error"]
        if args.states:  # tensors only (torch.save of a dict of tensors), to refit other rules' epochs later
            torch.save({"val_loss": torch.tensor(val), "val_loss_error": torch.tensor(errors), "states": loss.states}, saved)
    seconds = time.perf_counter() - started
    data = sim.simulate(N_OBSERVED, theta=torch.tensor(TRUTH), generator=torch.Generator().manual_seed(1000 + seed))
    observed = Events.observed(data.x)
    exact = fit_summary(ExactLogRatio(sim), observed, sim.space)
    assert len(loss.states) == len(val), (len(loss.states), len(val))
    fitted: dict[int, dict[str, Any]] = {}
    if args.every_epoch:  # the learned fit at every epoch: any other rule can be evaluated from the JSON later
        for epoch in range(1, len(val) + 1):
            model = copy.deepcopy(est)
            model.load_state_dict(loss.states[epoch - 1])
            fitted[epoch] = fit_summary(model.eval().log_ratio, observed, sim.space)
    rules = {}
    for name, cfg in configs.items():
        ran, kept = replay(cfg, val, errors)
        if kept not in fitted:
            model = copy.deepcopy(est)
            model.load_state_dict(loss.states[kept - 1])
            fitted[kept] = fit_summary(model.eval().log_ratio, observed, sim.space)
        rules[name] = {"epochs_run": ran, "kept_epoch": kept, **compare(fitted[kept], exact)}
    log(f"seed {seed}: trained {len(val)} epochs in {seconds:.0f} s; exact Γ = {exact['best']['Gamma']:.3f}; "
        + ", ".join(f"{n}: Γ={r['Gamma']['best']:.3f} (ep {r['kept_epoch']}/{r['epochs_run']})" for n, r in rules.items()))
    out = {"seed": seed, "train_seconds": seconds, "val_loss": val, "val_loss_error": errors, "exact": exact, "rules": rules}
    if args.every_epoch:
        out["per_epoch"] = [compare(fitted[e], exact) for e in range(1, len(val) + 1)]
    if args.jsonl:  # one line per finished seed: a long run can be read (and continued) while it goes
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(out) + "\n")
    return out


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per rule: seeds within the exact likelihood's scatter, max |pull|, range of width ratios, mean epochs run."""
    return {name: {"within": sum(r["rules"][name]["within"] for r in runs),
                   "max_abs_pull": max(abs(r["rules"][name][p]["pull"]) for r in runs for p in ("M", "Gamma")),
                   "width_ratio_range": [min(r["rules"][name][p]["width_ratio"] for r in runs for p in ("M", "Gamma")),
                                         max(r["rules"][name][p]["width_ratio"] for r in runs for p in ("M", "Gamma"))],
                   "mean_epochs_run": sum(r["rules"][name]["epochs_run"] for r in runs) / len(runs)}
            for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 10⁴ pairs, 8 epochs (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--states", metavar="DIR", help="save every epoch's weights per seed to DIR/seed<s>.pt")
    parser.add_argument("--reuse-states", action="store_true",
                        help="read the weights from --states DIR instead of training (the runs are seeded: identical)")
    parser.add_argument("--jsonl", metavar="FILE", help="append each seed's result to FILE as it finishes")
    parser.add_argument("--from-jsonl", metavar="FILE", nargs="+",
                        help="no runs: summarise the seeds recorded by --jsonl in FILE(s) (e.g. seeds run in parallel)")
    parser.add_argument("--every-epoch", action="store_true", help="also fit the learned ratio of every epoch (in the JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = TrainingConfig()
    args.n, args.epochs = (10_000, 8) if args.quick else (100_000, defaults.epochs)
    configs = {"default": defaults, **{n: replace(defaults, **o) for n, o in RULES.items()}}
    started = time.perf_counter()
    if args.from_jsonl:
        runs = sorted((json.loads(line) for f in args.from_jsonl for line in Path(f).read_text().splitlines() if line.strip()),
                      key=lambda r: r["seed"])
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            parser.error(f"--from-jsonl: seeds {seeds} recorded more than once")
    else:
        seeds = list(range(args.first_seed, args.first_seed + (2 if args.quick else args.seeds)))
        runs = [run_seed(s, args, configs) for s in seeds]
    summary = summarise(runs, list(configs))
    out = {"benchmark": "readme_seeds", "quick": args.quick, "n_pairs": args.n, "epochs": args.epochs, "seeds": seeds,
           "defaults": {k: getattr(defaults, k) for k in STOPPING_FIELDS}, "summary": summary, "runs": runs,
           "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(out))
    else:
        for name, s in summary.items():
            print(f"{name:>22}: {s['within']}/{len(runs)} within, max |pull| {s['max_abs_pull']:.2f}, "
                  f"width ratios {s['width_ratio_range'][0]:.3f}–{s['width_ratio_range'][1]:.3f}, "
                  f"mean epochs {s['mean_epochs_run']:.1f}")


if __name__ == "__main__":
    main()
