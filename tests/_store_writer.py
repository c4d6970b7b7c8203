"""Subprocess used by tests/test_store.py: append deterministic chunks forever, report each commit.

Usage: python _store_writer.py STORE_DIR ROWS_PER_CHUNK
Prints ``committed K`` (flushed) after chunk K has been committed; the test kills it with SIGKILL.
"""

from __future__ import annotations

import sys

import torch

from sbilab.events import Events
from sbilab.store import SimulationStore


def chunk(k: int, rows: int) -> Events:
    """Chunk ``k``: values are closed-form functions of the global row index r."""
    r = torch.arange(k * rows, (k + 1) * rows, dtype=torch.float64)
    x = r[:, None] * 4 + torch.arange(4, dtype=torch.float64)
    theta = torch.stack([(r % 97) / 10, (r % 13) / 7], dim=1)
    return Events(x=x, theta=theta, log_r_joint=torch.sin(r), weights=1 + r % 3, label=r % 2)


def main() -> None:
    path, rows = sys.argv[1], int(sys.argv[2])
    with SimulationStore.create(path, parameter_names=["a", "b"], observable_names=list("pqrs"), seed=7) as store:
        k = 0
        while True:
            store.append(chunk(k, rows))
            print(f"committed {k}", flush=True)
            k += 1


if __name__ == "__main__":
    main()
