"""Reading signal patches (PatchSet, per-patch files, folders, tarballs), applying them, and the scan journal."""

from __future__ import annotations

import json
import tarfile

import pyhf
import pytest

import _reinterpret_toy as toy
from sbilab.exceptions import ConfigError, WorkspaceError
from sbilab.reinterpret import (
    ScanJournal,
    ScanSettings,
    evaluate_patch,
    patched_workspace,
    poi_modifier_check,
    read_background,
    read_patches,
    to_patchset,
)


def test_folder_tarball_and_patchset_give_the_same_patches(tmp_path):
    folder = toy.write_patches(tmp_path / "RegionT")
    from_folder = read_patches(folder, labels=("m_heavy", "m_light"))
    assert len(from_folder) == len(toy.GRID) and from_folder.labels == ("m_heavy", "m_light")
    assert sorted(p.values for p in from_folder.patches) == sorted(toy.GRID)  # masses parsed from "patch.toy_<m1>_<m2>.json"
    assert read_patches(tmp_path).labels == ("m1", "m2")  # the one sub-folder with patches is found
    with tarfile.open(tmp_path / "toy.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="RegionT")
        tar.add(folder, arcname="RegionU")
    with pytest.raises(WorkspaceError, match=r"several folders \['RegionT', 'RegionU'\].*region="):
        read_patches(tmp_path / "toy.tar.gz")
    with pytest.raises(WorkspaceError, match="region 'RegionX' not found"):
        read_patches(tmp_path / "toy.tar.gz", region="RegionX")
    from_tar = read_patches(tmp_path / "toy.tar.gz", region="RegionU", labels=("m_heavy", "m_light"))
    assert from_tar.patches == from_folder.patches
    bkg = read_background("RegionT/BkgOnly.json", archive=tmp_path / "toy.tar.gz")
    assert dict(bkg) == dict(read_background(folder / "BkgOnly.json"))
    with pytest.raises(WorkspaceError, match="neither a file nor a member"):
        read_background("RegionT/Nope.json", archive=tmp_path / "toy.tar.gz")
    # the old per-patch files become one pyhf PatchSet, read back with labels and verified by digest
    with pytest.raises(WorkspaceError, match="hepdata='1748602'.*'ins' and seven digits"):
        to_patchset(from_folder, bkg, hepdata="1748602")
    spec = to_patchset(from_folder, bkg, hepdata="ins0000001", name="toy")
    (tmp_path / "patchset.json").write_text(json.dumps(spec))
    from_set = read_patches(tmp_path / "patchset.json")
    assert from_set.labels == ("m_heavy", "m_light") and from_set.patches == from_folder.patches
    from_set.verify(bkg)
    other = toy.background()
    other["observations"][0]["data"][0] += 1.0
    with pytest.raises(WorkspaceError, match="made for a different background-only workspace"):
        from_set.verify(other)
    assert [p.name for p in from_set.select(["toy_3*"]).patches] == ["toy_300_0", "toy_300_100", "toy_300_200"]
    with pytest.raises(WorkspaceError, match="no patch name matches 'nope'"):
        from_set.select(["nope"])


def test_bad_patch_sources(tmp_path):
    with pytest.raises(WorkspaceError, match="does not exist"):
        read_patches(tmp_path / "missing.json")
    (tmp_path / "patch.a_1.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match="cannot read patch JSON"):
        read_patches(tmp_path / "patch.a_1.json")
    (tmp_path / "patch.a_1.json").write_text(json.dumps({"op": "add"}))
    with pytest.raises(WorkspaceError, match="not a JSON Patch"):
        read_patches(tmp_path / "patch.a_1.json")
    (tmp_path / "patch.a_1.json").write_text(json.dumps(toy.patch(300.0, 0.0)))
    with pytest.raises(WorkspaceError, match=r"labels \['x'\] name 1 axes but the patches have 1 values|labels"):
        read_patches(tmp_path / "patch.a_1.json", labels=("x", "y"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkspaceError, match="no patch"):
        read_patches(tmp_path / "empty")


def test_patches_that_do_not_match_raise_named_errors(tmp_path):
    bkg = toy.background()
    folder = toy.write_patches(tmp_path / "R", grid=[(400.0, 100.0)])
    good = read_patches(folder).patches[0]
    spec = dict(patched_workspace(bkg, good))
    assert [c["name"] for c in spec["channels"]] == ["SR", "CR"]  # the VR removed, signal in SR and CR
    assert poi_modifier_check(spec) == "mu"
    missing = good.__class__("bad", (), ({"op": "add", "path": "/channels/7/samples/0", "value": {}},))
    with pytest.raises(WorkspaceError, match=r"patch 'bad' does not apply.*channels are \['SR', 'VR', 'CR'\]"):
        patched_workspace(bkg, missing)
    malformed = good.__class__("odd", (), ({"op": "add", "path": "/channels/0/samples/0", "value": {"name": "s", "data": [1.0]}},))
    with pytest.raises(WorkspaceError, match="patch 'odd' adds a malformed sample"):
        patched_workspace(bkg, malformed)
    # a signal with the wrong number of bins: named error in the point's result (a scan goes on)
    ops = json.loads(json.dumps(good.operations))
    ops[0]["value"]["data"] = [1.0, 2.0]
    result, warm = evaluate_patch(bkg, good.__class__("short", (), tuple(ops)), ScanSettings(backend="numpy"))
    assert warm is None and not result.valid and result.cls_obs != result.cls_obs
    assert "patch 'short' does not match the workspace" in result.error and "'SR'" in result.error and "size" in result.error
    # the POI must be a normfactor acting on a sample
    as_normsys = json.loads(json.dumps(spec))
    as_normsys["channels"][0]["samples"][0]["modifiers"][0] = {"name": "mu", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}
    for channel in as_normsys["channels"]:
        channel["samples"] = [s for s in channel["samples"] if s["name"] != "signal" or channel["name"] == "SR"]
    with pytest.raises(WorkspaceError, match="POI 'mu' of the workspace is a normsys modifier .*channel 'SR', sample 'signal'"):
        poi_modifier_check(as_normsys)
    with pytest.raises(WorkspaceError, match="acts on no sample"):
        poi_modifier_check(bkg)
    with pytest.raises(WorkspaceError, match="no measurement 'other'"):
        poi_modifier_check(spec, measurement="other")


def test_journal_survives_a_torn_line_and_refuses_other_settings(tmp_path):
    path = tmp_path / "scan.jsonl"
    header = {"format": "x", "settings": ScanSettings().to_dict()}
    log = ScanJournal(path, header)
    log.append({"name": "a", "cls_obs": 0.5})
    log.append({"name": "b", "cls_obs": float("nan")})
    with open(path, "a") as fh:
        fh.write('{"name": "c", "cls_o')  # killed in the middle of a write
    again = ScanJournal(path, header)
    assert [r["name"] for r in again.records] == ["a", "b"] and not path.read_text().endswith('cls_o')
    again.append({"name": "c", "cls_obs": 0.1})
    assert [json.loads(line).get("name") for line in path.read_text().splitlines()] == [None, "a", "b", "c"]
    assert ScanJournal(path, header).latest()["c"]["cls_obs"] == 0.1
    with pytest.raises(ConfigError, match=r"other settings \(\['settings'\] differ\)"):
        ScanJournal(path, {**header, "settings": ScanSettings(optimizer="minuit").to_dict()})
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{broken", *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match="line 2 is corrupt"):
        ScanJournal(path, header)
    (tmp_path / "other.jsonl").write_text('{"name": "a"}\n')
    with pytest.raises(ConfigError, match="not a scan journal"):
        ScanJournal(tmp_path / "other.jsonl", header)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="test_statistic"):
        ScanSettings(test_statistic="q0")
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        ScanSettings(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tolerance"):
        ScanSettings(tolerance=-1.0)
    with pytest.raises(ConfigError, match="unknown scan settings"):
        ScanSettings.from_dict({"poi": 1.0, "colour": "red"})
    assert ScanSettings.from_dict(ScanSettings(poi=2.0).to_dict()) == ScanSettings(poi=2.0)
    assert pyhf.get_backend()[0].name == "numpy"  # nothing here switched pyhf's global backend
