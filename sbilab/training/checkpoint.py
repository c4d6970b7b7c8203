r"""Crash-safe training checkpoints: tensors and plain containers only, never pickled objects.

A checkpoint holds everything that determines the rest of a run — model, optimizer and
early-stopping state, the best weights so far, the history, and the states of every random
generator involved — so that a run killed at any moment and resumed from its last checkpoint
ends with exactly the weights of an uninterrupted run. Files are written to a temporary name
and renamed (atomic on POSIX), and read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..durable import atomic_write

from ..exceptions import ConfigError

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"version": CHECKPOINT_VERSION, **state}, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, tensors on CPU).

    Raises:
        ConfigError: the file is not a sbilab checkpoint of a known version.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - reported with the path below
        raise ConfigError(f"fit: cannot read checkpoint {str(path)!r} ({err}); delete it or pass resume=False.") from err
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"fit: {str(path)!r} is not a sbilab training checkpoint of version {CHECKPOINT_VERSION}; "
            "delete it or pass resume=False."
        )
    return state


def rng_state(device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """States of torch's global CPU generator, the CUDA generator of ``device`` and ``generator``."""
    state = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, generator: torch.Generator) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    try:
        generator.set_state(state["batches"])
    except RuntimeError as err:
        raise ConfigError(
            f"fit: the checkpoint's batch-order generator does not fit device {device} ({err}); "
            "resume on the device type the run started on."
        ) from err
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
