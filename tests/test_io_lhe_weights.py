"""LHE completeness: IDWTUP normalisation, LHEF 3 metadata, weight groups and systematics, streaming to a store."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from sbilab.exceptions import FileFormatError, InvalidEventsError, StoreError
from sbilab.io import combine_variations, read_lhe, read_lhe_header, weight_sets
from sbilab.io.lhe_stream import lhe_to_store, scan_normalisation
from sbilab.io.lhe_systematics import binned_systematics, event_systematics, nuisance_weighted_events
from sbilab.stats import build_workspace
from sbilab.store import SimulationStore

DATA = Path(__file__).parents[2] / "shared" / "data" / "lhe"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real LHE files not available: {DATA} is absent (no shared/ beside the repo)")

PARTICLES = (
    "       2 -1 0 0 501 0 0.0 0.0 100.0 100.0 0.0 0.0 9.0\n"
    "      -2 -1 0 0 0 501 0.0 0.0 -50.0 50.0 0.0 0.0 9.0\n"
    "      23  1 1 2 0 0 0.0 0.0 50.0 150.0 141.4213562373095 0.0 9.0\n"
)


def lhe_text(idwtup: int, processes: list[tuple[float, int]], events: list[tuple[int, float]], *, norm: str | None = None) -> str:
    """A minimal valid LHE file: ``processes`` = [(XSECUP, LPRUP)], ``events`` = [(IDPRUP, XWGTUP)]."""
    head = "<LesHouchesEvents version=\"1.0\">\n<header>\n" + (f"  {norm} = event_norm\n" if norm else "") + "</header>\n"
    init = f"<init>\n 2212 2212 6500.0 6500.0 0 0 0 0 {idwtup} {len(processes)}\n"
    init += "".join(f" {x} 0.1 1.0 {p}\n" for x, p in processes) + "</init>\n"
    body = "".join(f"<event>\n 3 {p} {w} 91.2 0.0078 0.118\n{PARTICLES}</event>\n" for p, w in events)
    return head + init + body + "</LesHouchesEvents>\n"


@pytest.mark.parametrize("idwtup", [1, -1, 4, -4])
def test_weighted_strategies_average_to_sigma(tmp_path, idwtup):
    weights = [2.0, 4.0, -3.0 if idwtup < 0 else 3.0, 7.0]
    path = tmp_path / "w.lhe"
    path.write_text(lhe_text(idwtup, [(99.0, 1), (55.0, 2)], [(1, weights[0]), (2, weights[1]), (1, weights[2]), (2, weights[3])]))
    data = read_lhe(path)
    assert data.header.idwtup == idwtup
    w = np.array(weights)
    if abs(idwtup) == 4:  # used as given: sigma = mean over all events
        expected, sigma = w / 4, w.mean()
    else:  # the shower generator's unweighting: sigma_i = mean weight of process i, here 2 events each
        expected, sigma = w / 2, w[[0, 2]].mean() + w[[1, 3]].mean()
    np.testing.assert_allclose(data.cross_section_weights(), expected, rtol=1e-15)
    assert data.normalisation().cross_section == pytest.approx(sigma, rel=1e-15)  # XSECUP is not used
    path.write_text(lhe_text(idwtup, [(99.0, 1), (55.0, 2)], [(1, x) for x in weights], norm="sum"))
    np.testing.assert_allclose(read_lhe(path).cross_section_weights(), weights, rtol=1e-15)


@pytest.mark.parametrize("idwtup", [2, -2, 3, -3])
def test_per_process_strategies_sum_to_xsecup(tmp_path, idwtup):
    if abs(idwtup) == 3:
        weights = [1.0, 1.0, -1.0 if idwtup < 0 else 1.0, 1.0, 1.0]
    else:
        weights = [0.5, 2.0, -1.0 if idwtup < 0 else 1.5, 3.0, 1.0]
    procs = [1, 2, 1, 1, 2]
    path = tmp_path / "p.lhe"
    path.write_text(lhe_text(idwtup, [(10.0, 1), (4.0, 2)], list(zip(procs, weights))))
    data = read_lhe(path)
    w, p = np.array(weights), np.array(procs)
    expected = np.where(p == 1, 10.0 * w / w[p == 1].sum(), 4.0 * w / w[p == 2].sum())
    np.testing.assert_allclose(data.cross_section_weights(), expected, rtol=1e-15)
    assert data.cross_section_weights()[p == 1].sum() == pytest.approx(10.0, rel=1e-14)
    assert data.normalisation().cross_section == 14.0
    assert data.to_events(("pt",)).weights.double().sum().item() == pytest.approx(14.0, rel=1e-6)


def test_bad_idwtup_and_processes_are_named(tmp_path):
    path = tmp_path / "bad.lhe"
    for value in (0, 7, -5):
        path.write_text(lhe_text(value, [(1.0, 1)], [(1, 1.0)]))
        with pytest.raises(FileFormatError, match=rf"IDWTUP = {value} .*must be one of"):
            read_lhe(path)
    path.write_text(lhe_text(0, [(2.5, 1)], [(1, 1.0), (1, 1.0)]))
    assert read_lhe(path, idwtup=3).cross_section_weights().tolist() == [1.25, 1.25]  # the override
    path.write_text(lhe_text(3, [(2.5, 1)], [(8, 1.0)]))
    with pytest.raises(FileFormatError, match="IDPRUP = 8, which the <init> block does not declare"):
        read_lhe(path).cross_section_weights()
    assert issubclass(FileFormatError, StoreError)


def test_truncated_gzip_is_a_named_error(tmp_path):
    raw = gzip.compress(lhe_text(3, [(1.0, 1)], [(1, 1.0)] * 200).encode())
    cut = tmp_path / "cut.lhe.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        read_lhe(cut)


@needs_data
def test_real_files_normalise_to_their_cross_section():
    pythia = read_lhe(DATA / "pythia-8.3.14-weakbosons.lhe")
    assert pythia.header.idwtup == 3 and (pythia.weight == 1.0).all()
    ev = pythia.to_events()
    assert ev.weights.double().sum().item() == pytest.approx(48.76776, rel=1e-6)  # was 100 = number of events
    assert pythia.cross_section_weights().sum() == pytest.approx(48.76776, rel=1e-14)
    mg = read_lhe(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz")
    assert mg.header.idwtup == -4 and mg.header.event_norm == "average"
    assert mg.cross_section_weights().sum() == pytest.approx(mg.header.cross_sections[0, 0], rel=1e-7)
    powheg = read_lhe(DATA / "powheg-box-v2-W.lhe")
    assert powheg.header.idwtup == -4 and powheg.cross_section_weights().sum() == pytest.approx(powheg.weight.mean(), rel=1e-15)


@needs_data
def test_lhef3_tags_comments_and_generators_are_kept():
    wbj = read_lhe(DATA / "madgraph-2.0.0-wbj.lhe")
    h = wbj.header
    assert h.version == "3.0" and [g["name"] for g in h.generators] == ["SomeGen1", "SomeGen2", "SomeGen3"]
    assert h.generators[1] == {"name": "SomeGen2", "version": "a.x.3", "text": "some other comments"}
    assert wbj.attributes["npLO"][:3].tolist() == [" -1 ", " 2 ", ""]
    np.testing.assert_array_equal(wbj.lhef3_weights[0], [1.0, 0.204, 1.564])
    assert np.isnan(wbj.lhef3_weights[1:]).all()
    assert {k: wbj.scales[k][0] for k in ("muf", "mur", "mups", "newscale")} == {"muf": 90.1, "mur": 90.2, "mups": 90.3, "newscale": 90.4}
    assert np.isnan(wbj.scales["muf"][1])
    assert wbj.comments[0].count("#aMCatNLO") == 5 and "random stuff" not in wbj.comments[0]
    (group,) = h.weight_groups
    assert (group.name, group.combine, len(group.ids)) == ("scale_variation", "envelope", 9)
    assert [(w.mur, w.muf) for w in h.weights[:3]] == [(1.0, 1.0), (1.0, 2.0), (1.0, 0.5)]  # parsed from the labels
    pythia = read_lhe(DATA / "pythia-8.3.14-weakbosons.lhe", max_events=1)
    np.testing.assert_array_equal(pythia.pdf[0], [4, -3, 1.272034e-02, 8.879333e-02, 8.522810e01, 2.432535e-01, 5.120440e-02])
    assert pythia.header.version == "1.0" and "Pythia8::LHAup" in pythia.header.comment
    mg = read_lhe(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz", max_events=2)
    assert mg.header.generators == ({"name": "MadGraph5_aMC@NLO", "version": "3.5.8", "text": "please cite 1405.0301"},)
    np.testing.assert_array_equal(mg.mgrwt["rscale"][0], [2, 0.24387465e2])
    np.testing.assert_array_equal(mg.mgrwt["pdfrwt_beam1"][0], [1, 21, 0.10425685e-1, 0.24387465e2])
    assert mg.mgrwt["totfact"][0, 0] == 0.10532089e8 and mg.mgrwt["asrwt"][0, 0] == 0
    assert [(g.name, g.combine, len(g.ids)) for g in mg.header.weight_groups] == [
        ("Central scale variation", "envelope", 44), ("NNPDF23_lo_as_0130_qed", "replicas", 101)]
    powheg = read_lhe(DATA / "powheg-box-v2-W.lhe", max_events=1)
    assert powheg.comments[0].startswith("#rwgt") and "lhrwgt_group_name" in powheg.header.comment


@needs_data
def test_weight_sets_of_the_real_files():
    scale, pdf = weight_sets(read_lhe_header(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz"))
    assert (scale.kind, scale.nominal, scale.members) == ("envelope", None, ("1", "6", "16", "25", "35", "40"))
    assert (pdf.kind, pdf.nominal, pdf.members) == ("replicas", "45", tuple(str(i) for i in range(46, 146)))
    (nine,) = weight_sets(read_lhe_header(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz"), scale_points=9)[:1]
    assert nine.members == ("1", "6", "11", "16", "25", "30", "35", "40")
    (wbj,) = weight_sets(read_lhe_header(DATA / "madgraph-2.0.0-wbj.lhe"))
    assert (wbj.nominal, wbj.members) == ("1001", ("1002", "1003", "1004", "1005", "1007", "1009"))
    assert weight_sets(read_lhe_header(DATA / "powheg-box-v2-W.lhe")) == ()  # one alternative PDF: no combine rule


def test_combine_variations_closed_forms():
    w0 = np.array([10.0, 20.0])
    members = np.array([[12.0, 19.0], [9.0, 23.0], [11.0, 18.0], [10.5, 20.0]])
    down, up = combine_variations(w0, members, "envelope")
    assert down.tolist() == [9.0, 18.0] and up.tolist() == [12.0, 23.0]
    down, up = combine_variations(w0, members, "replicas")
    sd = members.std(0, ddof=1)
    np.testing.assert_allclose([down, up], [w0 - sd, w0 + sd], rtol=1e-15)
    assert sd[0] == pytest.approx(np.sqrt(((np.array([12, 9, 11, 10.5]) - 10.625) ** 2).sum() / 3), rel=1e-14)
    down, up = combine_variations(w0, members, "hessian")  # pairs (12, 9), (11, 10.5) in bin 0; (19, 23), (18, 20) in bin 1
    np.testing.assert_allclose(up, [10 + np.sqrt(2**2 + 1**2), 20 + 3.0], rtol=1e-15)
    np.testing.assert_allclose(down, [10 - 1.0, 20 - np.sqrt(1**2 + 2**2)], rtol=1e-15)
    down, up = combine_variations(w0, members, "symmhessian")
    np.testing.assert_allclose(up - w0, np.sqrt(((members - w0) ** 2).sum(0)), rtol=1e-15)
    with pytest.raises(InvalidEventsError, match="pairs"):
        combine_variations(w0, members[:3], "hessian")
    with pytest.raises(InvalidEventsError, match="not known"):
        combine_variations(w0, members, "gaussian")


@needs_data
def test_systematics_feed_pyhf_and_weighted_events():
    data = read_lhe(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz")
    pt = data.particle([1, 2, 3, 4, 5, 21], features=("pt",))[0][:, 0]
    edges = np.array([20.0, 30.0, 45.0, 70.0, 150.0])
    lumi = 1e-6  # pb^-1: order-100 expected counts for sigma ~ 7e8 pb
    binned = binned_systematics(data, pt, edges, luminosity=lumi)
    assert set(binned.variations) == {"Central scale variation", "NNPDF23_lo_as_0130_qed"}
    inside = (pt >= 20) & (pt <= 150)
    assert binned.nominal.sum() == pytest.approx(data.cross_section_weights()[inside].sum() * lumi, rel=1e-12)
    scale, pdf = weight_sets(data.header)
    w0, members = event_systematics(data, scale)
    hists = np.stack([np.histogram(pt, edges, weights=m * lumi)[0] for m in members])
    np.testing.assert_allclose(binned.variations[scale.name][1], np.maximum(hists.max(0), binned.nominal), rtol=1e-12)
    down, up = binned.variations[pdf.name]
    assert (down < binned.nominal).all() and (up > binned.nominal).all()
    ws = build_workspace(signal={"jj": binned.nominal}, backgrounds={}, observed=np.round(binned.nominal),
                         histosys={"jj": binned.histosys()}, staterror={"jj": binned.staterror()})
    model = ws.model()
    pars = np.array(model.config.suggested_init())
    for nu, target in ((1.0, binned.variations[scale.name][1]), (-1.0, binned.variations[scale.name][0])):
        pars_nu = pars.copy()
        pars_nu[model.config.par_slice("Central scale variation")] = nu
        np.testing.assert_allclose(model.expected_actualdata(pars_nu), target, rtol=1e-10)
    e_down, e_up = combine_variations(w0, members, "envelope")
    weighted = nuisance_weighted_events(pt.reshape(-1, 1), w0, e_down, e_up, name="mu_scale")
    np.testing.assert_allclose(weighted.weights_at(torch.tensor([1.0])).numpy(), e_up, rtol=1e-12)
    np.testing.assert_allclose(weighted.weights_at(torch.tensor([-1.0])).numpy(), e_down, rtol=1e-12)
    assert weighted.cross_section(torch.tensor([0.0])).item() == pytest.approx(w0.sum(), rel=1e-12)
    assert weighted.space.names == ("mu_scale",) and weighted.joint_score(torch.tensor([0.0])).shape == (len(data), 1)


@needs_data
def test_streaming_into_a_store_matches_reading_whole(tmp_path):
    path = DATA / "pythia-8.3.14-weakbosons.lhe"
    scan = scan_normalisation(path)
    assert scan.n_events == 100 and scan.normalisation.cross_section == pytest.approx(48.76776, rel=1e-14)
    store = lhe_to_store(path, tmp_path / "p.sbistore", chunk_size=30, progress=False)
    assert len(store) == 100 and store.n_chunks == 4 and store.metadata["extra"]["lhe"]["idwtup"] == 3
    whole = read_lhe(path).to_events(("pt", "eta", "phi", "m"))
    back = store.to_events()
    assert back.x.shape[1] == scan.max_selected == whole.x.shape[1]
    torch.testing.assert_close(back.x, whole.x)
    torch.testing.assert_close(back.mask, whole.mask)
    # per-process normalisation (IDWTUP = 3) uses the whole file's sums, not each chunk's
    torch.testing.assert_close(back.weights, whole.weights)
    assert back.weights.double().sum().item() == pytest.approx(48.76776, rel=1e-6)
    with pytest.raises(StoreError, match="already exists"):
        lhe_to_store(path, tmp_path / "p.sbistore", progress=False)
