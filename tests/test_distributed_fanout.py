"""Simulation fan-out into a store: identical events for any worker count, a killed worker, a raising one, bad input.

Process start-up is slow (each worker imports torch and sbilab), so only two tests start worker
processes; everything else runs with the serial engine, which goes through the same driver.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from sbilab.cli import main
from sbilab.distributed import SimulatorSpec, chunk_seed, simulate_to_store
from sbilab.exceptions import ConfigError, IdentityCheckError, StoreError, WorkerError
from sbilab.simulators import GaussianLatent
from sbilab.store import SimulationStore

HELPERS = "_distributed_helpers"


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return SimulationStore.open(path).to_events().tensors()


def assert_same_store(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def test_chunks_depend_on_seed_and_index_only(tmp_path):
    # chunk i of a run of 300 events is chunk i of a run of 200: seeds come from SeedSequence(seed, (i,))
    simulate_to_store("gaussian", 300, tmp_path / "a", chunk_size=100, seed=7, engine="serial", progress=False)
    simulate_to_store("gaussian", 200, tmp_path / "b", chunk_size=100, seed=7, engine="serial", progress=False)
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert torch.equal(a["x"][:200], b["x"]) and len(a["x"]) == 300
    # and chunk 1 is exactly GaussianLatent.simulate with a generator seeded by chunk_seed(7, 1)
    expected = GaussianLatent().simulate(100, generator=torch.Generator().manual_seed(chunk_seed(7, 1)))
    assert torch.equal(a["x"][100:200], expected.x) and torch.equal(a["latent"][100:200], expected.latent)
    assert SimulationStore.open(tmp_path / "a").n_chunks == 3  # one commit per chunk, never a partial one
    assert SimulationStore.open(tmp_path / "a").metadata["extra"]["fanout"]["spec"] == {"target": "gaussian", "options": {}}


def test_killed_worker_costs_its_chunk_and_the_store_is_unchanged(tmp_path):
    # two spawn workers; a watcher SIGKILLs the first worker it sees simulating (mid-chunk): the chunks
    # in flight are redone, and the store equals the serial run's, byte for byte in every field
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = SimulatorSpec(f"{HELPERS}:SlowGaussian", {"pause": 0.6, "pid_dir": str(pids)})
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 240
        while not killed and time.monotonic() < deadline:
            for marker in pids.glob("*.pid"):
                pid = int(marker.stem)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    res = simulate_to_store(spec, 120, tmp_path / "killed", chunk_size=20, seed=1, engine="processes", workers=2, progress=False)
    watcher.join(1)
    assert killed, "the watcher never saw a worker simulate"
    assert res.redone and res.rows == 120 and res.chunks == 6 and res.engine == "processes"
    simulate_to_store(f"{HELPERS}:SlowGaussian", 120, tmp_path / "serial", chunk_size=20, seed=1, engine="serial", progress=False)
    assert_same_store(tmp_path / "killed", tmp_path / "serial")
    assert res.worker_cpu_seconds > 0


def test_raising_chunk_is_reported_finished_chunks_kept_and_resume_completes(tmp_path):
    marker = tmp_path / "broken"
    marker.write_text("")
    options = {"fail_n": 10, "marker": str(marker)}  # the last chunk (10 of 50 events) raises while the marker exists
    with pytest.raises(WorkerError, match=r"chunk 2 \(events 40\.\.50.*ValueError: detector map missing") as info:
        simulate_to_store(f"{HELPERS}:FailingGaussian", 50, tmp_path / "s", options=options, chunk_size=20, engine="serial", progress=False)
    assert info.value.chunk == 2 and isinstance(info.value.__cause__, ValueError)
    assert len(SimulationStore.open(tmp_path / "s")) == 40  # chunks 0 and 1 committed and kept
    marker.unlink()
    res = simulate_to_store(f"{HELPERS}:FailingGaussian", 50, tmp_path / "s", options=options, chunk_size=20, resume=True,
                            engine="serial", progress=False)
    assert res.committed == 1 and res.rows == 50
    simulate_to_store("gaussian", 50, tmp_path / "ref", chunk_size=20, engine="serial", progress=False)
    assert torch.equal(tensors(tmp_path / "s")["x"], tensors(tmp_path / "ref")["x"])


def test_identity_checks_run_per_chunk(tmp_path):
    # the lifetime toy without its acceptance in joint_log_prob fails the joint-score identity in chunk 0
    with pytest.raises(WorkerError, match="chunk 0 .*IdentityCheckError") as info:
        simulate_to_store("lifetime", 2000, tmp_path / "bad", options={"include_acceptance": False}, task="ratio_training_data",
                          chunk_size=1000, engine="serial", progress=False)
    assert isinstance(info.value.__cause__, IdentityCheckError)
    assert len(SimulationStore.open(tmp_path / "bad")) == 0
    res = simulate_to_store("lifetime", 2000, tmp_path / "good", task="ratio_training_data", chunk_size=1000, engine="serial", progress=False)
    store = SimulationStore.open(tmp_path / "good")
    assert res.rows == 4000 and store.n_chunks == 2 and {"log_r_joint", "score_joint", "label"} <= set(store.fields)


def test_resume_refuses_a_different_run(tmp_path):
    simulate_to_store("gaussian", 40, tmp_path / "s", chunk_size=20, seed=1, engine="serial", progress=False)
    with pytest.raises(StoreError, match="different fan-out"):
        simulate_to_store("gaussian", 40, tmp_path / "s", chunk_size=20, seed=2, resume=True, engine="serial", progress=False)
    with pytest.raises(StoreError, match="already exists"):
        simulate_to_store("gaussian", 40, tmp_path / "s", chunk_size=20, seed=1, engine="serial", progress=False)
    assert len(SimulationStore.open(tmp_path / "s")) == 40  # nothing written is lost


@pytest.mark.parametrize("simulator, match", [
    (GaussianLatent(), "GaussianLatent object.*module:attr"),
    (lambda theta: theta, "function object.*module:attr"),
    ("__main__:MySimulator", "__main__"),
    ("no_such_package.sims:Detector", "cannot import module 'no_such_package.sims'"),
    ("sbilab.simulators:NoSuchSimulator", "has no attribute 'NoSuchSimulator'"),
    ("not a toy", "no registered toy"),
    ("sbilab.simulators:ParameterSpace", "do not fit|not a Simulator"),
])
def test_simulators_that_cannot_be_sent(tmp_path, simulator, match):
    with pytest.raises(ConfigError, match=match):
        simulate_to_store(simulator, 10, tmp_path / "s", engine="serial", progress=False)
    assert not (tmp_path / "s").exists()


def test_options_must_be_json(tmp_path):
    with pytest.raises(ConfigError, match="not JSON.*a seed instead of a generator"):
        simulate_to_store("gaussian", 10, tmp_path / "s", options={"generator": torch.Generator()}, engine="serial")


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "simulate_everything"}, "task="), ({"chunk_size": 0}, "chunk_size"), ({"engine": "threads"}, "engine="),
    ({"workers": 0}, "workers"), ({"task": "ratio_training_data", "theta": [0.5]}, "theta="), ({"check": "maybe"}, "check="),
])
def test_bad_options(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        simulate_to_store("gaussian", 10, tmp_path / "s", progress=False, **kwargs)


def test_cli_simulate(tmp_path, capsys):
    code = main(["simulate", "gaussian", "50", "--out", str(tmp_path / "s"), "--options", '{"sigma_x": 0.5}', "--theta", "0.5",
                 "--chunk-size", "20", "--engine", "serial", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["rows"] == 50 and summary["chunks"] == 3
    assert torch.all(tensors(tmp_path / "s")["theta"] == 0.5)
    assert main(["simulate", "gaussian", "5", "--out", str(tmp_path / "t"), "--options", "{bad", "--engine", "serial"]) == 2
    assert "--options is not JSON" in capsys.readouterr().err
