r"""Patch scan of the ATLAS sbottom likelihood (HEPData ins1748602): sbilab vs a serial loop of pyhf, in one run.

- sbilab: :func:`sbilab.reinterpret.scan_patches` with its defaults (scipy SLSQP with torch
  autodiff gradients, warm starts, one worker process per CPU, one thread each) over the chosen
  patches of one region; the wall time includes starting the workers.
- pyhf: the loop a user writes by hand, ``pyhf.infer.hypotest(1.0, data, model,
  return_expected_set=True)`` with pyhf's defaults (numpy backend, scipy optimizer), one patch
  after the other in this process (one BLAS thread), on ``--pyhf-patches`` patches spread evenly
  over the scanned ones (all of them by default; a serial pyhf loop over all 217 patches of
  region A takes about an hour on the shared 2-core machine).

``speedup`` is pyhf's wall time per patch over sbilab's (the plain ratio of wall times when both
ran on all patches); ``max_abs_cls_diff`` is the largest difference of the observed and the five
expected CLs over the patches both computed. The scan's table and exclusion contour are written
to ``--out``.

Usage: ``python benchmarks/reinterpret.py [--quick] [--json] [--region RegionA] [--patches N]
[--pyhf-patches M] [--workers W] [--out DIR]``.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARCHIVE = ROOT.parent / "shared" / "data" / "pyhf" / "ins1748602-sbottom-multib-probability-models.tar.gz"
LABELS = ("m_sb", "m_chi2", "m_chi1")


def _spread(items: list, k: int) -> list:
    """``k`` items spread evenly over ``items`` (all of them when k >= len)."""
    if k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def _pyhf_loop(background: dict, patches: list) -> tuple[float, float, dict[str, list[float]]]:
    import pyhf

    from sbilab.reinterpret import patched_workspace

    pyhf.set_backend("numpy", "scipy")
    cls: dict[str, list[float]] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for patch in patches:
        workspace = patched_workspace(background, patch)
        model = workspace.model()
        obs, expected = pyhf.infer.hypotest(1.0, workspace.data(model), model, return_expected_set=True)
        cls[patch.name] = [float(obs), *(float(e) for e in expected)]
    return time.perf_counter() - start, time.process_time() - cpu, cls


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 patches (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--region", default="RegionA")
    parser.add_argument("--patches", type=int, default=None, help="scan this many patches spread over the region (default all)")
    parser.add_argument("--pyhf-patches", type=int, default=None, help="run pyhf's serial loop on this many of them (default all)")
    parser.add_argument("--workers", type=int, default=None, help="sbilab worker processes (default: the CPUs)")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench-reinterpret"), help="folder for the table and the contour")
    args = parser.parse_args()
    if not ARCHIVE.is_file():
        print(f"skipped: {ARCHIVE} is absent (the shared ATLAS likelihood)")
        return {"skipped": str(ARCHIVE)}
    import torch

    torch.set_num_threads(1)
    from sbilab.reinterpret import PatchCollection, exclusion_contours, plot_exclusion, read_background, read_patches, scan_patches

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    background = dict(read_background(f"{args.region}/BkgOnly.json", archive=ARCHIVE))
    collection = read_patches(ARCHIVE, region=args.region, labels=LABELS)
    n = 4 if args.quick else (args.patches or len(collection))
    chosen = _spread(sorted(collection.patches, key=lambda p: p.values), n)
    for_pyhf = _spread(chosen, min(args.pyhf_patches or len(chosen), len(chosen)))
    result = scan_patches(background, PatchCollection(tuple(chosen), collection.labels, collection.source), workers=args.workers,
                          progress=not args.json)
    wall_pyhf, cpu_pyhf, reference = _pyhf_loop(background, for_pyhf)
    diff = max(abs(a - b) for p in for_pyhf for a, b in zip(reference[p.name], [result[p.name].cls_obs, *result[p.name].cls_expected]))
    figures = {
        "region": args.region,
        "patches": len(chosen),
        "patches_pyhf": len(for_pyhf),
        "workers": args.workers or len(os.sched_getaffinity(0)),
        "wall_s_sbilab": round(result.wall_s, 2),
        "wall_s_pyhf_serial": round(wall_pyhf, 2),
        "wall_s_per_patch_sbilab": round(result.wall_s / len(chosen), 3),
        "wall_s_per_patch_pyhf": round(wall_pyhf / len(for_pyhf), 3),
        "cpu_s_per_patch_sbilab": round(result.cpu_s / len(chosen), 3),
        "cpu_s_per_patch_pyhf": round(cpu_pyhf / len(for_pyhf), 3),
        "speedup": round((wall_pyhf / len(for_pyhf)) / (result.wall_s / len(chosen)), 2),
        "max_abs_cls_diff": float(f"{diff:.3g}"),
        "failed": result.errors,
        "excluded_obs": sum(p.cls_obs < 0.05 for p in result.points),
        "excluded_exp": sum(p.cls_expected[2] < 0.05 for p in result.points),
    }
    out = Path(args.out)
    result.write(out)
    if not args.quick:
        contours = exclusion_contours(result)
        (out / "contour.json").write_text(json.dumps(contours.to_dict()))
        plot_exclusion(contours, out / "contour.png", title=f"ATLAS sbottom {args.region}: CLs at mu = 1 ({contours.labels[0]}, "
                       f"{contours.labels[1]})")
        figures["contour_points"] = len(contours.points)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for key, value in figures.items():
            print(f"{key:>26}: {value}")
    return figures


if __name__ == "__main__":
    main()
