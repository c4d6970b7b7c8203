r"""Scale-out on CPU: simulation fan-out (processes, Dask), DDP 2 processes vs 1, batched vs sequential replicas.

Usage: ``python benchmarks/scaling.py [--quick] [--json] [--no-dask]`` (``--quick`` < 60 s on 2 idle cores).

Three measurements, each against its reference in the same run, every process pinned to 1 torch/BLAS thread:

1. **Simulation fan-out** (:func:`sbilab.distributed.simulate_to_store`). The simulator is
   :class:`BurnGaussian` — the Gaussian toy plus ``cost_ms`` of *CPU* time per event (a busy loop on
   the process clock: a fixed compute cost, like a real generator, unlike a sleep) — run for
   ``n`` events in chunks of ``chunk`` into a store, on the in-process ``"serial"`` engine and
   on 1 and 2 workers of a ``concurrent.futures`` spawn pool and of a Dask ``LocalCluster``.
   Pools and clusters are started and warmed (imports, simulator built) before the clock
   starts; their start-up is reported apart (``startup_s``). Efficiency = events/s with 2
   workers / (2 × events/s with 1 worker of the same engine): 1 is ideal. The driver's serial
   share — receiving a chunk and committing it to the store — is its own CPU time per chunk
   (``driver_cpu_s_per_chunk``; on the serial engine the simulator's CPU time is subtracted):
   a CPU-time figure, so it does not grow with the machine's load as wall times do.
2. **DDP** (:func:`sbilab.distributed.launch` + ``fit(..., parallel=DataParallel())``, gloo):
   a 3×256 MLP regression (8 inputs), fixed epochs, trained by 2 processes and by 1 plain
   ``fit`` with the same global batch. ``ddp_epoch_ratio`` = median epoch time with 2 processes
   / with 1 (< 1 is a speed-up); ``ddp_matches_single``: the validation-loss histories agree to
   10⁻⁴ (relative) and the trained networks' predictions on fresh inputs to 10⁻³ of their
   spread, and both ranks hold identical weights. (The weights themselves differ by more than
   float32 rounding after a few hundred Adam steps: gradients summed in another order differ in
   the last bits, and Adam's step g/√v turns near-zero gradients into steps of ±lr whatever
   their size; the largest relative weight difference is reported.)
3. **Replicas** (:func:`sbilab.distributed.train_replicas`): K bootstrap replicas of
   ``demo_recipe`` as one batched ensemble (one ``fit``) vs K separate ``fit`` calls
   (``groups=K``) in the same process; ``replica_speedup`` = sequential / batched wall time
   (members equal in both, checked). Also the K replicas as 2 groups on a warm 2-process pool
   (ensemble parallelism).

Timings on the shared 2-core machine are noisy (other jobs compete for the cores): read the
ratios with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sbilab import Events
from sbilab.simulators import GaussianLatent
from sbilab.training import fit

HERE = Path(__file__).resolve().parent
RECIPE = "sbilab.distributed.replicas:demo_recipe"


class BurnGaussian(GaussianLatent):
    """The Gaussian toy plus ``cost_ms`` milliseconds of CPU time per event (sent to workers as ``"scaling:BurnGaussian"``)."""

    def __init__(self, cost_ms: float = 1.0, **options: Any) -> None:
        super().__init__(**options)
        self.cost_ms = cost_ms

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Any:
        end = time.process_time() + self.cost_ms * 1e-3 * len(theta)
        while time.process_time() < end:
            pass
        return super().sample(theta, generator)


def regression(n: int, seed: int = 0) -> Events:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :4].sum(-1, keepdim=True) - x[:, 4:].prod(-1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return Events(x=x, theta=y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 1))


def mse(model: nn.Module, batch: Events) -> Tensor:
    return (model(batch.x) - batch.theta).pow(2).squeeze(-1)


def ddp_train(n: int, epochs: int, batch: int, parallel: bool = True) -> dict[str, Any]:
    """On every rank of a launch (or in one process with ``parallel=False``): the same training."""
    from sbilab.training import DataParallel

    group = DataParallel(timeout=300) if parallel else None
    res = fit(mlp(), mse, regression(n), epochs=epochs, batch_size=batch, patience=None, validation_fraction=0.1,
              learning_rate=1e-3, seed=1, progress=False, parallel=group)
    with torch.no_grad():
        prediction = res.model(regression(2048, seed=9).x).squeeze(-1)
    return {"state": res.model.state_dict(), "time": res.history["time"], "val_loss": res.history["val_loss"],
            "prediction": prediction}


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def load() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------------- fan-out
def fanout(n: int, chunk: int, cost_ms: float, use_dask: bool, folder: Path) -> dict[str, Any]:
    from sbilab.distributed import simulate_to_store
    from sbilab.distributed.engines import limit_threads

    spec = {"cost_ms": cost_ms}
    runs: dict[str, Any] = {}
    counter = iter(range(1000))

    def run(engine: Any, name: str) -> dict[str, Any]:
        simulate_to_store("scaling:BurnGaussian", 2 * chunk, folder / f"warm{next(counter)}", options=spec, chunk_size=chunk,
                          seed=1, engine=engine, progress=False)  # imports and the simulator, in every worker
        cpu = time.process_time()
        res = simulate_to_store("scaling:BurnGaussian", n, folder / f"{name}", options=spec, chunk_size=chunk, seed=0,
                                engine=engine, progress=False)
        driver = time.process_time() - cpu - (res.worker_cpu_seconds if name == "serial" else 0.0)
        out = {"seconds": res.seconds, "events_per_s": n / res.seconds, "worker_cpu_s": res.worker_cpu_seconds,
               "driver_cpu_s_per_chunk": driver / res.chunks, "chunks": res.chunks, "load": load()}
        log(f"  {name:12s} {out['events_per_s']:8.0f} ev/s  {res.seconds:6.2f} s  driver {1e3 * out['driver_cpu_s_per_chunk']:.1f} "
            f"ms CPU/chunk  (load {out['load']:.1f})")
        return out

    log(f"fan-out: {n} events, {cost_ms} ms CPU each, chunks of {chunk}")
    runs["serial"] = run("serial", "serial")
    for workers in (1, 2):
        started = time.perf_counter()
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=limit_threads,
                                      initargs=(1,))
        try:
            list(pool.map(abs, range(workers)))
            startup = time.perf_counter() - started
            runs[f"processes{workers}"] = {**run(pool, f"processes{workers}"), "startup_s": startup}
        finally:
            pool.shutdown()
    if use_dask:
        import distributed

        for workers in (1, 2):
            started = time.perf_counter()
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                               silence_logs=40)
            client = distributed.Client(cluster, timeout=120)
            try:
                client.wait_for_workers(workers, timeout=180)
                startup = time.perf_counter() - started
                runs[f"dask{workers}"] = {**run(client, f"dask{workers}"), "startup_s": startup}
            finally:
                client.close()
                cluster.close()
    efficiency = {kind: runs[f"{kind}2"]["events_per_s"] / (2 * runs[f"{kind}1"]["events_per_s"])
                  for kind in ("processes", "dask") if f"{kind}2" in runs}
    return {"runs": runs, "efficiency": efficiency}


# ---------------------------------------------------------------------------------------------- DDP
def ddp(n: int, epochs: int, batch: int) -> dict[str, Any]:
    from sbilab.distributed import launch

    log(f"DDP: 3x256 MLP, {n} events, batch {batch}, {epochs} epochs; 1 process ...")
    single = ddp_train(n, epochs, batch, parallel=False)
    log("  2 gloo processes ...")
    ranks = launch("scaling:ddp_train", 2, args=(n, epochs, batch), timeout=580)
    rel = max(float(((ranks[0]["state"][k] - v).abs().max() / v.abs().max().clamp_min(1e-12)))
              for k, v in single["state"].items())
    pred = float((ranks[0]["prediction"] - single["prediction"]).abs().max() / single["prediction"].std())
    val = float((torch.tensor(ranks[0]["val_loss"]) / torch.tensor(single["val_loss"]) - 1).abs().max())
    same_ranks = all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in single["state"])
    t1 = statistics.median(single["time"][1:] or single["time"])
    t2 = statistics.median(ranks[0]["time"][1:] or ranks[0]["time"])
    out = {"epoch_s_1": t1, "epoch_s_2": t2, "ratio": t2 / t1, "weights_max_rel_diff": rel, "prediction_max_diff_over_std": pred,
           "val_loss_max_rel_diff": val, "ranks_identical": same_ranks, "matches": pred < 1e-3 and val < 1e-4 and same_ranks,
           "load": load()}
    log(f"  epoch {t1:.2f} s (1) vs {t2:.2f} s (2): ratio {t2 / t1:.2f}; weights rel diff {rel:.1e}, predictions {pred:.1e} "
        f"of their std, val loss {val:.1e} (load {out['load']:.1f})")
    return out


# ---------------------------------------------------------------------------------------------- replicas
def replicas(k: int, n: int, hidden: int, epochs: int) -> dict[str, Any]:
    from sbilab.distributed import train_replicas
    from sbilab.distributed.engines import limit_threads

    opts = dict(options={"n": n, "hidden": hidden}, bootstrap=True, seed=0,
                fit_options={"epochs": epochs, "patience": None, "batch_size": 256}, progress=False)
    log(f"replicas: {k} bootstrap replicas of demo_recipe(n={n}, hidden={hidden}), {epochs} epochs")
    train_replicas(RECIPE, 2, **{**opts, "fit_options": {"epochs": 1, "patience": None}})  # warm-up
    batched = train_replicas(RECIPE, k, **opts)
    sequential = train_replicas(RECIPE, k, groups=k, **opts)
    pool = cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=limit_threads, initargs=(1,))
    try:
        train_replicas(RECIPE, 2, engine=pool, groups=2, **{**opts, "fit_options": {"epochs": 1, "patience": None}})  # warm
        two = train_replicas(RECIPE, k, engine=pool, groups=2, **opts)
    finally:
        pool.shutdown()
    params = batched.ensemble.stacked_parameters()
    equal = all(torch.allclose(sequential.ensemble.stacked_parameters()[name], v, rtol=1e-4, atol=1e-5) and
                torch.allclose(two.ensemble.stacked_parameters()[name], v, rtol=1e-4, atol=1e-5) for name, v in params.items())
    out = {"batched_s": batched.seconds, "sequential_s": sequential.seconds, "two_processes_s": two.seconds,
           "speedup": sequential.seconds / batched.seconds, "two_processes_speedup": batched.seconds / two.seconds,
           "members_equal": equal, "load": load()}
    log(f"  batched {batched.seconds:.2f} s, sequential {sequential.seconds:.2f} s, 2 processes {two.seconds:.2f} s "
        f"(members equal: {equal}; load {out['load']:.1f})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s on 2 idle cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    sys.path.insert(0, str(HERE))  # workers import this file as the module "scaling"
    try:
        import distributed  # noqa: F401
        use_dask = not args.no_dask
    except ImportError:
        log("Dask is not installed (pip install 'sbilab[dask]'): the Dask runs are skipped.")
        use_dask = False
    if args.quick:
        sizes = dict(fan=(1200, 100, 1.0), ddp=(2**13, 3, 512), rep=(4, 1000, 32, 5))
    else:
        sizes = dict(fan=(8000, 200, 1.0), ddp=(2**15, 4, 1024), rep=(8, 4000, 64, 10))
    started = time.perf_counter()
    out: dict[str, Any] = {"quick": args.quick, "cpus": os.cpu_count(), "torch_threads": 1, "load_start": load()}
    with tempfile.TemporaryDirectory() as folder:
        n, chunk, cost = sizes["fan"]
        fan = fanout(n, chunk, cost, use_dask, Path(folder))
    d = ddp(*sizes["ddp"])
    r = replicas(*sizes["rep"])
    out.update(fanout_efficiency=fan["efficiency"], ddp_matches_single=d["matches"], ddp_epoch_ratio=d["ratio"],
               replica_speedup=r["speedup"], fanout=fan["runs"], ddp=d, replicas=r, seconds=time.perf_counter() - started)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for key in ("fanout_efficiency", "ddp_matches_single", "ddp_epoch_ratio", "replica_speedup", "seconds"):
            print(f"{key:20s} {out[key]}")


if __name__ == "__main__":
    main()
