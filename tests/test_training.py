"""Tests of sbilab.training.fit against closed-form answers; resume after a real SIGKILL."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from sbilab import Events
from sbilab.exceptions import ConfigError, ShapeMismatchError, TrainingDivergedError
from sbilab.nets.ensemble import Ensemble
from sbilab.training import OverfittingWarning, TrainingResult, TrainingConfig, fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False)


def mse(model: nn.Module, batch: Events) -> Tensor:
    return (model(batch.x) - batch.theta).pow(2).squeeze(-1)


def bce(model: nn.Module, batch: Events) -> Tensor:
    logit = model(batch.x).squeeze(-1)
    return nn.functional.binary_cross_entropy_with_logits(logit, batch.label, reduction="none")


def linear_data(n: int = 1000, noise: float = 0.0, seed: int = 0) -> Events:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x @ torch.tensor([[2.0], [-3.0]]) + 0.5 + noise * torch.randn(n, 1, generator=g)
    return Events(x=x, theta=y)


def lstsq(ev: Events, weights: Tensor | None = None) -> Tensor:
    """Closed-form (weighted) least squares (w1, w2, b) in float64."""
    a = torch.cat([ev.x, torch.ones(len(ev), 1)], 1).double()
    w = torch.ones(len(ev), dtype=torch.float64) if weights is None else weights.double()
    sw = w.sqrt()[:, None]
    return torch.linalg.lstsq(a * sw, ev.theta.double() * sw).solution.squeeze(-1)


def coefficients(model: nn.Linear) -> Tensor:
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).double()


def test_linear_regression_recovers_law() -> None:
    torch.manual_seed(0)
    res = fit(nn.Linear(2, 1), mse, linear_data(), epochs=60, batch_size=100, learning_rate=0.05,
              patience=None, **QUIET)
    torch.testing.assert_close(coefficients(res.model), torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64),
                               atol=2e-4, rtol=0)
    assert res.epochs_run == 60 and not res.stopped_early
    assert set(res.history) >= {"train_loss", "val_loss", "lr", "time"} and len(res.history["lr"]) == 60
    assert res.history["val_loss"][-1] < 1e-6


def test_logistic_classifier_learns_exact_log_ratio() -> None:
    # x ~ N(1, 1) (label 1) vs N(0, 1) (label 0): log r(x) = x - 1/2 exactly.
    g = torch.Generator().manual_seed(4)
    n = 20000
    x = torch.cat([torch.randn(n, 1, generator=g) + 1.0, torch.randn(n, 1, generator=g)])
    label = torch.cat([torch.ones(n), torch.zeros(n)])
    ev = Events(x=x, theta=torch.zeros(2 * n, 0), label=label)
    torch.manual_seed(0)
    res = fit(nn.Linear(1, 1), bce, ev, epochs=25, batch_size=1000, learning_rate=0.05, validation_fraction=0,
              **QUIET)
    # the exact maximum-likelihood logistic fit on the same events (Newton's method, float64)
    a = torch.cat([x, torch.ones(2 * n, 1)], 1).double()
    beta = torch.zeros(2, dtype=torch.float64)
    for _ in range(25):
        p = torch.sigmoid(a @ beta)
        hess = a.T @ (a * (p * (1 - p))[:, None])
        beta = beta + torch.linalg.solve(hess, a.T @ (label.double() - p))
    fitted = coefficients(res.model)
    torch.testing.assert_close(fitted, beta, atol=3e-3, rtol=0)
    torch.testing.assert_close(fitted, torch.tensor([1.0, -0.5], dtype=torch.float64), atol=0.05, rtol=0)


def test_weights_equal_duplicated_events_and_weighted_least_squares() -> None:
    ev = linear_data(300, noise=0.3, seed=1)
    w = torch.ones(300)
    w[:100] = 2.0
    duplicated = Events.concatenate([ev, ev[:100]])
    opts = dict(epochs=500, batch_size=1000, learning_rate=0.1, final_lr_fraction=1e-3, validation_fraction=0, **QUIET)
    torch.manual_seed(0)
    weighted = fit(nn.Linear(2, 1), mse, ev.replace(weights=w), **opts)
    torch.manual_seed(0)
    dup = fit(nn.Linear(2, 1), mse, duplicated, **opts)
    torch.testing.assert_close(coefficients(weighted.model), coefficients(dup.model), atol=1e-5, rtol=0)
    torch.testing.assert_close(coefficients(weighted.model), lstsq(ev, w), atol=1e-4, rtol=0)
    assert not torch.allclose(lstsq(ev, w), lstsq(ev), atol=1e-3)  # the weights matter


def test_early_stopping_restores_best_weights() -> None:
    # 40 noisy training events and a wide network: the validation loss has a minimum, then rises.
    train, val = linear_data(40, noise=2.0, seed=2), linear_data(2000, noise=2.0, seed=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1))
    res = fit(net, mse, train, validation=val, epochs=400, batch_size=10, learning_rate=3e-3, schedule="constant",
              patience=5, smoothing=0.0, keep="best", **QUIET)
    vals = res.history["val_loss"]
    assert res.stopped_early and res.epochs_run < 400
    assert res.best_epoch == 1 + min(range(len(vals)), key=vals.__getitem__)
    assert res.epochs_run >= res.best_epoch + 5 and vals[-1] > min(vals)
    with torch.no_grad():
        assert float(mse(res.model.eval(), val).mean()) == pytest.approx(vals[res.best_epoch - 1], rel=1e-5)
        assert float(mse(res.model, val).mean()) == pytest.approx(res.best_val_loss, rel=1e-5)


def test_keep_chooses_raw_best_smoothed_best_or_last_epoch() -> None:
    from sbilab.training.stopping import EarlyStopping

    # a lucky low validation loss at epoch 2, steady improvement to epoch 7, then overfitting
    losses = [1.0, 0.5, 0.9, 0.8, 0.7, 0.65, 0.62, 0.9, 1.0]
    # smoothed (beta 0.5): 1.0, 0.75, 0.825, 0.8125, 0.756, 0.703, 0.661, 0.781, 0.890 -> lowest at epoch 7
    for keep, epoch in (("best", 2), ("smoothed", 7), ("last", 9)):
        stopper = EarlyStopping(1, TrainingConfig(keep=keep, smoothing=0.5))
        for e, loss in enumerate(losses, 1):
            stopper.update(e, [loss])
        assert stopper.best_epoch == [epoch] and stopper.best_loss == [losses[epoch - 1]]
    # "auto": the last epoch unless its loss is > 3 standard errors above the minimum (here 0.5 at epoch 2)
    for error, epoch in ((0.2, 9), (0.1, 2), (None, 9)):  # 2.5 sigma: noise, keep the last; 5 sigma: overfit
        stopper = EarlyStopping(1, TrainingConfig(keep="auto"))
        for e, loss in enumerate(losses, 1):
            stopper.update(e, [loss], None if error is None else [error])
        assert stopper.finish() == ([0] if epoch == 9 else []) and stopper.best_epoch == [epoch]
        assert stopper.best_loss == [losses[epoch - 1]]
    with pytest.raises(ConfigError, match="keep must be one of"):
        TrainingConfig(keep="lowest")


def test_fit_keep_smoothed_and_last() -> None:
    train, val = linear_data(40, noise=2.0, seed=2), linear_data(2000, noise=2.0, seed=3)
    for keep in ("smoothed", "last"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(2, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = fit(net, mse, train, validation=val, epochs=60, batch_size=10, learning_rate=3e-3, schedule="constant",
                      patience=None, smoothing=0.5, keep=keep, **QUIET)
        overfit = [w for w in caught if issubclass(w.category, OverfittingWarning)]
        vals, smoothed = res.history["val_loss"], res.history["val_loss_smoothed"]
        want = len(vals) if keep == "last" else 1 + min(range(len(smoothed)), key=smoothed.__getitem__)
        assert res.best_epoch == want
        with torch.no_grad():
            assert float(mse(res.model.eval(), val).mean()) == pytest.approx(vals[want - 1], rel=1e-5)
    assert want == 60 and vals[-1] > min(vals)  # "last" really returned worse-than-best weights
    # keep="auto" sees the same overfitting and returns the minimum's weights, without a warning
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverfittingWarning)
        auto = fit(net, mse, train, validation=val, epochs=60, batch_size=10, learning_rate=3e-3, schedule="constant",
                   patience=None, keep="auto", **QUIET)
    assert auto.history["val_loss"] == vals and auto.best_epoch == 1 + min(range(60), key=vals.__getitem__)
    # ... and says so: the kept loss is many standard errors (history["val_loss_error"]) above the minimum
    assert len(overfit) == 1 and re.search(r"epoch 60, keep='last'.*standard errors above the minimum", str(overfit[0].message))
    assert (vals[-1] - min(vals)) / res.history["val_loss_error"][-1] > 3
    # a noisy but flat validation loss (enough data, no overfitting) does not warn, and "auto" keeps the last epoch
    for keep in ("last", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", OverfittingWarning)
            flat = fit(nn.Linear(2, 1), mse, linear_data(2000, noise=1.0), epochs=15, batch_size=50, keep=keep, patience=None,
                       learning_rate=0.2, schedule="constant", **QUIET)
        assert flat.best_epoch == 15 and min(flat.history["val_loss"]) < flat.history["val_loss"][-1]  # not the minimum


def test_nan_loss_names_epoch_and_keeps_best_weights() -> None:
    ev = linear_data(400, noise=0.1)
    opts = dict(epochs=2, batch_size=100, learning_rate=0.02, schedule="constant", patience=None, **QUIET)
    torch.manual_seed(0)
    reference = fit(nn.Linear(2, 1), mse, ev, **opts)
    assert reference.history["val_loss"][1] < reference.history["val_loss"][0]  # epoch 2 is the best
    calls = {"n": 0}

    def poisoned(model: nn.Module, batch: Events) -> Tensor:
        out = mse(model, batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 2 * 4 + 3:  # epoch 3, batch 3 (360 training events -> 4 batches)
                return out * float("nan")
        return out

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    with pytest.raises(TrainingDivergedError, match=r"epoch 3, batch 3 of 4.*\(epoch 2\)") as info:
        fit(model, poisoned, ev, **{**opts, "epochs": 10})
    assert torch.equal(model.weight, reference.model.weight) and torch.equal(model.bias, reference.model.bias)
    assert info.value.model is model and len(info.value.history["train_loss"]) == 2


def test_deterministic_with_seed() -> None:
    ev = linear_data(500, noise=0.5)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))
        runs.append(fit(net, mse, ev, epochs=5, batch_size=64, seed=seed, **QUIET))
    a, b, c = runs
    for key in ("train_loss", "val_loss", "lr"):
        assert a.history[key] == b.history[key]
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert a.history["val_loss"] != c.history["val_loss"]


def test_seed_fixes_the_initial_weights_and_keeps_buffers() -> None:
    ev = linear_data(300, noise=0.5)

    def run(seed: int, global_seed: int, **options) -> nn.Module:
        torch.manual_seed(global_seed)  # how the network was built must not matter, only fit's seed
        net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        return fit(net, mse, ev, epochs=2, batch_size=100, seed=seed, **options, **QUIET).model

    a, b, c = run(4, 0), run(4, 1), run(5, 0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    kept = run(4, 0, init="keep"), run(4, 1, init="keep")  # init="keep": the weights it was built with
    assert not any(torch.equal(p, q) for p, q in zip(kept[0].parameters(), kept[1].parameters()))
    # an estimator's standardisation buffers survive the re-initialisation; a warm start continues
    from sbilab.estimators import RatioEstimator, carl_loss
    from sbilab.simulators import GaussianLatent, ratio_training_data

    sim = GaussianLatent()
    pairs = ratio_training_data(sim, 200, generator=torch.Generator().manual_seed(0))
    est = RatioEstimator.from_events(pairs, sim.space, hidden=(8,))
    buffers = {k: v.clone() for k, v in est.named_buffers()}
    fit(est, carl_loss, pairs, epochs=1, seed=0, **QUIET)
    assert buffers and all(torch.equal(v, dict(est.named_buffers())[k]) for k, v in buffers.items())
    trained = {k: v.clone() for k, v in est.state_dict().items()}
    fit(est, carl_loss, pairs, epochs=1, seed=1, learning_rate=1e-12, init="keep", **QUIET)  # (almost) no step
    assert all(torch.allclose(v, est.state_dict()[k], atol=1e-8) for k, v in trained.items())


def test_ensemble_is_trained_in_place_and_a_single_estimator_is_refused() -> None:
    ev = linear_data(300, noise=0.5)
    template = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    with pytest.raises(ConfigError, match=r"ensemble=2 with a single Sequential.*untrained.*Ensemble\(estimator, 2\)"):
        fit(template, mse_ensemble, ev, ensemble=2, **QUIET)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        ens = Ensemble(template, 2)
        res = fit(ens, mse_ensemble, ev, epochs=2, batch_size=100, seed=7, **QUIET)
        assert res.model is ens and res.config.ensemble == 2  # the object the caller holds is the trained one
        runs.append(ens)
    assert all(torch.equal(p, q) for p, q in zip(runs[0].parameters(), runs[1].parameters()))  # fit's seed decides
    assert not torch.equal(runs[0].member(0)[0].weight, runs[0].member(1)[0].weight)


def test_ensemble_members_train_like_independent_models() -> None:
    # y = sin(2x) + noise: members start apart, each ends close to the truth and to a solo run
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1000, 1, generator=g) * 4 - 2
    ev = Events(x=x, theta=torch.sin(2 * x) + 0.05 * torch.randn(1000, 1, generator=g))
    template = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    ens = Ensemble(template, 3, generator=torch.Generator().manual_seed(0))
    initial = ens.member(1)
    opts = dict(epochs=40, batch_size=100, learning_rate=1e-2, patience=None, init="keep", **QUIET)  # keep: start from `initial`
    res = fit(ens, mse_ensemble, ev, **opts)
    assert res.model is ens and len(res.history["val_loss_members"][0]) == 3
    grid = torch.linspace(-1.9, 1.9, 101).reshape(-1, 1)
    with torch.no_grad():
        out = ens(grid)  # (3, 101, 1)
        for i in range(3):
            torch.testing.assert_close(ens.member(i)(grid), out[i], rtol=1e-5, atol=1e-6)
            assert (out[i] - torch.sin(2 * grid)).abs().max() < 0.1
        assert (out[0] - out[1]).abs().max() > 1e-3  # different members
    solo = fit(initial, mse, ev, **opts)
    with torch.no_grad():
        torch.testing.assert_close(solo.model(grid), out[1], atol=1e-3, rtol=0)
    assert solo.history["val_loss"][-1] == pytest.approx(res.history["val_loss_members"][-1][1], rel=1e-3)


def mse_ensemble(model: Ensemble, batch: Events) -> Tensor:
    return (model(batch.x) - batch.theta).pow(2).squeeze(-1)  # (K, N)


def score_matching(model: nn.Module, batch: Events) -> Tensor:
    """Regress d model / d x on theta: needs input gradients, also in validation."""
    if isinstance(model, Ensemble):
        x = batch.x.expand(model.k, *batch.x.shape).clone().requires_grad_()
        out = model(x, stacked=True)
    else:
        x = batch.x.clone().requires_grad_()
        out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return (grad - batch.theta).pow(2).sum(-1)


@pytest.mark.parametrize("k", [1, 2])
def test_input_gradient_loss_trains_and_validates(k: int) -> None:
    # d/dx (w.x + b) = w: the score loss drives w to the target (1.5, -0.5) exactly
    g = torch.Generator().manual_seed(6)
    ev = Events(x=torch.randn(400, 2, generator=g), theta=torch.tensor([[1.5, -0.5]]).expand(400, 2))
    torch.manual_seed(0)
    res = fit(Ensemble(nn.Linear(2, 1), k) if k > 1 else nn.Linear(2, 1), score_matching, ev, epochs=60, batch_size=100,
              learning_rate=0.1, patience=None, **QUIET)
    members = [res.model.member(i) for i in range(k)] if k > 1 else [res.model]
    for m in members:
        torch.testing.assert_close(m.weight.detach().reshape(-1), torch.tensor([1.5, -0.5]), atol=1e-3, rtol=0)
    assert res.history["val_loss"][-1] < 1e-5


class FakeStore:
    """The streaming interface of a SimulationStore: __len__ and batches()."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None):
        return self.events.batches(batch_size, shuffle=shuffle, generator=generator)


def test_streaming_from_a_store() -> None:
    store = FakeStore(linear_data(600))
    torch.manual_seed(0)
    res = fit(nn.Linear(2, 1), mse, store, validation=linear_data(200, seed=9), stream=True, epochs=80,
              batch_size=100, learning_rate=0.05, patience=None, **QUIET)
    torch.testing.assert_close(coefficients(res.model), torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    with pytest.raises(ConfigError, match="validation"):
        fit(nn.Linear(2, 1), mse, store, stream=True, **QUIET)


def test_real_store_streamed_and_loaded(tmp_path: Path) -> None:
    from sbilab.store import SimulationStore

    with SimulationStore.create(tmp_path / "sims", max_chunk_rows=250, fsync=False) as store:
        store.append(linear_data(600))
    store = SimulationStore.open(tmp_path / "sims")
    results = []
    for stream in (True, False):
        torch.manual_seed(0)
        results.append(fit(nn.Linear(2, 1), mse, store, validation=linear_data(200, seed=9), stream=stream,
                           epochs=80, batch_size=100, learning_rate=0.05, patience=None, **QUIET))
    for res in results:
        torch.testing.assert_close(coefficients(res.model), torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64),
                                   atol=1e-3, rtol=0)


def test_progress_bar_on_stderr(capsys: pytest.CaptureFixture) -> None:
    fit(nn.Linear(2, 1), mse, linear_data(100), epochs=2, progress=True)
    assert "fit" in capsys.readouterr().err
    fit(nn.Linear(2, 1), mse, linear_data(100), epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_checkpoint_finished_and_mismatch(tmp_path: Path) -> None:
    ev = linear_data(300, noise=0.1)
    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    first = fit(nn.Linear(2, 1), mse, ev, epochs=4, batch_size=100, checkpoint=path, **QUIET)
    state = load_checkpoint(path)
    assert state["finished"] and state["epoch"] == 4 and TrainingConfig.from_dict(state["config"]) == first.config
    again = fit(nn.Linear(2, 1), mse, ev, epochs=4, batch_size=100, checkpoint=path, resume=True, **QUIET)
    assert torch.equal(again.model.weight, first.model.weight) and again.history == first.history
    # a checkpoint written before the `keep` option existed resumes (missing options take their defaults)
    from sbilab.training.checkpoint import save_checkpoint

    old = tmp_path / "old.pt"
    del state["config"]["keep"], state["stopper"]["kept_smoothed"]
    save_checkpoint(old, state)
    again = fit(nn.Linear(2, 1), mse, ev, epochs=4, batch_size=100, checkpoint=old, resume=True, **QUIET)
    assert torch.equal(again.model.weight, first.model.weight)
    with pytest.raises(ConfigError, match="batch_size"):
        fit(nn.Linear(2, 1), mse, ev, epochs=4, batch_size=50, checkpoint=path, resume=True, **QUIET)
    with pytest.raises(ConfigError, match="different training data"):
        fit(nn.Linear(2, 1), mse, linear_data(300, seed=5), epochs=4, batch_size=100, checkpoint=path, resume=True,
            **QUIET)


def test_bad_options_and_loss_shape() -> None:
    ev = linear_data(100)
    with pytest.raises(ConfigError, match="schedule"):
        fit(nn.Linear(2, 1), mse, ev, schedule="linear", **QUIET)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        fit(nn.Linear(2, 1), mse, ev, batch_size=0, **QUIET)
    with pytest.raises(ShapeMismatchError, match="per-event"):
        fit(nn.Linear(2, 1), lambda m, b: mse(m, b).mean(), ev, **QUIET)


def _run_worker(checkpoint: str, out: Path, *flags: str, slow: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(ROOT / "tests" / "_train_worker.py"), checkpoint, str(out), *flags] + (["--slow"] if slow else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    victim = _run_worker(str(ckpt), tmp_path / "never.pt", slow=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if ckpt.exists() and load_checkpoint(ckpt)["epoch"] >= 2:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the worker wrote no checkpoint within 60 s")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    killed_at = load_checkpoint(ckpt)
    assert victim.returncode == -signal.SIGKILL and not killed_at["finished"] and killed_at["epoch"] < 12
    resumed = _run_worker(str(ckpt), tmp_path / "resumed.pt")
    output = resumed.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, output
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)
    b = _worker_module().train(None)  # the same run, uninterrupted, in this process
    assert a["train_loss"] == b["train_loss"] and len(a["train_loss"]) == 12
    for name in b["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name


def test_killed_between_stop_and_final_save_resumes_exactly(tmp_path: Path) -> None:
    # the worker SIGKILLs itself right after the checkpoint of the epoch at which the stopper fired
    ckpt = tmp_path / "ckpt.pt"
    victim = _run_worker(str(ckpt), tmp_path / "never.pt", "--stop-early", "--kill-after-stop")
    output = victim.communicate(timeout=120)[0].decode()
    assert victim.returncode == -signal.SIGKILL, output
    killed_at = load_checkpoint(ckpt)
    resumed = _run_worker(str(ckpt), tmp_path / "resumed.pt", "--stop-early")
    output = resumed.communicate(timeout=120)[0].decode()
    assert resumed.returncode == 0, output
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)
    b = _worker_module().train(None, stop_early=True)  # the same run, uninterrupted, in this process
    assert b["stopped_early"] and a["stopped_early"] and len(b["train_loss"]) < 60
    assert a["train_loss"] == b["train_loss"] and len(a["train_loss"]) == killed_at["epoch"]  # trains no further epoch
    for name in b["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name
    assert killed_at["finished"] and killed_at["stopped_early"]  # the checkpoint says the run is over


def _worker_module():
    spec = importlib.util.spec_from_file_location("_train_worker", ROOT / "tests" / "_train_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Crash(Exception):
    pass


def test_ensemble_resume_after_crash_is_bitwise_identical(tmp_path: Path) -> None:
    ev = linear_data(400, noise=0.3)
    calls = {"n": 0, "crash_at": None}

    def loss(model: Ensemble, batch: Events) -> Tensor:
        if model.training:
            calls["n"] += 1
            if calls["n"] == calls["crash_at"]:
                raise _Crash  # dies in the middle of epoch 3, like a killed job
        return mse_ensemble(model, batch)

    def run(checkpoint: Path | None) -> TrainingResult:
        torch.manual_seed(0)
        template = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
        return fit(Ensemble(template, 3), loss, ev, epochs=6, batch_size=90, ensemble=3, schedule="plateau", plateau_patience=1,
                   checkpoint=checkpoint, resume=True, **QUIET)

    straight = run(None)
    calls.update(n=0, crash_at=2 * 4 + 2)
    with pytest.raises(_Crash):
        run(tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2
    calls.update(crash_at=None)
    resumed = run(tmp_path / "c.pt")
    assert resumed.history == {**straight.history, "time": resumed.history["time"]}
    assert resumed.best_epochs == straight.best_epochs
    for name, t in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], t), name
