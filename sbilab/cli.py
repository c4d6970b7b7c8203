"""Command line: ``sbilab run ANALYSIS``, ``sbilab info FILE`` and ``sbilab export FILE --onnx``."""

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
    return parser


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
            out = Path(args.out) if args.out else Path("out") / config.name
            summary = run_analysis(config, out=out, quick=args.quick, device=args.device, progress=not args.no_progress)
            print(summary)
            return 0
        if args.command == "info":
            print(json.dumps(_describe(args.file), indent=2, sort_keys=True, default=str))
            return 0
        if args.command == "export":
            print(json.dumps(_export(args), indent=2, sort_keys=True))
            return 0
    except SbilabError as err:
        print(f"sbilab: error: {err}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
