"""Subprocess used by tests/test_training.py: a training run that the test SIGKILLs and resumes.

Usage: python tests/_train_worker.py CHECKPOINT OUT [--slow]   (or import and call train())
Trains a small dropout network (so the global RNG state matters) with a checkpoint every
epoch and ``resume=True``, then writes the final state dict to OUT.
"""

from __future__ import annotations

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


def train(checkpoint: str | None, *, slow: bool = False) -> dict:
    """Run the training; returns the final state dict and the training-loss history."""
    model, events = problem()

    def mse(m: nn.Module, batch: Events) -> torch.Tensor:
        if slow and m.training:
            time.sleep(0.05)  # only wall time: leaves the numbers untouched
        return (m(batch.x) - batch.theta).pow(2).squeeze(-1)

    result = fit(model, mse, events, epochs=12, batch_size=100, learning_rate=1e-2, patience=None,
                 checkpoint=checkpoint, resume=True, seed=3, progress=False)
    return {"state": result.model.state_dict(), "train_loss": result.history["train_loss"]}


def main() -> None:
    checkpoint, out = sys.argv[1], sys.argv[2]
    torch.save(train(checkpoint, slow="--slow" in sys.argv), out)


if __name__ == "__main__":
    main()
