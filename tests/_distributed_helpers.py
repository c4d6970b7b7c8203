"""Workers' side of tests/test_distributed_*.py: simulators sent by 'module:attr', training targets of launch().

Importable by name in spawned processes and Dask workers (tests/ is on their sys.path).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from sbilab import Events
from sbilab.exceptions import SbilabError
from sbilab.simulators import GaussianLatent
from sbilab.training import fit
from sbilab.training.distributed import DataParallel


class SlowGaussian(GaussianLatent):
    """GaussianLatent that sleeps ``pause`` seconds per chunk and leaves its pid in ``pid_dir`` while it works."""

    def __init__(self, pause: float = 0.0, pid_dir: str | None = None, **options):
        super().__init__(**options)
        self.pause, self.pid_dir = pause, pid_dir

    def sample(self, theta, generator=None):
        marker = Path(self.pid_dir) / f"{os.getpid()}.pid" if self.pid_dir else None
        if marker is not None:
            marker.write_text(str(os.getpid()))
        time.sleep(self.pause)
        events = super().sample(theta, generator)
        if marker is not None:
            marker.unlink(missing_ok=True)
        return events


class FailingGaussian(GaussianLatent):
    """GaussianLatent that raises for a chunk of ``fail_n`` events while the file ``marker`` exists."""

    def __init__(self, fail_n: int, marker: str, **options):
        super().__init__(**options)
        self.fail_n, self.marker = fail_n, marker

    def sample(self, theta, generator=None):
        if len(theta) == self.fail_n and Path(self.marker).exists():
            raise ValueError(f"detector map missing for a chunk of {self.fail_n} events")
        return super().sample(theta, generator)


def regression_data(n: int = 400, seed: int = 11) -> Events:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x[:, :1] * 2 - x[:, 1:] + 0.3 * torch.randn(n, 1, generator=g)
    w = 0.5 + torch.rand(n, generator=g)
    return Events(x=x, theta=y, weights=w)


def model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))


def mse(m: nn.Module, batch: Events) -> torch.Tensor:
    return (m(batch.x) - batch.theta).pow(2).squeeze(-1)


class Crash(RuntimeError):
    pass


def crashing_mse(after: int):
    calls = [0]

    def loss(m: nn.Module, batch: Events) -> torch.Tensor:
        if m.training:
            calls[0] += 1
            if calls[0] > after:
                raise Crash("simulated crash")
        return mse(m, batch)

    return loss


OPTIONS = dict(epochs=8, batch_size=64, learning_rate=1e-2, patience=2, smoothing=0.0, min_delta=0.15, progress=False, seed=3)


def single(checkpoint: str | None = None, **extra) -> dict:
    """The reference: one process, the same global batches."""
    res = fit(model(), extra.pop("loss", mse), regression_data(), checkpoint=checkpoint, **{**OPTIONS, **extra})
    return {"state": res.model.state_dict(), "history": res.history, "epochs": res.epochs_run}


def ddp_run(folder: str) -> dict:
    """On every rank: an uninterrupted run, a run crashing after 9 steps and its resume, a streamed run."""
    parallel = DataParallel(timeout=60)
    out = {"rank": parallel.rank, "world": parallel.world_size}
    res = fit(model(), mse, regression_data(), parallel=parallel, **OPTIONS)
    out["plain"] = {"state": res.model.state_dict(), "history": res.history, "epochs": res.epochs_run}
    ckpt = str(Path(folder) / "ckpt.pt")
    try:
        fit(model(), crashing_mse(9), regression_data(), parallel=parallel, checkpoint=ckpt, resume=True, **OPTIONS)
    except Crash:
        out["crashed_at_epoch"] = int(torch.load(ckpt, weights_only=True)["epoch"]) if parallel.rank == 0 else -1
    res = fit(model(), mse, regression_data(), parallel=parallel, checkpoint=ckpt, resume=True, **OPTIONS)
    out["resumed"] = {"state": res.model.state_dict(), "history": res.history, "epochs": res.epochs_run}
    from sbilab.store import SimulationStore

    store = SimulationStore.open(str(Path(folder) / "train.sbistore"))
    val = regression_data(120, seed=12)
    res = fit(model(), mse, store, validation=val, stream=True, parallel=parallel, **OPTIONS)
    out["streamed"] = {"state": res.model.state_dict(), "epochs": res.epochs_run}
    try:
        fit(model(), mse, regression_data(), parallel=parallel, batch_size=1, epochs=1, progress=False)
    except SbilabError as err:
        out["tiny_batch_error"] = type(err).__name__
    return out


def raise_on_rank_one() -> int:
    parallel = DataParallel(timeout=30)
    if parallel.rank == 1:
        raise ValueError("rank one cannot read its shard")
    torch.distributed.barrier()  # rank 0 waits for a peer that is gone: the launcher must end it
    return 0
