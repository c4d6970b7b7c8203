"""LHE reader against the real files in ../shared/data/lhe (skipped when that folder is absent)."""

import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sbilab.exceptions import InvalidEventsError, StoreError
from sbilab.io import iter_lhe_chunks, read_lhe, read_lhe_header

DATA = Path(__file__).parents[2] / "shared" / "data" / "lhe"
FILES = ["madgraph-2.0.0-wbj.lhe", "powheg-box-v2-W.lhe", "madgraph5-3.5.8-pp_to_jj.lhe.gz", "pythia-8.3.14-weakbosons.lhe"]

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real LHE files not available: {DATA} is absent (no shared/ beside the repo)")


def raw_text(name: str) -> str:
    path = DATA / name
    return gzip.open(path, "rt").read() if name.endswith(".gz") else path.read_text()


@pytest.mark.parametrize("name", FILES)
def test_counts_weights_and_momentum_conservation(name):
    text = raw_text(name)
    data = read_lhe(DATA / name, chunk_size=37)  # several chunks, padded and merged
    assert len(data) == len(re.findall(r"<event[\s>]", text))
    assert len(data.header.weight_ids) == len(re.findall(r"<weight id=", text))
    assert data.named_weights.shape == (len(data), len(data.header.weight_ids))
    assert not np.isnan(data.named_weights).any()
    incoming = (data.momenta * ((data.status == -1) & data.mask)[..., None]).sum(1)
    outgoing = (data.momenta * ((data.status == 1) & data.mask)[..., None]).sum(1)
    np.testing.assert_allclose(outgoing, incoming, rtol=0, atol=1e-6 * incoming[:, 3].max())
    assert (np.abs(outgoing - incoming).max(1) <= 1e-6 * incoming[:, 3]).all()
    assert data.mask.sum(1).tolist() == [int(re.split(r"\s+", b.strip())[0]) for b in re.findall(r"<event[^>]*>\s*\n([^\n]+)", text)]


def test_first_wbj_event_parsed_exactly():
    data = read_lhe(DATA / "madgraph-2.0.0-wbj.lhe", max_events=1)
    assert len(data) == 1 and data.header.beam_ids == (2212, 2212) and data.header.beam_energies == (4000.0, 4000.0)
    assert data.header.event_norm == "average"
    assert data.pid[0].tolist() == [5, 2, 24, 5, 1] and data.status[0].tolist() == [-1, -1, 1, 1, 1]
    assert data.mothers[0, 2].tolist() == [1, 2] and data.colours[0, 0].tolist() == [501, 0]
    expected = np.array([
        [0.0, 0.0, 0.14322906e3, 0.14330946e3],
        [0.0, 0.0, -0.93544317e3, 0.93544323e3],
        [-0.84258804e2, -0.15708566e3, -0.10629600e3, 0.22257162e3],
        [-0.13668073e3, -0.36307424e2, -0.40614473e2, 0.14721558e3],
        [0.22093954e3, 0.19339308e3, -0.64530364e3, 0.70896548e3],
    ])
    np.testing.assert_array_equal(data.momenta[0], expected)
    np.testing.assert_array_equal(data.mass[0], [4.8, 0.33, 80.398, 4.8, 0.33])
    assert data.weight[0] == 50.109093 and data.process_id[0] == 66 and data.scale[0] == 141.37688
    assert data.header.weight_ids == tuple(str(i) for i in range(1001, 1010))
    assert data.header.weight_info["1002"]["group"] == "scale_variation"
    np.testing.assert_array_equal(data.named_weights[0], [50.109, 45.746, 52.581] * 3)
    pt_b, found = data.particle([5], features=("pt", "eta", "m"))
    assert found.all()
    px, py, pz = expected[3, :3]
    np.testing.assert_allclose(pt_b[0], [np.hypot(px, py), np.arcsinh(pz / np.hypot(px, py)), 4.8], rtol=1e-14)


def test_gzip_streaming_and_events():
    path = DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz"
    header = read_lhe_header(path)
    assert header.cross_sections[0, 0] == pytest.approx(6.996707e8) and len(header.weight_ids) == 145
    chunks = list(iter_lhe_chunks(path, 300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    whole = read_lhe(path)
    np.testing.assert_array_equal(np.concatenate([c.weight for c in chunks]), whole.weight)
    # unweighted LO sample with event_norm = average: every XWGTUP equals the cross section
    np.testing.assert_allclose(whole.weight, header.cross_sections[0, 0], rtol=1e-7)
    ev = whole.to_events(("pt", "eta", "phi", "E"))
    assert ev.x.shape == (1000, 2, 4) and bool(ev.mask.all())
    # two final-state partons balance in the transverse plane
    np.testing.assert_allclose(ev.x[:, 0, 0].double().numpy(), ev.x[:, 1, 0].double().numpy(), rtol=1e-5)
    assert bool((ev.x[:, 0, 0] >= ev.x[:, 1, 0]).all())  # hardest first


def test_named_weights_feed_weighted_events():
    data = read_lhe(DATA / "madgraph5-3.5.8-pp_to_jj.lhe.gz")
    info = data.header.weight_info
    by_mur = {v["MUR"]: k for k, v in info.items() if v.get("MUF") == "1.0" and "DYN_SCALE" not in v and v.get("PDF") == "247000"}
    ids = [by_mur["0.5"], by_mur["1.0"], by_mur["2.0"]]
    bench = [[-1.0], [0.0], [1.0]]  # theta = log2(muR / mu0), quadratic morphing
    x, _ = data.particle([1, 2, 3, 4, 5, 21], features=("pt",))
    weighted = data.to_weighted_events(x, bench, ids)
    w = data.weights_for(ids)
    # IDWTUP = -4 with event_norm = average: each event carries 1/N of its weight, in pb
    for b in range(3):
        np.testing.assert_allclose(weighted.weights_at(torch.tensor(bench[b])).numpy(), w[:, b] / len(data), rtol=1e-10)
    assert weighted.event_norm == "sum"
    assert weighted.cross_section(torch.tensor([0.0])).item() == pytest.approx(w[:, 1].mean(), rel=1e-10)
    raw = data.to_weighted_events(x, bench, ids, normalise=False)
    assert raw.event_norm == "average" and raw.cross_section(torch.tensor([0.0])).item() == pytest.approx(w[:, 1].mean(), rel=1e-10)
    with pytest.raises(InvalidEventsError, match="not declared"):
        data.weights_for(["no-such-weight"])


def test_malformed_files_are_refused(tmp_path):
    lines = (DATA / "pythia-8.3.14-weakbosons.lhe").read_text().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if line.startswith("</event>"))
    truncated = tmp_path / "truncated.lhe"
    truncated.write_text("".join(lines[:cut - 2]))
    with pytest.raises(StoreError, match="truncated"):
        read_lhe(truncated)
    other = tmp_path / "other.txt"
    other.write_text("hello\n")
    with pytest.raises(StoreError, match="not a Les Houches"):
        read_lhe(other)
    with pytest.raises(StoreError, match="does not exist"):
        read_lhe(tmp_path / "missing.lhe")


@pytest.mark.skipif(importlib.util.find_spec("pylhe") is None, reason="pylhe not installed (optional: pip install 'sbilab[lhe]')")
@pytest.mark.parametrize("name", FILES)
def test_agrees_with_pylhe(name):
    """scikit-hep's pylhe (an XML parser) reads the same numbers; sbilab keeps what it keeps and more."""
    import pylhe

    ours = read_lhe(DATA / name)
    theirs = pylhe.LHEFile.fromfile(str(DATA / name), generator=False)
    events = theirs.events
    assert len(events) == len(ours)
    info = theirs.init.initInfo
    assert ours.header.idwtup == info.weightingStrategy and ours.header.pdf_sets == (info.PDFsetA, info.PDFsetB)
    assert [g["name"] for g in ours.header.generators] == [g.name for g in theirs.init.generators]
    np.testing.assert_array_equal(ours.weight, [e.eventinfo.weight for e in events])
    np.testing.assert_array_equal(ours.process_id, [e.eventinfo.pid for e in events])
    for i in (0, len(ours) // 2, len(ours) - 1):
        particles = events[i].particles
        n = len(particles)
        assert ours.mask[i].sum() == n
        np.testing.assert_array_equal(ours.pid[i, :n], [p.id for p in particles])
        np.testing.assert_array_equal(ours.status[i, :n], [p.status for p in particles])
        np.testing.assert_array_equal(ours.momenta[i, :n], [[p.px, p.py, p.pz, p.e] for p in particles])
        np.testing.assert_array_equal(ours.mass[i, :n], [p.m for p in particles])
        assert {k: ours.named_weights[i, j] for j, k in enumerate(ours.header.weight_ids)} == events[i].weights
        assert {k: v[i] for k, v in ours.scales.items() if not np.isnan(v[i])} == events[i].scales
        assert {k: v[i] for k, v in ours.attributes.items() if v[i]} == events[i].attributes
        assert [c for c in ours.comments[i].split("\n") if c] + (["#pdf"] if not np.isnan(ours.pdf[i, 0]) else []) == [
            c if not c.startswith("#pdf") else "#pdf" for c in events[i].optional]
    if theirs.header is not None:
        groups = [g for g in theirs.header.initrwgt.entries if hasattr(g, "weights")]
        assert [(g.name, g.combine, tuple(g.ids)) for g in ours.header.weight_groups] == [
            (e.attributes.get("name", e.attributes.get("type")), e.attributes.get("combine"), tuple(w.id for w in e.weights)) for e in groups]
