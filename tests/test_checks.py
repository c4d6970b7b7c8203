"""Identity checks of augmented data (sbilab.simulators.checks), of learned ratios (sbilab.stats.normalisation)
and the normalisation verdict of closure_test, on the Lifetime toy with and without its acceptance term.

Lifetime toy: t ~ Exp(τ) kept if t < T = 2, x = t + N(0, 0.1²), τ ∈ [0.5, 2], reference 1. A joint
likelihood without −log A(τ), A = 1 − e^{−T/τ}, gives E[t_joint] = ∂τ log A and E_ref[r_joint] =
A(τ)/A(τ_ref), both known in closed form; an estimator trained on such data learns r(x|τ) A(τ)/A(1),
and a fit with that ratio converges to τ* = 0.68286 instead of τ = 1 (quadrature, below).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy import optimize

from sbilab.calibration import closure_test
from sbilab.estimators import RatioEstimator, alices_loss
from sbilab.events import Events
from sbilab.exceptions import (
    ConfigError,
    IdentityCheckError,
    IdentityCheckWarning,
    InvalidEventsError,
    ParameterSpaceError,
    ShapeMismatchError,
)
from sbilab.simulators import GaussianLatent, Lifetime, Morphing, Resonance, ResonanceBackground, augment, ratio_training_data
from sbilab.simulators.augment import doubly_ratio_training_data, score_training_data
from sbilab.simulators.checks import bridge_test, check_augmented, joint_ratio_check, joint_score_check, mean_test
from sbilab.simulators.toys.resonance import _gauss_legendre
from sbilab.stats import UnbinnedLikelihood, ratio_normalisation
from sbilab.training import fit

F64 = torch.float64
RIGHT, WRONG = Lifetime(), Lifetime(include_acceptance=False)
REF = RIGHT.space.reference
HINT = "does joint_log_prob include every θ-dependent normalisation, e.g. an acceptance?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def log_acceptance(tau: float) -> float:
    return math.log(-math.expm1(-2.0 / tau))


# ------------------------------------------------------------------ augmented data
def test_wrong_joint_likelihood_is_refused_right_one_passes():
    data = ratio_training_data(RIGHT, 4000, generator=torch.Generator().manual_seed(0))  # check="raise" by default
    assert all(c.passed for c in check_augmented(data, ("tau",)))
    with pytest.raises(IdentityCheckError) as err:
        ratio_training_data(WRONG, 4000, generator=torch.Generator().manual_seed(0))
    text = str(err.value)
    assert text.startswith("ratio_training_data(Lifetime): mean joint score for tau is -0.") and HINT in text
    assert "joint-ratio normalisation" in text and "check='off'" in text
    with pytest.raises(IdentityCheckError, match="mean joint score for tau"):
        score_training_data(WRONG, 4000, generator=torch.Generator().manual_seed(1))
    with pytest.raises(IdentityCheckError, match="mean joint score for tau"):
        augment(WRONG, WRONG.simulate(4000, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(IdentityCheckError, match="doubly_ratio_training_data"):
        doubly_ratio_training_data(WRONG, 4000, generator=torch.Generator().manual_seed(3))
    doubly_ratio_training_data(RIGHT, 4000, generator=torch.Generator().manual_seed(3))


def test_joint_score_mean_of_the_wrong_simulator_is_the_acceptance_derivative():
    # θ uniform on [0.5, 2]: E[∂τ log A(τ)] = (log A(2) − log A(0.5)) / 1.5; at the reference: ∂τ log A(1)
    data = ratio_training_data(WRONG, 20_000, generator=torch.Generator().manual_seed(4), check="off")
    score, _ = check_augmented(data, ("tau",))
    overall = next(t for t in score.tests if t.group == "all events")
    expected = (log_acceptance(2.0) - log_acceptance(0.5)) / 1.5
    assert abs(overall.mean - expected) < 4 * overall.error and overall.pull < -30
    at_ref = score_training_data(WRONG, 20_000, generator=torch.Generator().manual_seed(5), check="off")
    (check,) = check_augmented(at_ref, ("tau",))  # θ = reference everywhere: one group, no ratio check
    (test,) = check.tests
    assert abs(test.mean + 0.3130352855) < 4 * test.error and not check.passed


@pytest.mark.parametrize("tau", [0.6, 2.0])
def test_bridge_estimate_of_the_joint_ratio_normalisation_is_the_acceptance_ratio(tau):
    # events at τ (label 1) and at the reference (label 0) with hypothesis τ: E_ref[r_joint] = A(τ)/A(1) exactly
    g = torch.Generator().manual_seed(6)
    own = WRONG.simulate(20_000, theta=torch.tensor([tau]), generator=g)
    at_ref = WRONG.simulate(20_000, theta=REF, generator=g).replace(theta=own.theta)
    both = Events.concatenate([own.replace(label=torch.ones(20_000)), at_ref.replace(label=torch.zeros(20_000))])
    for sim, expected in ((RIGHT, 1.0), (WRONG, math.exp(log_acceptance(tau) - log_acceptance(1.0)))):
        ratio = check_augmented(augment(sim, both, check="off"), ("tau",))[1]
        (test,) = ratio.tests  # one θ: one group
        assert abs(test.mean - expected) < 4 * test.error and test.error < 0.01
        assert ratio.passed == (sim is RIGHT)


def test_pulls_of_correct_simulators_are_standard_normal():
    # 60 independent small training sets of the Gaussian toy, one group each: pulls ~ N(0, 1)
    pulls = {"joint score": [], "joint ratio": []}
    sim = GaussianLatent()
    for seed in range(60):
        data = ratio_training_data(sim, 1000, generator=torch.Generator().manual_seed(100 + seed), check="off")
        for c in check_augmented(data, sim.space.names, bins=1):
            pulls[c.name].append(c.tests[0].pull)
    for name, values in pulls.items():
        v = torch.tensor(values)
        assert abs(v.mean().item()) < 0.45 and 0.75 < v.std().item() < 1.3, (name, v.mean(), v.std())


@pytest.mark.parametrize("sim, n, seeds", [
    (GaussianLatent(), 5000, 3), (Morphing(1), 5000, 3), (Morphing(2), 5000, 3), (Lifetime(), 5000, 3),
    (Resonance(), 2000, 1), (ResonanceBackground(), 2000, 1),
])
def test_no_false_alarm_on_correct_toys(sim, n, seeds):
    for seed in range(seeds):  # check="raise": a false alarm fails the test
        ratio_training_data(sim, n, generator=torch.Generator().manual_seed(seed))
        score_training_data(sim, n, generator=torch.Generator().manual_seed(seed))


def test_plain_mean_of_a_heavy_tailed_ratio_false_alarms_and_the_bridge_does_not():
    # the reason the joint-ratio check uses the bridge estimate: Morphing's joint ratio under the
    # reference is so heavy-tailed that 20k events miss the rare large values (measured: 0.77 ± 0.007)
    sim = Morphing(2)
    data = ratio_training_data(sim, 20_000, generator=torch.Generator().manual_seed(0), check="off")
    at_ref = data.label < 0.5
    mask = at_ref & (data.theta[:, 0] > -0.51) & (data.theta[:, 0] < -0.0079)
    plain = mean_test(data.log_r_joint[mask].double().exp(), expected=1.0)
    assert plain.pull < -20 and plain.tail_index < 0.5  # the tail index does not see it either
    assert all(c.passed for c in check_augmented(data, sim.space.names))


def test_groups_in_theta_catch_a_bias_that_cancels_overall():
    g = torch.Generator().manual_seed(7)
    theta = torch.rand(20_000, 1, generator=g, dtype=F64) * 2 - 1
    score = torch.randn(20_000, 1, generator=g, dtype=F64) + 0.1 * torch.sign(theta)
    check = joint_score_check(score, theta, names=("c",))
    overall = check.tests[0]
    assert overall.group == "all events" and abs(overall.pull) < 5
    assert not check.passed and check.failed[0].group.startswith("c in [")
    assert joint_score_check(score, theta, names=("c",), bins=1).passed  # without groups it is missed


def test_weights_are_used():
    # weighted training data of a morphing pool: correct with its weights, wrong without them
    sim = Morphing(2)
    bench = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.8], [0.0, -1.0]], dtype=F64)
    pool = sim.weighted_events(20_000, bench, generator=torch.Generator().manual_seed(8))
    data = pool.training_data(generator=torch.Generator().manual_seed(9))
    assert all(c.passed for c in check_augmented(data, sim.space.names))
    assert not all(c.passed for c in check_augmented(data.replace(weights=None), sim.space.names))


def test_modes_warn_and_off():
    with pytest.warns(IdentityCheckWarning, match="mean joint score for tau"):
        ratio_training_data(WRONG, 3000, generator=torch.Generator().manual_seed(0), check="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = ratio_training_data(WRONG, 3000, generator=torch.Generator().manual_seed(0), check="off")
    assert len(data) == 6000


# ------------------------------------------------------------------ learned ratio and closure
def exact(x, th):
    return RIGHT.log_prob(x, th) - RIGHT.log_prob(x, REF.to(x.dtype))


def exact_wrong(x, th):
    """What an estimator trained on the wrong augmented data converges to: r(x|τ) A(τ)/A(τ_ref)."""
    return exact(x, th) + torch.log(RIGHT.acceptance(th)) - torch.log(RIGHT.acceptance(REF.reshape(1, 1).to(th.dtype)))


POINTS = torch.tensor([[0.75], [1.25], [1.75]], dtype=F64)


@pytest.fixture(scope="module")
def samples():
    g = torch.Generator().manual_seed(10)
    x_ref = RIGHT.simulate(20_000, theta=REF, generator=g).x
    return x_ref, [RIGHT.simulate(20_000, theta=p, generator=g).x for p in POINTS]


@pytest.fixture(scope="module")
def trained():
    """ALICES on 6000 pairs of the right and of the wrong simulator (the latter with the checks off), 4 epochs."""
    out = {}
    for label, sim in (("right", RIGHT), ("wrong", WRONG)):
        data = ratio_training_data(sim, 6000, generator=torch.Generator().manual_seed(0), check="off")
        est = RatioEstimator.from_events(data, sim.space, hidden=(32, 32), activation="tanh")
        out[label] = fit(est, alices_loss, data, epochs=4, batch_size=256, learning_rate=3e-3, progress=False, seed=1,
                         patience=None).model.eval()
    return out


def test_ratio_normalisation_of_exact_ratios(samples):
    x_ref, at_points = samples
    right = ratio_normalisation(exact, x_ref, POINTS, samples=at_points, names=("tau",))
    assert right.passed and right.method == "bridge" and max(abs(p) for p in right.pull) < 4
    wrong = ratio_normalisation(exact_wrong, x_ref, POINTS, samples=at_points, names=("tau",))
    expected = [math.exp(log_acceptance(float(p)) - log_acceptance(1.0)) for p in POINTS]
    for got, err, want in zip(wrong.normalisation, wrong.error, expected):  # the bridge is exact for r̂ = c r
        assert abs(got - want) < 4 * err
    assert not wrong.passed and len(wrong.failed) == 3 and "tau = 1.75" in wrong.message()
    plain = ratio_normalisation(exact_wrong, x_ref, POINTS, names=("tau",))  # no samples: the plain mean
    assert plain.method == "mean" and not plain.passed
    assert plain.to_dict()["normalisation"] == pytest.approx(list(wrong.mean))


def test_learned_ratio_normalisation_after_a_short_training(trained, samples):
    x_ref, at_points = samples
    right = ratio_normalisation(trained["right"], x_ref, POINTS, samples=at_points, names=("tau",))
    wrong = ratio_normalisation(trained["wrong"], x_ref, POINTS, samples=at_points, names=("tau",))
    assert right.passed, right.message()
    assert not wrong.passed and len(wrong.failed) == 3
    expected = [math.exp(log_acceptance(float(p)) - log_acceptance(1.0)) for p in POINTS]  # 1.0675, 0.9176, 0.7808
    assert max(abs(a - b) for a, b in zip(wrong.normalisation, expected)) < 0.03  # measured 0.013 (1.081, 0.922, 0.790)


def test_closure_test_fails_the_mis_normalised_learned_ratio(trained, samples):
    x_ref, at_points = samples
    target = at_points[2]  # τ = 1.75, where A(τ)/A(1) = 0.78
    results = {}
    for label, model in trained.items():
        with torch.no_grad():
            log_r = model.log_ratio(x_ref, POINTS[2].float()).double()
            log_r_target = model.log_ratio(target, POINTS[2].float()).double()
        results[label] = closure_test(x_ref[:8000], target[:8000], log_r[:8000], log_ratio_target=log_r_target[:8000],
                                      epochs=3, n_bootstrap=20, seed=1)
    right, wrong = results["right"], results["wrong"]
    assert right.normalisation_method == "bridge" and right.normalisation_passed and right.passed
    assert wrong.shape_passed  # measured AUC 0.505 ± 0.006: the shape is right, only the total is not
    assert wrong.normalisation == pytest.approx(0.7808, abs=0.03) and wrong.normalisation_passed is False
    assert not wrong.passed


def pseudo_true_tau() -> float:
    """The τ a fit with the wrong model's ratio converges to: argmax E_τ=1[log p(x|τ)] + log A(τ) (quadrature)."""
    nodes, weights = _gauss_legendre(-1.0, 3.0, 0.1)
    x = nodes.unsqueeze(1)
    p_true = RIGHT.log_prob(x, REF).exp()

    def minus_expected_log_l(tau: float) -> float:
        th = torch.tensor([tau], dtype=F64)
        return -float((weights * p_true * RIGHT.log_prob(x, th)).sum()) - log_acceptance(tau)

    return optimize.minimize_scalar(minus_expected_log_l, bounds=(0.5, 1.5), method="bounded", options={"xatol": 1e-9}).x


def test_the_wrong_normalisation_biases_the_measurement():
    # why it matters: the exact ratio of the wrong model fits 1000 events at τ = 1 about 5σ low
    # (200 toys: mean τ̂ 0.683 against 1.003 with the right ratio, whose spread is 0.061), and on a
    # large sample converges to the pseudo-true τ* of the quadrature
    tau_star = pseudo_true_tau()
    assert tau_star == pytest.approx(0.6829, abs=1e-3)
    g = torch.Generator().manual_seed(11)
    small = Events.observed(RIGHT.simulate(1000, theta=REF, generator=g).x.double())
    right = UnbinnedLikelihood(exact, small, RIGHT.space).fit()
    wrong = UnbinnedLikelihood(exact_wrong, small, RIGHT.space).fit()
    assert abs(right.best["tau"] - 1.0) < 3 * right.errors["tau"]
    assert (wrong.best["tau"] - 1.0) / right.errors["tau"] < -4  # measured 0.694: -4.6σ (right fit 1.043 ± 0.066)
    large = Events.observed(RIGHT.simulate(40_000, theta=REF, generator=g).x.double())
    fit_large = UnbinnedLikelihood(exact_wrong, large, RIGHT.space).fit()
    assert abs(fit_large.best["tau"] - tau_star) < 3 * fit_large.errors["tau"]


# ------------------------------------------------------------------ analyses
LIFETIME = """
[analysis]
name = "lifetime"
[simulator]
toy = "lifetime"
include_acceptance = {flag}
[truth]
tau = 1.0
[observed]
n_events = 1000
seed = 3
[estimator]
method = "alices"
n_simulations = 12000
hidden = [32, 32]
activation = "tanh"
[training]
epochs = 4
batch_size = 256
learning_rate = 3e-3
patience = false
seed = 1
[fit]
scan_points = 5
"""


def test_measurement_reports_the_learned_ratio_normalisation(tmp_path, monkeypatch):
    import json
    from functools import partial

    from sbilab.analysis import estimation, load_config, run_analysis
    from sbilab.publish import load_results

    def run(flag: str, out: str) -> tuple[str, dict]:
        folder = tmp_path / flag
        folder.mkdir(exist_ok=True)
        (folder / "analysis.toml").write_text(LIFETIME.format(flag=flag))
        summary = run_analysis(load_config(folder), out=tmp_path / out, progress=False, device="cpu")
        return summary, json.loads((tmp_path / out / "results.json").read_text())

    summary, doc = run("true", "right")
    assert doc["checks_passed"] and doc["checks"]["ratio_normalisation"]["method"] == "bridge"
    assert "check ratio_normalisation: passed" in summary and "!!!" not in summary
    with pytest.raises(IdentityCheckError, match="ratio_training_data\\(Lifetime\\): mean joint score for tau"):
        run("false", "stopped")  # the training data of the wrong simulator stop the analysis
    # forced through with the data check off: the trained ratio is mis-normalised, and the result says so
    monkeypatch.setattr(estimation, "ratio_training_data", partial(ratio_training_data, check="off"))
    with pytest.warns(IdentityCheckWarning, match="learned-ratio normalisation"):
        summary, doc = run("false", "wrong")
    assert not doc["checks_passed"] and not doc["checks"]["ratio_normalisation"]["passed"]
    # the banners head the summary; the mis-normalised ratio may also push the fit to a bound (FIT NOT VALID)
    lines = summary.splitlines()
    head = lines[: next(i for i, line in enumerate(lines) if not line.startswith("!!!"))]
    assert any(line.startswith("!!! CHECK FAILED, DO NOT TRUST THE LEARNED RESULT") for line in head)
    published = load_results(tmp_path / "wrong" / "results.h5")
    assert published.spec["checks_passed"] is False and published.spec["checks"]["ratio_normalisation"]["passed"] is False


# ------------------------------------------------------------------ bad input
def _x():
    return RIGHT.simulate(100, theta=REF, generator=torch.Generator().manual_seed(0)).x


BAD_INPUT_ROWS = [
    ("augment: unknown check mode", lambda: augment(RIGHT, RIGHT.simulate(10), check="sometimes"), ConfigError,
     "check = 'sometimes'; choose one of"),
    ("ratio_training_data: unknown check mode", lambda: ratio_training_data(RIGHT, 10, check=True), ConfigError, "check = True"),
    ("ratio_training_data: joint likelihood without the acceptance", lambda: ratio_training_data(WRONG, 2000), IdentityCheckError,
     HINT),
    ("score_training_data: joint likelihood without the acceptance", lambda: score_training_data(WRONG, 2000), IdentityCheckError,
     "mean joint score for tau"),
    ("joint_score_check: score not (N, P)", lambda: joint_score_check(torch.zeros(10), torch.zeros(10, 1)), ShapeMismatchError,
     "score has shape (10,)"),
    ("joint_score_check: theta rows differ", lambda: joint_score_check(torch.zeros(10, 1), torch.zeros(9, 1)), ShapeMismatchError,
     "theta has shape (9, 1)"),
    ("joint_score_check: non-positive threshold", lambda: joint_score_check(torch.zeros(10, 1), torch.zeros(10, 1), threshold=0),
     ConfigError, "threshold = 0"),
    ("joint_score_check: zero bins", lambda: joint_score_check(torch.zeros(10, 1), torch.zeros(10, 1), bins=0), ConfigError,
     "bins = 0"),
    ("joint_score_check: names of the wrong length", lambda: joint_score_check(torch.zeros(10, 1), torch.zeros(10, 1), names=("a", "b")),
     ShapeMismatchError, "names has 2 entries for 1 parameters"),
    ("joint_ratio_check: only events drawn at the reference",
     lambda: joint_ratio_check(torch.zeros(10), torch.zeros(10, 1), at_reference=torch.ones(10, dtype=torch.bool)),
     InvalidEventsError, "both kinds must be present"),
    ("bridge_test via ratio_normalisation: one sample per point",
     lambda: ratio_normalisation(exact, _x(), POINTS, samples=[_x()]), ShapeMismatchError, "1 samples for 3 points"),
    ("ratio_normalisation: theta not (K, P)", lambda: ratio_normalisation(exact, _x(), torch.zeros(2, 1, 1)), ShapeMismatchError,
     "give the points as (K, P)"),
    ("ratio_normalisation: negative tolerance", lambda: ratio_normalisation(exact, _x(), POINTS, tolerance=-0.1), ConfigError,
     "tolerance = -0.1"),
    ("ratio_normalisation: complex observables", lambda: ratio_normalisation(exact, _x().to(torch.complex64), POINTS),
     ShapeMismatchError, "must hold real observables"),
    ("closure_test: negative normalisation tolerance",
     lambda: closure_test(_x(), _x(), torch.zeros(100), normalisation_tolerance=-1.0), ConfigError, "normalisation_tolerance = -1.0"),
    ("closure_test: log_ratio_target of the wrong length",
     lambda: closure_test(_x(), _x(), torch.zeros(100), log_ratio_target=torch.zeros(7), epochs=1, n_bootstrap=2),
     ShapeMismatchError, "log_ratio_target has 7 values for 100 target events"),
    ("Lifetime: t_max <= 0", lambda: Lifetime(t_max=0.0), ParameterSpaceError, "t_max must be > 0"),
]


@pytest.mark.parametrize("description, call, exception, phrase", BAD_INPUT_ROWS, ids=[r[0] for r in BAD_INPUT_ROWS])
def test_bad_input_rows(description, call, exception, phrase):
    with pytest.raises(exception) as err:
        call()
    assert phrase in str(err.value), (description, str(err.value))


def test_bridge_test_is_exact_for_a_scaled_ratio():
    g = torch.Generator().manual_seed(12)
    x0, x1 = torch.randn(50_000, generator=g, dtype=F64), 0.5 + torch.randn(50_000, generator=g, dtype=F64)
    log_r = lambda x: 0.5 * x - 0.125  # noqa: E731 - N(0.5, 1) / N(0, 1)
    ok = bridge_test(log_r(x0), log_r(x1))
    scaled = bridge_test(log_r(x0) + math.log(1.3), log_r(x1) + math.log(1.3))
    assert abs(ok.mean - 1.0) < 4 * ok.error and abs(scaled.mean - 1.3) < 4 * scaled.error and scaled.pull > 20
