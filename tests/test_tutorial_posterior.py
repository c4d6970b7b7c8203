"""The resonance posterior tutorial runs (quick mode) and its NPE posterior agrees with the exact one."""

import json
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "resonance_posterior.py"


def test_resonance_posterior_tutorial_quick():
    run = subprocess.run([sys.executable, str(TUTORIAL), "--quick", "--json"], capture_output=True, text=True, timeout=300,
                         cwd=TUTORIAL.parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    # NPE vs the exact grid posterior: means within one posterior standard deviation, widths within 40 %
    assert all(abs(e) < 1.0 for e in summary["mean_error_in_std"])
    assert all(0.6 < r < 1.4 for r in summary["std_ratio"])
    assert summary["c2st_npe_vs_exact"] < 0.75
    # MCMC on the exact likelihood reproduces the grid posterior closely
    for i in range(2):
        exact_mean, exact_std = summary["exact"]["mean"][i], summary["exact"]["std"][i]
        assert abs(summary["mcmc_exact_likelihood"]["mean"][i] - exact_mean) < 0.15 * exact_std
        assert abs(summary["mcmc_exact_likelihood"]["std"][i] / exact_std - 1) < 0.15
    assert summary["sbc"]["passed"] and summary["coverage"]["passed"]
