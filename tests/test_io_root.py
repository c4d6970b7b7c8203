"""ROOT I/O through uproot: files written here by uproot (TTree and RNTuple) and the real files of
the scikit-hep-testdata wheel (only files inside the installed package; nothing is downloaded)."""

import importlib.resources
import importlib.util

import numpy as np
import pytest
import torch

from sbilab.events import Events
from sbilab.exceptions import ConfigError, FileFormatError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("uproot") is None or importlib.util.find_spec("awkward") is None,
    reason="uproot/awkward not installed (optional extra 'root': pip install 'sbilab[root]')",
)


def wheel_file(name: str):
    """A file shipped inside the installed scikit-hep-testdata package, or a skip: its data_path() would download."""
    if importlib.util.find_spec("skhep_testdata") is None:
        pytest.skip("scikit-hep-testdata not installed (test extra)")
    path = importlib.resources.files("skhep_testdata") / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not inside the installed scikit-hep-testdata wheel (wheels >= 0.4 ship none; pin 0.3.12)")
    return path


@pytest.fixture
def sample():
    g = np.random.default_rng(7)
    n = 300
    counts = g.integers(0, 5, n)
    pt = [g.exponential(30.0, c) + 5 for c in counts]
    eta = [g.normal(0.0, 1.5, c) for c in counts]
    met = g.exponential(40.0, n)
    w = g.uniform(0.5, 1.5, n)
    return counts, pt, eta, met, w


def write_sample(path, sample, *, rntuple: bool):
    import awkward as ak
    import uproot

    counts, pt, eta, met, w = sample
    data = {"nJet": counts.astype(np.int32), "Jet_pt": ak.Array(pt), "Jet_eta": ak.Array(eta), "MET": met, "w": w}
    with uproot.recreate(path) as f:
        if rntuple:
            f.mkrntuple("events", data)
        else:
            f.mktree("events", data)


def expected_sets(sample, width):
    counts, pt, eta, met, w = sample
    x = np.zeros((len(counts), width, 2))
    for i, c in enumerate(counts):
        k = min(c, width)
        x[i, :k, 0], x[i, :k, 1] = pt[i][:k], eta[i][:k]
    return x, np.arange(width)[None] < np.minimum(counts, width)[:, None]


@pytest.mark.parametrize("rntuple", [False, True], ids=["ttree", "rntuple"])
def test_flat_and_jagged_branches_with_cut_and_weight(tmp_path, sample, rntuple):
    from sbilab.io.root import iter_root, read_root

    path = tmp_path / "s.root"
    write_sample(path, sample, rntuple=rntuple)
    counts, pt, eta, met, w = sample
    flat = read_root(path, "events", x=["MET", "np.log(MET + 1)"], weight="2 * w")
    np.testing.assert_array_equal(flat.x[:, 0].numpy(), met)  # float64 kept
    np.testing.assert_allclose(flat.x[:, 1].double().numpy(), np.log(met + 1), rtol=1e-6)
    np.testing.assert_allclose(flat.weights.double().numpy(), 2 * w, rtol=1e-7)
    keep = (counts >= 2) & (met > 20)
    sets = read_root(path, "events", particles=["Jet_pt", "Jet_eta"], cut="(nJet >= 2) & (MET > 20)", weight="w")
    x, mask = expected_sets(sample, 4)
    assert sets.x.shape == (keep.sum(), 4, 2)
    np.testing.assert_allclose(sets.x.double().numpy(), x[keep], rtol=1e-6)
    np.testing.assert_array_equal(sets.mask.numpy(), mask[keep])
    np.testing.assert_allclose(sets.weights.double().numpy(), w[keep], rtol=1e-7)
    clipped = read_root(path, "events", particles=["Jet_pt"], max_particles=2)
    np.testing.assert_array_equal(clipped.mask.sum(1).numpy(), np.minimum(counts, 2))
    chunks = list(iter_root(path, "events", particles=["Jet_pt", "Jet_eta"], max_particles=4, cut="nJet >= 2", step_size=70))
    assert len(chunks) == 5
    whole = Events.concatenate(chunks)
    np.testing.assert_allclose(whole.x.double().numpy(), x[counts >= 2], rtol=1e-6)


def test_events_tables_and_histograms_written_back(tmp_path, sample):
    import uproot

    from sbilab.io.hist import to_hist
    from sbilab.io.root import read_root, root_to_store, write_root

    counts, pt, eta, met, w = sample
    x, mask = expected_sets(sample, 4)
    events = Events.observed(torch.as_tensor(x), weights=torch.as_tensor(w), mask=torch.as_tensor(mask))
    edges = np.array([0.0, 20.0, 50.0, 120.0])
    values, variances = np.array([3.0, 7.5, 1.25]), np.array([3.0, 9.0, 0.5])
    two_d = to_hist([[0.0, 1.0, 2.0], [0.0, 5.0, 10.0, 20.0]], np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(2, 3) / 2)
    path = write_root(tmp_path / "out.root", trees={"jets": events, "table": {"a": np.arange(5.0), "b": np.arange(5) * 2}},
                      histograms={"h_met": (edges, values, variances), "h2": two_d}, names={"jets": ["pt", "eta"]})
    with uproot.open(path) as f:
        assert f.classnames()["jets;1"] == "TTree" and f.classnames()["h_met;1"] == "TH1D" and f.classnames()["h2;1"] == "TH2D"
        np.testing.assert_array_equal(f["h_met"].values(), values)
        np.testing.assert_array_equal(f["h_met"].variances(), variances)
        np.testing.assert_array_equal(f["h_met"].axis().edges(), edges)
        np.testing.assert_array_equal(f["h2"].values(), np.arange(6.0).reshape(2, 3))
        np.testing.assert_array_equal(f["h2"].variances(), np.arange(6.0).reshape(2, 3) / 2)
        np.testing.assert_array_equal(f["table"]["b"].array(library="np"), np.arange(5) * 2)
    back = read_root(path, "jets", particles=["pt", "eta"], weight="weight", max_particles=4)
    torch.testing.assert_close(back.x.double(), events.x.double())
    torch.testing.assert_close(back.mask, events.mask)
    store = root_to_store(path, "jets", tmp_path / "jets.sbistore", particles=["pt", "eta"], max_particles=4, weight="weight",
                          step_size=128, progress=False)
    assert store.n_chunks == 3 and store.metadata["observable_names"] == ["pt", "eta"]
    torch.testing.assert_close(store.to_events().x, back.x)
    with pytest.raises(FileFormatError, match="already exists"):
        write_root(path, trees={"t": {"a": np.zeros(2)}})


def test_bad_input_is_named(tmp_path, sample):
    from sbilab.io.root import iter_root, read_root

    path = tmp_path / "s.root"
    write_sample(path, sample, rntuple=False)
    with pytest.raises(FileFormatError, match=r"branches \['Jet_phi'\] do not exist in 'events'"):
        read_root(path, "events", particles=["Jet_pt", "Jet_phi"])
    with pytest.raises(FileFormatError, match="no tree or RNTuple 'tree'"):
        read_root(path, "tree", x=["MET"])
    with pytest.raises(FileFormatError, match="does not exist"):
        read_root(tmp_path / "missing.root", "events", x=["MET"])
    with pytest.raises(ConfigError, match="not allowed"):
        read_root(path, "events", x=["MET"], cut="[m for m in MET]")
    with pytest.raises(ConfigError, match="only np"):
        read_root(path, "events", x=["np.__dict__"])
    with pytest.raises(ConfigError, match="exactly one"):
        read_root(path, "events")
    with pytest.raises(ConfigError, match="max_particles"):
        next(iter_root(path, "events", particles=["Jet_pt"]))
    with pytest.raises(FileFormatError, match="flat branches"):
        read_root(path, "events", x=["Jet_pt"])
    raw = path.read_bytes()
    for size in (len(raw) // 2, 300):
        cut = tmp_path / f"cut{size}.root"
        cut.write_bytes(raw[:size])
        with pytest.raises(FileFormatError, match="truncated"):
            read_root(cut, "events", x=["MET"])


def test_real_files_of_scikit_hep_testdata():
    import uproot

    from sbilab.io.root import read_root

    zmumu = wheel_file("uproot-Zmumu.root")
    mass = "np.sqrt((E1 + E2)**2 - (px1 + px2)**2 - (py1 + py2)**2 - (pz1 + pz2)**2)"
    ev = read_root(zmumu, "events", x=[mass, "M", "pt1"], cut="Q1 * Q2 < 0")
    with uproot.open(zmumu) as f:
        raw = f["events"].arrays(["M", "Q1", "Q2", "pt1"], library="np")
    keep = raw["Q1"] * raw["Q2"] < 0
    assert len(ev) == keep.sum() and 0 < keep.sum() < len(keep)
    np.testing.assert_allclose(ev.x[:, 1].double().numpy(), raw["M"][keep], rtol=1e-6)
    np.testing.assert_allclose(ev.x[:, 0].double().numpy(), raw["M"][keep], rtol=2e-3)  # the stored M is this invariant mass
    hzz = wheel_file("uproot-HZZ.root")
    muons = read_root(hzz, "events", particles=["Muon_Px", "Muon_Py", "Muon_Pz", "Muon_E"], cut="NMuon >= 2", weight="EventWeight")
    with uproot.open(hzz) as f:
        t = f["events"].arrays(["NMuon", "Muon_Px", "EventWeight"], library="np")
    keep = t["NMuon"] >= 2
    assert len(muons) == keep.sum() and muons.x.shape[1] == t["NMuon"].max()
    np.testing.assert_array_equal(muons.mask.sum(1).numpy(), t["NMuon"][keep])
    first = np.nonzero(keep)[0][0]
    np.testing.assert_array_equal(muons.x[0, : t["NMuon"][first], 0].numpy(), t["Muon_Px"][first])
    np.testing.assert_allclose(muons.weights.numpy(), t["EventWeight"][keep], rtol=1e-7)
    e, p = muons.x[..., 3].double(), muons.x[..., :3].double().norm(dim=-1)
    assert bool(((e - p)[muons.mask] > -1e-2 * e[muons.mask]).all())  # real muons: E >= |p|
