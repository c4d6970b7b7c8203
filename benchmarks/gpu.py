r"""GPU readiness: training throughput of fit() on one CUDA device, and every CUDA path of fit().

One command, unattended, < 5 min on one H100/H200 (``--quick``: < 1 min):

    python benchmarks/gpu.py --json

Measured on the first CUDA device, side by side in one run:

* ``events_per_s`` — training events per second of ``fit()`` for a ratio estimator with a
  3×256 MLP (``RatioEstimator(hidden=(256, 256, 256))``, CARL loss, 8 observables, 4
  parameters), data on the device, batch 8192, float32 (target ≥ 10⁶);
* ``amp_speedup`` — per-epoch time without / with ``amp=True`` (bfloat16 autocast);
* ``ensemble5_vs_single`` — per-epoch time of a 5-member :class:`~sbilab.nets.ensemble.Ensemble`
  / one network (target ≤ 1.5);
* ``fit_vs_bare`` — per-epoch time of ``fit()`` / a bare loop (same network, AdamW, same batch
  size, a permutation per epoch on the device; target ≤ 1.05);
* ``host_vs_device`` — per-epoch time with host-resident batches (a streamed source, each batch
  copied to the GPU) / with the data on the device;
* ``flow_samples_per_s`` — posterior samples per second of an NSF ``PosteriorEstimator``
  drawn with a CUDA ``torch.Generator`` (1024 observations × 1024 samples);
* ``cuda_resume_exact`` — a dropout network trained on the GPU, interrupted after 1.5 epochs and
  resumed from its checkpoint (CUDA RNG state restored), ends with exactly the weights of the
  uninterrupted run; ``cuda_generator_reproducible`` — two draws with equally seeded CUDA
  generators are identical.

Paths of ``fit()`` exercised: AMP, on-device data (``InMemorySource`` on CUDA), host batches
moved per step (``StreamedSource``), ensembles, checkpoint/resume with the CUDA RNG state,
sampling with a CUDA generator. Without CUDA the script says so on stderr and prints
``{"cuda": false}``, exit code 0. All timings exclude a first warm-up epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from sbilab import Events
from sbilab.estimators import PosteriorEstimator, RatioEstimator
from sbilab.estimators.losses import carl_loss, npe_loss
from sbilab.nets.ensemble import Ensemble
from sbilab.simulators import ParameterSpace
from sbilab.training import fit


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def problem(n: int, device: torch.device, seed: int = 0) -> tuple[ParameterSpace, Events]:
    """Random ratio-training events (x (N, 8), theta (N, 4), labels): throughput does not need a physics toy."""
    g = torch.Generator().manual_seed(seed)
    space = ParameterSpace(tuple(f"p{i}" for i in range(4)), low=(-1.0,) * 4, high=(1.0,) * 4)
    theta = torch.rand(n, 4, generator=g) * 2 - 1
    x = torch.randn(n, 8, generator=g) + theta.repeat(1, 2)
    label = (torch.rand(n, generator=g) < 0.5).float()
    return space, Events(x=x, theta=theta, label=label).to(device)


class HostStream:
    """An EventStream over host events: fit streams them, one batch copied to the GPU per step."""

    def __init__(self, events: Events) -> None:
        self.events = events.to("cpu")

    def __len__(self) -> int:
        return len(self.events)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Events]:
        yield from self.events.batches(batch_size, shuffle=shuffle, generator=generator)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_epoch(result) -> float:
    times = result.history["time"][1:] or result.history["time"]
    return statistics.median(times)


def timed_fit(model: nn.Module, data, *, epochs: int, batch: int, device: torch.device, **options) -> float:
    sync(device)
    res = fit(model, carl_loss, data, epochs=epochs, batch_size=batch, validation_fraction=0.0, patience=None,
              device=device, progress=False, **options)
    sync(device)
    return per_epoch(res)


def bare_loop(model: nn.Module, events: Events, *, epochs: int, batch: int) -> float:
    """forward / backward / step over one permutation per epoch on the device: the practical limit."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    n, times = len(events), []
    for _ in range(epochs):
        sync(events.device)
        start = time.perf_counter()
        perm = torch.randperm(n, device=events.device)
        for index in perm.tensor_split(max(1, n // batch)):
            b = events[index]
            loss = carl_loss(model, b).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(events.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times)


def resume_is_exact(device: torch.device, folder: Path) -> bool:
    """Dropout on the GPU: a run interrupted mid-epoch and resumed equals the uninterrupted one."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 8, generator=g)
    events = Events(x=x, theta=x[:, :1] * 2 + 0.1 * torch.randn(4096, 1, generator=g)).to(device)

    def net() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))

    calls = [0]

    def loss(model: nn.Module, batch: Events) -> torch.Tensor:
        return (model(batch.x) - batch.theta).pow(2).squeeze(-1)

    def crashing(model: nn.Module, batch: Events) -> torch.Tensor:
        calls[0] += model.training
        if calls[0] > 12:
            raise KeyboardInterrupt("simulated interruption")
        return loss(model, batch)

    opts = dict(epochs=4, batch_size=512, patience=None, device=device, progress=False, seed=2)
    straight = fit(net(), loss, events, **opts).model.state_dict()
    ckpt = folder / "ckpt.pt"
    try:
        fit(net(), crashing, events, checkpoint=ckpt, resume=True, **opts)
    except KeyboardInterrupt:
        pass
    resumed = fit(net(), loss, events, checkpoint=ckpt, resume=True, **opts).model.state_dict()
    return all(torch.equal(straight[k], resumed[k]) for k in straight)


def flow_sampling(device: torch.device, quick: bool) -> tuple[float, bool]:
    space, events = problem(2**14 if device.type == "cuda" else 2**10, device)
    est = PosteriorEstimator.from_events(events.to("cpu"), space, transforms=3, hidden=(128, 128)).to(device)
    fit(est, npe_loss, events, epochs=1, batch_size=1024, device=device, progress=False, validation_fraction=0.0, patience=None)
    x_obs = events.x[:1024]
    n = 256 if quick or device.type != "cuda" else 1024
    with torch.no_grad():
        est.sample(8, x_obs, generator=torch.Generator(device=device).manual_seed(0))  # warm-up
        sync(device)
        start = time.perf_counter()
        a = est.sample(n, x_obs, generator=torch.Generator(device=device).manual_seed(1))
        sync(device)
        rate = a.numel() / a.shape[-1] / (time.perf_counter() - start)
        b = est.sample(n, x_obs, generator=torch.Generator(device=device).manual_seed(1))
    return rate, bool(torch.equal(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of the script itself (tiny sizes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("gpu.py: no CUDA device on this machine; nothing measured. Run it on a GPU machine (one H100/H200: < 5 min).")
        print(json.dumps({"cuda": False}))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    n, epochs, batch = (2**18, 3, 8192) if args.quick else (2**21, 6, 8192)
    if device.type != "cuda":  # dry run of the code paths on CPU: tiny sizes, figures meaningless
        n, epochs, batch = 2**12, 2, 1024
    space, events = problem(n, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    out: dict[str, object] = {"cuda": device.type == "cuda", "device": name, "torch": torch.__version__,
                              "events": n, "batch_size": batch, "epochs": epochs}

    def estimator() -> RatioEstimator:
        torch.manual_seed(0)
        return RatioEstimator.from_events(events.to("cpu"), space, hidden=(256, 256, 256))

    log("fit, float32, data on the device ...")
    t_single = timed_fit(estimator(), events, epochs=epochs, batch=batch, device=device)
    out["events_per_s"] = n / t_single
    log("fit, amp=True ...")
    t_amp = timed_fit(estimator(), events, epochs=epochs, batch=batch, device=device, amp=True)
    out["amp_speedup"] = t_single / t_amp
    out["amp_events_per_s"] = n / t_amp
    log("fit, ensemble of 5 ...")
    t_ens = timed_fit(Ensemble(estimator(), 5, generator=torch.Generator().manual_seed(0)), events, epochs=epochs, batch=batch,
                      device=device)
    out["ensemble5_vs_single"] = t_ens / t_single
    log("bare loop ...")
    t_bare = bare_loop(estimator().to(device), events, epochs=epochs, batch=batch)
    out["fit_vs_bare"] = t_single / t_bare
    log("host batches (streamed) ...")
    t_host = timed_fit(estimator(), HostStream(events), epochs=max(2, epochs // 2), batch=batch, device=device, stream=True)
    out["host_vs_device"] = t_host / t_single
    log("checkpoint / resume with the CUDA RNG ...")
    with tempfile.TemporaryDirectory() as folder:
        out["cuda_resume_exact"] = resume_is_exact(device, Path(folder))
    log("flow posterior sampling with a CUDA generator ...")
    out["flow_samples_per_s"], out["cuda_generator_reproducible"] = flow_sampling(device, args.quick)
    out["seconds_per_epoch"] = {"fit": t_single, "amp": t_amp, "ensemble5": t_ens, "bare": t_bare, "host": t_host}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for key, value in out.items():
            print(f"{key:28s} {value}")


if __name__ == "__main__":
    main()
