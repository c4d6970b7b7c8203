"""The tutorials run end to end (short mode) and print their results."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_own_simulator_tutorial_quick():
    result = subprocess.run([sys.executable, str(ROOT / "tutorials" / "own_simulator.py"), "--quick"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    for method in ("CARL", "ROLR", "RASCAL", "ALICE", "ALICES", "CASCAL", "NDE", "SCANDAL", "SALLY"):
        assert f"\n{method:<10} " in out, f"{method} missing from the MSE table"
    assert "Var(log r_exact)" in out and "CallableSimulator + CARL" in out and "tutorial finished" in out
