"""DICOM SR: highdicom reads it back; every lesion's measurements are present with the right
UCUM units, role and tier are coded, the SEG segment and source CT images are referenced."""

from __future__ import annotations

import json
import shutil

import highdicom as hd
import pandas as pd
import pydicom
import pytest

from pipeline.errors import PipelineError
from pipeline.report import sr as S

UNITS = {
    ("Volume", ""): ("volume_ml", "ml"),
    ("Long axis", ""): ("longest_diameter_mm", "mm"),
    ("Short axis", ""): ("short_axis_mm", "mm"),
    ("Diameter", "Maximum"): ("max_3d_diameter_mm", "mm"),
    ("SUVbw", "Maximum"): ("suv_max", "{SUVbw}g/ml"),
    ("SUVbw", "Mean"): ("suv_mean", "{SUVbw}g/ml"),
    ("SUVbw", "Peak Value Within ROI"): ("suv_peak", "{SUVbw}g/ml"),
    ("Skin depth (shortest distance from lesion surface to skin)", ""): ("skin_depth_mm", "mm"),
}


def _tables(d):
    les = pd.read_csv(d / "lesions.csv", dtype={"lesion_id": str, "tracking_uid": str})
    rk = pd.read_csv(d / "ranking.csv", dtype={"lesion_id": str})
    return les.set_index("lesion_id"), rk.set_index("lesion_id")


def test_sr_reads_back_with_every_measurement_and_unit(results):
    d = results["good"]
    path = d / S.SR_NAME
    assert path.exists()
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.content[0].ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    got = S.read_measurements(path)
    les, rk = _tables(d)
    assert sorted(got) == sorted(les.index)
    prov = json.loads((d / "provenance.json").read_text())
    seg_uid = prov["inputs"]["series"]["lesion_mask"]
    files = pd.read_csv(results["results"] / "index" / "files.csv", dtype=str)
    seg_sop = files.loc[files.series_uid == seg_uid, "sop_instance_uid"].iloc[0]
    seg = pydicom.dcmread(results["archive"] / files.loc[files.series_uid == seg_uid, "path"].iloc[0],
                          stop_before_pixels=True)
    ct_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    ct_sops = set(files.loc[files.series_uid == ct_uid, "sop_instance_uid"])
    for lid, g in got.items():
        row = les.loc[lid]
        for key, (col, unit) in UNITS.items():
            if pd.isna(row.get(col)):
                assert key not in g["measurements"], f"{lid}: {col} missing in the table but in the SR"
                continue
            assert key in g["measurements"], f"{lid}: no {col}"
            value, u = g["measurements"][key]
            assert u == unit, f"{lid} {col}: unit {u}"
            assert value == pytest.approx(float(row[col]), rel=1e-6)
        assert g["evaluations"]["ROLE"] == rk.loc[lid, "role"].upper()
        assert g["evaluations"]["TIER"] == rk.loc[lid, "tier"].upper()
        assert g["template"] == "1411"
        sop, segnums, frames = g["segment"]
        # the segment number alone selects the frames: DICOM forbids frame numbers beside it
        assert sop == seg_sop and segnums == [int(row["segment_number"])] and frames == []
        assert g["source_images"] and set(g["source_images"]) <= ct_sops
        if isinstance(row.get("tracking_uid"), str) and row["tracking_uid"]:
            assert g["tracking_uid"] == row["tracking_uid"]
    # document module: preliminary machine output, local coding scheme declared, no name
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert [c.CodingSchemeDesignator for c in sr.CodingSchemeIdentificationSequence] == ["99HITIT"]
    scheme = sr.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeName and scheme.CodingSchemeResponsibleOrganization
    assert str(sr.PatientName) == "" and str(sr.PatientBirthDate) == ""
    assert sr.PatientID == "PHANTOM001" and sr.StudyInstanceUID == prov["study_uid"]
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
    refs = {s.SeriesInstanceUID: len(s.ReferencedSOPSequence) for s in ev.ReferencedSeriesSequence}
    assert refs[ct_uid] == len(ct_sops) and refs[seg_uid] == 1


def test_sr_is_reproducible_and_uids_stable(results, tmp_path):
    d = results["good"]
    a = S.build_sr(d, results["archive"], results["results"] / "index")
    b = S.build_sr(d, results["archive"], results["results"] / "index")
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID == hd.sr.srread(d / S.SR_NAME).SOPInstanceUID


def test_sr_without_seg_uses_tid1501_groups(results, tmp_path):
    d = tmp_path / "study"
    shutil.copytree(results["good"], d)
    prov = json.loads((d / "provenance.json").read_text())
    prov["inputs"]["study_sheet_row"]["lesion_mask_source"] = "rtstruct"
    (d / "provenance.json").write_text(json.dumps(prov))
    out = S.write_sr(d, results["archive"], results["results"] / "index", tmp_path / "x.dcm")
    got = S.read_measurements(out)
    les, _ = _tables(d)
    assert sorted(got) == sorted(les.index)
    assert all(g["template"] == "1501" and g["segment"] is None for g in got.values())
    assert all(g["measurements"][("Volume", "")][1] == "ml" for g in got.values())


def test_sr_leaves_out_missing_values(results, tmp_path):
    d = tmp_path / "study"
    shutil.copytree(results["good"], d)
    les = pd.read_csv(d / "lesions.csv")
    for c in ("suv_max", "suv_mean", "suv_peak"):
        les[c] = float("nan")
    les["suv_reason"] = "no PET series in this study"
    les.to_csv(d / "lesions.csv", index=False)
    got = S.read_measurements(S.write_sr(d, results["archive"], results["results"] / "index"))
    for g in got.values():
        assert not [k for k in g["measurements"] if k[0] == "SUVbw"]
        assert ("Volume", "") in g["measurements"]


def test_sr_of_a_failed_study_is_refused(results):
    with pytest.raises(S.NoLesionsForSRError, match="no lesion|found none") as err:
        S.build_sr(results["bad"], results["archive"], results["results"] / "index")
    assert isinstance(err.value, PipelineError) and err.value.hint
    assert err.value.file.endswith("lesions.csv")


def _series_sops(results, uid):
    files = pd.read_csv(results["results"] / "index" / "files.csv", dtype=str)
    return set(files.loc[files.series_uid == uid, "sop_instance_uid"])


def _with_referenced_series(results, tmp_path, uid_of, *, source=None):
    """Copy of the good study with mask_referenced_series_uid set per lesion (uid_of(lid))."""
    d = tmp_path / "study"
    shutil.copytree(results["good"], d)
    les = pd.read_csv(d / "lesions.csv", dtype={"lesion_id": str, "tracking_uid": str})
    les["mask_referenced_series_uid"] = [uid_of(lid) for lid in les["lesion_id"]]
    les.to_csv(d / "lesions.csv", index=False)
    if source:
        prov = json.loads((d / "provenance.json").read_text())
        prov["inputs"]["study_sheet_row"]["lesion_mask_source"] = source
        (d / "provenance.json").write_text(json.dumps(prov))
    return d, les


def test_sr_takes_each_masks_source_ct_from_the_lesion_table(results, tmp_path):
    """mask_referenced_series_uid picks the source CT per lesion: with lesions alternately on
    the non-contrast and the contrast CT, each group's source images come from its own series."""
    prov = json.loads((results["good"] / "provenance.json").read_text())
    nc, ce = prov["inputs"]["series"]["ct_series_uid"], prov["inputs"]["series"]["ce_ct_series_uid"]
    assert nc != ce
    lids = sorted(pd.read_csv(results["good"] / "lesions.csv", dtype={"lesion_id": str})["lesion_id"])
    want = {lid: (ce if i % 2 else nc) for i, lid in enumerate(lids)}
    for source in ("seg", "rtstruct"):
        d, _ = _with_referenced_series(results, tmp_path / source, want.get, source=source)
        sr = S.build_sr(d, results["archive"], results["results"] / "index")
        path = tmp_path / source / "x.dcm"
        sr.save_as(path, enforce_file_format=True)
        got = S.read_measurements(path)
        assert sorted(got) == lids
        for lid, g in got.items():
            assert g["source_images"], f"{source} {lid}: no source images"
            assert set(g["source_images"]) <= _series_sops(results, want[lid]), (source, lid)
        ev = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
        assert {nc, ce} <= ev


def test_sr_old_table_without_referenced_series_falls_back_with_warning(results, tmp_path, caplog):
    d, _ = _with_referenced_series(results, tmp_path, lambda lid: "")
    with caplog.at_level("WARNING", logger="pipeline.report.sr"):
        out = S.write_sr(d, results["archive"], results["results"] / "index", tmp_path / "x.dcm")
    assert any("mask_referenced_series_uid empty" in r.getMessage() for r in caplog.records)
    got = S.read_measurements(out)
    assert sorted(got) == sorted(pd.read_csv(d / "lesions.csv", dtype={"lesion_id": str})["lesion_id"])
    assert all(g["source_images"] for g in got.values())


def test_sr_refuses_a_source_ct_missing_from_the_archive(results, tmp_path):
    d, les = _with_referenced_series(results, tmp_path, lambda lid: "1.2.3.4.5.999")
    with pytest.raises(S.SourceImagesMissingError) as err:
        S.build_sr(d, results["archive"], results["results"] / "index")
    assert err.value.series_uid == "1.2.3.4.5.999" and err.value.hint
    assert isinstance(err.value, PipelineError)
