r"""Where :func:`~sbilab.training.fit` gets its batches from.

Events that fit in the device's memory are moved there once and batched by slicing one
random permutation per epoch (no DataLoader, no per-event Python). Larger data stay in host
memory and are indexed there, batch by batch; a store (any object with ``__len__`` and
``batches(batch_size, shuffle=, generator=)``, e.g. :class:`~sbilab.store.SimulationStore`) is
streamed.
"""

from __future__ import annotations

import abc

import math
from typing import Any, Iterator, Protocol, runtime_checkable

import torch

from ..events import Events

__all__ = ["BatchSource", "InMemorySource", "StreamedSource", "EventStream", "events_nbytes", "fits_on_device"]


@runtime_checkable
class EventStream(Protocol):
    """What ``fit`` needs of a store it streams from."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = ..., generator: torch.Generator | None = ...) -> Iterator[Events]: ...


def events_nbytes(events: Events) -> int:
    """Bytes held by the tensors of ``events``."""
    return sum(t.numel() * t.element_size() for t in events.tensors().values())


def fits_on_device(nbytes: int, device: torch.device, *, fraction: float = 0.5) -> bool:
    """Whether ``nbytes`` fit in ``fraction`` of the free memory of ``device`` (always true off CUDA)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


class BatchSource(abc.ABC):
    """Interface: ``len(source)`` events, ``n_batches(batch_size)``, ``epoch(batch_size)`` yields Events on the device."""

    device: torch.device
    generator: torch.Generator
    shard: tuple[int, int] = (0, 1)
    """(rank, world size) of data-parallel training: every batch is split into ``world size``
    near-equal parts and this process gets part ``rank`` (set by :class:`~sbilab.training.distributed.DataParallel`)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of training events."""

    def n_batches(self, batch_size: int) -> int:
        return max(1, math.ceil(len(self) / batch_size))

    @abc.abstractmethod
    def epoch(self, batch_size: int) -> Iterator[Events]:
        """One pass over the data in batches of ``batch_size``, already on ``self.device``."""

    def fingerprint(self) -> dict[str, Any]:
        """Cheap summary of the data, checked when a run is resumed."""
        return {"n": len(self)}


class InMemorySource(BatchSource):
    """Events held in memory (on the device if they fit), batched by one permutation per epoch.

    Batches have equal sizes (``n`` split into ``ceil(n / batch_size)`` near-equal parts), so
    no tiny final batch perturbs the last step of an epoch.
    """

    def __init__(self, events: Events, device: torch.device, seed: int) -> None:
        self.device = device
        on_device = fits_on_device(events_nbytes(events), device)
        self.events = events.to(device) if on_device else events.to("cpu")
        self.generator = torch.Generator(device=self.events.device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.events)

    def epoch(self, batch_size: int) -> Iterator[Events]:
        n = len(self.events)
        perm = torch.randperm(n, generator=self.generator, device=self.generator.device)
        for index in perm.tensor_split(self.n_batches(batch_size)):
            index = index.tensor_split(self.shard[1])[self.shard[0]] if self.shard[1] > 1 else index
            batch = self.events[index]
            yield batch if batch.device == self.device else batch.to(self.device)

    def fingerprint(self) -> dict[str, Any]:
        return {"n": len(self.events), "x_sum": float(self.events.x.double().sum())}


class StreamedSource(BatchSource):
    """Batches read from a store, shuffled by the store with our generator."""

    def __init__(self, stream: EventStream, device: torch.device, seed: int) -> None:
        self.stream = stream
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.stream)

    def epoch(self, batch_size: int) -> Iterator[Events]:
        for batch in self.stream.batches(batch_size, shuffle=True, generator=self.generator):
            if self.shard[1] > 1:
                batch = batch[torch.arange(len(batch)).tensor_split(self.shard[1])[self.shard[0]]]
            yield batch.to(self.device)
