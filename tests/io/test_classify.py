"""Series classification from headers, and the pixel-based CT phase check (pipeline.io.classify)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from index_archive import build_messy_archive
from io_synth import make_series
from pydicom.uid import generate_uid

from pipeline.geometry import Grid
from pipeline.io.classify import (
    ct_phase_from_headers,
    excluded_reason,
    orientation_label,
    refine_ct_phase,
    series_segment_kind,
)
from pipeline.io.index import scan_archive
from pipeline.records import CTPhase
from pipeline.sheet import build_study_sheet


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """See :func:`index_archive.build_messy_archive`."""
    return build_messy_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def index(archive):
    return scan_archive(archive["root"])


def _row(ix, uid):
    return ix.series_row(uid)


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


def test_refine_ct_phase_from_aortic_hu(tmp_path):
    from pipeline.io.dicom import load_ct

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


@pytest.mark.parametrize("agents, desc, phase", [
    (["Iohexol"], "CT ABDOMEN", "contrast"),
    (["none"], "CT ABD NON-CONTRAST", "noncontrast"),  # "none" is no agent
    ([], "Thorax nativ", "unknown"),  # German spelling: no keyword
    ([], "CT native", "noncontrast"),
    ([], "ABD W/O", "noncontrast"),
    ([], "ABD W/ CONTRAST", "contrast"),
    ([], "Portal venous 5mm", "contrast"),
    ([], "Abdomen 5mm", "unknown"),
])
def test_ct_phase_from_headers(agents, desc, phase):
    got, why = ct_phase_from_headers(agents, desc)
    assert got == phase, why
    assert why


def test_small_classifiers():
    assert orientation_label("1\\0\\0\\0\\1\\0") == "axial"
    assert orientation_label("1\\0\\0\\0\\0\\-1") == "coronal"
    assert orientation_label("0\\1\\0\\0\\0\\-1") == "sagittal"
    assert orientation_label("1\\0\\0\\0\\0.7071\\0.7071") == "oblique"
    assert orientation_label("") == ""
    assert excluded_reason("CT", {"1.2.840.10008.5.1.4.1.1.2"}, ["ORIGINAL\\PRIMARY\\AXIAL"],
                           "CT ABD") == ("", False)
    assert excluded_reason("CT", set(), ["ORIGINAL\\PRIMARY\\LOCALIZER"], "Topogram")[1]
    assert series_segment_kind(["lesion", "organ"]) == "mixed"
    assert series_segment_kind(["unknown"]) == "unknown"
    assert series_segment_kind([]) == ""
