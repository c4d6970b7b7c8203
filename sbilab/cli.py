"""Command line: ``sbilab run ANALYSIS``, ``sbilab info FILE``, ``sbilab export FILE --onnx``,
``sbilab reinterpret BKG PATCHES``, ``sbilab simulate SIMULATOR N --out STORE`` (fan-out into a
store) and ``sbilab launch --nproc W TARGET`` (data-parallel training processes)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .exceptions import SbilabError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbilab",
        description="Simulation-based inference for particle physics, centred on likelihood ratios.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an analysis folder (simulate, train, fit, write results)")
    run.add_argument("analysis", help="analysis folder holding analysis.toml, e.g. analyses/resonance_mass")
    run.add_argument("--out", default=None, help="output directory (default: out/<analysis name>)")
    run.add_argument("--quick", action="store_true", help="small training budget from the [quick] section (a smoke run)")
    run.add_argument("--device", default="auto", help="torch device for training: auto, cpu, cuda, cuda:1 ...")
    run.add_argument("--no-progress", action="store_true", help="silence progress bars")
    info = sub.add_parser("info", help="describe a published sbilab file (HDF5 + JSON spec), a simulation store or an ONNX file")
    info.add_argument("file", help="a published .h5 file, a store directory (or packed store file), or an .onnx file")
    export = sub.add_parser("export", help="export a published estimator to another format")
    export.add_argument("file", help="the published estimator (.h5)")
    export.add_argument("--onnx", action="store_true", required=True, help="write its log-ratio / logit / log-prob / score as ONNX")
    export.add_argument("--out", default=None, help="output path (default: FILE with suffix .onnx)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    export.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check on random inputs")
    simulate = sub.add_parser("simulate", help="simulate N events in chunks on worker processes or Dask into a store")
    simulate.add_argument("simulator", help="a registered toy (e.g. gaussian) or an importable 'package.module:attr'")
    simulate.add_argument("n", type=int, help="number of events (per class for ratio_training_data)")
    simulate.add_argument("--out", required=True, help="the store directory to write (e.g. run.sbistore)")
    simulate.add_argument("--options", default="{}", help="JSON keyword options of the toy or factory")
    simulate.add_argument("--task", default="simulate", choices=["simulate", "augment", "ratio_training_data", "score_training_data"])
    simulate.add_argument("--theta", type=float, nargs="+", default=None, help="fixed parameter point (simulate, augment)")
    simulate.add_argument("--chunk-size", type=int, default=10_000, help="events per chunk (one task, one commit)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--engine", default="processes", choices=["processes", "dask", "serial"])
    simulate.add_argument("--workers", type=int, default=2, help="worker processes started here")
    simulate.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per worker")
    simulate.add_argument("--scheduler", default=None, help="address of a running Dask scheduler, e.g. tcp://host:8786")
    simulate.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the scheduler")
    simulate.add_argument("--check", default="raise", choices=["raise", "warn", "off"], help="identity checks of augmented data, per chunk")
    simulate.add_argument("--resume", action="store_true", help="continue a store an interrupted run left")
    simulate.add_argument("--overwrite", action="store_true", help="replace an existing store")
    simulate.add_argument("--no-progress", action="store_true", help="silence the progress bar")
    launch = sub.add_parser("launch", help="run a training script or function in W data-parallel processes (like torchrun)")
    launch.add_argument("target", help="a script path.py, or 'package.module:function'")
    launch.add_argument("args", nargs="*", help="arguments of the script (sys.argv) or function (strings)")
    launch.add_argument("--nproc", type=int, default=2, help="number of processes (default 2)")
    launch.add_argument("--timeout", type=float, default=86400.0, help="seconds until every rank still running is ended")
    launch.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per process")
    _reinterpret_parser(sub)
    return parser


def _simulate(args: argparse.Namespace) -> dict:
    from .distributed import simulate_to_store
    from .exceptions import ConfigError

    try:
        options = json.loads(args.options)
    except ValueError as err:
        raise ConfigError(f"sbilab simulate: --options is not JSON ({err}); e.g. --options '{{\"sigma_x\": 0.5}}'.") from None
    res = simulate_to_store(args.simulator, args.n, args.out, options=options, task=args.task, theta=args.theta,
                            chunk_size=args.chunk_size, seed=args.seed, engine=args.engine, workers=args.workers,
                            threads=args.threads, scheduler=args.scheduler, timeout=args.timeout, check=args.check,
                            resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return {"store": str(res.path), "rows": res.rows, "chunks": res.chunks, "committed": res.committed, "redone": list(res.redone),
            "seconds": round(res.seconds, 3), "worker_cpu_seconds": round(res.worker_cpu_seconds, 3), "engine": res.engine,
            "workers": res.workers}


def _reinterpret_parser(sub: argparse._SubParsersAction) -> None:
    scan = sub.add_parser("reinterpret", help="CLs of every signal patch of a published likelihood, table and exclusion contour")
    scan.add_argument("background", help="background-only workspace JSON (or its member name inside the PATCHES tarball)")
    scan.add_argument("patches", help="a pyhf PatchSet JSON, a patch.*.json file, a folder of them, or a .tar.gz of such folders")
    scan.add_argument("--region", default=None, help="folder of the patches when there are several (default: the background's folder)")
    scan.add_argument("--labels", default=None, help="comma-separated names of the patches' values, e.g. m_sb,m_chi2,m_chi1")
    scan.add_argument("--only", action="append", default=None, help="scan only patches matching this pattern (repeatable)")
    scan.add_argument("--out", default=None, help="output folder (default: out/reinterpret-<region or patch file>)")
    scan.add_argument("--workers", type=int, default=None, help="worker processes (default: the CPUs available; 1: in-process)")
    scan.add_argument("--poi", type=float, default=1.0, help="tested signal strength (default 1)")
    scan.add_argument("--optimizer", choices=("scipy", "minuit"), default="scipy", help="fit optimizer (default scipy, as pyhf)")
    scan.add_argument("--tolerance", type=float, default=None, help="optimizer tolerance (default: the optimizer's own)")
    scan.add_argument("--backend", choices=("torch", "numpy"), default="torch", help="pyhf backend (torch: autodiff gradients)")
    scan.add_argument("--upper-limits", action="store_true", help="also compute observed and expected upper limits on mu")
    scan.add_argument("--no-warm-start", action="store_true", help="start every fit from the workspace's initial values")
    scan.add_argument("--plane", default=None, help="contour axes, two labels or indices, e.g. m_sb,m_chi2")
    scan.add_argument("--fix", action="append", default=None, help="keep points with AXIS=VALUE in the contour (repeatable)")
    scan.add_argument("--no-plot", action="store_true", help="do not draw the contour figure")
    scan.add_argument("--no-progress", action="store_true", help="silence the progress bar")


def _reinterpret(args: argparse.Namespace) -> dict:
    """``sbilab reinterpret``: scan (resuming a journal in the output folder), write the table and the contour."""
    import tarfile
    from pathlib import PurePosixPath

    from .durable import atomic_write_text
    from .exceptions import ConfigError
    from .reinterpret import ScanSettings, exclusion_contours, read_background, read_patches, scan_patches

    archive = Path(args.patches) if Path(args.patches).is_file() and tarfile.is_tarfile(args.patches) else None
    in_archive = archive is not None and not Path(args.background).is_file()
    region = args.region or (str(PurePosixPath(args.background).parent) if in_archive else None)
    workspace = read_background(args.background, archive=archive if in_archive else None)
    labels = args.labels.split(",") if args.labels else None
    patches = read_patches(args.patches, region=region, labels=labels)
    if args.only:
        patches = patches.select(args.only)
    settings = ScanSettings(poi=args.poi, optimizer=args.optimizer, tolerance=args.tolerance, backend=args.backend,
                            upper_limits=args.upper_limits, warm_start=not args.no_warm_start)
    name = region or Path(args.patches).name.split(".")[0]
    out = Path(args.out) if args.out else Path("out") / f"reinterpret-{name.replace('/', '-')}"
    result = scan_patches(workspace, patches, settings=settings, journal=out / "scan.jsonl", workers=args.workers,
                          progress=not args.no_progress)
    files = [str(f) for f in result.write(out)]
    summary = {"patches": len(result.points), "computed": len(result.points) - result.resumed, "resumed": result.resumed,
               "failed": result.errors, "wall_s": round(result.wall_s, 2), "cpu_s": round(result.cpu_s, 2), "files": files}
    if len(patches.labels) >= 2:
        try:
            axes = tuple(int(a) if a.isdigit() else a for a in args.plane.split(",")) if args.plane else None
            fix = dict(f.split("=", 1) for f in args.fix) if args.fix else None
            fix = {int(k) if k.isdigit() else k: float(v) for k, v in fix.items()} if fix else None
            contours = exclusion_contours(result, axes=axes, fix=fix)  # type: ignore[arg-type]
        except (ConfigError, ValueError) as err:
            summary["contour"] = f"not drawn: {err}"
        else:
            files.append(str(atomic_write_text(out / "contour.json", json.dumps(contours.to_dict(), indent=1))))
            if not args.no_plot:
                try:
                    from .reinterpret import plot_exclusion

                    plot_exclusion(contours, out / "contour.png", title=f"{name}: CLs at mu = {args.poi:g}")
                    files.append(str(out / "contour.png"))
                except ImportError as err:
                    summary["plot"] = f"not drawn: {err}"
    return summary


def _describe(path: str) -> dict:
    """``sbilab info``: a published file, a store (directory or packed file), or an ONNX model."""
    from .exceptions import PublishError, StoreError
    from .publish import inspect
    from .store import SimulationStore

    target = Path(path)
    if target.suffix == ".onnx":
        from .io.onnx import describe_onnx

        return describe_onnx(target)
    if not target.is_dir():
        try:
            return inspect(target)
        except PublishError as err:
            if not target.is_file():
                raise
            reason = err
    else:
        reason = None
    try:
        store = SimulationStore.open(target)
    except StoreError as err:
        raise PublishError(f"{path} is neither a published file ({reason}) nor a simulation store ({err}).") from None
    with store:
        return {"file": str(target), "format": "sbilab store", "rows": len(store), "chunks": store.n_chunks,
                "fields": store.fields, "metadata": store.metadata}


def _output_folder(out: str | None, name: str) -> Path:
    """The folder ``sbilab run`` writes to (``--out``, or ``out/<name>`` confined to ``out/``), created.

    Raises:
        ConfigError: ``--out`` is an existing file, or the folder cannot be created.
    """
    from .analysis.config import output_folder
    from .exceptions import ConfigError

    folder = Path(out) if out else output_folder("out", name)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is an existing file; the analysis writes several files into a folder. "
                          "Give a folder path (new or existing).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the output folder {folder} ({err.strerror or err}); give a writable --out folder.") from None
    return folder


def _export(args: argparse.Namespace) -> dict:
    from . import estimators  # noqa: F401 - registers the estimator kinds publish.load rebuilds
    from .io.onnx import export_onnx, verify_onnx
    from .publish import load

    module = load(args.file)
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".onnx")
    export_onnx(module, out, opset=args.opset, source=str(args.file))
    summary = {"file": str(args.file), "onnx": str(out), "bytes": out.stat().st_size}
    if not args.no_verify:
        summary["max_abs_diff_onnxruntime_vs_torch"] = verify_onnx(out, module, batch_sizes=(1, 17, 256))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sbilab`` command. Returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from .analysis import load_config, run_analysis

            config = load_config(args.analysis)
            out = _output_folder(args.out, config.name)
            summary = run_analysis(config, out=out, quick=args.quick, device=args.device, progress=not args.no_progress)
            print(summary)
            return 0
        if args.command == "info":
            print(json.dumps(_describe(args.file), indent=2, sort_keys=True, default=str))
            return 0
        if args.command == "export":
            print(json.dumps(_export(args), indent=2, sort_keys=True))
            return 0
        if args.command == "simulate":
            print(json.dumps(_simulate(args), indent=2, sort_keys=True))
            return 0
        if args.command == "launch":
            from .distributed import launch

            launch(args.target, args.nproc, args=args.args, timeout=args.timeout, threads=args.threads)
            return 0
        if args.command == "reinterpret":
            summary = _reinterpret(args)
            print(json.dumps(summary, indent=2, sort_keys=True))
            if summary["failed"]:
                print(f"sbilab: {len(summary['failed'])} point(s) could not be computed; see 'failed' above and results.csv",
                      file=sys.stderr)
            return 0
    except SbilabError as err:
        print(f"sbilab: error: {err}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
