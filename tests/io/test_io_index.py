"""Header-only archive index, persistence, study sheet and its validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from io_synth import make_series, write_rtstruct, write_seg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.errors import ConfigError
from pipeline.geometry import Grid
from pipeline.io.index import (
    build_study_sheet,
    check_complete,
    read_index,
    read_study_sheet,
    scan_archive,
    validate_study_sheet,
    write_index,
)

SCHEMA = Path(__file__).resolve().parents[2] / "configs" / "studies.schema.yaml"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A messy archive: 2 CT phases, PET, localizer, SEG x2, RTSTRUCT, label map, junk."""
    root = tmp_path_factory.mktemp("archive")
    study = generate_uid()
    nc = make_series(root / "p1" / "a", study_uid=study, description="CT ABD NON-CONTRAST",
                     n=6, names="bare")
    ce = make_series(root / "p1" / "b", study_uid=study, description="Abdomen 5mm", n=8,
                     extra=lambda ds, k: setattr(ds, "ContrastBolusAgent", "Iohexol"))
    short_nc = make_series(root / "p1" / "c", study_uid=study, description="native", n=3)
    pet = make_series(root / "p1" / "pet", modality="PT", study_uid=study, n=4,
                      description="PET AC")
    nac = make_series(root / "p1" / "nac", modality="PT", study_uid=study, n=4,
                      description="PET NAC",
                      extra=lambda ds, k: setattr(ds, "CorrectedImage", ["DECY"]))
    loc = make_series(root / "p1" / "loc", study_uid=study, description="Topogram", n=1,
                      extra=lambda ds, k: setattr(ds, "ImageType",
                                                  ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    mask = np.zeros((6, 8, 10), bool)
    mask[2:4, 3:6, 4:8] = True
    seg_les = write_seg(root / "p1" / "seg_lesions.dcm", ref=nc, masks={1: mask},
                        labels={1: "target 1"}, category="lesion")
    seg_org = write_seg(root / "p1" / "seg_organs.dcm", ref=ce, masks={1: np.ones((8, 8, 10), bool)},
                        labels={1: "liver"}, category="organ")
    # SEG of a series that is not in the archive
    ghost = make_series(root / "ghost", study_uid=study, n=6)
    seg_ghost = write_seg(root / "p1" / "seg_ghost.dcm", ref=ghost, masks={1: mask},
                          labels={1: "lesion x"}, category="lesion")
    shutil.rmtree(root / "ghost")
    sq = np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0], [0, 3, 0]], float) + nc.positions[1]
    rt = write_rtstruct(root / "p1" / "rt", ref=nc, rois=[(1, "GTV_1", [sq])])
    # label map with sidecar
    import json

    import nibabel as nib

    grid = Grid((6, 8, 10), (0.7, 0.8, 2.5), tuple(nc.positions[0]))
    lab = np.zeros((10, 8, 6), np.uint8)
    lab[2:5, 2:5, 1:3] = 1
    (root / "p1" / "lm").mkdir()
    nib.save(nib.Nifti1Image(lab, grid.nifti_affine_ras()), root / "p1" / "lm" / "les.nii.gz")
    (root / "p1" / "lm" / "les.json").write_text(json.dumps({
        "patient_id": "P001", "study_uid": study, "referenced_series_uid": nc.series_uid,
        "kind": "lesion", "names": {"1": "lesion_1"}}))
    # a NIfTI without sidecar, junk, a truncated file, a DICOMDIR, a raw (no preamble) file
    shutil.copy(root / "p1" / "lm" / "les.nii.gz", root / "p1" / "orphan.nii.gz")
    (root / "notes.txt").write_text("not dicom at all\n")
    (root / "empty.dcm").write_bytes(b"")
    data = nc.paths[0].read_bytes()
    (root / "cut_in_pixels.dcm").write_bytes(data[: len(data) - 40])
    (root / "cut_in_header.dcm").write_bytes(data[:300])
    dd = Dataset()
    dd.file_meta = FileMetaDataset()
    dd.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dd.FileSetID = "TEST"
    dd.DirectoryRecordSequence = []
    dd.save_as(root / "DICOMDIR", enforce_file_format=True)
    raw = make_series(root / "raw", study_uid=generate_uid(), patient_id="P002", n=2,
                      order="sorted", write=False)
    for p, ds in zip(raw.paths, raw.datasets):
        ds.preamble = None
        pydicom.dcmwrite(p, ds, enforce_file_format=False)
    return {
        "root": root, "study": study, "nc": nc, "ce": ce, "short_nc": short_nc, "pet": pet,
        "nac": nac, "loc": loc, "seg_les": seg_les, "seg_org": seg_org, "seg_ghost": seg_ghost,
        "rt": rt, "raw": raw,
    }


@pytest.fixture(scope="module")
def index(archive):
    calls = []
    ix = scan_archive(archive["root"], progress=lambda d, t: calls.append((d, t)))
    ix.meta["_calls"] = calls
    return ix


def _row(ix, uid):
    return ix.series_row(uid)


def test_problems_listed_with_reasons(index):
    pr = index.problems.set_index("path")
    assert "not a DICOM file" in pr.loc["notes.txt", "reason"]
    assert "not a DICOM file" in pr.loc["empty.dcm", "reason"]
    assert "truncated" in pr.loc["cut_in_pixels.dcm", "reason"]
    assert "remain" in pr.loc["cut_in_pixels.dcm", "reason"]
    assert pr.loc["cut_in_header.dcm", "error_class"] == "DicomReadError"
    assert "sidecar" in pr.loc["p1/orphan.nii.gz", "reason"]
    assert "DICOMDIR" not in pr.index
    assert "DICOMDIR" not in set(index.files["path"])
    assert len(pr) == 5


def test_progress_reported(index):
    calls = index.meta["_calls"]
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1]


def test_files_recognised_by_content(index, archive):
    paths = set(index.files["path"])
    assert {p.relative_to(archive["root"]).as_posix() for p in archive["nc"].paths} <= paths
    assert "p1/rt" in paths  # RTSTRUCT without extension
    raw_rows = index.files[index.files["patient_id"] == "P002"]
    assert len(raw_rows) == 2  # files without preamble


def test_series_classification(index, archive):
    a = archive
    assert _row(index, a["nc"].series_uid)["ct_phase"] == "noncontrast"
    ce = _row(index, a["ce"].series_uid)
    assert ce["ct_phase"] == "contrast" and "Iohexol" in ce["phase_reason"]
    assert _row(index, a["short_nc"].series_uid)["ct_phase"] == "noncontrast"
    loc = _row(index, a["loc"].series_uid)
    assert loc["is_localizer"] and loc["excluded_reason"].startswith("localizer")
    assert bool(_row(index, a["pet"].series_uid)["pet_corrected"]) is True
    assert bool(_row(index, a["nac"].series_uid)["pet_corrected"]) is False
    sl = _row(index, a["seg_les"])
    assert sl["modality"] == "SEG" and sl["segment_kind"] == "lesion"
    assert sl["referenced_series_uids"] == a["nc"].series_uid
    assert _row(index, a["seg_org"])["segment_kind"] == "organ"
    rt = _row(index, a["rt"])
    assert rt["modality"] == "RTSTRUCT" and rt["segment_kind"] == "lesion"
    assert rt["reference_problem"] == ""
    ghost = _row(index, a["seg_ghost"])
    assert "not in the archive" in ghost["reference_problem"]
    lm = index.series[index.series["modality"] == "LABELMAP"].iloc[0]
    assert lm["first_path"] == "p1/lm/les.nii.gz" and lm["segment_kind"] == "lesion"
    assert lm["referenced_series_uids"] == a["nc"].series_uid
    assert _row(index, a["nc"].series_uid)["orientation"] == "axial"


def test_index_round_trip(index, tmp_path):
    write_index(index, tmp_path / "ix")
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {
        "files.csv", "series.csv", "problems.csv", "index.json"}
    back = read_index(tmp_path / "ix")
    pd.testing.assert_frame_equal(back.files, index.files)
    pd.testing.assert_frame_equal(back.series, index.series)
    pd.testing.assert_frame_equal(back.problems, index.problems)
    assert back.root == index.root.resolve()
    assert back.series_paths(index.series.iloc[0]["series_uid"])[0].exists()


def test_study_sheet_choices(index, archive):
    sheet = build_study_sheet(index)
    row = sheet[sheet["study_uid"] == archive["study"]].iloc[0]
    assert row["ct_series_uid"] == archive["nc"].series_uid  # most slices among non-contrast
    assert row["ce_ct_series_uid"] == archive["ce"].series_uid
    assert row["pet_series_uid"] == archive["pet"].series_uid
    assert (row["lesion_mask_source"], row["lesion_mask_ref"]) == ("seg", archive["seg_les"])
    assert (row["organ_mask_source"], row["organ_mask_ref"]) == ("seg", archive["seg_org"])
    assert archive["seg_ghost"] in row["notes"] and "skipped" in row["notes"]
    assert "non-attenuation-corrected" in row["notes"]
    rt_first = build_study_sheet(index, mask_source_priority=("rtstruct", "seg", "labelmap"))
    r2 = rt_first[rt_first["study_uid"] == archive["study"]].iloc[0]
    assert (r2["lesion_mask_source"], r2["lesion_mask_ref"]) == ("rtstruct", archive["rt"])
    lm_first = build_study_sheet(index, mask_source_priority=("labelmap",))
    r3 = lm_first[lm_first["study_uid"] == archive["study"]].iloc[0]
    assert (r3["lesion_mask_source"], r3["lesion_mask_ref"]) == ("labelmap", "p1/lm/les.nii.gz")
    validate_study_sheet(sheet, SCHEMA, index=index)


def test_study_sheet_validation_errors(index, archive, tmp_path):
    sheet = build_study_sheet(index)
    i = int(np.flatnonzero(sheet["study_uid"] == archive["study"])[0])
    path = tmp_path / "studies.csv"
    sheet.to_csv(path, index=False)
    back = read_study_sheet(path)
    validate_study_sheet(back, SCHEMA, index=index)

    def bad(col, value, match):
        s = back.copy()
        s.loc[i, col] = value
        with pytest.raises(ConfigError, match=match) as ei:
            validate_study_sheet(s, SCHEMA, index=index)
        assert f"row {i + 1}" in ei.value.message
        return ei.value

    e = bad("pet_series_uid", "1.2.3.999", "not in the archive index")
    assert e.tag == "pet_series_uid"
    e = bad("ct_series_uid", archive["pet"].series_uid, "modality PT, expected CT")
    assert e.tag == "ct_series_uid"
    e = bad("lesion_mask_source", "nrrd", "lesion_mask_source")
    assert e.tag == "lesion_mask_source"
    e = bad("ce_ct_series_uid", "not-a-uid", "ce_ct_series_uid")
    assert e.tag == "ce_ct_series_uid"
    bad("lesion_mask_ref", "", "must be filled exactly when")
    s = back.copy()
    s["extra_column"] = "x"
    with pytest.raises(ConfigError, match="unknown column"):
        validate_study_sheet(s, SCHEMA)
    with pytest.raises(ConfigError, match="lacks column"):
        validate_study_sheet(back.drop(columns=["pet_series_uid"]), SCHEMA)


def test_truncation_check_directly(tmp_path):
    s = make_series(tmp_path / "ct", n=1, rows=64, cols=64, order="sorted")
    data = s.paths[0].read_bytes()
    for cut, expect in [(len(data), None), (len(data) - 1, "remain"), (len(data) - 4000, "remain")]:
        p = tmp_path / f"cut{cut}.dcm"
        p.write_bytes(data[:cut])
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        reason = check_complete(p, ds)
        assert (reason is None) if expect is None else (expect in reason)
    # encapsulated (RLE) pixel data cut inside a fragment
    ds = pydicom.dcmread(s.paths[0])
    ds.compress(pydicom.uid.RLELossless)
    p = tmp_path / "rle.dcm"
    ds.save_as(p, enforce_file_format=True)
    assert check_complete(p, pydicom.dcmread(p, stop_before_pixels=True)) is None
    rle = p.read_bytes()
    p.write_bytes(rle[:-10])
    assert "item at byte" in check_complete(p, pydicom.dcmread(p, stop_before_pixels=True))
    # PixelData length consistent with the file but shorter than Rows x Columns x 2
    ds = pydicom.dcmread(s.paths[0])
    ds.PixelData = ds.PixelData[:100]
    p = tmp_path / "short.dcm"
    ds.save_as(p, enforce_file_format=True)
    assert "PixelData holds 100 bytes" in check_complete(
        p, pydicom.dcmread(p, stop_before_pixels=True))


def test_truncated_sequence_file(tmp_path, archive):
    """An RTSTRUCT (undefined-length sequences) cut in the middle is caught too."""
    data = (archive["root"] / "p1" / "rt").read_bytes()
    p = tmp_path / "rt_cut"
    p.write_bytes(data[: len(data) // 2])
    ix = scan_archive(tmp_path)
    assert list(ix.problems["path"]) == ["rt_cut"]
    assert ix.files.empty


def test_empty_archive(tmp_path):
    ix = scan_archive(tmp_path)
    assert ix.files.empty and ix.series.empty and ix.problems.empty
    assert build_study_sheet(ix).empty


def test_missing_root_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        scan_archive(tmp_path / "nope")


def test_index_carries_no_patient_names(index):
    assert "PatientName" not in index.files.columns
    assert not any("Test^Patient" in str(v) for v in index.series.to_numpy().ravel())


def test_truncated_file_reported_with_its_study(index, archive):
    pr = index.problems.set_index("path")
    nc = archive["nc"]
    row = pr.loc["cut_in_pixels.dcm"]
    assert (row["study_uid"], row["series_uid"]) == (archive["study"], nc.series_uid)
    sheet = build_study_sheet(index)
    notes = sheet[sheet["study_uid"] == archive["study"]].iloc[0]["notes"]
    assert "cut_in_pixels.dcm" in notes and "truncated" in notes


def test_edited_results_sheet_with_output_folders_validates(index):
    sheet = build_study_sheet(index)
    sheet["patient_dir"] = sheet["patient_id"]
    sheet["study_dir"] = sheet["study_uid"]
    validate_study_sheet(sheet, SCHEMA, index=index)


def test_labelmap_sidecar_without_ids_inherits_from_series(tmp_path):
    import json

    import nibabel as nib

    s = make_series(tmp_path / "ct", n=3, patient_id="PX")
    grid = Grid((3, 8, 10), (0.7, 0.8, 2.5), tuple(s.positions[0]))
    lab = np.zeros((10, 8, 3), np.uint8)
    lab[1:3, 1:3, 1] = 1
    nib.save(nib.Nifti1Image(lab, grid.nifti_affine_ras()), tmp_path / "m.nii.gz")
    (tmp_path / "m.json").write_text(json.dumps({"referenced_series_uid": s.series_uid,
                                                 "names": {"1": "tumour"}}))
    ix = scan_archive(tmp_path)
    lm = ix.series[ix.series["modality"] == "LABELMAP"].iloc[0]
    assert (lm["patient_id"], lm["study_uid"]) == ("PX", s.study_uid)
    assert lm["segment_kind"] == "lesion"  # "tumour" matches the default lesion patterns
    sheet = build_study_sheet(ix)
    assert len(sheet) == 1 and sheet.iloc[0]["lesion_mask_ref"] == "m.nii.gz"


def test_symlinked_folders_followed_once(tmp_path):
    s = make_series(tmp_path / "real" / "ct", n=3)
    arch = tmp_path / "arch"
    arch.mkdir()
    (arch / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (arch / "link2").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "loop").symlink_to(arch, target_is_directory=True)
    ix = scan_archive(arch)
    assert len(ix.files) == 3 and ix.series.iloc[0]["series_uid"] == s.series_uid
    assert ix.series_paths(s.series_uid)[0].exists()


def test_series_refs_records(index, archive):
    from pipeline.records import CTPhase, Modality, SegmentKind

    refs = {r.series_uid: r for r in index.series_refs()}
    assert refs[archive["ce"].series_uid].ct_phase is CTPhase.CONTRAST
    assert refs[archive["seg_les"]].modality is Modality.SEG
    assert refs[archive["seg_les"]].segment_kind is SegmentKind.LESION
    assert refs[archive["seg_les"]].referenced_series_uids == (archive["nc"].series_uid,)


# ------------------------------------------------------------------ classification completeness
def _sc_and_sr(root: Path, study: str, pid: str = "P001") -> None:
    """A secondary capture (dose screen) and a radiation dose SR, as scanners write them."""
    from io_synth import base_dataset

    sc = base_dataset("OT", "1.2.840.10008.5.1.4.1.1.7", study_uid=study,
                      series_uid=generate_uid(), patient_id=pid, for_uid=generate_uid())
    sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.BitsAllocated = 4, 4, 1, 8
    sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 7, 0
    sc.PhotometricInterpretation = "MONOCHROME2"
    sc.PixelData = bytes(16)
    sc.save_as(root / "sc.dcm", enforce_file_format=True)
    sr = base_dataset("SR", "1.2.840.10008.5.1.4.1.1.88.67", study_uid=study,
                      series_uid=generate_uid(), patient_id=pid, for_uid=generate_uid())
    sr.SeriesDescription = "Radiation Dose Information"
    sr.save_as(root / "dose_sr.dcm", enforce_file_format=True)


def test_exclusions_multiframe_nrrd_and_reformats(tmp_path):
    import json

    import SimpleITK as sitk

    from pipeline.testing.corpus import to_enhanced_ct

    study = generate_uid()
    root = tmp_path
    small = make_series(root / "ct_small", study_uid=study, description="CT native", n=3)
    big = make_series(tmp_path / "src", study_uid=study, description="CT native thin", n=7,
                      order="sorted")
    to_enhanced_ct(big.paths, root / "enhanced.dcm")
    shutil.rmtree(tmp_path / "src")
    cor = make_series(root / "cor", study_uid=study, description="CT COR MPR", n=9,
                      iop=(1, 0, 0, 0, 0, -1))
    dose_ct = make_series(root / "dose", study_uid=study, description="Dose Report", n=1)
    _sc_and_sr(root, study)
    # NRRD label map with sidecar; a Slicer .seg.nrrd whose names are in its header
    lab = np.zeros((3, 8, 10), np.int16)
    lab[1, 2:4, 2:5] = 1
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin(tuple(small.positions[0]))
    sitk.WriteImage(img, str(root / "lm.nrrd"))
    (root / "lm.json").write_text(json.dumps({"referenced_series_uid": small.series_uid,
                                              "names": {"1": "lesion_a"}}))
    img.SetMetaData("Segment0_ID", "Segment_1")
    img.SetMetaData("Segment0_Name", "tumor one")
    img.SetMetaData("Segment0_LabelValue", "1")
    img.SetMetaData("Segment0_Layer", "0")
    sitk.WriteImage(img, str(root / "slicer.seg.nrrd"))
    (root / "slicer.json").write_text(json.dumps({"referenced_series_uid": small.series_uid}))
    ix = scan_archive(root)
    ser = ix.series.set_index("series_uid")
    assert ser.loc[cor.series_uid, "excluded_reason"].startswith("coronal reformat")
    assert "dose report" in ser.loc[dose_ct.series_uid, "excluded_reason"]
    reasons = set(ser["excluded_reason"])
    assert "secondary capture" in reasons
    assert "structured report (dose report or summary)" in reasons
    enh = ix.series[ix.series["n_files"] == 1].set_index("series_uid").loc[big.series_uid]
    assert (enh["n_slices"], enh["orientation"]) == (7, "axial")
    lms = ix.series[ix.series["modality"] == "LABELMAP"].set_index("first_path")
    assert lms.loc["lm.nrrd", "segment_kind"] == "lesion"
    assert json.loads(lms.loc["slicer.seg.nrrd", "segment_names"]) == ["tumor one"]
    assert ix.problems.empty, ix.problems
    row = build_study_sheet(ix).iloc[0]
    assert row["ct_series_uid"] == big.series_uid  # 7 frames in one file beat 3 files
    assert "4 series excluded" in row["notes"]
    # the NRRD label maps load with their names
    from pipeline.io.labelmap import read_labelmap, read_sidecar

    vol_grid = Grid((3, 8, 10), (0.7, 0.8, 2.5), tuple(small.positions[0]))
    m = read_labelmap(root / "slicer.seg.nrrd", grid=vol_grid,
                      names=read_sidecar(root / "slicer.seg.nrrd")["names"], kind="lesion")
    assert [x.name for x in m] == ["tumor one"] and np.array_equal(m[0].full(), lab == 1)


def test_pet_only_and_ct_only_studies_get_rows(tmp_path):
    pet_study, ct_study = generate_uid(), generate_uid()
    pet = make_series(tmp_path / "a" / "pet", modality="PT", study_uid=pet_study, n=4,
                      patient_id="PETONLY")
    nac = make_series(tmp_path / "a" / "nac", modality="PT", study_uid=pet_study, n=9,
                      patient_id="PETONLY", description="PET NAC",
                      extra=lambda ds, k: setattr(ds, "CorrectedImage", ["DECY"]))
    mask = np.zeros((4, 8, 10), bool)
    mask[1:3, 2:5, 2:6] = True
    seg_uid = write_seg(tmp_path / "a" / "seg.dcm", ref=pet, masks={1: mask},
                        labels={1: "lesion"})
    ct = make_series(tmp_path / "b" / "ct", study_uid=ct_study, n=5)  # patient P001
    rt = write_rtstruct(tmp_path / "b" / "rt.dcm", ref=ct, rois=[(1, "GTV", [
        np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0]], float) + ct.positions[2]])])
    sheet = build_study_sheet(scan_archive(tmp_path)).set_index("patient_id")
    p = sheet.loc["PETONLY"]
    assert p["pet_series_uid"] == pet.series_uid  # AC preferred over a bigger NAC series
    assert p["ct_series_uid"] == "" and (p["lesion_mask_source"], p["lesion_mask_ref"]) == (
        "seg", seg_uid)
    assert "PET-only study" in p["notes"] and "drawn on pet" in p["notes"]
    assert nac.series_uid not in p.values
    c = sheet.loc["P001"]
    assert c["pet_series_uid"] == "" and c["lesion_mask_ref"] == rt
    assert "CT-only study" in c["notes"]


def test_refine_ct_phase_from_aortic_hu(tmp_path):
    from pipeline.io.dicom import load_ct
    from pipeline.io.index import refine_ct_phase
    from pipeline.records import CTPhase

    aorta = np.zeros((6, 8, 10), bool)
    aorta[1:5, 2:6, 3:7] = True

    def ct_with_aorta(name, hu):
        s = make_series(tmp_path / name, n=6, extra=None)
        vol = load_ct(s.paths, series_uid=s.series_uid)
        arr = vol.array.copy()
        arr[aorta] = hu + np.linspace(-5, 5, aorta.sum())
        from dataclasses import replace
        return replace(vol, array=arr)

    phase, why = refine_ct_phase(ct_with_aorta("ce", 220.0), aorta)
    assert phase is CTPhase.CONTRAST and "median aortic HU 220" in why
    phase, why = refine_ct_phase(ct_with_aorta("nc", 45.0), aorta, header_phase="contrast")
    assert phase is CTPhase.NONCONTRAST and "contradicts" in why
    phase, why = refine_ct_phase(ct_with_aorta("mid", 90.0), aorta, header_phase="noncontrast")
    assert phase is CTPhase.NONCONTRAST and "inconclusive" in why
    phase, why = refine_ct_phase(ct_with_aorta("tiny", 220.0), np.zeros((6, 8, 10), bool))
    assert phase is CTPhase.UNKNOWN and "0 voxels" in why


def test_index_reads_no_pixel_data(tmp_path, monkeypatch):
    """Indexing never decodes pixels: pixel access is patched to fail, and the bytes read from
    the image files stay a small fraction of their size (pixel data is skipped by seeking)."""
    import builtins

    from pydicom.dataset import Dataset as PydDataset

    s = make_series(tmp_path / "ct", n=4, rows=128, cols=128)
    write_seg(tmp_path / "seg.dcm", ref=s, masks={1: np.ones((4, 128, 128), bool)},
              labels={1: "lesion"})

    def boom(self, *a, **k):  # pragma: no cover - must not be called
        raise AssertionError("pixel data decoded during indexing")

    monkeypatch.setattr(PydDataset, "pixel_array", property(boom))
    monkeypatch.setattr(PydDataset, "convert_pixel_data", boom)
    read = {"bytes": 0}
    real_open = builtins.open

    class Counting:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            data = self._f.read(n)
            read["bytes"] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

    def counting_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Counting(f) if "b" in mode and str(file).startswith(str(tmp_path)) else f

    monkeypatch.setattr(builtins, "open", counting_open)
    ix = scan_archive(tmp_path)
    monkeypatch.setattr(builtins, "open", real_open)
    total = sum((tmp_path / p).stat().st_size for p in ix.files["path"])
    assert len(ix.files) == 5
    assert read["bytes"] < 0.25 * total, (read["bytes"], total)


def test_results_sheet_with_study_date_validates(index):
    sheet = build_study_sheet(index)
    sheet["study_date"] = "20240115"
    validate_study_sheet(sheet, SCHEMA, index=index)
    sheet.loc[0, "study_date"] = "15.01.2024"
    with pytest.raises(ConfigError, match="study_date"):
        validate_study_sheet(sheet, SCHEMA)
