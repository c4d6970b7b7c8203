"""Command line: ``sbilab run ANALYSIS`` and ``sbilab info FILE``."""

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
    info = sub.add_parser("info", help="describe a published sbilab file (HDF5 + JSON spec) without loading its tensors")
    info.add_argument("file", help="path of the .h5 file")
    return parser


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
            from .publish import inspect

            print(json.dumps(inspect(args.file), indent=2, sort_keys=True))
            return 0
    except SbilabError as err:
        print(f"sbilab: error: {err}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
