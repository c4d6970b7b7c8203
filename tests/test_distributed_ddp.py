"""Data-parallel fit() over 2 gloo processes: equal to 1 process with the same global batch, same stop, exact resume.

One launch runs every 2-process scenario (process start-up dominates); the launcher has a
free port and a deadline, so a regression that hangs a collective fails instead of hanging.
"""

from __future__ import annotations

import pytest
import torch

import _distributed_helpers as helpers
from sbilab.distributed import launch
from sbilab.exceptions import ConfigError, WorkerError
from sbilab.store import SimulationStore
from sbilab.training import DataParallel, fit

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 sums in another order; measured differences ≈ 6e-8


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    with SimulationStore.create(folder / "train.sbistore", parameter_names=["y"], observable_names=["a", "b"], max_chunk_rows=100) as s:
        s.append(helpers.regression_data())
    return folder, launch(f"{helpers.__name__}:ddp_run", 2, args=(str(folder),), timeout=420)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], **TOL)


def test_two_processes_equal_one_with_the_same_global_batch(two_ranks):
    _, ranks = two_ranks
    single = helpers.single()
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == 2
    for r in ranks:
        assert_same_state(r["plain"]["state"], single["state"])
        torch.testing.assert_close(torch.tensor(r["plain"]["history"]["val_loss"]), torch.tensor(single["history"]["val_loss"]), **TOL)
        torch.testing.assert_close(torch.tensor(r["plain"]["history"]["train_loss"]), torch.tensor(single["history"]["train_loss"]), **TOL)
    # early stopping fired (patience 2) at the same epoch on both ranks and in the single process
    assert ranks[0]["plain"]["epochs"] == ranks[1]["plain"]["epochs"] == single["epochs"] < helpers.OPTIONS["epochs"]


def test_rank_zero_checkpoint_and_exact_resume_after_a_crash(two_ranks):
    _, ranks = two_ranks
    assert ranks[0]["crashed_at_epoch"] == 1  # the crash came in epoch 2; rank 0 had checkpointed epoch 1
    for r in ranks:
        assert r["resumed"]["epochs"] == r["plain"]["epochs"]
        for name, value in r["plain"]["state"].items():
            assert torch.equal(r["resumed"]["state"][name], value), name  # exact: same weights as the uninterrupted run


def test_streamed_store_is_sharded_too(two_ranks):
    folder, ranks = two_ranks
    single = fit(helpers.model(), helpers.mse, SimulationStore.open(folder / "train.sbistore"),
                 validation=helpers.regression_data(120, seed=12), stream=True, **helpers.OPTIONS)
    for r in ranks:
        assert_same_state(r["streamed"]["state"], single.model.state_dict())
        assert r["streamed"]["epochs"] == single.epochs_run


def test_batches_too_small_to_split(two_ranks):
    assert [r["tiny_batch_error"] for r in two_ranks[1]] == ["ConfigError", "ConfigError"]


def test_resume_with_another_world_size_is_refused(two_ranks):
    folder, _ = two_ranks
    with pytest.raises(ConfigError, match=r"written by 2 data-parallel process\(es\), this run has 1"):
        fit(helpers.model(), helpers.mse, helpers.regression_data(), checkpoint=folder / "ckpt.pt", resume=True, **helpers.OPTIONS)


def test_a_raising_rank_ends_the_launch_with_a_named_error():
    with pytest.raises(WorkerError, match=r"rank 1 of 2 raised.*rank one cannot read its shard") as info:
        launch(f"{helpers.__name__}:raise_on_rank_one", 2, timeout=300)
    assert info.value.rank == 1


def test_launcher_refuses_bad_targets():
    with pytest.raises(ConfigError, match="__main__"):
        launch("__main__:train", 2)
    with pytest.raises(ConfigError, match="does not exist"):
        launch("no_such_script.py", 2)
    with pytest.raises(ConfigError, match="world_size"):
        launch(f"{helpers.__name__}:ddp_run", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_only_backend_on_a_cpu_machine():
    with pytest.raises(ConfigError, match="nccl.*CUDA is not available"):
        DataParallel(backend="nccl")


def test_data_parallel_needs_a_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        DataParallel()
