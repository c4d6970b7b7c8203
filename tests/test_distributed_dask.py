"""Dask ``distributed`` as the engine: a LocalCluster (2 worker processes, 1 thread each) shared by the tests.

Skipped when the optional extra is absent (``pip install 'sbilab[dask]'``).
"""

from __future__ import annotations

import pytest
import torch

from sbilab.distributed import free_port, simulate_to_store, train_replicas
from sbilab.exceptions import SchedulerTimeoutError, WorkerError
from sbilab.store import SimulationStore

distributed = pytest.importorskip("distributed", reason="Dask is an optional extra: pip install 'sbilab[dask]'")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    with distributed.Client(cluster, timeout=120) as c:
        c.wait_for_workers(2, timeout=180)
        yield c
    cluster.close()


def test_dask_cluster_writes_the_same_events_as_one_process(tmp_path, client):
    res = simulate_to_store("gaussian", 90, tmp_path / "dask", chunk_size=20, seed=4, task="augment", engine=client, progress=False)
    simulate_to_store("gaussian", 90, tmp_path / "serial", chunk_size=20, seed=4, task="augment", engine="serial", progress=False)
    a, b = (SimulationStore.open(tmp_path / p).to_events().tensors() for p in ("dask", "serial"))
    assert res.engine == "dask" and res.workers == 2 and res.chunks == 5
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_raising_task_on_a_dask_worker(tmp_path, client):
    marker = tmp_path / "broken"
    marker.write_text("")
    with pytest.raises(WorkerError, match="chunk 1 .*ValueError") as info:
        simulate_to_store("_distributed_helpers:FailingGaussian", 30, tmp_path / "s", options={"fail_n": 10, "marker": str(marker)},
                          chunk_size=20, engine=client, progress=False)
    assert info.value.chunk == 1 and len(SimulationStore.open(tmp_path / "s")) == 20


def test_replicas_on_dask_equal_the_batched_ensemble(client):
    opts = dict(bootstrap=True, seed=2, fit_options={"epochs": 2, "patience": None}, progress=False)
    on_dask = train_replicas("sbilab.distributed.replicas:demo_recipe", 3, engine=client, groups=2, **opts)
    batched = train_replicas("sbilab.distributed.replicas:demo_recipe", 3, **opts)
    assert on_dask.groups == 2 and batched.groups == 1
    for name, value in batched.ensemble.stacked_parameters().items():
        torch.testing.assert_close(on_dask.ensemble.stacked_parameters()[name], value, rtol=1e-5, atol=1e-6)


def test_scheduler_that_does_not_answer(tmp_path):
    with pytest.raises(SchedulerTimeoutError, match=r"did not answer within timeout=1 s"):
        simulate_to_store("gaussian", 10, tmp_path / "s", scheduler=f"tcp://127.0.0.1:{free_port()}", timeout=1, progress=False)
    assert not (tmp_path / "s").exists()
