r"""Trainer speed: sbilab's ``fit()`` vs a bare torch loop vs sbi's NRE_A trainer.

One classifier shape — sbi's default ratio network (residual net, 50 hidden features, 2 blocks,
ReLU, z-scored inputs) — trained with the binary cross-entropy ratio loss on the same two-moons
data (10⁴ simulations -> 2·10⁴ joint/marginal pairs), all in one run:

(a) ``sbilab.training.fit`` with its defaults;
(b) a bare hand-written loop at ``fit``'s batch size (pre-shuffled tensors, forward/backward/step
    only: the practical limit per epoch);
(c) ``sbi.inference.NRE_A(...).train()`` with sbi's defaults.

Reported: per-epoch time, wall time to convergence under each trainer's own default stopping,
the held-out BCE of each final network on fresh joint/marginal pairs (one common function),
and the time of a 5-member ensemble relative to one network.

Usage: ``python benchmarks/trainer_speed.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import torch
from torch import Tensor, nn

from sbilab import Events
from sbilab.nets import Ensemble, ResidualMLP, Standardize
from sbilab.training import fit

try:  # the library's CARL loss, if present; else the same BCE written here
    from sbilab.estimators.losses import carl_loss as ratio_loss
except ImportError:  # pragma: no cover
    def ratio_loss(model: nn.Module, batch: Events) -> Tensor:
        logit = model(batch.x, batch.theta)
        return nn.functional.binary_cross_entropy_with_logits(logit, batch.label.expand_as(logit), reduction="none")


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- problem
def two_moons(theta: Tensor, generator: torch.Generator) -> Tensor:
    """sbi-benchmark two moons: x = p(a, r) + (-|θ1+θ2|/√2, (-θ1+θ2)/√2), a ~ U(-π/2, π/2), r ~ N(0.1, 0.01²)."""
    n = theta.shape[0]
    a = (torch.rand(n, generator=generator) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=generator)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=1)
    shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), -theta[:, 0] + theta[:, 1]], dim=1) / math.sqrt(2.0)
    return p + shift


def simulations(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(n, 2, generator=g) * 2 - 1
    return theta, two_moons(theta, g)


def contrastive_pairs(theta: Tensor, x: Tensor, seed: int) -> Events:
    """NRE-A data: (x, θ) from the joint (label 1) and (x, θ') with θ' from another simulation (label 0)."""
    n = theta.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.where(perm == torch.arange(n), (perm + 1) % n, perm)
    return Events(x=torch.cat([x, x]), theta=torch.cat([theta, theta[perm]]),
                  label=torch.cat([torch.ones(n), torch.zeros(n)]))


class Classifier(nn.Module):
    """sbi's default NRE classifier shape: z-score x and θ, residual net (50 hidden, 2 blocks, ReLU) on [θ, x]."""

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.zx = Standardize(events.n_observables).set_from(events.x)
        self.zt = Standardize(events.n_parameters).set_from(events.theta)
        self.net = ResidualMLP(events.n_observables + events.n_parameters, 1, hidden=50, blocks=2, activation="relu")

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.net(torch.cat([self.zt(theta), self.zx(x)], dim=-1)).squeeze(-1)


@torch.no_grad()
def heldout_loss(logit_fn, events: Events) -> float:
    """The one common metric: mean BCE of ``logit_fn(x, theta)`` on held-out joint/marginal pairs."""
    logit = logit_fn(events.x, events.theta).reshape(-1)
    return float(nn.functional.binary_cross_entropy_with_logits(logit, events.label))


# ---------------------------------------------------------------------------- trainers
def run_fit(data: Events, *, ensemble: int = 1, seed: int = 0, **options) -> dict:
    torch.manual_seed(seed)
    model = Classifier(data)
    t0 = time.perf_counter()
    res = fit(Ensemble(model, ensemble) if ensemble > 1 else model, ratio_loss, data, seed=seed, progress=False, **options)
    wall = time.perf_counter() - t0
    return {"model": res.model, "wall": wall, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
            "per_epoch": statistics.median(res.history["time"]), "config": res.config}


def run_bare(data: Events, *, batch_size: int, learning_rate: float, epochs: int, seed: int = 0) -> dict:
    """Forward/backward/step over pre-shuffled tensors: the practical per-epoch limit."""
    train, _ = data.split(0.1, generator=torch.Generator().manual_seed(seed))  # same training-set size as fit
    torch.manual_seed(seed)
    model = Classifier(data)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    x, theta, label = train.x[perm], train.theta[perm], train.label[perm]
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for start in range(0, len(x), batch_size):
            logit = model(x[start:start + batch_size], theta[start:start + batch_size])
            loss = nn.functional.binary_cross_entropy_with_logits(logit, label[start:start + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return {"per_epoch": statistics.median(times), "model": model}


def run_sbi(theta: Tensor, x: Tensor, *, seed: int = 0, max_epochs: int | None = None) -> dict:
    from sbi.inference import NRE_A
    from sbi.utils import BoxUniform

    torch.manual_seed(seed)
    inference = NRE_A(prior=BoxUniform(-torch.ones(2), torch.ones(2)), show_progress_bars=False)
    inference.append_simulations(theta, x)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # sbi prints its convergence message on stdout
        net = inference.train() if max_epochs is None else inference.train(max_num_epochs=max_epochs)
    wall = time.perf_counter() - t0
    epochs = int(inference.epoch) if hasattr(inference, "epoch") else len(inference._summary["training_loss"])
    net.eval()
    return {"model": net, "wall": wall, "epochs": epochs, "per_epoch": wall / max(epochs, 1)}


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (< 60 s): 2·10³ simulations, sbi capped at 60 epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for all three trainers (default 1: small nets gain nothing from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_sims = 2000 if args.quick else 10_000
    theta, x = simulations(n_sims, seed=1)
    data = contrastive_pairs(theta, x, seed=2)
    held = contrastive_pairs(*simulations(5000 if args.quick else 20_000, seed=3), seed=4)
    log(f"two moons: {n_sims} simulations -> {len(data)} classifier events; held out: {len(held)}")

    # warm-up: first calls pay one-time costs (lazy imports, kernel set-up) that belong to no trainer
    warm = data[torch.arange(1024)]
    run_fit(warm, epochs=1)
    run_bare(warm, batch_size=256, learning_rate=1e-3, epochs=1)
    run_sbi(theta[:512], x[:512], max_epochs=1)

    a = run_fit(data)
    cfg = a["config"]
    log(f"fit: {a['epochs']} epochs (best {a['best_epoch']}), {a['per_epoch']:.4f} s/epoch, {a['wall']:.2f} s")
    b = run_bare(data, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, epochs=3 if args.quick else 10)
    log(f"bare loop: {b['per_epoch']:.4f} s/epoch at batch {cfg.batch_size}")
    c = run_sbi(theta, x, max_epochs=60 if args.quick else None)
    log(f"sbi NRE_A: {c['epochs']} epochs, {c['per_epoch']:.4f} s/epoch, {c['wall']:.2f} s")
    e = run_fit(data, ensemble=5)
    log(f"fit ensemble=5: {e['epochs']} epochs, {e['per_epoch']:.4f} s/epoch, {e['wall']:.2f} s")

    ens = e["model"]
    figures = {
        "n_simulations": n_sims,
        "batch_size": cfg.batch_size,
        "fit_s_per_epoch": a["per_epoch"],
        "bare_s_per_epoch": b["per_epoch"],
        "sbi_s_per_epoch": c["per_epoch"],
        "fit_epochs": a["epochs"],
        "sbi_epochs": c["epochs"],
        "fit_wall_s": a["wall"],
        "sbi_wall_s": c["wall"],
        "ensemble5_wall_s": e["wall"],
        "ensemble5_s_per_epoch": e["per_epoch"],
        "fit_vs_bare": a["per_epoch"] / b["per_epoch"],
        "speedup_vs_sbi": c["wall"] / a["wall"],
        "heldout_loss_fit": heldout_loss(a["model"].eval(), held),
        "heldout_loss_sbi": heldout_loss(lambda x_, t_: c["model"](t_, x_), held),
        "heldout_loss_bare": heldout_loss(b["model"].eval(), held),
        "heldout_loss_ensemble5_members": [heldout_loss(ens.member(i).eval(), held) for i in range(ens.k)],
        "ensemble5_vs_single": e["per_epoch"] / a["per_epoch"],
        "ensemble5_vs_single_wall": e["wall"] / a["wall"],
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
