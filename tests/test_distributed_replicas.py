"""Replica farms: batched ensembles = separate runs, the split over processes changes nothing, one published file."""

from __future__ import annotations

import pytest
import torch

import sbilab.estimators  # noqa: F401 - registers the estimator kinds publish.load rebuilds
from sbilab import Events, publish
from sbilab.distributed import TrainingTask, join_ensembles, train_replicas
from sbilab.distributed.replicas import demo_recipe
from sbilab.exceptions import ConfigError, ShapeMismatchError, WorkerError
from sbilab.nets.ensemble import Ensemble
from sbilab.training.optim import reduce_losses

RECIPE = "sbilab.distributed.replicas:demo_recipe"
FIT = {"epochs": 3, "patience": None}  # no early stopping: members must not depend on their group's stop


def params(res) -> dict[str, torch.Tensor]:
    return res.ensemble.stacked_parameters()


def test_member_weights_reduce_to_each_members_weighted_mean():
    # (N, K) weights: member k's loss is sum_i w_ik l_ki / sum_i w_ik, exactly
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    w = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
    expected = torch.tensor([(1 + 4) / 3, (5 + 18) / 4])
    torch.testing.assert_close(reduce_losses(losses, w, 2, 3), expected)
    with pytest.raises(ShapeMismatchError, match="K = 2"):
        reduce_losses(losses[0], w, 1, 3)


def test_bootstrap_replicas_batched_equal_separate_runs():
    # one fit of a 3-member ensemble with (N, 3) Poisson weights == three fits of one network with (N,) weights
    batched = train_replicas(RECIPE, 3, bootstrap=True, seed=5, fit_options=FIT, progress=False)
    separate = train_replicas(RECIPE, 3, bootstrap=True, seed=5, fit_options=FIT, groups=3, progress=False)
    assert batched.groups == 1 and separate.groups == 3 and batched.ensemble.k == 3
    for name, value in params(batched).items():
        torch.testing.assert_close(params(separate)[name], value, rtol=1e-5, atol=1e-6)
    # the replicas differ (different initial and bootstrap weights), and the bootstrap seeds are recorded
    first = next(iter(params(batched).values()))
    assert not torch.allclose(first[0], first[1])
    assert len({m["bootstrap_seed"] for m in batched.members}) == 3
    plain = train_replicas(RECIPE, 3, seed=5, fit_options=FIT, progress=False)
    assert all(m["bootstrap_seed"] is None for m in plain.members)
    assert not torch.allclose(next(iter(params(plain).values())), first)  # bootstrap weights changed the training


def test_processes_farm_with_variants_publishes_one_file(tmp_path):
    variants = [{"shift": 0.0}, {"shift": 0.4}]
    out = tmp_path / "replicas.h5"
    farm = train_replicas(RECIPE, 2, variants=variants, seed=1, fit_options=FIT, engine="processes", workers=2, out=out,
                          metadata={"analysis": "test"}, progress=False)
    assert farm.engine == "processes" and farm.ensemble.k == 4 and farm.groups == 2
    assert [(m["variant"], m["replica"]) for m in farm.members] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    loaded = publish.load(out, expected_kind="Ensemble")
    info = publish.inspect(out)["metadata"]
    assert info["analysis"] == "test" and info["replicas"]["variants"] == variants and len(info["replicas"]["members"]) == 4
    for name, value in params(farm).items():
        torch.testing.assert_close(loaded.stacked_parameters()[name], value)
    # the same farm in this process, batched: the split over processes changes nothing
    batched = train_replicas(RECIPE, 2, variants=variants, seed=1, fit_options=FIT, progress=False)
    for name, value in params(farm).items():
        torch.testing.assert_close(value, params(batched)[name], rtol=1e-5, atol=1e-6)
    weight = params(farm)["net.net.layers.0.weight"] if "net.net.layers.0.weight" in params(farm) else next(iter(params(farm).values()))
    assert not torch.allclose(weight[:2], weight[2:])  # the shifted variant trained on other data


def test_join_ensembles_keeps_member_order():
    a = Ensemble(torch.nn.Linear(2, 1), 2, generator=torch.Generator().manual_seed(0))
    b = Ensemble(torch.nn.Linear(2, 1), 3, generator=torch.Generator().manual_seed(1))
    joined = join_ensembles([a, b])
    x = torch.randn(4, 2)
    torch.testing.assert_close(joined(x), torch.cat([a(x), b(x)]))
    with pytest.raises(ConfigError, match="one architecture"):
        join_ensembles([a, Ensemble(torch.nn.Linear(3, 1), 2)])


def not_a_task(**options):
    return "a string"


def raising_recipe(**options):
    task = demo_recipe(n=50)
    if options.get("shift"):
        def loss(model, batch):
            raise FloatingPointError("the systematic variation produced NaN weights")
        task = TrainingTask(task.estimator, loss, task.data)
    return task


@pytest.mark.parametrize("kwargs, match", [
    ({"recipe": "__main__:recipe"}, "__main__"),
    ({"recipe": f"{__name__}:not_a_task"}, "returned a str; a recipe returns a TrainingTask"),
    ({"k": 0}, "k must be a positive integer"),
    ({"fit_options": {"ensemble": 3}}, "not TrainingConfig options"),
    ({"options": {"n": torch.Generator()}}, "not JSON"),
])
def test_bad_farm_options(kwargs, match):
    args = {"recipe": RECIPE, "k": 2, **kwargs}
    with pytest.raises(ConfigError, match=match):
        train_replicas(args.pop("recipe"), args.pop("k"), progress=False, **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_devices_on_a_cpu_machine():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_replicas(RECIPE, 2, devices=["cuda:0", "cuda:1"], engine="processes", progress=False)


def test_raising_group_is_named():
    with pytest.raises(WorkerError, match=r"variant 1 \(\{'shift': 1\.0\}\), replicas 0\.\.1 raised FloatingPointError"):
        train_replicas(f"{__name__}:raising_recipe", 2, variants=[{}, {"shift": 1.0}], fit_options={"epochs": 1}, progress=False)
