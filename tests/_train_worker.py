"""Subprocess used by tests/test_training.py: a training run that the test SIGKILLs and resumes.

Usage: python tests/_train_worker.py CHECKPOINT OUT [--slow] [--stop-early [--kill-after-stop]]
(or import and call train()). Trains a small dropout network (so the global RNG state matters)
with a checkpoint every epoch and ``resume=True``, then writes the final state dict to OUT.
``--stop-early`` trains with early stopping (patience 3, it stops before its 60 epochs);
``--kill-after-stop`` makes the process SIGKILL itself right after the per-epoch checkpoint in
which the stopper fired, i.e. between the last per-epoch checkpoint and the final save.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
from torch import nn

from sbilab import Events
from sbilab.training import fit


def problem() -> tuple[nn.Module, Events]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(600, 2, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:] + 0.1 * torch.randn(600, 1, generator=g))
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
    return model, Events(x=x, theta=y)


def train(checkpoint: str | None, *, slow: bool = False, stop_early: bool = False) -> dict:
    """Run the training; returns the final state dict, the training-loss history and whether it stopped early."""
    model, events = problem()

    def mse(m: nn.Module, batch: Events) -> torch.Tensor:
        if slow and m.training:
            time.sleep(0.05)  # only wall time: leaves the numbers untouched
        return (m(batch.x) - batch.theta).pow(2).squeeze(-1)

    stopping = dict(epochs=60, patience=3) if stop_early else dict(epochs=12, patience=None)
    result = fit(model, mse, events, batch_size=100, learning_rate=1e-2, checkpoint=checkpoint, resume=True, seed=3,
                 progress=False, **stopping)
    return {"state": result.model.state_dict(), "train_loss": result.history["train_loss"],
            "stopped_early": result.stopped_early}


def kill_after_stop() -> None:
    """SIGKILL this process right after the first checkpoint written once the stopper has fired."""
    import sbilab.training.loop as loop

    save = loop.save_checkpoint

    def save_then_die(path: str, state: dict) -> None:
        save(path, state)
        if all(bad >= state["config"]["patience"] for bad in state["stopper"]["bad_epochs"]):
            os.kill(os.getpid(), signal.SIGKILL)

    loop.save_checkpoint = save_then_die


def main() -> None:
    checkpoint, out = sys.argv[1], sys.argv[2]
    if "--kill-after-stop" in sys.argv:
        kill_after_stop()
    torch.save(train(checkpoint, slow="--slow" in sys.argv, stop_early="--stop-early" in sys.argv), out)


if __name__ == "__main__":
    main()
