"""Phantom patients with several timepoints (pipeline.testing.phantom.followup): layout,
frames, repositioning, designed changes, zero-voxel segments, labels, TrackingUIDs and the
itRECIST truth."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.errors import ConfigError
from pipeline.testing.phantom import generate_cohort, patient_design
from pipeline.testing.phantom import followup as fu

# highdicom stamps these with the wall clock / a random UID on every write (also for T = 1).
VOLATILE_SEG_TAGS = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
                     "ContributingEquipmentSequence", "DimensionOrganizationSequence",
                     "DimensionIndexSequence"}


@pytest.fixture(scope="module")
def followup_root(tmp_path_factory) -> Path:
    """Patients 1 (confirmed progression, longitudinal TrackingUIDs) and 3 (nodal complete
    response, a disappeared lesion) with 3 studies each, small size."""
    root = tmp_path_factory.mktemp("phantom_fu")
    fu.generate_followup_patient(root, 1, "small", 0, 3)
    fu.generate_followup_patient(root, 3, "small", 0, 3)
    return root


def _truth(root: Path, pid: str) -> dict:
    return json.loads((root / pid / "truth.json").read_text())


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))]


def _seg_segments(path: Path) -> tuple[pydicom.Dataset, dict[int, np.ndarray]]:
    """SEG dataset and, per segment number, the (n, 3) LPS mm centres of its voxels."""
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    sp = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
          .PixelSpacing]
    pts: dict[int, list] = {int(s.SegmentNumber): [] for s in ds.SegmentSequence}
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        num = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        x0, y0, z0 = (float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        r, c = np.nonzero(px[f])
        pts[num].append(np.column_stack([x0 + c * sp[1], y0 + r * sp[0], np.full(len(r), z0)]))
    return ds, {k: np.concatenate(v) if v else np.zeros((0, 3)) for k, v in pts.items()}


def _same_dataset(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    keys_a = {e.keyword for e in a} - VOLATILE_SEG_TAGS
    keys_b = {e.keyword for e in b} - VOLATILE_SEG_TAGS
    return keys_a == keys_b and all(a[k] == b[k] for k in keys_a)


def _compare_trees(a: Path, b: Path, *, skip=("truth.json",)) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name not in skip)
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name not in skip)
    assert files_a == files_b
    for rel in files_a:
        if rel.name.startswith("SEG_"):
            assert _same_dataset(pydicom.dcmread(a / rel), pydicom.dcmread(b / rel)), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --------------------------------------------------------------------------- T = 1 unchanged
def test_one_timepoint_is_the_normal_generator(tmp_path, followup_root):
    """T = 1 writes what generate_cohort writes (byte for byte, SEGs up to highdicom's clock and
    random dimension UIDs); the baseline study of T = 3 is the same patient."""
    fu.generate_followup_cohort(tmp_path / "a", 1, "small", 0, timepoints=1)
    generate_cohort(tmp_path / "b", 1, "small", 0)
    _compare_trees(tmp_path / "a" / "PHANTOM001", tmp_path / "b" / "PHANTOM001", skip=())
    base = next(p for p in (followup_root / "PHANTOM001").iterdir() if p.name.endswith("_t0"))
    _compare_trees(base, tmp_path / "b" / "PHANTOM001")
    t1 = json.loads((tmp_path / "b" / "PHANTOM001" / "truth.json").read_text())
    t3 = _truth(followup_root, "PHANTOM001")
    assert {k: v for k, v in t3.items() if k != "followup"} == t1


# --------------------------------------------------------------------------- studies and frames
def test_three_studies_in_three_frames(followup_root):
    for pid in ("PHANTOM001", "PHANTOM003"):
        truth = _truth(followup_root, pid)
        tps = truth["followup"]["timepoints"]
        folders = sorted(p for p in (followup_root / pid).iterdir() if p.is_dir())
        assert [p.name for p in folders] == [tp["study_folder"] for tp in tps]
        assert len(folders) == 3
        studies, frames, dates = set(), set(), []
        for tp, folder in zip(tps, folders):
            hdrs = _headers(folder)
            assert {h.PatientID for h in hdrs} == {pid}
            assert {h.StudyInstanceUID for h in hdrs} == {tp["study_uid"]}
            assert {h.StudyDate for h in hdrs} == {tp["study_date"]}
            image_frames = {h.FrameOfReferenceUID for h in hdrs if "FrameOfReferenceUID" in h}
            assert image_frames == {tp["frame_of_reference_uid"]}  # CTs, PET and SEGs share it
            sop = [h.SOPInstanceUID for h in hdrs]
            assert len(set(sop)) == len(sop)
            studies.add(tp["study_uid"])
            frames.add(tp["frame_of_reference_uid"])
            dates.append(dt.datetime.strptime(tp["study_date"], "%Y%m%d"))
        assert len(studies) == 3 and len(frames) == 3
        assert [(b - a).days for a, b in zip(dates, dates[1:])] == [56, 56]
        assert tps[0]["study_uid"] == truth["study_uid"]


def test_repositioning_is_rigid_and_large_enough():
    for pid in (1, 2, 3, 4, 5):
        for t in (1, 2, 3, 4):
            m = fu.patient_to_scanner(pid, 0, t)
            r = m[:3, :3]
            assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
            assert np.linalg.norm(m[:3, 3]) >= fu.MIN_TRANSLATION_MM
            assert fu.rotation_angle_deg(m) >= fu.MIN_ROTATION_DEG
    assert np.array_equal(fu.patient_to_scanner(1, 0, 0), np.eye(4))
    # patient 1 is the nominal motion: 4 deg about z, then (12, -8, 4) mm
    m = fu.patient_to_scanner(1, 0, 1)
    assert fu.rotation_angle_deg(m) == pytest.approx(4.0, abs=1e-9)
    assert m[:3, 3].tolist() == [12.0, -8.0, 4.0]
    # other patients vary with the seed
    assert not np.allclose(fu.patient_to_scanner(2, 0, 1), fu.patient_to_scanner(2, 1, 1))


def test_rendered_centroids_follow_patient_to_scanner(followup_root):
    """Voxelized SEG centroids of every present lesion = patient_to_scanner x design centre,
    within one voxel per axis (design centres from the baseline truth and the change table)."""
    for pid in ("PHANTOM001", "PHANTOM003"):
        truth = _truth(followup_root, pid)
        centres = {les["name"]: les["centre_lps_mm"] for les in truth["lesions"]}
        centres[fu._NEW_LESION.name] = list(fu._NEW_LESION.centre_lps_mm)
        for tp in truth["followup"]["timepoints"]:
            m = np.asarray(tp["patient_to_scanner"], dtype=float).reshape(4, 4)
            ds, pts = _seg_segments(followup_root / pid / tp["study_folder"] / "SEG_lesions.dcm")
            sp = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
                  .PixelSpacing]
            thick = float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
                          .SliceThickness)
            tol = np.array([sp[1], sp[0], thick])
            for les in tp["lesions"]:
                got = pts[les["segment_number"]]
                assert len(got) == les["voxel_count"], (pid, tp["index"], les["track_id"])
                if les["status"] == "disappeared":
                    continue
                want = (m @ np.append(centres[les["track_id"]], 1.0))[:3]
                assert np.allclose(les["centre_lps_mm"], want, atol=1e-6)
                err = np.abs(got.mean(axis=0) - want)
                assert np.all(err <= tol), (pid, tp["index"], les["track_id"], err)


# --------------------------------------------------------------------------- truth
def test_truth_sods_are_sums_of_truth_measures(followup_root):
    for pid in ("PHANTOM001", "PHANTOM003"):
        for tp in _truth(followup_root, pid)["followup"]["timepoints"]:
            les = tp["lesions"]
            for x in les:
                if x["status"] == "disappeared":
                    assert x["measure_mm"] == 0.0 and x["semi_axes_mm"] is None
                    continue
                a, b, _ = x["semi_axes_mm"]
                want = 2 * min(a, b) if x["measure_kind"] == "short_axis" else 2 * max(a, b)
                assert x["measure_mm"] == pytest.approx(want, abs=1e-9)
            ti = sum(x["measure_mm"] for x in les if x["category"] == "T-I")
            tni = sum(x["measure_mm"] for x in les if x["category"] == "T-NI")
            assert tp["sod_ti_mm"] == pytest.approx(ti, abs=1e-9)
            assert tp["sod_tni_mm"] == pytest.approx(tni, abs=1e-9)
            assert tp["sod_targets_mm"] == pytest.approx(ti + tni, abs=1e-9)
            assert tp["new_lesions"] == sum(x["status"] == "new" for x in les)


def test_designed_sods_and_responses():
    """The designed timelines of the three scenarios (issue 13 acceptance: one iUPD confirmed as
    iCPD, one iUPD that resets, a nodal iCR), and the percentages behind them."""
    want = {  # scenario: [(sod_ti, sod_tni, overall, injected, noninjected)] for t = 0, 1, 2
        "confirmed_progression": [(40, 150, None, None, None), (26, 164, "iUPD", "iPR", "iUPD"),
                                  (23, 164, "iCPD", "iPR", "iCPD")],
        "reset": [(40, 150, None, None, None), (40, 184, "iSD", "iSD", "iUPD"),
                  (40, 150, "iSD", "iSD", "iSD")],
        "nodal_complete_response": [(40, 150, None, None, None), (23, 150, "iSD", "iPR", "iSD"),
                                    (9, 150, "iSD", "iCR", "iSD")],
    }
    for pid, scenario in ((1, "confirmed_progression"), (2, "reset"),
                          (3, "nodal_complete_response")):
        base = patient_design(pid, 0, "small")
        assert fu.scenario_of(pid) == scenario == fu.scenario_of(pid + 3)
        for t, row in enumerate(want[scenario]):
            les = [{"category": x.category, "measure_mm": x.measure_mm}
                   for x in fu.timepoint_lesions(base, t)]
            sods = fu._sods(les)
            r = fu.designed_responses(scenario, t)
            got = (sods["sod_ti_mm"], sods["sod_tni_mm"], r["response_overall"],
                   r["response_injected"], r["response_noninjected"])
            assert got == row, (scenario, t)
    # the thresholds the designed responses rest on
    assert (26 - 40) / 40 <= -0.30 and (23 - 40) / 40 <= -0.30          # injected iPR
    assert (184 - 150) / 150 >= 0.20 and 184 - 150 >= 5                 # reset: T-NI iUPD
    assert (224 - 190) / 190 < 0.20                                      # reset: overall iSD
    assert (164 - 150) / 150 < 0.20                                      # progression: new lesion
    assert 16 - 10 >= 5                                                  # new lesion grows: iCPD
    base1 = patient_design(1, 0, "small")
    new = [x for x in fu.timepoint_lesions(base1, 2) if x.status == "new"]
    assert [x.measure_mm for x in new] == [16.0]
    base3 = patient_design(3, 0, "small")
    t2 = {x.track_id: x for x in fu.timepoint_lesions(base3, 2)}
    assert t2["soft_tissue_flank"].status == "disappeared"
    assert t2["node_axillary_R"].measure_kind == "short_axis"
    assert t2["node_axillary_R"].measure_mm == 9.0 < 10.0


def test_zero_voxel_segment_reads_back_empty(followup_root):
    truth = _truth(followup_root, "PHANTOM003")
    tp = truth["followup"]["timepoints"][2]
    gone = [x for x in tp["lesions"] if x["status"] == "disappeared"]
    assert [x["track_id"] for x in gone] == ["soft_tissue_flank"]
    ds, pts = _seg_segments(followup_root / "PHANTOM003" / tp["study_folder"] / "SEG_lesions.dcm")
    num = gone[0]["segment_number"]
    item = next(s for s in ds.SegmentSequence if int(s.SegmentNumber) == num)
    assert item.SegmentLabel == gone[0]["segment_label"]
    assert len(pts[num]) == 0 and gone[0]["voxel_count"] == 0
    assert len(ds.SegmentSequence) == 8
    assert all(len(pts[s]) > 0 for s in pts if s != num)
    # the empty segment keeps the baseline TrackingUID (the reader marked that lesion as gone)
    base = pydicom.dcmread(followup_root / "PHANTOM003" / truth["followup"]["timepoints"][0]
                           ["study_folder"] / "SEG_lesions.dcm", stop_before_pixels=True)
    base_uid = {s.SegmentLabel: s.TrackingUID for s in base.SegmentSequence}
    assert item.TrackingUID == base_uid["soft_tissue_flank"]


def test_labels_differ_and_tracking_uids(followup_root):
    for pid in ("PHANTOM001", "PHANTOM003"):
        tps = _truth(followup_root, pid)["followup"]["timepoints"]
        folder = followup_root / pid
        segs = []
        for tp in tps:
            ds = pydicom.dcmread(folder / tp["study_folder"] / "SEG_lesions.dcm",
                                 stop_before_pixels=True)
            segs.append({int(s.SegmentNumber): (s.SegmentLabel, s.TrackingUID)
                         for s in ds.SegmentSequence})
            for les in tp["lesions"]:  # truth describes the file
                assert segs[-1][les["segment_number"]] == (les["segment_label"],
                                                           les["tracking_uid"])
        base_labels = {lab for lab, _ in segs[0].values()}
        base_uid = {x["track_id"]: x["tracking_uid"] for x in tps[0]["lesions"]}
        for t in (1, 2):
            labels = {lab for lab, _ in segs[t].values()}
            assert not labels & base_labels
            order = [x["track_id"] for x in sorted(tps[t]["lesions"],
                                                   key=lambda x: x["segment_number"])]
            assert order[: len(base_uid)] != list(base_uid)
            for les in tps[t]["lesions"]:
                if les["status"] == "new":
                    assert les["tracking_uid"] not in base_uid.values()
                elif pid == "PHANTOM001" or les["status"] == "disappeared":
                    assert les["tracking_uid"] == base_uid[les["track_id"]]
                else:
                    assert les["tracking_uid"] != base_uid[les["track_id"]]
        if pid == "PHANTOM001":  # the new lesion keeps its TrackingUID from t1 to t2 too
            new = [[x["tracking_uid"] for x in tp["lesions"] if x["status"] == "new"]
                   for tp in tps[1:]]
            assert new[0] == new[1] and len(new[0]) == 1


# --------------------------------------------------------------------------- design checks
@pytest.mark.parametrize("pid,t", [(2, 1), (4, 2), (6, 2)])
def test_changed_lesions_do_not_overlap_and_stay_in_their_tissue(pid, t):
    """Grown / new / shrunk lesions of jittered patients: timepoint_arrays raises on overlap, on
    a lesion leaving its host tissue or the field of view; here it must pass, and every present
    lesion covers CT voxels."""
    base = patient_design(pid, 0, "small")
    arrays, m = fu.timepoint_arrays(base, t)
    n = len(arrays.design.lesions)
    counts = np.bincount(arrays.lesion_labels.ravel(), minlength=n + 1)
    assert (counts[1:] > 0).all()
    assert np.allclose(m, fu.patient_to_scanner(pid, 0, t))


def test_design_error_is_detected(monkeypatch):
    """A new lesion placed on liver_deep is refused (the check can fail)."""
    bad = fu.replace(fu._NEW_LESION, centre_lps_mm=(-60.0, 5.0, -25.0))
    monkeypatch.setattr(fu, "_NEW_LESION", bad)
    with pytest.raises(RuntimeError, match="liver_new"):
        fu.check_new_lesion(patient_design(1, 0, "small"), 1)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        fu.generate_followup_cohort(tmp_path, 1, "small", 0, timepoints=0)
    with pytest.raises(ConfigError, match="standard variant"):
        fu.generate_followup_cohort(tmp_path, 1, "small", 0, timepoints=2, variant="extended")
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["phantom", str(tmp_path), "--timepoints", "3"])
    assert args.timepoints == 3 and args.patients == 1
    assert not any(tmp_path.iterdir())
    assert math.isfinite(fu.rotation_angle_deg(np.eye(4)))
