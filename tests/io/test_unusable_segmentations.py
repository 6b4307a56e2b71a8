"""Segmentations a real archive holds: an RTSTRUCT on a partly present series is used on the
slices that are there; a SEG / RTSTRUCT of a series that is not in the archive makes the study
fail with a message naming the file and the referenced UID (issue 12, items 4 and 5)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from io_synth import make_series, write_rtstruct, write_seg
from pydicom.uid import generate_uid

from pipeline.config import load_config
from pipeline.errors import SegmentationError
from pipeline.io import study_loader as L
from pipeline.io.classify import PARTLY_PRESENT, blocking_reference_problems
from pipeline.io.dicom import load_ct
from pipeline.io.index import scan_archive
from pipeline.sheet import NO_LESION_SEGMENTATION, build_study_sheet


def _square(s, k, side=3.0):
    """A side x side mm square contour on slice k of io_synth series ``s`` (LPS points)."""
    return np.array([[0, 0, 0], [side, 0, 0], [side, side, 0], [0, side, 0]], float) + (
        s.positions[k] + np.array([1.0, 1.0, 0.0]))


def _drop_slices(s, ks):
    """Delete the files of slices ``ks`` of io_synth series ``s``; the remaining paths."""
    absent = {s.sop_uids[k] for k in ks}
    kept = []
    for p in s.paths:
        if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) in absent:
            p.unlink()
        else:
            kept.append(p)
    return kept


def test_blocking_reference_problems():
    part = f"{PARTLY_PRESENT}: 2 of 6 referenced image instance(s) not in the archive (first 1.2)"
    assert blocking_reference_problems(part) == []
    assert blocking_reference_problems("") == []
    assert blocking_reference_problems(f"referenced series not in the archive: 1.2.3; {part}") \
        == ["referenced series not in the archive: 1.2.3"]


def test_rtstruct_on_partly_present_series_is_chosen_and_rasterized(tmp_path):
    study = generate_uid()
    ct = make_series(tmp_path / "p1" / "ct", study_uid=study, n=6)
    rt = write_rtstruct(tmp_path / "p1" / "rt.dcm", ref=ct,
                        rois=[(1, "GTV_1", [_square(ct, 1), _square(ct, 5)])])
    kept = _drop_slices(ct, {4, 5})  # a cropped export: the top two slices were not transferred
    index = scan_archive(tmp_path)
    srow = index.series.set_index("series_uid").loc[rt]
    assert srow["reference_problem"].startswith(f"{PARTLY_PRESENT}: 2 of 6 referenced image")
    sheet = build_study_sheet(index)
    row = sheet.iloc[0].to_dict()
    assert (row["lesion_mask_source"], row["lesion_mask_ref"]) == ("rtstruct", rt)
    assert PARTLY_PRESENT in row["notes"]
    vol = load_ct(kept, series_uid=ct.series_uid)
    masks = L.load_study_masks(L.StudyInputs(row, index.files, index.root),
                               {ct.series_uid: vol.grid}, load_config())
    assert [m.name for m in masks.lesions] == ["GTV_1"]
    # the 3 mm square at 0.7 x 0.8 mm pixels, on slice 1 only
    lesion = masks.lesions[0].full()
    assert lesion.shape == (4, 8, 10) and lesion[1].any() and not np.delete(lesion, 1, 0).any()
    [w] = [w for w in masks.warnings if "partly present" in w]
    assert "2 of 6 referenced image instance(s)" in w
    assert "1 of 2 closed contour(s) lie on absent slices" in w and "1 rasterized" in w


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_segmentation_of_a_series_not_in_the_archive_says_so(tmp_path, kind):
    study = generate_uid()
    make_series(tmp_path / "p1" / "ct", study_uid=study, n=6)
    ghost = make_series(tmp_path / "ghost", study_uid=study, n=6)
    if kind == "seg":
        mask = np.zeros((6, 8, 10), bool)
        mask[2:4, 3:6, 4:8] = True
        uid = write_seg(tmp_path / "p1" / "les.dcm", ref=ghost, masks={1: mask},
                        labels={1: "lesion x"}, category="lesion")
    else:
        uid = write_rtstruct(tmp_path / "p1" / "les.dcm", ref=ghost,
                             rois=[(1, "GTV_1", [_square(ghost, 2)])])
    shutil.rmtree(tmp_path / "ghost")
    index = scan_archive(tmp_path)
    row = build_study_sheet(index).iloc[0].to_dict()
    assert row["lesion_mask_source"] == ""
    note = next(p for p in row["notes"].split("; ") if p.startswith(NO_LESION_SEGMENTATION))
    assert note == (f"{NO_LESION_SEGMENTATION}: {kind} {uid} (file p1/les.dcm): referenced "
                    f"series {ghost.series_uid} not in the archive")
    with pytest.raises(SegmentationError) as ei:
        L.load_study_masks(L.StudyInputs(row, index.files, index.root), {}, load_config())
    msg = ei.value.message
    assert "p1/les.dcm" in msg and ghost.series_uid in msg and "not in the archive" in msg
    assert "add the referenced image series" in ei.value.hint


def test_no_segmentation_at_all_keeps_the_plain_message(tmp_path):
    make_series(tmp_path / "p1" / "ct", study_uid=generate_uid(), n=3)
    index = scan_archive(tmp_path)
    row = build_study_sheet(index).iloc[0].to_dict()
    assert NO_LESION_SEGMENTATION in row["notes"].split("; ")
    with pytest.raises(SegmentationError, match=r"no lesion segmentation \(SEG, RTSTRUCT"):
        L.load_study_masks(L.StudyInputs(row, index.files, index.root), {}, load_config())


def test_dicomdir_referencing_absent_files_is_a_problem(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ct = make_series(tmp_path / "ct", study_uid=generate_uid(), n=2, names="bare")
    names = sorted(p.name for p in ct.paths)

    def dicomdir(path, file_ids):
        dd = Dataset()
        dd.file_meta = FileMetaDataset()
        dd.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
        dd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dd.FileSetID = "T"
        recs = []
        for fid in file_ids:
            r = Dataset()
            r.DirectoryRecordType = "IMAGE"
            r.ReferencedFileID = fid
            recs.append(r)
        dd.DirectoryRecordSequence = recs
        dd.save_as(path, enforce_file_format=True)

    # present (also in another case), absent, and one that would leave the folder
    dicomdir(tmp_path / "DICOMDIR", [["CT", names[0].upper()], ["CT", "GONE1"], ["..", "etc"]])
    (tmp_path / "sub").mkdir()
    dicomdir(tmp_path / "sub" / "DICOMDIR", [])
    index = scan_archive(tmp_path)
    probs = index.problems.set_index("path")
    assert "sub/DICOMDIR" not in probs.index  # a DICOMDIR with nothing absent is skipped
    reason = probs.loc["DICOMDIR", "reason"]
    assert reason == "DICOMDIR references 2 file(s) that are not in the archive: CT/GONE1, ../etc"
    assert len(index.files) == 2  # the images themselves are indexed
