"""The config-driven analysis pipeline and the ``sbilab`` command line."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sbilab.analysis import load_config, run_analysis
from sbilab.cli import main
from sbilab.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GAUSSIAN = """
[analysis]
name = "gauss"
[simulator]
toy = "gaussian"
sigma_z = 2.0
sigma_x = 1.0
[truth]
theta = 0.4
[observed]
n_events = 400
seed = 3
[training]
method = "alices"
n_simulations = 20000
epochs = 20
batch_size = 256
hidden = [32, 32]
patience = 0
seed = 2
[fit]
scan_points = 7
"""


def write(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "analysis"
    folder.mkdir(exist_ok=True)
    (folder / "analysis.toml").write_text(text)
    return folder


def test_gaussian_measurement_matches_exact_likelihood(tmp_path):
    folder = write(tmp_path, GAUSSIAN)
    summary = run_analysis(load_config(folder), out=tmp_path / "out", progress=False)
    assert "theta" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    r = doc["parameters"]["theta"]
    # exact likelihood N(θ, 5): θ̂ = sample mean, 68.3% interval half-width sqrt(5/400) = 0.1118
    assert r["exact_hi"] - r["exact_lo"] == pytest.approx(2 * math.sqrt(5 / 400), rel=2e-3)
    assert r["exact_lo"] < r["exact_best"] < r["exact_hi"]
    # the learned ratio reproduces the exact interval closely
    assert abs(r["best"] - r["exact_best"]) < 0.05
    assert r["width_ratio"] == pytest.approx(1.0, abs=0.1)
    assert (tmp_path / "out" / "estimator.h5").is_file()


def test_config_errors_name_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match="No analysis configuration"):
        load_config(tmp_path / "missing")
    folder = write(tmp_path, GAUSSIAN.replace('method = "alices"', 'method = "magic"'))
    with pytest.raises(ConfigError, match=r"\[training\] method = 'magic'"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("epochs = 20", "epochs = -1"))
    with pytest.raises(ConfigError, match="epochs = -1 must be positive"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("epochs = 20", "epoch = 20"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("[fit]", "[fit"))
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("theta = 0.4", "mu = 0.4"))
    from sbilab.analysis import build_simulator
    from sbilab.analysis.measurement import _truth

    cfg = load_config(folder)
    with pytest.raises(ConfigError, match=r"\['mu'\] but the 'gaussian' toy has parameters \['theta'\]"):
        _truth(cfg, build_simulator(cfg))


def test_cli_reports_config_errors_with_exit_code(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nowhere")]) == 2
    assert "No analysis configuration" in capsys.readouterr().err


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "sbilab.cli", "--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout and "info" in out.stdout


def test_shipped_analyses_parse():
    for folder in sorted((ROOT / "analyses").iterdir()):
        if (folder / "analysis.toml").is_file():
            cfg = load_config(folder)
            assert cfg.quick_version().training.n_simulations <= cfg.training.n_simulations
