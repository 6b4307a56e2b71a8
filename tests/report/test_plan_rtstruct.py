"""The injection plan as an RTSTRUCT on the planning CT (issue 14 item 6): POINT ROIs at each
target and skin entry, the needle path as an OPEN_PLANAR contour, references to the planning CT
from the archive index only; round trip with pydicom and dciodvfy with no error."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from pipeline.report import plan_rtstruct as P

pytestmark = pytest.mark.slow


@pytest.fixture
def res(results, tmp_path):
    """A private copy of the shared results (the plan is written into the study folders)."""
    dst = tmp_path / "results"
    shutil.copytree(results["results"], dst)
    good = dst / results["good"].relative_to(results["results"])
    return dst, good


def _csv(p: Path) -> pd.DataFrame:
    return pd.read_csv(p, dtype=str, keep_default_na=False)


def _dciodvfy(exe: str, path: Path) -> tuple[list[str], list[str]]:
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (r.stdout + r.stderr).splitlines()
    assert any(ln.strip() == "RTStructureSet" for ln in lines), lines[:5]
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def test_plan_round_trip(res):
    results, good = res
    from pipeline.cli import main

    assert main(["plan-export", str(results)]) == 0
    path = good / P.PLAN_NAME
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == P.RTSTRUCT_SOP_CLASS and ds.Modality == "RTSTRUCT"
    prov = json.loads((good / "provenance.json").read_text())
    ct_uid = prov["inputs"]["series"]["ct_series_uid"]
    files = _csv(results / "index" / "files.csv")
    ct = files[files["series_uid"] == ct_uid]
    assert len(ct) > 10
    # references: the planning CT's frame, study, series and every instance
    fr = ds.ReferencedFrameOfReferenceSequence[0]
    assert fr.FrameOfReferenceUID == ds.FrameOfReferenceUID == ct["frame_of_reference_uid"].iloc[0]
    study = fr.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == ds.StudyInstanceUID == ct["study_uid"].iloc[0]
    ser = study.RTReferencedSeriesSequence[0]
    assert ser.SeriesInstanceUID == ct_uid
    assert {i.ReferencedSOPInstanceUID for i in ser.ContourImageSequence} == set(ct["sop_instance_uid"])
    assert ds.PatientName == "" and ds.PatientID == ct["patient_id"].iloc[0]
    # ROIs: per injected lesion target, entry (POINT, MARKER) and needle (OPEN_PLANAR)
    ranking, lesions = _csv(good / "ranking.csv"), _csv(good / "lesions.csv").set_index("lesion_id")
    inject = ranking[ranking["role"] == "inject"]
    assert len(inject) >= 1
    rois = {r.ROINumber: r for r in ds.StructureSetROISequence}
    obs = {o.ReferencedROINumber: o for o in ds.RTROIObservationsSequence}
    by_name = {}
    for c in ds.ROIContourSequence:
        n = c.ReferencedROINumber
        assert rois[n].ReferencedFrameOfReferenceUID == fr.FrameOfReferenceUID
        by_name[rois[n].ROIName] = (c.ContourSequence[0], obs[n])
    assert len(by_name) == 3 * len(inject)  # every injected phantom lesion has a planned entry
    pos = np.array([[float(v) for v in p.split("\\")] for p in ct["image_position"]])
    uid_at = dict(zip(ct["sop_instance_uid"], pos[:, 2]))
    half = np.median(np.diff(np.sort(pos[:, 2]))) / 2
    for r in inject.itertuples():
        target = np.array([float(r.target_x_mm), float(r.target_y_mm), float(r.target_z_mm)])
        le = lesions.loc[r.lesion_id]
        entry = np.array([float(le.entry_x_mm), float(le.entry_y_mm), float(le.entry_z_mm)])
        t, to = by_name[f"target {r.lesion_id}"]
        e, eo = by_name[f"entry {r.lesion_id}"]
        n, no = by_name[f"needle {r.lesion_id}"]
        assert t.ContourGeometricType == e.ContourGeometricType == "POINT"
        assert to.RTROIInterpretedType == eo.RTROIInterpretedType == "MARKER"
        assert n.ContourGeometricType == "OPEN_PLANAR" and n.NumberOfContourPoints == 2
        assert no.ROIObservationLabel == "needle path"
        assert np.allclose(np.array(t.ContourData, float), target, atol=1e-3)
        assert np.allclose(np.array(e.ContourData, float), entry, atol=1e-3)
        assert np.allclose(np.array(n.ContourData, float).reshape(2, 3), [entry, target], atol=1e-3)
        # a point names the CT slice it lies on
        for c, p in ((t, target), (e, entry)):
            z = uid_at[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert abs(z - p[2]) <= half + 1e-6
        length = float(le.path_length_mm)
        assert abs(np.linalg.norm(target - entry) - length) < 0.05  # the path of lesions.csv
    # the same plan gives the same file
    before = path.read_bytes()
    P.write_plan_rtstruct(good, files)
    assert path.read_bytes() == before


def test_plan_passes_dciodvfy_and_the_check_is_not_blind(res, dciodvfy, tmp_path):
    results, good = res
    files = _csv(results / "index" / "files.csv")
    path = P.write_plan_rtstruct(good, files)
    errors, warnings = _dciodvfy(dciodvfy, path)
    assert not errors, "\n".join(errors)
    assert all("DICOMDIR" in w for w in warnings), "\n".join(warnings)  # empty Study Time / ID
    ds = pydicom.dcmread(path)
    del ds.FrameOfReferenceUID
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    errors, _ = _dciodvfy(dciodvfy, bad)
    assert any("FrameOfReferenceUID" in e for e in errors)


def test_no_injected_lesion_no_plan(res):
    results, good = res
    files = _csv(results / "index" / "files.csv")
    r = _csv(good / "ranking.csv")
    r["role"] = r["role"].replace("inject", "monitor")
    r.to_csv(good / "ranking.csv", index=False)
    assert P.write_plan_rtstruct(good, files) is None and not (good / P.PLAN_NAME).exists()


def test_planning_ct_missing_from_the_index_is_an_error(res):
    from pipeline.errors import ConfigError

    results, good = res
    files = _csv(results / "index" / "files.csv")
    prov = json.loads((good / "provenance.json").read_text())
    keep = ~files["series_uid"].isin([prov["inputs"]["series"]["ct_series_uid"],
                                      prov["inputs"]["series"].get("ce_ct_series_uid", "")])
    with pytest.raises(ConfigError, match="no planning CT"):
        P.write_plan_rtstruct(good, files[keep])
