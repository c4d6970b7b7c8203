r"""LHE readers: sbilab's ``sbilab.io`` reader vs scikit-hep's ``pylhe``, in one run.

On every shared LHE file (``../shared/data/lhe``, the gzip one included) each reader reads the
whole file (best of 3 CPU times); then a large file made by repeating the events of the
MadGraph 5 dijet file (1000 events with 145 named weights each) is read by each reader in a fresh
subprocess, which reports its wall and CPU time (process time, less sensitive to other jobs on
the machine) and its peak resident memory above what the imports took (``VmHWM`` minus the
``VmRSS`` after importing; sbilab's import alone brings in torch):

- ``sbilab read_lhe``: everything into numpy arrays at once;
- ``sbilab iter_lhe_chunks``: streaming, 10⁴-event chunks, nothing kept;
- ``pylhe list``: ``LHEFile.fromfile(..., generator=False)`` (one Python object per event/particle);
- ``pylhe stream``: iterating ``LHEFile.fromfile(...).events``, nothing kept;
- ``pylhe to_awkward``: ``pylhe.to_awkward`` of the whole file (pylhe's array form).

pylhe is optional (``pip install pylhe``); without it only sbilab's rows are measured.

Usage: ``python benchmarks/lhe_readers.py [--quick] [--json] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "lhe"
FILES = ["madgraph-2.0.0-wbj.lhe", "powheg-box-v2-W.lhe", "madgraph5-3.5.8-pp_to_jj.lhe.gz", "pythia-8.3.14-weakbosons.lhe"]

CHILD = r"""
import sys, time
sys.path.insert(0, {root!r})
path, mode = {path!r}, {mode!r}


def rss(key):
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)][0] / 1024


if mode.startswith("sbilab"):
    from sbilab.io import iter_lhe_chunks, read_lhe
else:
    import pylhe
base = rss("VmRSS")  # after the imports (sbilab imports torch)
t, c = time.perf_counter(), time.process_time()
if mode == "sbilab read_lhe":
    n = len(read_lhe(path))
elif mode == "sbilab iter_lhe_chunks":
    n = sum(len(chunk) for chunk in iter_lhe_chunks(path, 10000))
elif mode == "pylhe list":
    n = len(pylhe.LHEFile.fromfile(path, generator=False).events)
elif mode == "pylhe stream":
    n = sum(1 for _ in pylhe.LHEFile.fromfile(path).events)
else:
    n = len(pylhe.to_awkward(pylhe.LHEFile.fromfile(path)))
print(n, time.perf_counter() - t, time.process_time() - c, rss("VmHWM") - base)  # VmHWM starts afresh at exec
"""


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def have_pylhe() -> bool:
    try:
        import pylhe  # noqa: F401
    except ImportError:
        return False
    return True


def small_files() -> list[dict[str, object]]:
    from sbilab.io import read_lhe

    rows = []
    for name in FILES:
        path = DATA / name
        row: dict[str, object] = {"file": name}
        best = min(_timed(lambda: read_lhe(path)) for _ in range(3))
        row["sbilab_cpu_s"] = round(best, 4)
        if have_pylhe():
            import pylhe

            row["pylhe_cpu_s"] = round(min(_timed(lambda: pylhe.LHEFile.fromfile(str(path), generator=False).events) for _ in range(3)), 4)
            row["speedup"] = round(float(row["pylhe_cpu_s"]) / best, 2)  # type: ignore[arg-type]
        rows.append(row)
        log(row)
    return rows


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    """CPU time of one call (process time: steadier than wall time on a shared machine)."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def make_large(repeat: int, out: Path) -> tuple[Path, int]:
    text = gzip.open(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz", "rt").read()
    first, last = text.index("<event>"), text.rindex("</event>") + len("</event>\n")
    events = text[first:last]
    with open(out, "w") as fh:
        fh.write(text[:first])
        for _ in range(repeat):
            fh.write(events)
        fh.write(text[last:])
    return out, 1000 * repeat


def large_file(repeat: int) -> dict[str, object]:
    modes = ["sbilab read_lhe", "sbilab iter_lhe_chunks"]
    if have_pylhe():
        modes += ["pylhe list", "pylhe stream", "pylhe to_awkward"]
    with tempfile.TemporaryDirectory() as tmp:
        path, n = make_large(repeat, Path(tmp) / "large.lhe")
        size_mb = path.stat().st_size / 2**20
        log(f"large file: {n} events, {size_mb:.0f} MB")
        rows = []
        for mode in modes:
            code = CHILD.format(root=str(ROOT), path=str(path), mode=mode)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            count, wall, cpu, rss = done.stdout.split()
            assert int(count) == n, (mode, count, n)
            rows.append({"reader": mode, "wall_s": round(float(wall), 2), "cpu_s": round(float(cpu), 2), "peak_rss_above_imports_mb": round(float(rss), 1)})
            log(rows[-1])
    return {"events": n, "file_mb": round(size_mb, 1), "readers": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 2000-event large file (< 60 s on an idle machine)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of figures")
    parser.add_argument("--repeat", type=int, default=None, help="copies of the 1000 dijet events in the large file (default 50; quick 2)")
    args = parser.parse_args()
    if not DATA.is_dir():
        log(f"skipped: {DATA} is absent (the shared LHE files)")
        print(json.dumps({"skipped": f"{DATA} absent"}) if args.json else "skipped")
        return
    repeat = args.repeat or (2 if args.quick else 50)
    result: dict[str, object] = {"pylhe": have_pylhe(), "files": small_files(), "large": large_file(repeat)}
    if have_pylhe():
        import pylhe

        result["pylhe_version"] = pylhe.__version__
    print(json.dumps(result, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
