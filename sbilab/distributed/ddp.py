r"""Data-parallel launches: W training processes on this machine, started the way ``torchrun`` does, with a deadline.

:func:`launch` spawns ``world_size`` processes (spawn start method), gives each the environment
``torchrun`` gives (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT`` = a free port) and ``threads`` compute threads, and
runs the target in each: a function named ``"package.module:attr"`` (or a module-level
function) called with ``args``, or a script ``path.py`` run as ``__main__``. Inside, a
:class:`~sbilab.training.distributed.DataParallel` built with no arguments joins the group.

Failures end the launch instead of hanging it: a rank that raises or dies ends every rank and
:class:`~sbilab.exceptions.WorkerError` names it (with its traceback); ranks still running at
``timeout`` seconds are ended and reported. The targets' return values come back through
files written with ``torch.save`` and read with ``weights_only=True`` (tensors, numbers,
strings, lists and dicts; no pickled objects).

For several machines use ``torchrun --nnodes N --rdzv-endpoint host:port script.py``: the
script is the same.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.multiprocessing as tmp

from ..exceptions import ConfigError, WorkerError
from .engines import limit_threads
from .specs import resolve_reference

__all__ = ["launch", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _target(target: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(target):
        return target
    if target.endswith(".py"):
        path = Path(target).resolve()

        def script(*args: Any) -> None:
            sys.argv = [str(path), *map(str, args)]
            runpy.run_path(str(path), run_name="__main__")

        return script
    function = resolve_reference(target, "launch")
    if not callable(function):
        raise ConfigError(f"launch: {target!r} is a {type(function).__name__}, not a function.")
    return function


def _rank_main(rank: int, target: str | Callable[..., Any], args: tuple, world_size: int, port: int, threads: int,
               folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    limit_threads(threads)
    result = _target(target)(*args)
    torch.save(result, Path(folder) / f"rank{rank}.pt")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch(target: str | Callable[..., Any], world_size: int = 2, *, args: Sequence[Any] = (), timeout: float = 600.0,
           threads: int = 1) -> list[Any]:
    """Run ``target`` in ``world_size`` processes of one torch.distributed group; returns each rank's result.

    Args:
        target: ``"package.module:attr"`` of a function, a module-level function, or a ``.py`` script.
        world_size: Number of processes.
        args: Positional arguments of the function (strings for a script's ``sys.argv``); they
            travel to the processes by pickling, so keep them to plain values.
        timeout: Seconds until every rank still running is ended and :class:`WorkerError` raised.
        threads: Torch/BLAS threads per process.

    Returns:
        The return value of the target on each rank, rank 0 first (``None`` for scripts).

    Raises:
        ConfigError: bad ``world_size``/``timeout`` or a target that cannot be resolved.
        WorkerError: a rank raised, died, or did not finish within ``timeout`` (``rank`` attribute).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"launch: world_size must be a positive integer, got {world_size!r}.")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigError(f"launch: timeout must be a positive number of seconds, got {timeout!r}.")
    if isinstance(target, str) and not target.endswith(".py"):
        _target(target)  # a bad reference fails here, not in W processes
    elif isinstance(target, str) and not Path(target).is_file():
        raise ConfigError(f"launch: script {target!r} does not exist.")
    with tempfile.TemporaryDirectory(prefix="sbilab-launch-") as folder:
        context = tmp.start_processes(_rank_main, args=(target, tuple(args), world_size, free_port(), threads, folder),
                                      nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    running = [r for r, p in enumerate(context.processes) if p.is_alive()]
                    for p in context.processes:
                        if p.is_alive():
                            p.terminate()
                    for p in context.processes:
                        p.join(5)
                        if p.is_alive():
                            p.kill()
                    error = WorkerError(
                        f"launch: rank(s) {running} of {world_size} did not finish within timeout={timeout:g} s and were ended; "
                        "a rank waiting for a dead or stuck peer, or a run longer than the timeout (raise timeout=)."
                    )
                    error.rank = running[0] if running else None
                    raise error
        except tmp.ProcessRaisedException as err:
            last = [line for line in str(err).splitlines() if line.strip()][-1:] or ["an exception"]
            error = WorkerError(f"launch: rank {err.error_index} of {world_size} raised {last[0].strip()}; the other ranks were ended.\n{err}")
            error.rank = err.error_index
            raise error from None
        except tmp.ProcessExitedException as err:
            error = WorkerError(
                f"launch: rank {err.error_index} of {world_size} died (exit code {err.exit_code}, signal {err.signal_name}); "
                "the other ranks were ended. Resume from the checkpoint with the same number of processes."
            )
            error.rank = err.error_index
            raise error from None
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
