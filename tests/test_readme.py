"""The README's worked example runs (with a smaller training budget) and measures the resonance."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_recovers_the_mass():
    text = README.read_text()
    code = re.search(r"## In a few lines\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "100_000" in code and 'fit(est, get_loss("alices", alpha=0.1), train)' in code
    code = code.replace("100_000", "10_000").replace(
        'fit(est, get_loss("alices", alpha=0.1), train)', 'fit(est, get_loss("alices", alpha=0.1), train, epochs=5, progress=False)'
    )
    code = code.replace("print(", "_printed = (")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the project's own README
    result, nll = namespace["result"], namespace["nll"]
    assert result.valid
    # 1000 events: σ(M) ≈ 0.143 (Cramér–Rao); a short training still lands within a few σ of the truth
    assert abs(result.best["M"] - 100.0) < 0.6
    lo, hi = nll.interval("M")
    assert lo < result.best["M"] < hi and 0.2 < hi - lo < 0.45
