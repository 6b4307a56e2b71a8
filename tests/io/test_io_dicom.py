"""Volume assembly of synthetic and real CT/PET series (pipeline.io.dicom)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_synth import DATA, make_series, rot_x, rot_z

from pipeline.errors import DicomReadError, GeometryError, MissingTagError
from pipeline.io.dicom import load_ct, load_pet_activity, load_series_headers, tag_label

# Positions are written with 6 decimals: geometry checks use 1e-4 mm.
POS_TOL = 1e-4


def _check_geometry(vol, s):
    """Every slice's first voxel maps to its ImagePositionPatient; values in slice order."""
    k = np.arange(vol.grid.shape_zyx[0])
    lps = vol.grid.zyx_to_lps(np.stack([k, 0 * k, 0 * k], axis=1))
    np.testing.assert_allclose(lps, s.positions, atol=POS_TOL)
    np.testing.assert_allclose(vol.array, s.values.astype(np.float32), atol=1e-3)


def test_shuffled_files_sorted_by_position(tmp_path):
    s = make_series(tmp_path / "ct", order="shuffled", names="bare")
    vol = load_ct(s.paths, series_uid=s.series_uid)
    assert vol.units == "HU" and vol.array.dtype == np.float32
    assert vol.grid.shape_zyx == (6, 8, 10)
    assert vol.grid.spacing_xyz_mm == pytest.approx((0.7, 0.8, 2.5))
    _check_geometry(vol, s)
    assert any("sorted" in n for n in vol.notes)


def test_reversed_instance_numbers_and_file_names(tmp_path):
    s = make_series(tmp_path / "ct", order="reversed")
    vol = load_ct(sorted(s.paths), series_uid=s.series_uid)
    _check_geometry(vol, s)


def test_oblique_orientation(tmp_path):
    r = rot_z(20) @ rot_x(30)
    iop = tuple(np.concatenate([r[:, 0], r[:, 1]]))
    s = make_series(tmp_path / "ct", iop=iop, origin=(5.0, -3.0, 12.0), step=3.0)
    vol = load_ct(s.paths, series_uid=s.series_uid)
    _check_geometry(vol, s)
    d = vol.grid.direction_matrix
    np.testing.assert_allclose(d[:, 0], r[:, 0], atol=1e-6)
    np.testing.assert_allclose(d[:, 1], r[:, 1], atol=1e-6)
    # voxel (k, j, i) = origin + k*step*n + j*row_spacing*col_cos + i*col_spacing*row_cos
    p = vol.grid.zyx_to_lps(np.array([[2, 3, 4]]))[0]
    expect = s.positions[2] + 3 * 0.8 * r[:, 1] + 4 * 0.7 * r[:, 0]
    np.testing.assert_allclose(p, expect, atol=POS_TOL)


def test_normal_pointing_inferior(tmp_path):
    """Column cosine (0,-1,0): the normal is -z, so ascending along it is descending z."""
    s = make_series(tmp_path / "ct", iop=(1, 0, 0, 0, -1, 0), order="sorted")
    vol = load_ct(s.paths, series_uid=s.series_uid)
    assert s.positions[1][2] < s.positions[0][2]
    _check_geometry(vol, s)


def test_identical_duplicate_dropped(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted")
    dup = tmp_path / "ct" / "copy_of_2.dcm"
    shutil.copy(s.paths[2], dup)
    vol = load_ct(s.paths + [dup], series_uid=s.series_uid)
    _check_geometry(vol, s)
    assert any("identical SOPInstanceUID" in n for n in vol.notes)


def test_different_duplicate_keeps_higher_instance_number(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted")
    ds = pydicom.dcmread(s.paths[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 99
    px = ds.pixel_array.copy()
    px[:] = 7
    ds.PixelData = px.tobytes()
    newer = tmp_path / "ct" / "rescan.dcm"
    ds.save_as(newer, enforce_file_format=True)
    vol = load_ct(s.paths + [newer], series_uid=s.series_uid)
    assert vol.grid.shape_zyx[0] == 6
    assert np.all(vol.array[3] == 7 - 1024)
    assert any("InstanceNumber 99" in n for n in vol.notes)


def test_missing_slice_names_series_and_positions(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted", origin=(0.0, 0.0, 0.0), step=2.5)
    with pytest.raises(GeometryError) as ei:
        load_ct(s.paths[:2] + s.paths[3:], series_uid=s.series_uid)
    e = ei.value
    assert e.series_uid == s.series_uid
    assert "missing slices" in e.message and "2.50 and 7.50 mm" in e.message
    assert e.tag == "ImagePositionPatient (0020,0032)"


def test_mixed_orientation_names_tag(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted")
    ds = pydicom.dcmread(s.paths[4])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(s.paths[4], enforce_file_format=True)
    with pytest.raises(GeometryError) as ei:
        load_ct(s.paths, series_uid=s.series_uid)
    assert ei.value.tag == "ImageOrientationPatient (0020,0037)"
    assert "mixed slice orientations" in ei.value.message


def test_gantry_tilt_refused_with_degrees(tmp_path):
    s = make_series(tmp_path / "ct", shear_deg=12.0, extra=lambda ds, k: setattr(
        ds, "GantryDetectorTilt", "12"))
    with pytest.raises(GeometryError) as ei:
        load_ct(s.paths, series_uid=s.series_uid)
    assert "12.00 degrees" in ei.value.message
    assert ei.value.tag == "GantryDetectorTilt (0018,1120)"


def test_tiny_shear_accepted(tmp_path):
    s = make_series(tmp_path / "ct", shear_deg=0.2)
    vol = load_ct(s.paths, series_uid=s.series_uid)
    assert vol.grid.shape_zyx[0] == 6


def test_irregular_spacing_refused(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted", origin=(0.0, 0.0, 0.0))
    ds = pydicom.dcmread(s.paths[3])
    ds.ImagePositionPatient = [0, 0, 3 * 2.5 + 0.9]  # 0.9 mm off a 2.5 mm grid (36 %)
    ds.save_as(s.paths[3], enforce_file_format=True)
    with pytest.raises(GeometryError, match="irregular slice spacing"):
        load_ct(s.paths, series_uid=s.series_uid)


@pytest.mark.parametrize("keyword", ["PixelSpacing", "ImagePositionPatient", "RescaleIntercept"])
def test_missing_required_tag(tmp_path, keyword):
    s = make_series(tmp_path / "ct", order="sorted")
    ds = pydicom.dcmread(s.paths[1])
    delattr(ds, keyword)
    ds.save_as(s.paths[1], enforce_file_format=True)
    with pytest.raises(MissingTagError) as ei:
        load_ct(s.paths, series_uid=s.series_uid)
    assert ei.value.tag == tag_label(keyword)
    assert "(0028," in ei.value.tag or "(0020," in ei.value.tag
    assert ei.value.file == str(s.paths[1])


def test_wrong_series_file_rejected(tmp_path):
    a = make_series(tmp_path / "a", order="sorted")
    b = make_series(tmp_path / "b", order="sorted")
    with pytest.raises(DicomReadError) as ei:
        load_ct(a.paths + b.paths[:1], series_uid=a.series_uid)
    assert ei.value.tag == "SeriesInstanceUID (0020,000E)"


def test_pet_per_slice_slope_and_units(tmp_path):
    s = make_series(tmp_path / "pt", modality="PT", n=5)
    vol, headers = load_pet_activity(s.paths, series_uid=s.series_uid)
    assert vol.units == "BQML"
    _check_geometry(vol, s)
    assert [h.SOPInstanceUID for h in headers] == s.sop_uids
    assert all("PixelData" not in h for h in headers)
    assert any("per-slice RescaleSlope" in n for n in vol.notes)


def test_pet_without_units(tmp_path):
    s = make_series(tmp_path / "pt", modality="PT", n=3,
                    extra=lambda ds, k: delattr(ds, "Units"))
    with pytest.raises(MissingTagError) as ei:
        load_pet_activity(s.paths, series_uid=s.series_uid)
    assert ei.value.tag == "Units (0054,1001)"


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_slices_decode(tmp_path, syntax):
    # 64 x 64: the JPEG 2000 encoder needs more pixels than its default resolution levels
    s = make_series(tmp_path / "ct", order="sorted", rows=64, cols=64, n=3)
    uid = getattr(pydicom.uid, syntax)
    ds = pydicom.dcmread(s.paths[2])
    try:
        ds.compress(uid)
    except Exception as exc:  # encoder plugin not installed
        pytest.skip(f"cannot encode {syntax}: {exc}")
    ds.save_as(s.paths[2], enforce_file_format=True)
    vol = load_ct(s.paths, series_uid=s.series_uid)
    _check_geometry(vol, s)


def test_headers_only(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted", n=3)
    hs = load_series_headers(s.paths)
    assert [h.SOPInstanceUID for h in hs] == s.sop_uids
    assert all("PixelData" not in h for h in hs)


# ------------------------------------------------------------------ real files
def test_real_ct_gap_detected():
    """pydicom's CT2 has a 202.5 mm jump between its first and second slice."""
    paths = sorted((DATA / "pydicom_ct2" / "CT2").iterdir())
    uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    with pytest.raises(GeometryError) as ei:
        load_ct(paths, series_uid=uid)
    assert "-99.48 and 103.02 mm" in ei.value.message
    vol = load_ct(paths[1:], series_uid=uid)
    assert vol.grid.shape_zyx == (3, 16, 16)
    assert vol.grid.spacing_xyz_mm[2] == pytest.approx(1.25, abs=1e-4)


def test_real_oblique_anisotropic_ct():
    """rt-utils oriented_data: oblique, PixelSpacing 3.5 (rows) / 2.5 (columns) mm."""
    paths = sorted((DATA / "rt_utils" / "oriented_data").glob("*.dcm"))
    hs = load_series_headers(paths)
    vol = load_ct(paths, series_uid=hs[0].SeriesInstanceUID)
    assert vol.grid.shape_zyx == (3, 50, 100)
    assert vol.grid.spacing_xyz_mm[:2] == pytest.approx((2.5, 3.5))
    for k, h in enumerate(sorted(hs, key=lambda h: float(h.ImagePositionPatient[2]))):
        p = vol.grid.zyx_to_lps(np.array([[k, 0, 0]]))[0]
        np.testing.assert_allclose(p, [float(v) for v in h.ImagePositionPatient], atol=1e-3)


GE_TILT = Path("/work/shared/reference_data/awkward_ct/ge_gantry_tilt_variable_spacing")


@pytest.mark.skipif(not GE_TILT.is_dir(), reason="shared reference data (GE tilted CT) not present")
def test_real_ge_gantry_tilt_refused_naming_tilt():
    """28 GE head slices, gantry tilt 18.5 degrees and variable spacing: refused, tilt named."""
    paths = sorted(GE_TILT.glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    with pytest.raises(GeometryError) as ei:
        load_ct(paths, series_uid=uid)
    m = re.search(r"sheared by ([0-9.]+) degrees", ei.value.message)
    assert m and float(m.group(1)) == pytest.approx(18.5, abs=0.1)
    assert ei.value.tag == "GantryDetectorTilt (0018,1120)"
