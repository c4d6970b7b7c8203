"""The README's worked example runs (with a smaller training budget) and measures the resonance."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_recovers_the_mass():
    text = README.read_text()
    code = re.search(r"## In a few lines\n\n```python\n(.*?)```", text, re.S).group(1)
    fit_call = 'fit(est, get_loss("alices", alpha=0.1), train, seed=seed)'
    assert "100_000" in code and fit_call in code and "manual_seed(1000 + seed)" in code
    code = code.replace("100_000", "10_000").replace(fit_call, fit_call[:-1] + ", epochs=5, progress=False)")
    code = code.replace("print(", "_printed = (")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the project's own README
    result, nll, exact = namespace["result"], namespace["nll"], namespace["exact"]
    assert result.valid and exact.valid
    assert abs(exact.best["M"] - 100.0) < 0.5 and set(exact.minos) == {"M", "Gamma"}  # the exact comparison ran
    # 1000 events: σ(M) ≈ 0.143 (Cramér–Rao); a short training still lands within a few σ of the truth
    assert abs(result.best["M"] - 100.0) < 0.6
    lo, hi = nll.interval("M")
    assert lo < result.best["M"] < hi and 0.2 < hi - lo < 0.45
