r"""Data-parallel training for :func:`~sbilab.training.fit`: torch DDP over the processes of a group.

``fit(..., parallel=DataParallel())`` in every process of a ``torch.distributed`` group
(started by ``torchrun``, by :func:`sbilab.distributed.launch` or by ``sbilab launch``) trains
one model on W processes. Every global batch — the same batches a single process would draw,
from the same seed — is split into W near-equal parts, and process r trains on part r:

.. math::
    \nabla L = \frac{1}{W}\sum_{r=1}^{W} \nabla \Big( W\,\frac{\sum_{i\in B_r} w_i \ell_i}{\sum_{i\in B} w_i} \Big)
             = \nabla \frac{\sum_{i\in B} w_i \ell_i}{\sum_{i\in B} w_i},

the left side being what :class:`torch.nn.parallel.DistributedDataParallel` computes (it averages
the gradients of the ranks while the backward pass runs). One small all-reduce per batch gives
the normalisation :math:`\sum_{i\in B} w_i` and the batch loss every rank reports, so every
rank takes the same steps as a single process with the same global batch, up to the order of
floating-point sums. The validation events are split the same way and their summed losses
all-reduced, so all ranks see the same validation loss and stop at the same epoch. Rank 0
writes the checkpoints (with the world size and every rank's random state); a resume with
another number of processes is refused. In-memory data are held by every rank (each trains on
its part of every batch); a streamed store is read by every rank (each keeps its part).

Backends: ``"gloo"`` (CPU, and CUDA tensors) and ``"nccl"`` (CUDA only; each rank uses the GPU
``LOCAL_RANK``). Every parameter must receive a gradient in every step (DDP's rule).
"""

from __future__ import annotations

import datetime
import inspect
import os
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError
from .data import BatchSource

__all__ = ["DataParallel", "check_world_size"]

Backend = Literal["gloo", "nccl"]
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# buffers (standardisation constants) are synchronised once, when DDP wraps the model, not before every forward
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


class _Step(nn.Module):
    """The module DDP wraps: its forward is fit's per-member loss of a batch, so DDP sees every call."""

    def __init__(self, model: nn.Module, member_losses: Callable[[Events], Tensor]) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_losses", member_losses)

    def forward(self, batch: Events) -> Tensor:
        return self._losses(batch)


class DataParallel:
    """The process group :func:`fit` trains over (pass as ``fit(..., parallel=...)`` in every process).

    Args:
        backend: ``"gloo"`` (default on CPU) or ``"nccl"`` (default with CUDA; GPU only).
        timeout: Seconds a collective may wait for the other processes before it fails (a dead
            or stuck rank then ends the run with an error instead of a hang).

    The group is the one already initialised (``torch.distributed.init_process_group``), or is
    initialised here from the environment that ``torchrun`` and :func:`sbilab.distributed.launch`
    set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Raises:
        ConfigError: not started by a launcher (no group and no environment), ``"nccl"`` or a
            GPU per rank without CUDA, or an unknown backend.

    Example (two processes, ``torchrun --nproc-per-node 2 train.py``)::

        result = fit(estimator, loss, events, parallel=DataParallel())   # in train.py
    """

    def __init__(self, *, backend: Backend | None = None, timeout: float = 300.0) -> None:
        import torch.distributed as dist

        if backend not in (None, "gloo", "nccl"):
            raise ConfigError(f"DataParallel: backend={backend!r}; use 'gloo' (CPU) or 'nccl' (CUDA GPUs).")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("DataParallel: backend='nccl' needs CUDA GPUs, and CUDA is not available here; use backend='gloo' on CPU.")
        if not dist.is_available():
            raise ConfigError("DataParallel: this torch build has no torch.distributed; install a build with it.")
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            missing = [name for name in _ENV if name not in os.environ]
            if missing:
                raise ConfigError(
                    f"DataParallel: no process group and {missing} unset; start the processes with torchrun "
                    "(torchrun --nproc-per-node 2 script.py), sbilab launch, or sbilab.distributed.launch."
                )
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        elif backend is not None and dist.get_backend() != backend:
            raise ConfigError(f"DataParallel: the process group uses {dist.get_backend()!r}, not backend={backend!r}.")
        self._dist = dist
        self.backend: str = dist.get_backend()
        self.rank: int = dist.get_rank()
        self.world_size: int = dist.get_world_size()
        self._device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    @property
    def is_writer(self) -> bool:
        """Whether this process writes checkpoints and shows progress (rank 0)."""
        return self.rank == 0

    # ------------------------------------------------------------------ seams of fit()
    def attach(self, model: nn.Module, member_losses: Callable[[Events], Tensor], source: BatchSource,
               batch_size: int, seed: int) -> Callable[[Events], Tensor]:
        """Shard ``source``, wrap ``model`` in DDP and return the training-step loss of a batch part.

        The returned ``(K,)``/``()`` losses have the value of the *global* batch loss (the same on
        every rank) and the gradient of this rank's share of it (see the module docs).
        """
        smallest = len(source) // source.n_batches(batch_size)
        if smallest < self.world_size:
            raise ConfigError(
                f"fit: batches of {smallest} events cannot be split over {self.world_size} processes; "
                f"use batch_size >= {self.world_size} and at least as many events."
            )
        source.shard = (self.rank, self.world_size)
        if self.rank > 0:  # dropout and other randomness inside the model differ between ranks
            torch.manual_seed(int(np.random.SeedSequence(seed, spawn_key=(self.rank,)).generate_state(1, np.uint64)[0] >> np.uint64(1)))
        ddp = nn.parallel.DistributedDataParallel(_Step(model, member_losses), device_ids=None, **_NO_BUFFER_SYNC)
        world = self.world_size

        def step(batch: Events) -> Tensor:
            local = ddp(batch)  # this rank's weighted mean, (K,) or ()
            w = batch.weights
            weight = (w.sum(dim=0) if w is not None else torch.tensor(float(len(batch)), device=local.device)).to(local.dtype)
            weight = weight.expand(local.shape)
            sums = local * weight
            total = self.sum_over_ranks(torch.stack([weight.detach().reshape(-1), sums.detach().reshape(-1)]))
            norm, global_mean = total[0].reshape(local.shape), (total[1] / total[0]).reshape(local.shape)
            share = world * sums / norm
            return share + (global_mean - share).detach()

        return step

    def local_part(self, events: Events) -> Events:
        """This rank's contiguous part of ``events`` (validation); parts differ in length by at most one."""
        bounds = np.linspace(0, len(events), self.world_size + 1).round().astype(int)
        return events[int(bounds[self.rank]):int(bounds[self.rank + 1])]

    def sum_over_ranks(self, *values: Any) -> Any:
        """Sums over all ranks of ``values`` (numbers or tensors, one all-reduce); returns the same kinds."""
        flat = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in values]
        joined = torch.cat(flat).to(self._device)
        self._dist.all_reduce(joined)
        out, start = [], 0
        for v, f in zip(values, flat):
            part = joined[start:start + f.numel()]
            start += f.numel()
            if isinstance(v, Tensor):
                out.append(part.to(device=v.device, dtype=v.dtype).reshape(v.shape))
            else:
                out.append(float(part[0]))
        return out[0] if len(values) == 1 else tuple(out)

    def checkpoint_state(self, device: torch.device) -> dict[str, Any]:
        """The world size and every rank's torch random states (a collective: every rank calls it)."""
        states = [torch.get_rng_state()]
        if device.type == "cuda":
            states.append(torch.cuda.get_rng_state(device))
        gathered = []
        for state in states:
            local = state.to(self._device)
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            self._dist.all_gather(parts, local)
            gathered.append([p.cpu() for p in parts])
        return {"world_size": self.world_size, "rank_rng": gathered}

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        """Set this rank's random states from a checkpoint written by :meth:`checkpoint_state`."""
        check_world_size(state, self)
        saved = state.get("rank_rng")
        if saved:
            torch.set_rng_state(saved[0][self.rank])
            if device.type == "cuda" and len(saved) > 1:
                torch.cuda.set_rng_state(saved[1][self.rank], device)


def check_world_size(state: dict[str, Any], parallel: DataParallel | None) -> None:
    """Refuse to resume a checkpoint written by a different number of processes.

    Raises:
        ConfigError: naming both world sizes and how to resume.
    """
    saved, now = int(state.get("world_size", 1)), 1 if parallel is None else parallel.world_size
    if saved != now:
        raise ConfigError(
            f"fit: the checkpoint was written by {saved} data-parallel process(es), this run has {now}; the batch split, "
            f"the random states and the resume would not match. Resume with {saved} process(es) "
            f"(e.g. torchrun --nproc-per-node {saved}), or pass resume=False to start again."
        )
