"""The DICOM SR names a lesion with the same TrackingUID at every timepoint.

Two synthetic timepoints of one patient (a tiny CT series each, lesion and ranking tables, RTSTRUCT
masks so the groups are TID 1501). The ranking tables are annotated by the follow-up step's own
functions (:func:`pipeline.followup.tracking.baseline_rows`, :func:`pipeline.followup.replan.annotate`),
which put each track's TrackingUID in ``ranking.csv``; the follow-up lesions carry other ids,
other labels and segment TrackingUIDs of their own, as a second reader's segmentation would.

Known truth: track a1 keeps its baseline SEG TrackingUID 1.2.826.0.1.3680043.8.498.77; track a2
(no SEG TrackingUID at baseline) keeps the UID derived from (baseline study, "lesion", a2); the
new lesion f3 gets a UID of its own, different from every baseline UID.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.followup.replan import annotate
from pipeline.followup.tracking import LESION_TRACKING_COLUMNS, baseline_rows, track_tracking_uid
from pipeline.io.tables import write_table
from pipeline.report import sr as S

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDIES = ["1.2.826.0.1.3680043.8.498.1000", "1.2.826.0.1.3680043.8.498.2000"]
SEG_UID_A1 = "1.2.826.0.1.3680043.8.498.77"


def _ct_series(root: Path, name: str, study_uid: str, date: str) -> tuple[str, list[dict]]:
    """Five 4x4 axial CT slices, 5 mm apart (z = 0..20 mm); header only."""
    series_uid, frame = generate_uid(), generate_uid()
    rows = []
    for k in range(5):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_STORAGE, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_STORAGE, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame
        ds.PatientID, ds.PatientName, ds.Modality = "FU01", "", "CT"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = date, "101010", "A1", "1"
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.Rows = ds.Columns = 4
        ds.PixelSpacing = [1.0, 1.0]
        rel = f"{name}/ct{k}.dcm"
        (root / name).mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(root / rel, ds, enforce_file_format=True)
        rows.append({"path": rel, "series_uid": series_uid, "sop_instance_uid": sop})
    return series_uid, rows


def _lesions(study_uid: str, ct_uid: str, spec: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame([{
        "patient_id": "FU01", "study_uid": study_uid, "lesion_id": lid, "lesion_label": label,
        "organ": organ, "tracking_uid": tuid, "volume_ml": 2.0 + k, "longest_diameter_mm": ld,
        "short_axis_mm": ld * 0.8, "centroid_x_mm": 2.0, "centroid_y_mm": 2.0, "centroid_z_mm": 10.0,
        "mask_series_uid": "", "mask_referenced_series_uid": ct_uid}
        for k, (lid, label, organ, tuid, ld) in enumerate(spec)])


def _ranking(lesions: pd.DataFrame, roles: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"patient_id": "FU01", "study_uid": r["study_uid"],
                          "lesion_id": r["lesion_id"], "rank": k + 1, "score": 0.5,
                          "tier": "recommended", "role": roles[r["lesion_id"]], "measurable": True,
                          "reasons": "", "explanation": "synthetic"}
                         for k, r in enumerate(lesions.to_dict(orient="records"))])


def _study(folder: Path, study_uid: str, ct_uid: str, lesions: pd.DataFrame,
           ranking: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    write_table(lesions, folder / "lesions.csv")
    write_table(ranking, folder / "ranking.csv")
    (folder / "provenance.json").write_text(json.dumps({
        "study_uid": study_uid, "status": "done", "versions": {"hitit-pipeline": "test"},
        "inputs": {"series": {"ct_series_uid": ct_uid},
                   "study_sheet_row": {"study_uid": study_uid, "lesion_mask_source": "rtstruct"}}}))
    return folder


def test_sr_tracking_uid_is_stable_across_timepoints(tmp_path):
    archive, results = tmp_path / "archive", tmp_path / "results" / "FU01"
    ct0, files0 = _ct_series(archive, "t0", STUDIES[0], "20240110")
    ct1, files1 = _ct_series(archive, "t1", STUDIES[1], "20240410")
    index = pd.DataFrame(files0 + files1)

    # baseline: tracks from the follow-up step itself
    les0 = _lesions(STUDIES[0], ct0, [("a1", "liver 1", "liver", SEG_UID_A1, 30.0),
                                      ("a2", "flank", "soft_tissue", "", 25.0)])
    rk0 = _ranking(les0, {"a1": "inject", "a2": "monitor"})
    cur0, _ = baseline_rows(les0, rk0, STUDIES[0], "FU01", {})
    assert dict(zip(cur0["track_id"], cur0["tracking_uid"])) == {
        "a1": SEG_UID_A1, "a2": track_tracking_uid("", STUDIES[0], "a2")}
    d0 = _study(results / "t0", STUDIES[0], ct0, les0, annotate(rk0, cur0, les0))

    # follow-up: other lesion ids, labels and segment UIDs; matched a1 -> f1, a2 -> f2, f3 new
    own = {"f1": "1.2.826.0.1.3680043.8.498.91", "f2": "1.2.826.0.1.3680043.8.498.92", "f3": ""}
    les1 = _lesions(STUDIES[1], ct1, [("f1", "L1", "liver", own["f1"], 20.0),
                                      ("f2", "R flank", "soft_tissue", own["f2"], 28.0),
                                      ("f3", "new", "liver", own["f3"], 12.0)])
    uid_of = dict(zip(cur0["track_id"], cur0["tracking_uid"]))
    cur1 = pd.DataFrame([
        {"patient_id": "FU01", "track_id": tid, "study_uid": STUDIES[1], "timepoint_index": 1,
         "lesion_id": lid, "lesion_label": "", "itrecist_category": cat, "injected_since": "",
         "measure_mm": 1.0, "measure_kind": "longest_diameter", "match_method": "position",
         "match_distance_mm": 1.0, "status": status, "x_baseline_mm": 0.0, "y_baseline_mm": 0.0,
         "z_baseline_mm": 0.0, "tracking_uid": uid}
        for tid, lid, cat, status, uid in (
            ("a1", "f1", "T-I", "present", uid_of["a1"]),
            ("a2", "f2", "T-NI", "present", uid_of["a2"]),
            ("new1-f3", "f3", "NEW", "new", track_tracking_uid("", STUDIES[1], "f3")))],
        columns=LESION_TRACKING_COLUMNS)
    rk1 = _ranking(les1, {"f1": "inject", "f2": "monitor", "f3": "none"})
    d1 = _study(results / "t1", STUDIES[1], ct1, les1, annotate(rk1, cur1, les1))

    got = []
    for d in (d0, d1):
        out = S.write_sr(d, archive, index, tmp_path / f"{d.name}.dcm")
        got.append(S.read_measurements(out))
    g0, g1 = got
    assert sorted(g0) == ["a1", "a2"] and sorted(g1) == ["f1", "f2", "f3"]
    assert all(g["template"] == "1501" and g["source_images"] for g in (*g0.values(), *g1.values()))
    # same track, same TrackingUID, whatever the lesion id and its own segment UID
    assert g0["a1"]["tracking_uid"] == g1["f1"]["tracking_uid"] == SEG_UID_A1
    assert g0["a2"]["tracking_uid"] == g1["f2"]["tracking_uid"] == track_tracking_uid("", STUDIES[0], "a2")
    assert g1["f2"]["tracking_uid"] != own["f2"]
    # the new lesion: its own UID, not one of a baseline lesion
    assert g1["f3"]["tracking_uid"] not in {g["tracking_uid"] for g in g0.values()}
    assert g1["f3"]["tracking_uid"] == track_tracking_uid("", STUDIES[1], "f3")
    # the two documents themselves are distinct instances of distinct studies
    a, b = (pydicom.dcmread(tmp_path / f"{n}.dcm", stop_before_pixels=True) for n in ("t0", "t1"))
    assert a.StudyInstanceUID == STUDIES[0] and b.StudyInstanceUID == STUDIES[1]
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_sr_without_track_column_keeps_the_lesion_uid(tmp_path):
    """A study ranked before the follow-up existed (no tracking_uid in ranking.csv): the lesion
    table's SEG TrackingUID is used, as before."""
    archive = tmp_path / "archive"
    ct0, files0 = _ct_series(archive, "t0", STUDIES[0], "20240110")
    les0 = _lesions(STUDIES[0], ct0, [("a1", "liver 1", "liver", SEG_UID_A1, 30.0)])
    d0 = _study(tmp_path / "r" / "t0", STUDIES[0], ct0, les0, _ranking(les0, {"a1": "inject"}))
    g = S.read_measurements(S.write_sr(d0, archive, pd.DataFrame(files0), tmp_path / "x.dcm"))
    assert g["a1"]["tracking_uid"] == SEG_UID_A1
