r"""A measured floor for the batched parton shower: the work any batched veto algorithm must do per event.

Issue 14 asks for >= 100x the events per CPU second of the scalar pure-Python reference
(``reference_shower``) on one CPU thread. Per event of the default shower (``PartonShower()``,
theta = (1, 1, 0)) this measures the parts of that work no batched implementation can skip and
compares their sum with the budget 1 / (100 x reference rate), the rate measured in the same run:

1. **Counts**, from the reference *without editing it*: while counting, the reference module's
   globals ``math`` and ``random`` are replaced by proxies. Each loop iteration draws its scale
   with exactly one ``math.exp`` (``t = Lambda^2 exp(log t)``, ``break`` if t <= t0), so the drawn
   trials (vetoed by y >= 1 or not) are the ``exp`` calls with t > t0; stored trials, their kernel
   mix and partons come from the returned events; ``Random.random`` calls are counted, and
   ``counts_consistent`` ties the three counts together (:func:`counts`). The batched engine's
   output gives stored trials, partons and the padded length T_max at N events.
2. **Random numbers**: 5 uniforms per drawn trial (scale, candidate, z, accept, phi), ``uniform_``
   into a warm buffer, float64 (summed) and float32.
3. **Accept chain**: per slot in eager torch (scale from the Sudakov factor, soft/flat choice, z
   from the overestimate, y, P-hat, the three kernels at the stored kernel mix, accept comparison),
   and under ``torch.compile(dynamic=True)`` (compile time excluded; the error if it fails). Not
   summed: the dipole choice (searchsorted or compare-count, one gather), which the list omits.
4. **History**: the padded ``(N, T_max, 12)`` float64 history (and ``len(history.COLUMNS)`` wide if
   that differs) and its ``(N, T_max)`` bool mask: zero-fill, scatter of the stored rows, mask;
   into fresh memory (page faults) and into warm memory.
5. **Fused scalar C** (not summed): items 2 + 3 in one scalar loop (xoshiro256+, libm),
   ``cc -O2`` at run time; ``null`` without a compiler.

Times: CPU seconds (``time.process_time``), minimum over repeats, each >= ~10 ms of work. Not
counted: emissions (kinematics, colours, rates), compaction, output particles, so the sum is a
lower bound. Usage: ``OMP_NUM_THREADS=1 python benchmarks/shower_floor.py [--quick] [--json]``;
the table goes to stderr, ``--json`` prints one object on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import mmap
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable

import torch

torch.set_num_threads(1)

from sbilab.simulators.shower import PartonShower  # noqa: E402
from sbilab.simulators.shower import reference as ref  # noqa: E402
from sbilab.simulators.shower.history import COLUMNS  # noqa: E402
from sbilab.simulators.shower.kernels import CA, CF, KERNEL_GG, KERNEL_QQ, NF, TR, RunningCoupling  # noqa: E402

SM = (1.0, 1.0, 0.0)
F64 = torch.float64


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def best_cpu(fn: Callable[[], Any], repeats: int) -> float:
    """Minimum CPU seconds of ``fn()`` over ``repeats`` calls (one warm-up call first)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


# ---------------------------------------------------------------------------------------------- 1. counts
def reference_rate(n: int) -> float:
    start = time.process_time()
    ref.reference_shower(SM, n, seed=1)
    return n / (time.process_time() - start)


def counts(n: int, seed: int = 7) -> dict[str, Any]:
    """Per-event counts of the reference, without editing it (module docstring).

    Check: per iteration the reference draws 1 uniform for the scale; each drawn trial (t > t0)
    1 for the candidate, 1 for z, 1 more for the soft/flat choice if q -> qg; each stored trial
    (y < 1) 3 more (accept, phi, flavour of g -> qqbar); each event 3 for the hard process. So
    ``uniforms - 3 N - exp_calls - 2 drawn - 3 stored`` (= drawn q -> qg trials) must lie between
    the stored q -> qg trials and those plus the drawn-but-unstored ones, and
    ``drawn <= exp_calls <= drawn + N``.
    """
    coupling = RunningCoupling()
    ell0 = math.log(1.0 / coupling.lambda2)  # t0 = 1 GeV^2
    tally = {"exp": 0, "drawn": 0, "uniforms": 0}

    def exp(x: float) -> float:
        tally["exp"] += 1
        tally["drawn"] += x > ell0
        return math.exp(x)

    class CountingRandom(random.Random):
        def random(self) -> float:
            tally["uniforms"] += 1
            return super().random()

    proxy_math = types.SimpleNamespace(**{k: getattr(math, k) for k in dir(math) if not k.startswith("_")})
    proxy_math.exp = exp
    saved = ref.math, ref.random
    ref.math, ref.random = proxy_math, types.SimpleNamespace(Random=CountingRandom)
    try:
        events = ref.reference_shower(SM, n, seed=seed)
    finally:
        ref.math, ref.random = saved
    stored = sum(len(e.trials) for e in events)
    kind = list(getattr(ref, "ROW", COLUMNS)).index("kernel")  # reference rows: ROW (history v2) or COLUMNS (v1)
    kernels = [int(tr[kind]) for e in events for tr in e.trials]
    stored_qq = kernels.count(KERNEL_QQ)
    partons = sum(len(e.pid) for e in events)
    drawn = tally["drawn"]
    qq = tally["uniforms"] - 3 * n - tally["exp"] - 2 * drawn - 3 * stored
    ok = drawn <= tally["exp"] <= drawn + n and stored_qq <= qq <= stored_qq + (drawn - stored)
    return {"events": n, "drawn_trials_per_event": drawn / n, "stored_trials_per_event": stored / n,
            "vetoed_y_ge_1_per_event": (drawn - stored) / n, "partons_per_event": partons / n,
            "uniforms_per_event": tally["uniforms"] / n, "max_stored_trials": max(len(e.trials) for e in events),
            "stored_kernel_mix": [kernels.count(k) / max(stored, 1) for k in range(3)], "counts_consistent": bool(ok)}


def batched(n: int) -> dict[str, Any]:
    """Timed ``PartonShower().sample`` at n events: rate, stored trials, partons, T_max, and the stored-row count."""
    shower = PartonShower()
    theta = torch.tensor([SM]).expand(n, 3)
    start = time.process_time()
    ev = shower.sample(theta, torch.Generator().manual_seed(2))
    cpu = time.process_time() - start
    n_trials = ev.latent_mask.sum(1)
    return {"events": n, "events_per_cpu_s": n / cpu, "stored_trials_per_event": float(n_trials.double().mean()),
            "partons_per_event": float(ev.mask.sum() / n), "t_max": int(ev.latent.shape[1]), "n_trials": n_trials}


# ---------------------------------------------------------------------------------------------- 2. random numbers
def rng_cost(sizes: list[int], repeats: int) -> dict[str, Any]:
    """ns per uniform of ``Tensor.uniform_`` (preallocated, warm) per dtype and batch size."""
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for dtype, name in ((F64, "float64"), (torch.float32, "float32")):
        per = {}
        for size in sizes:
            buf = torch.empty(size, dtype=dtype)
            reps = max(1, 2_000_000 // size)
            per[str(size)] = 1e9 * best_cpu(lambda: [buf.uniform_(0.0, 1.0, generator=gen) for _ in range(reps)], repeats) / (reps * size)
        out[name] = {"ns_per_uniform_by_batch": per, "ns_per_uniform": min(per.values())}
    return out


# ---------------------------------------------------------------------------------------------- 3. accept arithmetic
def accept_chain(u0, u1, u2, u3, ell, kappa, m2, zm, zp, width, log_range, soft_frac, ktype, a_soft, a_flat, c_d, c_f, c_c,
                 lam2: float):
    """The minimal accept-probability chain of one trial slot, elementwise over (S,) slots of kernel ``ktype``."""
    ell_t = u0.log().mul_(kappa).exp_().mul_(ell)  # ln(t/L^2) = ln(t_prev/L^2) u^(2 pi b0 / R)
    t = ell_t.exp().mul_(lam2)
    soft = u1 < soft_frac  # soft (1/(1-z)) or flat part of P-hat
    omz_soft = torch.exp(u2 * log_range).mul_(zm)  # 1-z = z_- (z_+/z_-)^u
    omz = torch.where(soft, omz_soft, torch.addcmul(zp, width, u2, value=-1.0))
    z = 1.0 - omz
    zomz = z * omz
    y = t.div_(m2 * zomz)
    omy = 1.0 - y
    p_hat = a_soft[ktype] / omz + a_flat[ktype]
    soft_term = (z * omy).div_(omz + z * y)  # z(1-y)/(1-z(1-y))
    p_qq = torch.addcmul(torch.addcmul(c_d * soft_term, omz, c_f), y * zomz, c_c)
    p_gg = torch.add(CA * soft_term, zomz, alpha=0.5 * CA)
    p_gq = zomz.mul(-NF * TR).add_(NF * 0.5 * TR)
    value = torch.where(ktype == KERNEL_QQ, p_qq, torch.where(ktype == KERNEL_GG, p_gg, p_gq))
    return (u3 * p_hat < omy * value).logical_and_(y < 1.0)


def chain_inputs(size: int, mix: list[float]) -> tuple[list[torch.Tensor], float]:
    """Realistic per-slot inputs: dipole masses and scales of the shower's range, kernels in the proportions ``mix``."""
    g = torch.Generator().manual_seed(1)
    coupling, over = RunningCoupling(), PartonShower().overestimate
    u = torch.rand(4, size, generator=g, dtype=F64)
    m2 = 10.0 ** (1.0 + 2.9 * torch.rand(size, generator=g, dtype=F64))  # 10 .. 8300 GeV^2
    zm = 2.0 / (m2 * (1.0 + torch.sqrt(1.0 - 4.0 / m2)))
    zp, width, log_range = 1.0 - zm, 1.0 - 2.0 * zm, torch.log((1.0 - zm) / zm)
    ktype = torch.multinomial(torch.tensor(mix, dtype=F64), size, replacement=True, generator=g)
    a_soft = torch.tensor([over.soft, CA, 0.0], dtype=F64)
    a_flat = torch.tensor([over.flat, 0.0, NF * 0.5 * TR], dtype=F64)
    soft_rate, flat_rate = a_soft[ktype] * log_range, a_flat[ktype] * width
    ell = math.log(8.0 / coupling.lambda2) + 5.0 * torch.rand(size, generator=g, dtype=F64)
    kappa = 2.0 * math.pi * coupling.b0 / (2.0 * (soft_rate + flat_rate))
    full = lambda v: torch.full((size,), v, dtype=F64)  # noqa: E731
    args = [u[0], u[1], u[2], u[3], ell, kappa, m2, zm, zp, width, log_range, soft_rate / (soft_rate + flat_rate), ktype,
            a_soft, a_flat, full(CF * SM[0] * 2.0), full(CF * SM[1]), full(CF * SM[2])]
    return args, coupling.lambda2


def choice_cost(sizes: list[int], repeats: int, trials: int = 6, dipoles: int = 16) -> dict[str, Any]:
    """ns per slot of choosing each slot's dipole from its event's cumulative rates ``(B, D + 1)``, B = slots /
    ``trials``, by ``searchsorted`` (as the engine) or by counting comparisons, then one gather of the chosen
    dipole's packed (m2, z_-, ln(z+/z-), kernel rate) row; the cheaper of the two is the floor."""
    g, out = torch.Generator().manual_seed(3), {"searchsorted": {}, "compare": {}}
    for size in sizes:
        b = size // trials
        cum = torch.cat([torch.zeros(b, 1, dtype=F64), torch.rand(b, dipoles, generator=g, dtype=F64).cumsum(1)], 1)
        table = torch.rand(b * dipoles, 4, generator=g, dtype=F64)
        u = torch.rand(b, trials, generator=g, dtype=F64)
        base = (torch.arange(b) * dipoles).unsqueeze(1)

        def by_search() -> torch.Tensor:
            c = torch.searchsorted(cum, u * cum[:, -1:], right=True).sub_(1).clamp_(0, dipoles - 1)
            return table.index_select(0, (c + base).view(-1))

        def by_compare() -> torch.Tensor:
            c = ((u * cum[:, -1:]).unsqueeze(-1) >= cum[:, None, 1:-1]).sum(-1)
            return table.index_select(0, (c + base).view(-1))

        reps = max(1, 1_000_000 // size)
        for name, fn in (("searchsorted", by_search), ("compare", by_compare)):
            out[name][str(size)] = 1e9 * best_cpu(lambda: [fn() for _ in range(reps)], repeats) / (reps * size)
    out["ns_per_slot"] = min(min(v.values()) for v in (out["searchsorted"], out["compare"]))
    out.update(trials_per_row=trials, dipoles_per_row=dipoles)
    return out


def arithmetic_cost(sizes: list[int], repeats: int, compile_it: bool, mix: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"eager_ns_per_slot_by_batch": {}, "compiled_ns_per_slot_by_batch": {}}
    compiled, compile_s, error = None, None, None
    if compile_it:
        try:
            compiled = torch.compile(accept_chain, dynamic=True)
            args, lam2 = chain_inputs(sizes[0], mix)
            start = time.perf_counter()
            compiled(*args, lam2)
            compile_s = time.perf_counter() - start
        except Exception as exc:  # report, do not fail: the floor is the eager figure
            compiled, error = None, f"{type(exc).__name__}: {str(exc)[:300]}"
    for size in sizes:
        args, lam2 = chain_inputs(size, mix)
        reps = max(1, 1_000_000 // size)
        eager = best_cpu(lambda: [accept_chain(*args, lam2) for _ in range(reps)], repeats)
        out["eager_ns_per_slot_by_batch"][str(size)] = 1e9 * eager / (reps * size)
        if compiled is not None:
            same = bool(torch.equal(compiled(*args, lam2), accept_chain(*args, lam2)))
            t = best_cpu(lambda: [compiled(*args, lam2) for _ in range(reps)], repeats)
            out["compiled_ns_per_slot_by_batch"][str(size)] = 1e9 * t / (reps * size)
            out["compiled_matches_eager"] = same and out.get("compiled_matches_eager", True)
        out["accept_fraction"] = float(accept_chain(*args, lam2).double().mean())
    out["eager_ns_per_slot"] = min(out["eager_ns_per_slot_by_batch"].values())
    byb = out["compiled_ns_per_slot_by_batch"]
    out["compiled_ns_per_slot"] = min(byb.values()) if byb else None
    out["compile_s"], out["compile_error"] = compile_s, error
    return out


# ---------------------------------------------------------------------------------------------- 4. history
def history_cost(n_trials: torch.Tensor, t_max: int, k: int, repeats: int) -> dict[str, Any]:
    """Zero-fill + scatter of the stored rows + mask of the padded history, fresh vs warm memory, µs per event."""
    n = n_trials.numel()
    events = torch.repeat_interleave(torch.arange(n), n_trials)
    starts = torch.cumsum(n_trials, 0) - n_trials
    position = torch.arange(events.numel()) - starts.repeat_interleave(n_trials)
    flat = events * t_max + position
    rows = torch.rand(events.numel(), k, dtype=F64)
    steps = torch.arange(t_max).unsqueeze(0)

    def write(history: torch.Tensor, mask: torch.Tensor) -> None:
        history.view(n * t_max, k).index_copy_(0, flat, rows)
        torch.lt(steps, n_trials.unsqueeze(1), out=mask)

    def fresh() -> None:  # a private anonymous mapping (as malloc's for large blocks), untouched whatever malloc recycles
        buf = mmap.mmap(-1, 8 * n * t_max * k, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        history = torch.frombuffer(buf, dtype=F64).view(n, t_max, k).zero_()
        write(history, torch.empty(n, t_max, dtype=torch.bool))

    history, mask = torch.zeros(n, t_max, k, dtype=F64), torch.empty(n, t_max, dtype=torch.bool)

    def warm() -> None:
        history.zero_()
        write(history, mask)

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu_fresh = best_cpu(fresh, repeats)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (repeats + 1)
    cpu_warm = best_cpu(warm, repeats)
    mb = n * t_max * (8 * k + 1) / 1e6
    return {"events": n, "t_max": t_max, "columns": k, "megabytes": mb, "fresh_us_per_event": 1e6 * cpu_fresh / n,
            "warm_us_per_event": 1e6 * cpu_warm / n, "fresh_page_faults_per_mb": faults / mb,
            "fresh_ms_per_mb": 1e3 * cpu_fresh / mb}


# ---------------------------------------------------------------------------------------------- 5. fused scalar
C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
static uint64_t s[4];
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline double uni(void) {  /* xoshiro256+ -> double in [0, 1) */
  uint64_t r = s[0] + s[3], t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
  return (r >> 11) * 0x1.0p-53;
}
/* n trials of the accept chain (same inputs as accept_chain) on slot j % nd; returns the accepted count */
long trials(long n, const double *ell_in, const double *kap, const double *m2, const double *zm, const double *lr,
            const double *frac, const long *kt, long nd, double lam2, const double *as, const double *af,
            double cd, double cf, double cc, double *sink) {
  long acc = 0; double keep = 0.0;
  s[0] = 0x9E3779B97F4A7C15u; s[1] = 0xBF58476D1CE4E5B9u; s[2] = 0x94D049BB133111EBu; s[3] = 1u;
  for (long j = 0; j < n; j++) {
    long i = j % nd; int k = (int)kt[i];
    double u0 = uni(), u1 = uni(), u2 = uni(), u3 = uni(), phi = 6.283185307179586 * uni();
    double ell = ell_in[i] * exp(kap[i] * log(u0)), t = lam2 * exp(ell), omz;
    if (u1 < frac[i]) omz = zm[i] * exp(u2 * lr[i]); else omz = 1.0 - zm[i] - (1.0 - 2.0 * zm[i]) * u2;
    double z = 1.0 - omz, y = t / (m2[i] * z * omz), omy = 1.0 - y, st = z * omy / (omz + z * y), v;
    if (k == 0) v = cd * st + cf * omz + cc * y * z * omz;
    else if (k == 1) v = 3.0 * st + 1.5 * z * omz;
    else v = 1.25 - 2.5 * z * omz;
    int a = (y < 1.0) && (u3 * (as[k] / omz + af[k]) < omy * v);
    acc += a; keep += a ? phi : t;
  }
  *sink = keep;
  return acc;
}
"""


def fused_cost(repeats: int, mix: list[float]) -> dict[str, Any]:
    """ns per trial of RNG + accept chain fused in scalar C (``cc -O2``), or the reason it did not run."""
    tmp = tempfile.mkdtemp(prefix="shower_floor_")
    src, lib_path = os.path.join(tmp, "fused.c"), os.path.join(tmp, "fused.so")
    with open(src, "w") as fh:
        fh.write(C_SOURCE)
    try:
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-o", lib_path, src, "-lm"],
                       check=True, capture_output=True, timeout=60)
        lib = ctypes.CDLL(lib_path)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"ns_per_trial": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    nd = 4096
    args, lam2 = chain_inputs(nd, mix)
    arrays = [args[i].contiguous() for i in (4, 5, 6, 7, 10, 11, 12)]  # ell, kappa, m2, zm, ln(z+/z-), soft fraction, kernel
    a_soft, a_flat = args[13].contiguous(), args[14].contiguous()
    dp, lp = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_long)
    lib.trials.restype = ctypes.c_long
    lib.trials.argtypes = [ctypes.c_long] + [dp] * 6 + [lp, ctypes.c_long, ctypes.c_double, dp, dp] + [ctypes.c_double] * 3 + [dp]
    ptrs = [ctypes.cast(x.data_ptr(), lp if x.dtype == torch.long else dp) for x in arrays]
    sink, n = ctypes.c_double(), 2_000_000
    call = lambda: lib.trials(n, *ptrs, nd, lam2, ctypes.cast(a_soft.data_ptr(), dp), ctypes.cast(a_flat.data_ptr(), dp),  # noqa: E731
                              2.0 * CF * SM[0], CF * SM[1], CF * SM[2], ctypes.byref(sink))
    return {"ns_per_trial": 1e9 * best_cpu(call, repeats) / n, "accept_fraction": call() / n, "error": None}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s): 10^4 events only")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the accept chain")
    args = parser.parse_args()
    quick = args.quick
    n_ref, n_count = (1000, 2000) if quick else (3000, 10_000)
    sizes = [1 << 16, 1 << 18] if quick else [1 << 14, 1 << 17, 1 << 20]
    repeats = 3 if quick else 7
    ns = [10_000] if quick else [10_000, 100_000]
    result: dict[str, Any] = {"command": " ".join(["python", "benchmarks/shower_floor.py", *sys.argv[1:]]),
                              "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg()}

    rate = reference_rate(n_ref)
    budget_us = 1e6 / (100.0 * rate)
    result.update(reference_events=n_ref, reference_events_per_cpu_s=rate, budget_100x_us_per_event=budget_us)
    log(f"reference: {rate:.0f} events/CPU s -> 100x budget {budget_us:.3f} us/event")
    c = counts(n_count)
    result["counts_reference"] = c
    log(f"counts ({n_count} reference events): {c}")
    if not c["counts_consistent"]:
        log("WARNING: the trial counts are inconsistent: reference.py no longer draws as counts() assumes; fix counts()")
    drawn = c["drawn_trials_per_event"]
    widths = sorted({12, len(COLUMNS)}, reverse=True)  # the 12 columns of the issue, and the current layout if other
    mix = c["stored_kernel_mix"]
    result["batched"], result["history"] = {}, {}
    PartonShower().sample(torch.tensor([SM]).expand(500, 3), torch.Generator().manual_seed(0))  # warm-up (first-call costs)
    for n in ns:
        b = batched(n)
        n_trials = b.pop("n_trials")
        result["batched"][str(n)] = b
        log(f"batched {n}: {b}")
        for k in widths:
            result["history"][f"N{n}_w{k}"] = h = history_cost(n_trials, b["t_max"], k, max(2, repeats // 2))
            log(f"history N={n}, {k} columns: {h}")
        del n_trials
    result["rng"] = rng = rng_cost(sizes, repeats)
    log(f"rng: {rng}")
    result["arithmetic"] = ar = arithmetic_cost(sizes, repeats, not args.no_compile, mix)
    log(f"arithmetic: {ar}")
    result["dipole_choice"] = ch = choice_cost(sizes, repeats)
    log(f"dipole choice: {ch}")
    result["fused_scalar"] = fu = fused_cost(repeats, mix)
    log(f"fused scalar C: {fu}")

    rows: list[tuple[str, float | None, bool]] = [
        (f"random numbers, 5 float64 x {drawn:.1f} drawn trials", 5 * drawn * rng["float64"]["ns_per_uniform"] / 1e3, True),
        ("  (same in float32, not summed)", 5 * drawn * rng["float32"]["ns_per_uniform"] / 1e3, False),
        (f"accept chain, eager, {drawn:.1f} slots", drawn * ar["eager_ns_per_slot"] / 1e3, True),
        ("  (same, torch.compile dynamic, not summed)",
         None if ar["compiled_ns_per_slot"] is None else drawn * ar["compiled_ns_per_slot"] / 1e3, False),
        ("dipole choice (search or compare, gather), not summed", drawn * ch["ns_per_slot"] / 1e3, False),
    ]
    sums = {}
    for key, h in result["history"].items():
        rows.append((f"history, first touch, N={h['events']}, T_max={h['t_max']}, {h['columns']} cols", h["fresh_us_per_event"], False))
        rows.append((f"history, warm rewrite, N={h['events']}, {h['columns']} cols", h["warm_us_per_event"], False))
    core = sum(v for _, v, s in rows if s)
    for key, h in result["history"].items():
        for mode in ("fresh", "warm"):
            sums[f"{mode}_{key}"] = core + h[f"{mode}_us_per_event"]
            rows.append((f"SUM rng + eager chain + history ({mode}, N={h['events']}, {h['columns']} cols)", sums[f"{mode}_{key}"], False))
    if fu["ns_per_trial"] is not None:
        rows.append(("fused scalar C: rng + chain, not summed", drawn * fu["ns_per_trial"] / 1e3, False))
    rows.append(("100x budget", budget_us, False))
    result["table"] = [{"item": name.strip(), "us_per_event": v, "fraction_of_budget": None if v is None else v / budget_us}
                       for name, v, _ in rows]
    result["floor_us_per_event"] = sums
    result["floor_over_budget"] = {k: v / budget_us for k, v in sums.items()}
    result["load_average_end"] = os.getloadavg()
    log(f"\n{'item':58s} {'us/event':>9s} {'x budget':>9s}")
    for name, v, _ in rows:
        log(f"{name:58s} {'n/a' if v is None else f'{v:9.3f}':>9s} {'' if v is None else f'{v / budget_us:9.2f}':>9s}")
    log(f"load average start {result['load_average_start']}, end {result['load_average_end']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
