r"""Executors the fan-out runs on: ``concurrent.futures`` processes locally, Dask ``distributed`` on clusters.

No scheduler of our own: an engine only submits a task, waits for the first finished ones and
says how each ended — ``"ok"`` (its value), ``"lost"`` (the worker process died: the task can be
run again) or ``"raised"`` (the task's own exception: running it again would raise again).

* ``"processes"`` — a :class:`~concurrent.futures.ProcessPoolExecutor` with the *spawn* start
  method (no fork of a process holding torch threads or open HDF5 files); each worker pins
  torch, OpenMP and BLAS to ``threads`` threads in its initialiser. A worker killed by a
  signal breaks the whole pool (Python's design): the chunks in flight then are reported
  ``"lost"`` and the engine starts a new pool (:meth:`FuturesEngine.restart`).
* ``"dask"`` — a :class:`distributed.Client` of a scheduler address, or of a
  :class:`distributed.LocalCluster` started here (``processes=True``, one thread per worker).
  Dask itself reschedules the task of a dead worker; only a task that has killed
  ``distributed.scheduler.allowed-failures`` workers comes back ``"lost"`` (``KilledWorker``).
* ``"serial"`` — runs each task in the calling process at submission (debugging, references).

Dask is an optional extra: ``pip install 'sbilab[dask]'`` (``dask[distributed]``).
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Literal

from ..exceptions import ConfigError, SchedulerTimeoutError

__all__ = ["Engine", "FuturesEngine", "DaskEngine", "make_engine", "limit_threads", "Outcome"]

Outcome = Literal["ok", "lost", "raised"]
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
_limited: list[int] = []


def limit_threads(threads: int) -> None:
    """Pin this process to ``threads`` compute threads: torch, OpenMP/BLAS variables, threadpoolctl if present.

    Called by every worker (initialiser of the process pool, first task on a Dask worker);
    calling it again with the same value does nothing.
    """
    if _limited and _limited[0] == threads:
        return
    import torch

    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS libraries loaded later read the variables above
        pass
    else:
        threadpool_limits(threads)
    _limited[:] = [threads]


class Engine(abc.ABC):
    """Interface: ``submit``, ``wait``, ``outcome``, ``restart``, ``close``; ``workers`` and ``name``."""

    name: str
    workers: int

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)`` on a worker; returns its future."""

    @abc.abstractmethod
    def wait(self, futures: Iterable[Any]) -> set[Any]:
        """Block until at least one of ``futures`` has finished; returns the finished ones."""

    @abc.abstractmethod
    def outcome(self, future: Any) -> tuple[Outcome, Any]:
        """``("ok", value)``, ``("lost", exception)`` or ``("raised", exception)``."""

    def restart(self) -> None:
        """Make the engine usable again after ``"lost"`` tasks (a new pool where the old one broke)."""

    def cancel(self, futures: Iterable[Any]) -> None:
        for f in futures:
            f.cancel()

    def close(self) -> None:
        """Release the workers the engine started (never an executor or client the user passed)."""


class _Serial(cf.Executor):
    """An executor that runs each task when it is submitted, in the calling process."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(err)
        return future


class FuturesEngine(Engine):
    """A ``concurrent.futures`` executor: a spawn process pool started here, the serial one, or the user's."""

    def __init__(self, kind: Literal["processes", "serial"] | cf.Executor, workers: int, threads: int) -> None:
        self.threads = threads
        self._owned = not isinstance(kind, cf.Executor)
        if isinstance(kind, cf.Executor):
            self.name, self.workers = type(kind).__name__, int(getattr(kind, "_max_workers", workers))
            self._executor = kind
        elif kind == "serial":
            limit_threads(threads)
            self.name, self.workers, self._executor = "serial", 1, _Serial()
        else:
            self.name, self.workers = "processes", workers
            self._executor = self._pool()

    def _pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=limit_threads, initargs=(self.threads,))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(fn, *args)

    def wait(self, futures: Iterable[Any]) -> set[Any]:
        done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
        return set(done)

    def outcome(self, future: Any) -> tuple[Outcome, Any]:
        if future.cancelled():
            return "lost", cf.CancelledError()
        err = future.exception()
        if err is None:
            return "ok", future.result()
        return ("lost" if isinstance(err, BrokenProcessPool) else "raised"), err

    def restart(self) -> None:
        if not self._owned or self.name != "processes":
            return
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._pool()

    def close(self) -> None:
        if self._owned:
            self._executor.shutdown(wait=True, cancel_futures=True)


class DaskEngine(Engine):
    """A Dask ``distributed`` client: of ``scheduler`` (an address), of a client passed in, or of a LocalCluster."""

    name = "dask"

    def __init__(self, *, scheduler: str | None = None, client: Any = None, workers: int = 2, threads: int = 1,
                 timeout: float = 30.0) -> None:
        try:
            import distributed
        except ImportError:
            raise ConfigError(
                "simulate: engine='dask' needs the optional extra dask: pip install 'sbilab[dask]' (dask[distributed])."
            ) from None
        self._distributed = distributed
        self.threads = threads
        self._cluster = None
        if client is not None:
            self._client, self._owned = client, False
        elif scheduler is not None:
            self._client, self._owned = self._connect(scheduler, timeout), True
        else:
            self._cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                     dashboard_address=None, silence_logs=40)
            self._client, self._owned = distributed.Client(self._cluster, timeout=timeout), True
        self.workers = max(1, len(self._client.scheduler_info(n_workers=-1).get("workers", {})) or workers)

    def _connect(self, address: str, timeout: float) -> Any:
        if not isinstance(address, str) or "://" not in address and ":" not in address:
            raise ConfigError(f"simulate: scheduler={address!r} is not a Dask scheduler address; give e.g. 'tcp://host:8786'.")
        try:
            return self._distributed.Client(address, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise SchedulerTimeoutError(
                f"simulate: the Dask scheduler at {address!r} did not answer within timeout={timeout:g} s ({err}). "
                "Check that the scheduler runs, the address and port (e.g. 'tcp://host:8786') and the network path, "
                "or raise timeout=. Nothing was written."
            ) from None
        except ValueError as err:
            raise ConfigError(f"simulate: scheduler={address!r} is not a Dask scheduler address ({err}); give e.g. 'tcp://host:8786'.") from None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._client.submit(fn, *args, pure=False)

    def wait(self, futures: Iterable[Any]) -> set[Any]:
        done, _ = self._distributed.wait(list(futures), return_when="FIRST_COMPLETED")
        return set(done)

    def outcome(self, future: Any) -> tuple[Outcome, Any]:
        if future.status == "finished":
            return "ok", future.result()
        if future.status == "cancelled":
            return "lost", cf.CancelledError()
        err = future.exception()
        return ("lost" if isinstance(err, self._distributed.KilledWorker) else "raised"), err

    def cancel(self, futures: Iterable[Any]) -> None:
        futures = list(futures)
        if futures:
            self._client.cancel(futures)

    def close(self) -> None:
        if self._owned:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()

    @property
    def client(self) -> Any:
        return self._client


def make_engine(engine: Any, *, workers: int, threads: int, scheduler: str | None, timeout: float, where: str) -> Engine:
    """The engine for ``engine`` (``"processes"``, ``"dask"``, ``"serial"``, an Executor or a Dask Client).

    Raises:
        ConfigError: unknown engine, non-positive ``workers``/``threads``/``timeout``, Dask missing.
        SchedulerTimeoutError: ``scheduler`` does not answer within ``timeout`` seconds.
    """
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}.")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}.")
    if scheduler is not None:
        if engine not in ("dask", "processes"):
            raise ConfigError(f"{where}: scheduler= is a Dask address; it cannot be combined with engine={engine!r}.")
        return DaskEngine(scheduler=scheduler, threads=threads, timeout=timeout)
    if isinstance(engine, cf.Executor):
        return FuturesEngine(engine, workers, threads)
    if engine in ("processes", "serial"):
        return FuturesEngine(engine, workers, threads)
    if engine == "dask":
        return DaskEngine(workers=workers, threads=threads, timeout=timeout)
    if type(engine).__name__ == "Client" and hasattr(engine, "submit") and hasattr(engine, "scheduler_info"):
        return DaskEngine(client=engine, threads=threads, timeout=timeout)
    raise ConfigError(
        f"{where}: engine={engine!r}; use 'processes' (local, default), 'dask' (a LocalCluster, or scheduler='tcp://host:8786' "
        "for a cluster), 'serial', a concurrent.futures.Executor or a distributed.Client."
    )
