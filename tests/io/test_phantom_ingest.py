"""Ingestion of a generated phantom patient against its truth.json."""

from __future__ import annotations

import json

import pytest

phantom = pytest.importorskip("pipeline.testing.phantom", reason="phantom generator not available")

from pipeline.io import dicom, labelmap, rtstruct, seg, suv  # noqa: E402
from pipeline.io.index import scan_archive  # noqa: E402
from pipeline.sheet import build_study_sheet  # noqa: E402
from pipeline.records import SegmentKind  # noqa: E402


@pytest.fixture(scope="module")
def ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    folder = phantom.generate_patient(root, patient_index=1, size="small", seed=0)
    truth = json.loads((folder / "truth.json").read_text())
    index = scan_archive(root)
    sheet = build_study_sheet(index)
    return root, truth, index, sheet


def _by_modality(index, modality):
    return index.series[index.series["modality"] == modality]


def test_index_finds_every_object(ingest):
    _, truth, index, _ = ingest
    s = index.series
    cts = _by_modality(index, "CT")
    assert len(cts) == 2 and sorted(cts["ct_phase"]) == ["contrast", "noncontrast"]
    assert len(_by_modality(index, "PT")) == 1
    segs = _by_modality(index, "SEG")
    assert sorted(segs["segment_kind"]) == ["lesion", "organ"]
    assert len(_by_modality(index, "RTSTRUCT")) == 1
    assert len(_by_modality(index, "LABELMAP")) == 1
    assert (s["reference_problem"] == "").all()
    assert set(index.problems["path"]) <= {f"{truth['patient_id']}/truth.json"}


def test_study_sheet_picks_them(ingest):
    _, truth, index, sheet = ingest
    assert len(sheet) == 1
    row = sheet.iloc[0]
    assert row["patient_id"] == truth["patient_id"] and row["study_uid"] == truth["study_uid"]
    ser = index.series.set_index("series_uid")
    assert ser.loc[row["ct_series_uid"], "ct_phase"] == "noncontrast"
    assert ser.loc[row["ce_ct_series_uid"], "ct_phase"] == "contrast"
    assert ser.loc[row["pet_series_uid"], "modality"] == "PT"
    assert row["lesion_mask_source"] == "seg"
    assert ser.loc[row["lesion_mask_ref"], "segment_kind"] == "lesion"
    assert row["organ_mask_source"] == "seg"
    assert ser.loc[row["organ_mask_ref"], "segment_kind"] == "organ"


@pytest.fixture(scope="module")
def loaded(ingest):
    root, truth, index, sheet = ingest
    row = sheet.iloc[0]
    grids = {}
    for key in ("ct_series_uid", "ce_ct_series_uid"):
        uid = row[key]
        grids[uid] = dicom.load_ct(index.series_paths(uid), series_uid=uid).grid
    act, headers = dicom.load_pet_activity(index.series_paths(row["pet_series_uid"]),
                                           series_uid=row["pet_series_uid"])
    grids[act.series_uid] = act.grid
    seg_masks = seg.read_seg(index.series_paths(row["lesion_mask_ref"])[0], grids=grids)
    return truth, index, grids, headers, seg_masks


def test_seg_voxel_counts_equal_truth(loaded):
    truth, _, _, _, masks = loaded
    got = {m.name: m.voxel_count for m in masks}
    assert got == {les["name"]: les["voxel_count"] for les in truth["lesions"]}
    assert all(m.kind is SegmentKind.LESION for m in masks)


def test_rtstruct_and_labelmap_volumes_within_3_percent_of_seg(loaded):
    _, index, grids, _, masks = loaded
    seg_counts = {m.name: m.voxel_count for m in masks}
    rt = _by_modality(index, "RTSTRUCT").iloc[0]
    ref = rt["referenced_series_uids"]
    rt_masks = rtstruct.read_rtstruct(index.series_paths(rt["series_uid"])[0], grid=grids[ref],
                                      series_uid=ref, sop_instance_uids=index.series_sop_uids(ref))
    lm = _by_modality(index, "LABELMAP").iloc[0]
    side = labelmap.read_sidecar(index.root / lm["first_path"])
    lm_masks = labelmap.read_labelmap(index.root / lm["first_path"],
                                      grid=grids[side["referenced_series_uid"]],
                                      names=side["names"], kind=side["kind"])
    for other in (rt_masks, lm_masks):
        counts = {m.name: m.voxel_count for m in other}
        assert set(counts) == set(seg_counts)
        for name, n in seg_counts.items():
            assert abs(counts[name] - n) <= 0.03 * n, (name, counts[name], n)
    assert all(m.kind is SegmentKind.LESION for m in rt_masks + lm_masks)


def test_suv_factor_equals_truth(loaded):
    truth, _, _, headers, _ = loaded
    audit = suv.suv_audit(headers)
    assert audit.suvbw_factor == pytest.approx(truth["pet"]["suvbw_factor"], rel=1e-6)


def test_refine_ct_phase_on_phantom_aorta(ingest):
    """The phantom's aorta is 40 HU without contrast and 250 HU with (truth): the aortic HU
    confirm both header phases."""
    from pipeline.io.classify import refine_ct_phase
    from pipeline.records import CTPhase

    _, _, index, sheet = ingest
    row = sheet.iloc[0]
    ser = index.series.set_index("series_uid")
    organ_uid = row["organ_mask_ref"]
    ref = ser.loc[organ_uid, "referenced_series_uids"]
    vols = {k: dicom.load_ct(index.series_paths(row[k]), series_uid=row[k])
            for k in ("ct_series_uid", "ce_ct_series_uid")}
    organs = seg.read_seg(index.series_paths(organ_uid)[0],
                          grids={ref: vols["ct_series_uid"].grid})
    aorta = next(m for m in organs if m.name.lower() == "aorta")
    for key, expect in (("ct_series_uid", CTPhase.NONCONTRAST),
                        ("ce_ct_series_uid", CTPhase.CONTRAST)):
        vol = vols[key]
        from dataclasses import replace as _replace

        m = _replace(aorta, grid=vol.grid)  # both phases share the grid (unshifted phantom)
        phase, why = refine_ct_phase(vol, m, header_phase=ser.loc[row[key], "ct_phase"])
        assert phase is expect and "agrees with the headers" in why, why
