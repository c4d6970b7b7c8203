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
from _analysis_folder import write  # noqa: E402

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
[estimator]
method = "alices"
n_simulations = 20000
hidden = [32, 32]
[training]
epochs = 20
batch_size = 256
learning_rate = 2e-3
patience = false
seed = 2
[fit]
scan_points = 7
"""


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
    assert (tmp_path / "out" / "estimator.h5").is_file() and (tmp_path / "out" / "results.h5").is_file()
    # the fits' honesty is recorded: the learned estimator's support was checked, the exact callable's could not be
    quality = doc["fit_quality"]
    assert quality["learned"]["outside_support"] is not None and 0.0 <= quality["learned"]["outside_support"] <= 0.01
    assert quality["exact"] == {"valid": True, "reason": "", "at_bound": [], "outside_support": None,
                                "notes": quality["exact"]["notes"]} and "unavailable" in quality["exact"]["notes"][0]
    assert quality["learned"]["valid"] == doc["fit_valid"]["learned"] and ("FIT NOT VALID" in summary) != quality["learned"]["valid"]


def test_fit_max_outside_is_read_and_survives_the_quick_version(tmp_path):
    text = GAUSSIAN.replace("scan_points = 7", "scan_points = 7\nmax_outside = 0.05")
    cfg = load_config(write(tmp_path, text))
    assert cfg.fit.max_outside == 0.05 and cfg.quick_version().fit.max_outside == 0.05
    assert load_config(write(tmp_path, GAUSSIAN)).quick_version().fit.max_outside == 0.0  # the default: no event outside
    with pytest.raises(ConfigError, match=r"max_outside = -0\.1 must be >= 0"):
        load_config(write(tmp_path, text.replace("0.05", "-0.1")))


def test_fit_quality_records_and_banners_a_fit_at_a_bound():
    """A fit whose optimum lies beyond the range is recorded not valid, with its reason, and bannered in the summary."""
    import torch

    from sbilab import Events
    from sbilab.analysis.estimation import fit_lines, fit_quality
    from sbilab.simulators import GaussianLatent
    from sbilab.stats import UnbinnedLikelihood

    sim = GaussianLatent()
    exact = lambda x, t: sim.log_prob(x, t) - sim.log_prob(x, sim.space.reference)  # noqa: E731
    x = torch.full((50, 1), 9.0, dtype=torch.float64)  # the likelihood peaks at theta = 9, beyond the upper bound
    record = fit_quality(UnbinnedLikelihood(exact, Events.observed(x), sim.space).fit())
    assert record["valid"] is False and record["at_bound"] == ["theta"] and "upper bound" in record["reason"]
    assert json.loads(json.dumps(record)) == record  # JSON as it stands (no NaN)
    (line,) = fit_lines({"learned": record, "exact": {**record, "valid": True}})
    assert line.startswith("!!! FIT NOT VALID") and "learned fit:" in line and record["reason"] in line


def test_config_errors_name_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match="No analysis configuration"):
        load_config(tmp_path / "missing")
    folder = write(tmp_path, GAUSSIAN.replace('method = "alices"', 'method = "magic"'))
    with pytest.raises(ConfigError, match=r"\[estimator\] method = 'magic'; choose one of \['alice', 'alices', 'carl', 'cascal', 'nde', 'rascal', 'rolr', 'scandal'\]"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("epochs = 20", "epochs = -1"))
    with pytest.raises(ConfigError, match=r"\[training\] epochs must be a positive integer, got -1"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("patience = false", "patience = 0"))
    with pytest.raises(ConfigError, match=r"\[training\] patience must be a positive integer, got 0"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace('toy = "gaussian"', 'toy = "gauss"'))
    with pytest.raises(ConfigError, match=r"\[simulator\] toy = 'gauss'; choose one of \[('\w+', )*'gaussian', ('\w+', )*'resonance'"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("sigma_x = 1.0", "sigma_y = 1.0"))  # refused at load, before anything runs
    with pytest.raises(ConfigError, match=r"\[simulator\] options \['sigma_y', 'sigma_z'\] do not fit the 'gaussian' toy .* its options are"):
        load_config(folder)
    from sbilab.analysis import build_simulator

    write(tmp_path, GAUSSIAN.replace("epochs = 20", "epoch = 20"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("[fit]", "[fit"))
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(folder)
    write(tmp_path, GAUSSIAN.replace("theta = 0.4", "mu = 0.4"))
    with pytest.raises(ConfigError, match=r"\[truth\] gives \['mu'\] but the 'gaussian' toy has parameters \['theta'\]"):
        load_config(folder)  # at load, before anything runs


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
            assert cfg.quick_version().estimator.n_simulations <= cfg.estimator.n_simulations
            assert cfg.training.patience is None  # the settings of the measured runs
            if cfg.kind in ("measurement", "eft_limits", "search"):
                assert cfg.training.learning_rate == 2e-3


def test_a_new_pipeline_registers_where_defined_with_its_own_section(tmp_path):
    from dataclasses import dataclass

    from sbilab.analysis import PIPELINES, register_pipeline

    @dataclass(frozen=True)
    class CountingSection:
        bins: int = 4

    @register_pipeline("test_counting", section=("counting", CountingSection), toys=("gaussian",))
    def run_counting(config, *, out, quick, device, progress):
        cfg = config.quick_version() if quick else config
        return f"{cfg.kind}: {cfg.counting.bins} bins, {cfg.training.epochs} epochs"

    try:
        text = GAUSSIAN.replace('name = "gauss"', 'name = "gauss"\nkind = "test_counting"') + "[counting]\nbins = 6\n[quick]\nbins = 2\nepochs = 1\n"
        cfg = load_config(write(tmp_path, text))
        assert cfg.counting == CountingSection(6) and cfg.training.epochs == 20
        assert run_analysis(cfg, out=tmp_path / "out", quick=True) == "test_counting: 2 bins, 1 epochs"
        with pytest.raises(ConfigError, match=r"unknown section\(s\) \['eft'\]; the 'test_counting' pipeline allows"):
            load_config(write(tmp_path, text + "[eft]\nluminosity = 1.0\n"))
        with pytest.raises(ConfigError, match=r"\[counting\] bins = -1 must be positive"):
            load_config(write(tmp_path, text.replace("bins = 6", "bins = -1")))
        with pytest.raises(ConfigError, match=r"kind = 'test_counting' needs \[simulator\] toy = 'gaussian', got 'resonance'"):
            load_config(write(tmp_path, text.replace('toy = "gaussian"', 'toy = "resonance"')))
        with pytest.raises(ConfigError, match="already taken"):
            register_pipeline("test_counting")(lambda config, **options: "")
    finally:
        del PIPELINES["test_counting"]
    with pytest.raises(ConfigError, match=r"kind = 'test_counting'; choose one of \[('\w+', )*'eft_limits', 'measurement'"):
        load_config(write(tmp_path, text))


def test_results_are_published_beside_the_json_summary(tmp_path):
    from sbilab.analysis.run import write_results
    from sbilab.publish import load_results

    doc = {"analysis": "a", "cl": 0.683, "profiles": {"learned": {"M": {"values": [1, 2, 3], "delta_nll": [0.5, 0.0, 0.5]}}},
           "cls": [0.95], "flags": [True, False], "nested": [{"x": [1.0, 2.0]}]}
    path = write_results(tmp_path, doc, kind="measurement", metadata={"analysis": "a"})
    assert json.loads((tmp_path / "results.json").read_text()) == doc
    back = load_results(path, expected_kind="analysis.measurement")
    assert back.arrays["profiles.learned.M.values"].tolist() == [1.0, 2.0, 3.0]
    assert back.arrays["nested.0.x"].tolist() == [1.0, 2.0]
    assert back.spec["profiles"]["learned"]["M"]["delta_nll"] == "array:profiles.learned.M.delta_nll"
    assert back.spec["cls"] == [0.95] and back.spec["flags"] == [True, False] and back.metadata == {"analysis": "a"}


def test_learned_log_ratio_reduces_ensembles_with_ensemble_mean():
    import torch

    from sbilab.analysis.estimation import Trained, learned_log_ratio
    from sbilab.estimators import EnsembleMean, LikelihoodEstimator, RatioEstimator
    from sbilab.nets.ensemble import Ensemble
    from sbilab.simulators import GaussianLatent

    sim = GaussianLatent()
    x, theta = torch.randn(6, 1, generator=torch.Generator().manual_seed(1)), torch.full((6, 1), 0.5)
    ratios = Ensemble(RatioEstimator(sim.space, 1, hidden=(8,)), 3, generator=torch.Generator().manual_seed(0)).eval()
    fn = learned_log_ratio(Trained(ratios.template, ratios, 1, 1, 0.0, 0.0, "cpu", 10, "ratio"), sim)
    with torch.no_grad():
        assert isinstance(fn, EnsembleMean) and torch.allclose(fn(x, theta), ratios(x, theta).mean(0))
    flows = Ensemble(LikelihoodEstimator(sim.space, 1, hidden=(8,), transforms=1), 2, generator=torch.Generator().manual_seed(0)).eval()
    fn = learned_log_ratio(Trained(flows.template, flows, 1, 1, 0.0, 0.0, "cpu", 10, "likelihood"), sim)
    ref = torch.zeros(6, 1)  # the reference point of the toy
    with torch.no_grad():
        mixture = lambda t: torch.logsumexp(flows(x, t), 0) - math.log(2)  # noqa: E731
        torch.testing.assert_close(fn(x, theta), mixture(theta) - mixture(ref), rtol=0, atol=1e-6)


def test_output_folders_stay_in_the_output_root(tmp_path, capsys, monkeypatch):
    """name = "../../x" wrote outside out/; --out at an existing file was a traceback."""
    from sbilab.analysis.config import output_folder

    for name in ("../../x", "/tmp/x", "a/b", ".."):
        write(tmp_path, GAUSSIAN.replace('name = "gauss"', f'name = "{name}"'))
        with pytest.raises(ConfigError, match=r"\[analysis\] name = .*one folder name"):
            load_config(tmp_path / "analysis")
    write(tmp_path, GAUSSIAN.replace('name = "gauss"', 'name = "gauss"\nnmae = "typo"'))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nmae'\] in \[analysis\]"):
        load_config(tmp_path / "analysis")
    write(tmp_path, GAUSSIAN.replace('name = "gauss"\n', ""))
    assert load_config(tmp_path / "analysis").name == "analysis"  # default: the folder's name
    root = tmp_path / "out"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    assert output_folder(root, "gauss") == root / "gauss"
    with pytest.raises(ConfigError, match=r"resolves to .*outside"):
        output_folder(root, "escape")
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    write(tmp_path, GAUSSIAN)
    assert main(["run", str(tmp_path / "analysis"), "--out", str(existing), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "Traceback" not in err and existing.read_text() == "keep me"
