"""SimulationStore: round trips, streaming, crash safety under SIGKILL, refusal of bad files, memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sbilab.events import Events
from sbilab.paired import PairedEvents
from sbilab.exceptions import StoreError
from sbilab.store import SimulationStore

sys.path.insert(0, str(Path(__file__).parent))
from _store_writer import chunk  # noqa: E402


def full_events(n: int, seed: int) -> Events:
    g = torch.Generator().manual_seed(seed)
    return Events(
        x=torch.randn(n, 5, 3, generator=g, dtype=torch.float64),
        theta=torch.rand(n, 2, generator=g),
        log_r_joint=torch.randn(n, generator=g),
        score_joint=torch.randn(n, 2, generator=g),
        weights=torch.rand(n, generator=g, dtype=torch.float64),
        label=(torch.rand(n, generator=g) > 0.5).float(),
        latent=torch.randn(n, 4, generator=g),
        mask=torch.rand(n, 5, generator=g) > 0.3,
    )


def assert_same(a: Events, b: Events) -> None:
    assert a.tensors().keys() == b.tensors().keys()
    for name, t in a.tensors().items():
        u = b.tensors()[name]
        assert t.dtype == u.dtype and torch.equal(t, u), name


def test_round_trip_all_fields_and_metadata(tmp_path: Path) -> None:
    parts = [full_events(30, 0), full_events(45, 1)]
    path = tmp_path / "run.sbistore"
    with SimulationStore.create(path, parameter_names=["a", "b"], observable_names=["pt", "eta", "phi"], seed=3,
                                config={"sigma": 0.5}, extra={"note": "test"}, max_chunk_rows=20) as store:
        for p in parts:
            store.append(p)
        assert len(store) == 75 and store.n_chunks == 2 + 3  # 30 -> 20+10, 45 -> 20+20+5
    store = SimulationStore.open(path)
    assert len(store) == 75
    assert_same(store.to_events(), Events.concatenate(parts))
    assert_same(store.read(25, 52), Events.concatenate(parts)[25:52])  # spans three chunks
    meta = store.metadata
    assert meta["parameter_names"] == ["a", "b"] and meta["observable_names"] == ["pt", "eta", "phi"]
    assert meta["seed"] == 3 and meta["config"] == {"sigma": 0.5} and meta["extra"] == {"note": "test"}
    assert meta["sbilab_version"]
    assert store.fields["x"] == {"dtype": "float64", "shape": [5, 3]} and store.fields["mask"]["dtype"] == "bool"
    store.verify()


def test_metadata_from_simulator(tmp_path: Path) -> None:
    from sbilab.simulators.toys.gaussian import GaussianLatent  # noqa: PLC0415

    sim = GaussianLatent()
    with SimulationStore.create(tmp_path / "s", simulator=sim, seed=11) as store:
        store.append(sim.simulate(10, generator=torch.Generator().manual_seed(0)))
    meta = SimulationStore.open(tmp_path / "s").metadata
    assert meta["simulator"] == sim.name and meta["config"] == json.loads(json.dumps(sim.config()))
    assert meta["parameter_names"] == list(sim.space.names) and meta["observable_names"] == list(sim.observable_names)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_row_once(tmp_path: Path, shuffle: bool) -> None:
    n = 1000
    ev = Events(x=torch.arange(n, dtype=torch.float64)[:, None] * torch.ones(1, 2), theta=torch.zeros(n, 1))
    with SimulationStore.create(tmp_path / "s", max_chunk_rows=128, fsync=False) as store:
        store.append(ev[:300])
        store.append(ev[300:])
    store = SimulationStore.open(tmp_path / "s")
    batches = list(store.batches(64, shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
    assert [len(b) for b in batches] == [64] * 15 + [40]
    seen = torch.cat([b.x[:, 0] for b in batches])
    assert torch.equal(seen.sort().values, torch.arange(n, dtype=torch.float64))
    assert torch.equal(torch.cat([b.x[:, 1] for b in batches]), seen)  # rows stay intact
    assert torch.equal(seen, torch.arange(n, dtype=torch.float64)) is (not shuffle)
    if shuffle:  # reproducible with the same generator, different with another
        again = torch.cat([b.x[:, 0] for b in store.batches(64, shuffle=True, generator=torch.Generator().manual_seed(1))])
        other = torch.cat([b.x[:, 0] for b in store.batches(64, shuffle=True, generator=torch.Generator().manual_seed(2))])
        assert torch.equal(again, seen) and not torch.equal(other, seen)


def test_sigkill_mid_run_keeps_every_committed_chunk(tmp_path: Path) -> None:
    path, rows = tmp_path / "killed.sbistore", 150_000  # ~10 MB per chunk: the kill lands inside a write
    writer = Path(__file__).with_name("_store_writer.py")
    proc = subprocess.Popen([sys.executable, str(writer), str(path), str(rows)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        deadline = time.monotonic() + 120
        while len(committed) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"writer exited early with code {proc.poll()}"
            committed.append(int(line.split()[1]))
        while not list(path.glob("chunk-000003.h5.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.002)  # kill while chunk 3 is being written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and committed == [0, 1, 2]
    store = SimulationStore.open(path)
    n_chunks = len(store) // rows
    assert len(store) % rows == 0 and n_chunks in (3, 4)  # a 4th may have committed before the kill
    for k in range(n_chunks):
        assert_same(store.read(k * rows, (k + 1) * rows), chunk(k, rows))
    store.verify()
    # a new writer resumes: it cleans the killed writer's leftovers and continues
    with SimulationStore.open(path, mode="a") as resumed:
        resumed.append(chunk(n_chunks, rows))
    leftovers = [p.name for p in path.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    store = SimulationStore.open(path)
    assert len(store) == (n_chunks + 1) * rows
    assert_same(store.read(n_chunks * rows, len(store)), chunk(n_chunks, rows))


def test_orphan_chunk_is_ignored(tmp_path: Path) -> None:
    """A chunk renamed into place but not yet in the manifest (kill between the two steps)."""
    path = tmp_path / "s"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 10))
    (path / "chunk-000001.h5").write_bytes((path / "chunk-000000.h5").read_bytes())
    assert len(SimulationStore.open(path)) == 10
    with SimulationStore.open(path, mode="a") as store:
        store.append(chunk(1, 10))
    assert_same(SimulationStore.open(path).to_events(), Events.concatenate([chunk(0, 10), chunk(1, 10)]))


def test_single_writer_lock(tmp_path: Path) -> None:
    with SimulationStore.create(tmp_path / "s", fsync=False):
        with pytest.raises(StoreError, match="another process"):
            SimulationStore.open(tmp_path / "s", mode="a")
    SimulationStore.open(tmp_path / "s", mode="a").close()  # released on close


def test_append_mismatch_names_the_field(tmp_path: Path) -> None:
    with SimulationStore.create(tmp_path / "s", fsync=False) as store:
        store.append(chunk(0, 5))
        with pytest.raises(StoreError, match="lack \\['weights'\\]"):
            store.append(chunk(1, 5).replace(weights=None))
        with pytest.raises(StoreError, match="'x' has per-event shape \\(3,\\)"):
            store.append(chunk(1, 5).replace(x=torch.zeros(5, 3, dtype=torch.float64)))
        store.append(chunk(1, 5).to(dtype=torch.float32))  # lossless: stored as float64
        assert len(store) == 10 and store.read(5, 10).x.dtype == torch.float64
    with SimulationStore.create(tmp_path / "s32", fsync=False) as store:
        store.append(chunk(0, 5).to(dtype=torch.float32))
        with pytest.raises(StoreError, match="'x' has dtype float64 but the store holds float32"):
            store.append(chunk(1, 5))
    with pytest.raises(StoreError, match="read-only"):
        SimulationStore.open(tmp_path / "s").append(chunk(1, 5))


def test_bad_files_are_refused_with_their_name(tmp_path: Path) -> None:
    path = tmp_path / "good.sbistore"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 1000))
    # truncated chunk (a copy with bytes cut off)
    cut = tmp_path / "cut.sbistore"
    shutil.copytree(path, cut)
    data = (cut / "chunk-000000.h5").read_bytes()
    (cut / "chunk-000000.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"chunk-000000\.h5 is truncated"):
        SimulationStore.open(cut).to_events()
    # a truncated manifest
    text = (cut / "manifest.json").read_text()
    (cut / "manifest.json").write_text(text[:40])
    with pytest.raises(StoreError, match=r"cut\.sbistore/manifest\.json is truncated or not JSON"):
        SimulationStore.open(cut)
    # a corrupted chunk of the right size: verify() catches it
    bad = tmp_path / "bad.sbistore"
    shutil.copytree(path, bad)
    with h5py.File(bad / "chunk-000000.h5", "r+") as f:
        f["x"][3, 0] = -1.0
    bad_store = SimulationStore.open(bad)
    if (bad / "chunk-000000.h5").stat().st_size == json.loads((bad / "manifest.json").read_text())["chunks"][0]["bytes"]:
        with pytest.raises(StoreError, match=r"chunk-000000\.h5 is corrupt"):
            bad_store.verify()
    # a foreign HDF5 file, a text file, a foreign directory, a newer schema
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match=r"foreign\.h5 is an HDF5 file but not an sbilab simulation store"):
        SimulationStore.open(foreign)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt cannot be read as HDF5"):
        SimulationStore.open(text_file)
    (tmp_path / "somedir").mkdir()
    with pytest.raises(StoreError, match=r"somedir is not an sbilab simulation store"):
        SimulationStore.open(tmp_path / "somedir")
    newer = tmp_path / "newer.sbistore"
    shutil.copytree(path, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(StoreError, match=r"newer\.sbistore/manifest\.json has store schema version 99"):
        SimulationStore.open(newer)
    (tmp_path / "somedir" / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        SimulationStore.create(tmp_path / "somedir", overwrite=True)
    assert (tmp_path / "somedir" / "keep.txt").read_text() == "x"


def test_pack_to_single_file(tmp_path: Path) -> None:
    parts = [full_events(70, 2), full_events(50, 3)]
    with SimulationStore.create(tmp_path / "s", fsync=False, extra={"k": 1}) as store:
        for p in parts:
            store.append(p)
        packed_path = store.pack(tmp_path / "packed.h5")
    packed = SimulationStore.open(packed_path)
    assert len(packed) == 120 and packed.metadata["extra"] == {"k": 1}
    assert_same(packed.to_events(), Events.concatenate(parts))
    assert_same(packed.read(60, 80), Events.concatenate(parts)[60:80])
    assert torch.equal(torch.cat([b.x for b in packed.batches(32)]), Events.concatenate(parts).x)
    packed.verify()
    packed.close()  # releases the cached read handle
    with h5py.File(packed_path, "r+") as f:
        f["theta"][5, 0] = 42.0
    with pytest.raises(StoreError, match="'theta' is corrupt"):
        SimulationStore.open(packed_path).verify()
    data = packed_path.read_bytes()
    packed_path.write_bytes(data[: len(data) - 500])
    with pytest.raises(StoreError, match=r"packed\.h5 cannot be read as HDF5"):
        SimulationStore.open(packed_path)


def test_streaming_memory_is_bounded(tmp_path: Path) -> None:
    n, rows = 2_000_000, 100_000
    with SimulationStore.create(tmp_path / "big", max_chunk_rows=rows, fsync=False) as store:
        for k in range(n // rows):
            r = torch.arange(k * rows, (k + 1) * rows, dtype=torch.float32)
            store.append(Events(x=r[:, None].expand(rows, 4), theta=torch.zeros(rows, 1)))
    store = SimulationStore.open(tmp_path / "big")
    store_bytes = n * 5 * 4  # 40 MB of float32
    tracemalloc.start()
    total, checksum = 0, 0.0
    for batch in store.batches(50_000, shuffle=True, generator=torch.Generator().manual_seed(0)):
        total += len(batch)
        checksum += float(batch.x[:, 3].double().sum())
    _, peak_stream = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == n and checksum == n * (n - 1) / 2
    assert peak_stream < store_bytes / 5, f"streaming peak {peak_stream / 1e6:.1f} MB for a {store_bytes / 1e6:.0f} MB store"
    tracemalloc.start()  # the measurement can fail: loading everything is seen
    everything = store.read(0, n // 2)
    _, peak_all = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(everything) == n // 2 and peak_all >= store_bytes / 2


def paired_events(n: int, seed: int, m: int = 4) -> PairedEvents:
    g = torch.Generator().manual_seed(seed)
    pass_reco = torch.rand(n, generator=g) > 0.3
    pass_gen = ~pass_reco | (torch.rand(n, generator=g) > 0.2)
    gen = Events(x=torch.randn(n, 2, generator=g, dtype=torch.float64), theta=torch.rand(n, 1, generator=g, dtype=torch.float64),
                 spectator=torch.randn(n, 1, generator=g, dtype=torch.float64))
    reco = Events(x=torch.randn(n, m, 3, generator=g, dtype=torch.float64), theta=torch.rand(n, 1, generator=g, dtype=torch.float64),
                  mask=torch.rand(n, m, generator=g) > 0.4)
    return PairedEvents(gen, reco, pass_gen=pass_gen, pass_reco=pass_reco, weights=torch.rand(n, generator=g, dtype=torch.float64))


def assert_same_pairs(a: PairedEvents, b: PairedEvents) -> None:
    assert a.tensors().keys() == b.tensors().keys()
    for name, t in a.tensors().items():
        u = b.tensors()[name]
        assert t.dtype == u.dtype and torch.equal(t, u), name


def test_new_event_fields_round_trip_with_schema_version(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    n = 40
    lmask = torch.arange(6)[None, :] < torch.randint(0, 7, (n,), generator=g)[:, None]
    ev = Events(x=torch.randn(n, 2, generator=g), theta=torch.zeros(n, 1), spectator=torch.randn(n, 2, generator=g),
                latent=torch.randn(n, 6, 3, generator=g), latent_mask=lmask)
    with SimulationStore.create(tmp_path / "new", max_chunk_rows=15, fsync=False) as store:
        store.append(ev)
    store = SimulationStore.open(tmp_path / "new")
    assert store.kind == "events" and json.loads((tmp_path / "new" / "manifest.json").read_text())["schema_version"] == 2
    assert_same(store.to_events(), ev)
    assert_same(Events.concatenate(list(store.batches(7))), ev)
    # plain events keep version 1 (readable by the first release); a manifest of the first release (no "kind") reads
    with SimulationStore.create(tmp_path / "old", fsync=False) as store:
        store.append(chunk(0, 10))
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    del manifest["kind"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    assert SimulationStore.open(tmp_path / "old").kind == "events"
    assert_same(SimulationStore.open(tmp_path / "old").to_events(), chunk(0, 10))


def test_paired_events_round_trip_pack_and_refusals(tmp_path: Path) -> None:
    # the second has shorter sets (padded on append), the third longer ones (the store grows, earlier chunks pad on read)
    parts = [paired_events(30, 0), paired_events(25, 1, m=3), paired_events(5, 2, m=6)]
    path = tmp_path / "pairs.sbistore"
    with SimulationStore.create(path, max_chunk_rows=20, fsync=False) as store:
        for p in parts[:2]:
            store.append(p)
        with pytest.raises(StoreError, match="holds 'paired' events; it cannot take 'events' events"):
            store.append(chunk(0, 5))
        store.append(parts[2])
    store = SimulationStore.open(path)
    assert store.kind == "paired" and len(store) == 60
    expected = PairedEvents.concatenate(parts)
    assert_same_pairs(store.to_events(), expected)
    assert_same_pairs(store.read(10, 42), expected[10:42])
    assert_same_pairs(PairedEvents.concatenate(list(store.batches(16, shuffle=False))), expected)
    store.verify()
    packed = SimulationStore.open(store.pack(tmp_path / "pairs.h5"))
    assert packed.kind == "paired"
    assert_same_pairs(packed.to_events(), expected)
    packed.verify()
    with SimulationStore.create(tmp_path / "plain", fsync=False) as plain:
        plain.append(chunk(0, 5))
        with pytest.raises(StoreError, match="holds 'events' events; it cannot take 'paired' events"):
            plain.append(parts[0])


# ---------------------------------------------------------------------------- files stay in their folder (issue 11)
from _hdf5_attacks import KINDS, point_outside, resign_store_chunk  # noqa: E402


@pytest.mark.parametrize("listed", ["../chunk-000000.h5", "/etc/passwd", "sub/chunk-000000.h5", "chunk-0.h5", 7])
def test_manifest_chunk_paths_stay_in_the_store(tmp_path: Path, listed) -> None:
    path = tmp_path / "s"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 10))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["chunks"][0]["file"] = listed
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"lists the chunk .*directly in the store directory .*refusing it"):
        SimulationStore.open(path)


def test_symlinked_chunk_leading_outside_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 10))
    (path / "chunk-000000.h5").rename(tmp_path / "elsewhere.h5")
    (path / "chunk-000000.h5").symlink_to(tmp_path / "elsewhere.h5")
    with pytest.raises(StoreError, match=r"symbolic link to .*elsewhere\.h5, outside the store"):
        SimulationStore.open(path)


@pytest.mark.parametrize("kind", KINDS)
def test_chunks_and_packed_files_reaching_outside_are_refused_before_reading(kind: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-signed chunk whose x comes from another file: the old code read it silently."""
    path = tmp_path / "s"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 10))
    packed = SimulationStore.open(path).pack(tmp_path / "packed.h5")
    point_outside(path / "chunk-000000.h5", "x", kind, tmp_path / "outside.bin")
    resign_store_chunk(path)
    point_outside(packed, "x", kind, tmp_path / "outside2.bin")

    def no_read(self, *args):
        raise AssertionError("a dataset was read before the file was refused")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", no_read)
    with pytest.raises(StoreError, match=r"chunk-000000\.h5: (dataset )?/x .*refused before anything is read"):
        SimulationStore.open(path).to_events()
    with pytest.raises(StoreError, match=r"packed\.h5: (dataset )?/x .*refused before anything is read"):
        SimulationStore.open(packed)


def test_open_for_append_removes_only_its_own_temporaries(tmp_path: Path) -> None:
    """The old code deleted every unlisted file whose name starts with 'chunk-' (a user's notes included)."""
    path = tmp_path / "s"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 10))
    users = ["chunk-notes.txt", "chunk-000000.h5.bak", "chunk-backup.h5", "chunk-00001.h5", "manifest.json.orig"]
    own = ["chunk-000001.h5.tmp-4242", "chunk-000001.h5", ".manifest.json.tmp-4242-0123abcd"]
    for name in users + own:
        (path / name).write_bytes(b"x")
    with SimulationStore.open(path, mode="a") as store:
        store.append(chunk(1, 10))
    left = {p.name for p in path.iterdir()}
    assert set(users) <= left and not {own[0], own[2]} & left
    assert_same(SimulationStore.open(path).to_events(), Events.concatenate([chunk(0, 10), chunk(1, 10)]))


def test_unwritable_store_locations_raise_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match=r"cannot create the store directory /sys/sbilab-test\.sbistore .*writable location"):
        SimulationStore.create("/sys/sbilab-test.sbistore")  # read-only even for root
    path = tmp_path / "s"
    with SimulationStore.create(path, fsync=False) as store:
        store.append(chunk(0, 10))
    if os.geteuid() != 0:  # a real read-only directory (root ignores permissions)
        path.chmod(0o555)
        try:
            with pytest.raises(StoreError, match=r"cannot write to the store directory .*SimulationStore\.open\(path\)"):
                SimulationStore.open(path, mode="a")
        finally:
            path.chmod(0o755)
    import sbilab.store_format

    monkeypatch.setattr(sbilab.store_format, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")),
                        raising=False)
    with pytest.raises(StoreError, match=r"cannot write to the store directory .*Permission denied"):
        SimulationStore.open(path, mode="a")
    assert len(SimulationStore.open(path)) == 10  # reading needs no write access
