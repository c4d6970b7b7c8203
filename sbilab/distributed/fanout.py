r"""Simulation fan-out: N events simulated in chunks on an executor, committed into a store.

:func:`simulate_to_store` splits N events into chunks of ``chunk_size``, runs each chunk on a
worker (``concurrent.futures`` processes by default, Dask ``distributed`` for clusters; see
:mod:`.engines`) and commits every finished chunk into a
:class:`~sbilab.store.SimulationStore` with the store's crash-safe commit, one store chunk per
simulation chunk, **in chunk order**. Hence:

* **The same events whatever the number of workers.** Chunk ``i`` draws from a
  ``torch.Generator`` seeded by the ``i``-th child of ``numpy.random.SeedSequence(seed)``
  (``SeedSequence(seed, spawn_key=(i,))``: independent streams, the construction numpy
  recommends for parallel streams), so its events depend on ``(seed, i)`` only, and the
  store's rows come in chunk order. 1, 2 or 100 workers write identical stores.
* **The store never holds a partial chunk.** A chunk is one atomic commit; a driver killed at
  any moment leaves the committed chunks 0..k-1, and ``resume=True`` continues at chunk k
  (the store records the fan-out's spec, seed and chunk size and refuses a different one).
* **A worker killed mid-chunk costs its chunk only:** the chunk is simulated again, with the
  same seed, so the store is the same as without the kill (``"processes"``: Python's pool
  breaks when a worker dies, so every chunk in flight at that moment — at most one per
  worker — is redone on a new pool; Dask reschedules the dead worker's task itself).
* **A worker that raises** stops the run with :class:`~sbilab.exceptions.WorkerError` naming
  the chunk, its events and seed, and the exception (chained as ``__cause__``); the chunks
  before it are committed and kept (``resume=True`` continues once the cause is fixed).

Tasks: ``"simulate"`` (``simulator.simulate`` at a fixed ``theta`` or at proposal draws),
``"augment"`` (the same plus joint log-ratio and joint score, :func:`~sbilab.simulators.augment`),
``"ratio_training_data"`` (``2 * chunk_size`` rows per chunk: n at proposal points, n at the
reference) and ``"score_training_data"``. The identity checks of augmented data
(:mod:`sbilab.simulators.checks`, on by default: ``check="raise"``) run **per chunk**, in the
worker, on the chunk's events — a failing chunk is reported like any raising worker. Per-chunk
checks see ``chunk_size`` events each: their power is that of one chunk, and with the checks'
5σ threshold the false-alarm rate is about 10⁻⁴ per chunk, so runs of thousands of chunks may
prefer ``check="warn"`` (and a check of a large sample read back from the store).

Example:
    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/gauss.sbistore"
    >>> res = simulate_to_store("gaussian", 250, path, chunk_size=100, seed=3, engine="serial", progress=False)
    >>> res.rows, res.chunks, SimulationStore.open(path).n_chunks
    (250, 3, 3)
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import ConfigError, StoreError, WorkerError
from ..simulators.augment import augment, ratio_training_data, score_training_data
from ..simulators.checks import CheckMode
from ..store import SimulationStore
from .engines import Engine, limit_threads, make_engine
from .specs import SimulatorSpec

__all__ = ["simulate_to_store", "FanoutResult", "Task", "chunk_seed", "run_chunk"]

Task = Literal["simulate", "augment", "ratio_training_data", "score_training_data"]
_TASKS = ("simulate", "augment", "ratio_training_data", "score_training_data")
_CHECKS = ("raise", "warn", "off")


def chunk_seed(seed: int, index: int) -> int:
    """Seed of chunk ``index``: the ``index``-th child of ``SeedSequence(seed)``, as a 63-bit integer.

    Example:
        >>> chunk_seed(0, 1) == chunk_seed(0, 1) != chunk_seed(0, 2)
        True
    """
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@functools.lru_cache(maxsize=4)
def _simulator(spec_json: str) -> Any:
    return SimulatorSpec.from_dict(json.loads(spec_json)).build()


def run_chunk(spec: dict[str, Any], task: str, n: int, seed: int, theta: list[float] | None, check: str,
              threads: int) -> tuple[dict[str, np.ndarray], float]:
    """One chunk, in a worker: build (once per process) the simulator of ``spec`` and run ``task``.

    Returns:
        The chunk's Events as numpy arrays by field, and the CPU seconds the worker spent on it.
    """
    limit_threads(threads)
    started = time.process_time()
    simulator = _simulator(json.dumps(spec, sort_keys=True))
    generator = torch.Generator().manual_seed(seed)
    if task in ("simulate", "augment"):
        point = None if theta is None else torch.tensor(theta, dtype=torch.get_default_dtype())
        events = simulator.simulate(n, theta=point, generator=generator)
        if task == "augment":
            events = augment(simulator, events, check=check)  # type: ignore[arg-type]
    elif task == "ratio_training_data":
        events = ratio_training_data(simulator, n, generator=generator, check=check)  # type: ignore[arg-type]
    else:
        events = score_training_data(simulator, n, generator=generator, check=check)  # type: ignore[arg-type]
    arrays = {name: t.detach().cpu().numpy() for name, t in events.tensors().items()}
    return arrays, time.process_time() - started


@dataclass(frozen=True)
class FanoutResult:
    """What :func:`simulate_to_store` did.

    Attributes:
        path: The store directory.
        rows: Rows in the store now.
        chunks: Chunks of the whole run (all committed now).
        committed: Chunks committed by this call (fewer than ``chunks`` after a resume).
        redone: Chunks run again because their worker died, in the order they were lost.
        seconds: Wall time of this call.
        worker_cpu_seconds: CPU seconds the workers spent in the committed chunks of this call.
        engine: ``"processes"``, ``"dask"``, ``"serial"`` or the executor's class name.
        workers: Number of workers the engine had at the start.
    """

    path: Path
    rows: int
    chunks: int
    committed: int
    redone: tuple[int, ...]
    seconds: float
    worker_cpu_seconds: float
    engine: str
    workers: int


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"simulate: {name} must be a positive integer, got {value!r}.")
    return value


def simulate_to_store(
    simulator: SimulatorSpec | str | Mapping[str, Any],
    n: int,
    store: str | os.PathLike,
    *,
    options: Mapping[str, Any] | None = None,
    task: Task = "simulate",
    theta: Sequence[float] | None = None,
    chunk_size: int = 10_000,
    seed: int = 0,
    engine: Any = "processes",
    workers: int = 2,
    threads: int = 1,
    scheduler: str | None = None,
    timeout: float = 30.0,
    check: CheckMode = "raise",
    retries: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> FanoutResult:
    r"""Simulate ``n`` events (``task``) in chunks on ``engine`` and commit them into the store at ``store``.

    Args:
        simulator: A :class:`SimulatorSpec`, a registered toy name (``"gaussian"``) or an
            importable ``"package.module:attr"`` (see :mod:`sbilab.distributed.specs` for what a
            user's simulator needs). Simulator *objects* are refused: they cannot travel.
        n: Number of events (for ``"ratio_training_data"``: per class, the store gets ``2 n`` rows).
        store: Path of the new store directory (or of the store to continue, ``resume=True``).
        options: JSON keyword options of the toy or factory (when ``simulator`` is a string).
        task: ``"simulate"``, ``"augment"``, ``"ratio_training_data"`` or ``"score_training_data"``.
        theta: Fixed parameter point ``(P,)`` of ``"simulate"``/``"augment"``; default: proposal draws.
        chunk_size: Events per chunk (per class for ratio data); each chunk is one task and one commit.
        seed: Seed of the whole run; chunk ``i`` uses :func:`chunk_seed` ``(seed, i)``.
        engine: ``"processes"`` (default), ``"dask"`` (a LocalCluster of ``workers`` processes),
            ``"serial"``, a ``concurrent.futures.Executor`` or a ``distributed.Client``.
        workers: Worker processes started here (``"processes"``, Dask LocalCluster).
        threads: Torch/BLAS threads per worker.
        scheduler: Address of a running Dask scheduler (``"tcp://host:8786"``); implies Dask.
        timeout: Seconds to wait for the scheduler to answer.
        check: Identity checks of augmented data per chunk: ``"raise"``, ``"warn"`` or ``"off"``.
        retries: How often one chunk may be lost to a dying worker before the run stops.
        resume: Continue a store written by an interrupted call with the same arguments.
        overwrite: Replace an existing store at ``store``.
        progress: Show a progress bar over committed events (stderr).

    Returns:
        :class:`FanoutResult`.

    Raises:
        ConfigError: a bad option, or a simulator that cannot be sent to workers (the message says
            what to pass instead).
        SchedulerTimeoutError: ``scheduler`` does not answer within ``timeout``.
        WorkerError: a chunk raised in its worker, or was lost more than ``retries`` times; the
            chunks before it are committed.
        StoreError: ``store`` exists (without ``resume``/``overwrite``) or was written by a
            different fan-out.
    """
    spec = SimulatorSpec.of(simulator, options)
    n, chunk_size = _positive("n", n), _positive("chunk_size", chunk_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"simulate: seed must be a non-negative integer, got {seed!r}.")
    if task not in _TASKS:
        raise ConfigError(f"simulate: task={task!r}; choose one of {_TASKS}.")
    if check not in _CHECKS:
        raise ConfigError(f"simulate: check={check!r}; choose one of {_CHECKS}.")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"simulate: retries must be a non-negative integer, got {retries!r}.")
    if theta is not None and task not in ("simulate", "augment"):
        raise ConfigError(f"simulate: theta= fixes the point of task 'simulate' or 'augment'; task {task!r} draws its own points.")
    sim = spec.build()  # fails here, before any worker starts, on bad names or options
    point = None if theta is None else [float(v) for v in torch.as_tensor(theta, dtype=torch.float64).reshape(-1)]
    if point is not None:
        sim.space.check(torch.tensor([point], dtype=torch.get_default_dtype()), argument="simulate: theta")
    n_chunks = math.ceil(n / chunk_size)
    per_row = 2 if task == "ratio_training_data" else 1
    plan = {"spec": spec.to_dict(), "task": task, "n": n, "chunk_size": chunk_size, "seed": seed, "theta": point}
    started = time.perf_counter()
    eng = make_engine(engine, workers=workers, threads=threads, scheduler=scheduler, timeout=timeout, where="simulate")
    try:
        target = _open_store(Path(store), sim, plan, seed, chunk_size * per_row, resume=resume, overwrite=overwrite)
        first = len(target) // (chunk_size * per_row)
        with target, tqdm(total=n * per_row, initial=len(target), unit="ev", desc="simulate", disable=not progress) as bar:
            redone, cpu = _drive(eng, target, spec, plan, range(first, n_chunks), threads, check, retries, bar)
    finally:
        eng.close()
    return FanoutResult(
        path=Path(store), rows=len(target), chunks=n_chunks, committed=n_chunks - first, redone=tuple(redone),
        seconds=time.perf_counter() - started, worker_cpu_seconds=cpu, engine=eng.name, workers=eng.workers,
    )


def _open_store(path: Path, sim: Any, plan: dict[str, Any], seed: int, rows_per_chunk: int, *, resume: bool,
                overwrite: bool) -> SimulationStore:
    """A new store for ``plan``, or (``resume``) the store an earlier call with the same plan left."""
    if resume and path.exists():
        store = SimulationStore.open(path, mode="a")
        recorded = store.metadata.get("extra", {}).get("fanout")
        if recorded != json.loads(json.dumps(plan)):
            store.close()
            raise StoreError(
                f"simulate: {path} was written by a different fan-out ({recorded}); resume needs the same simulator, options, "
                f"task, n, chunk_size, seed and theta ({plan}). Use another path, or overwrite=True to start again."
            )
        if len(store) % rows_per_chunk and len(store) != plan["n"] * (rows_per_chunk // plan["chunk_size"]):
            store.close()
            raise StoreError(f"simulate: {path} holds {len(store)} rows, not whole chunks of {rows_per_chunk}; it was not written by simulate_to_store.")
        return store
    return SimulationStore.create(path, simulator=sim, seed=seed, extra={"fanout": plan}, max_chunk_rows=rows_per_chunk,
                                  overwrite=overwrite)


def _drive(eng: Engine, store: SimulationStore, spec: SimulatorSpec, plan: dict[str, Any], chunks: range, threads: int,
           check: str, retries: int, bar: tqdm) -> tuple[list[int], float]:
    """Submit chunks (at most two per worker in flight), commit finished ones in order, redo lost ones."""
    todo = list(chunks)  # a heap: the lowest chunk first, lost chunks before new ones
    inflight: dict[Any, tuple[int, int]] = {}  # future -> (chunk, pool generation)
    finished: dict[int, tuple[dict[str, np.ndarray], float]] = {}
    losses: dict[int, int] = {}
    redone: list[int] = []
    generation, cpu = 0, 0.0
    next_commit = chunks.start
    failure: tuple[int, BaseException] | None = None
    window = 2 * max(eng.workers, 1)
    n, size = plan["n"], plan["chunk_size"]

    def submit(i: int) -> None:
        count = min(size, n - i * size)
        future = eng.submit(run_chunk, spec.to_dict(), plan["task"], count, chunk_seed(plan["seed"], i), plan["theta"], check, threads)
        inflight[future] = (i, generation)

    while next_commit < chunks.stop:
        while failure is None and todo and len(inflight) < window and (len(finished) < 2 * window or todo[0] <= next_commit):
            submit(heapq.heappop(todo))
        assert inflight, "fan-out: nothing in flight and chunks left to commit"
        restart = False
        for future in eng.wait(inflight):
            i, born = inflight.pop(future)
            status, value = eng.outcome(future)
            if status == "ok":
                finished[i] = value
            elif status == "lost":
                losses[i] = losses.get(i, 0) + 1
                if losses[i] > retries:
                    failure = failure or (i, value)
                else:
                    redone.append(i)
                    heapq.heappush(todo, i)
                    restart = restart or born == generation
            elif failure is None or i < failure[0]:
                failure = (i, value)
        if restart and failure is None:
            eng.restart()
            generation += 1
        while next_commit in finished and (failure is None or next_commit < failure[0]):
            arrays, seconds = finished.pop(next_commit)
            store.append(Events(**{k: torch.from_numpy(v) for k, v in arrays.items()}))
            cpu += seconds
            bar.update(len(next(iter(arrays.values()))))
            next_commit += 1
        if failure is not None and not any(j < failure[0] for j, _ in inflight.values()):
            eng.cancel(list(inflight))
            _raise(failure, losses, retries, store, next_commit, plan)
    return redone, cpu


def _raise(failure: tuple[int, BaseException], losses: dict[int, int], retries: int, store: SimulationStore,
           committed: int, plan: dict[str, Any]) -> None:
    i, err = failure
    size, n = plan["chunk_size"], plan["n"]
    what = f"chunk {i} (events {i * size}..{min(n, (i + 1) * size)}, seed {chunk_seed(plan['seed'], i)})"
    kept = f"chunks 0..{committed - 1} ({len(store)} rows) are committed in {store.path}" if committed else f"no chunk is committed in {store.path}"
    if losses.get(i, 0) > retries:
        cause = f"its worker died {losses[i]} times (last: {type(err).__name__}: {err}); the simulator may crash its process (memory, a C extension)"
    else:
        cause = f"it raised {type(err).__name__}: {err}"
    error = WorkerError(f"simulate: {what} failed: {cause}. {kept}; fix the cause and call again with resume=True to continue.")
    error.chunk = i
    raise error from err
