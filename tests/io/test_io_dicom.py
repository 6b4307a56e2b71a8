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
from pipeline.geometry import grid_from_slices
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
        load_ct(s.paths, series_uid=s.series_uid, on_irregular="refuse")
    assert "12.00 degrees" in ei.value.message
    assert ei.value.tag == "GantryDetectorTilt (0018,1120)"


def test_tiny_shear_accepted(tmp_path):
    """0.2 degrees over 6 x 2.5 mm: the last slice drifts 0.04 mm (< 0.1 pixel): not resampled."""
    s = make_series(tmp_path / "ct", shear_deg=0.2)
    vol = load_ct(s.paths, series_uid=s.series_uid)
    assert vol.grid.shape_zyx[0] == 6
    assert not any("RESAMPLED" in n for n in vol.notes)


def test_irregular_spacing_refused(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted", origin=(0.0, 0.0, 0.0))
    ds = pydicom.dcmread(s.paths[3])
    ds.ImagePositionPatient = [0, 0, 3 * 2.5 + 0.9]  # 0.9 mm off a 2.5 mm grid (36 %)
    ds.save_as(s.paths[3], enforce_file_format=True)
    with pytest.raises(GeometryError, match="irregular slice spacing"):
        load_ct(s.paths, series_uid=s.series_uid, on_irregular="refuse")


# ------------------------------------------------------------------ irregular stacks: analytic truth
#: Smooth analytic HU field (LPS mm): amplitude A, wave numbers a (x), b (y), c (z) in rad/mm.
A, KA, KB, KC = 300.0, 2 * np.pi / 60.0, 2 * np.pi / 50.0, 2 * np.pi / 80.0


def _field(p):
    p = np.asarray(p, float)
    return A * np.sin(KA * p[:, 0]) * np.cos(KB * p[:, 1]) + 0.5 * A * np.sin(KC * p[:, 2])


def _interp_bound(cs, rs, step):
    """Largest error of bilinear-in-plane + linear-along-normal interpolation of ``_field``.

    For linear interpolation over an interval h the error is <= h^2/8 max|f''|; second
    derivatives of the field along any unit direction are <= A (KA + KB)^2 + A/2 KC^2. In-plane
    and along-normal errors add; stored values are rounded to 1 HU (0.5).
    """
    f2 = A * (KA + KB) ** 2 + 0.5 * A * KC ** 2
    return (cs ** 2 + rs ** 2 + step ** 2) / 8.0 * f2 + 0.5 + 1e-3


def _tilted_positions(n, step_z, tilt_deg, origin=(-40.0, -45.0, -20.0)):
    """Gantry tilt about x: column cosine (0, cos, -sin), positions moving along z (the table)."""
    t = np.radians(tilt_deg)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))
    pos = np.array(origin)[None, :] + np.outer(np.asarray(step_z, float), [0.0, 0.0, 1.0])
    return iop, pos


def _interior(vol, positions, iop, ps, rows, cols, margin=1.0):
    """Target voxels whose projections on both bracketing planes are >= margin px inside."""
    g = vol.grid
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in g.shape_zyx], indexing="ij")
    idx = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
    p = g.zyx_to_lps(idx)
    iop = np.asarray(iop, float).reshape(2, 3)
    nrm = np.cross(iop[0], iop[1])
    proj = positions @ nrm
    t = p @ nrm
    k0 = np.clip(np.searchsorted(proj, t, side="right") - 1, 0, len(proj) - 2)
    ok = (t >= proj[0] - 1e-6) & (t <= proj[-1] + 1e-6)
    for k in (k0, k0 + 1):
        rel = p - positions[k]
        i = rel @ iop[0] / ps[1]
        j = rel @ iop[1] / ps[0]
        ok &= (i >= margin) & (i <= cols - 1 - margin) & (j >= margin) & (j <= rows - 1 - margin)
    return idx[ok], p[ok], k0[ok], t[ok], proj


def test_synthetic_tilted_series_resampled_to_analytic_truth(tmp_path):
    """15 degrees gantry tilt, regular 3 mm table steps: de-sheared, values equal the field."""
    iop, pos = _tilted_positions(9, np.arange(9) * 3.0, 15.0)
    ps, rows, cols = (1.5, 1.25), 40, 48
    s = make_series(tmp_path / "ct", iop=iop, positions=pos, rows=rows, cols=cols,
                    pixel_spacing=ps, value_fn=_field,
                    extra=lambda ds, k: setattr(ds, "GantryDetectorTilt", "15"))
    vol = load_ct(s.paths, series_uid=s.series_uid)
    note = next(n for n in vol.notes if n.startswith("RESAMPLED"))
    assert "gantry tilt" in note and "15.00 degrees" in note
    g = vol.grid
    # planes kept, stack made orthogonal: k axis = slice normal, step = 3 mm x cos(15)
    np.testing.assert_allclose(g.direction_matrix[:, 2], np.cross(s.iop[:3], s.iop[3:]),
                               atol=1e-6)
    assert g.spacing_xyz_mm[2] == pytest.approx(3.0 * np.cos(np.radians(15.0)), abs=1e-4)
    assert g.shape_zyx[0] == 9 and g.shape_zyx[1] > rows  # grown to keep the drifting slices
    idx, p, _, _, _ = _interior(vol, s.positions, iop, ps, rows, cols)
    assert len(idx) > 0.5 * rows * cols * 9
    err = np.abs(vol.array[tuple(idx.T)] - _field(p))
    bound = _interp_bound(ps[1], ps[0], 0.0)  # target planes are the acquired planes
    assert err.max() <= bound, (err.max(), bound)
    # an acquired pixel centre lies on target plane k (planes kept) at its true LPS position
    k = 8
    p_true = s.positions[k] + 5 * ps[1] * s.iop[:3] + 7 * ps[0] * s.iop[3:]
    zyx = g.lps_to_zyx(p_true[None])[0]
    assert zyx[0] == pytest.approx(k, abs=1e-6) and zyx[2] == pytest.approx(5, abs=1e-6)
    # an untilted reading would put that pixel 3 x 8 x tan(15 deg) = 6.4 mm away
    naive = grid_from_slices(s.positions[0], s.iop, ps, rows, cols, s.positions)
    p_naive = naive.zyx_to_lps(np.array([[k, 7, 5]]))[0]
    assert np.linalg.norm(p_naive - p_true) == pytest.approx(24 * np.sin(np.radians(15)), rel=1e-3)


def test_synthetic_variable_spacing_resampled_to_analytic_truth(tmp_path):
    """Axial stack with steps 2, 2, 2, 2, 5, 5, 5 mm (consecutive InstanceNumbers)."""
    z = np.cumsum([0, 2, 2, 2, 2, 5, 5, 5]).astype(float)
    pos = np.array([[-30.0, -25.0, -10.0 + v] for v in z])
    ps = (1.0, 1.0)
    s = make_series(tmp_path / "ct", positions=pos, rows=30, cols=32, pixel_spacing=ps,
                    value_fn=_field, order="sorted")
    with pytest.raises(GeometryError, match="variable slice spacing"):
        load_ct(s.paths, series_uid=s.series_uid, on_irregular="refuse")
    vol = load_ct(s.paths, series_uid=s.series_uid)
    assert any(n.startswith("RESAMPLED: variable slice spacing") for n in vol.notes)
    g = vol.grid
    assert g.is_axis_aligned() and g.spacing_xyz_mm[2] == pytest.approx(2.0)
    assert g.shape_zyx == (12, 30, 32)  # 0 .. 22 mm at 2 mm
    idx, p, _, _, _ = _interior(vol, s.positions, s.iop, ps, 30, 32, margin=0.0)
    err = np.abs(vol.array[tuple(idx.T)] - _field(p))
    assert err.max() <= _interp_bound(1.0, 1.0, 5.0)
    # planes that coincide with acquired slices are copied exactly
    np.testing.assert_array_equal(vol.array[:5], s.values[:5].astype(np.float32))


def _scipy_reference(stack, positions, iop, ps, idx, p, k0, t, proj):
    """Independent computation: for each target voxel, the orthogonal projections onto the two
    bracketing planes, sampled bilinearly with scipy.ndimage.map_coordinates, blended by the
    distances along the normal."""
    from scipy.ndimage import map_coordinates

    iop = np.asarray(iop, float).reshape(2, 3)
    w = (t - proj[k0]) / (proj[k0 + 1] - proj[k0])
    vals = []
    for k in (k0, k0 + 1):
        rel = p - positions[k]
        i = rel @ iop[0] / ps[1]
        j = rel @ iop[1] / ps[0]
        vals.append(map_coordinates(stack, np.stack([k.astype(float), j, i]), order=1,
                                    mode="nearest"))
    return (1 - w) * vals[0] + w * vals[1]


def test_synthetic_tilt_and_variable_spacing_match_scipy(tmp_path):
    iop, pos = _tilted_positions(8, [0, 2, 4, 6, 8, 13, 18, 23], 20.0)
    ps = (1.2, 1.0)
    s = make_series(tmp_path / "ct", iop=iop, positions=pos, rows=24, cols=20, pixel_spacing=ps,
                    value_fn=_field, order="shuffled")
    vol = load_ct(s.paths, series_uid=s.series_uid)
    idx, p, k0, t, proj = _interior(vol, s.positions, iop, ps, 24, 20, margin=0.0)
    ref = _scipy_reference(s.values, s.positions, iop, ps, idx, p, k0, t, proj)
    np.testing.assert_allclose(vol.array[tuple(idx.T)], ref, atol=1e-3)
    err = np.abs(vol.array[tuple(idx.T)] - _field(p))
    assert err.max() <= _interp_bound(1.0, 1.2, 5.0 * np.cos(np.radians(20)))


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


#: (syntax, largest HU error): lossless syntaxes must be exact; JPEG baseline is 8-bit and lossy.
SYNTAXES = [("rle", 0.0), ("jpeg_ls", 0.0), ("jpeg2000", 0.0), ("jpeg_lossless", 0.0),
            ("deflate", 0.0), ("jpeg_baseline", None)]


@pytest.mark.parametrize("syntax, tol", SYNTAXES, ids=[s for s, _ in SYNTAXES])
def test_compressed_series_decode(tmp_path, syntax, tol):
    """Every slice of a small series written in one compressed transfer syntax decodes.

    64 x 64 slices (the JPEG 2000 encoder needs more pixels than its default resolution levels).
    JPEG baseline holds 8-bit samples: the series is requantised to 8 bits (step s8 = range/255)
    and compressed lossily; HU must stay within s8/2 + 3 x s8 (a few grey levels of JPEG error).
    """
    from pipeline.testing.corpus import COMPRESSED_SYNTAXES, compress_file

    s = make_series(tmp_path / "ct", order="sorted", rows=64, cols=64, n=3)
    for p in s.paths:
        compress_file(p, p, syntax)
    ts = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
          for p in s.paths}
    assert ts == {COMPRESSED_SYNTAXES[syntax]}
    vol = load_ct(s.paths, series_uid=s.series_uid)
    k = np.arange(3)
    np.testing.assert_allclose(vol.grid.zyx_to_lps(np.stack([k, 0 * k, 0 * k], axis=1)),
                               s.positions, atol=POS_TOL)
    if tol is None:
        s8 = (s.values.max() - s.values.min()) / 255.0
        tol = s8 / 2 + 3 * s8
    np.testing.assert_allclose(vol.array, s.values, atol=tol + 1e-3)


def test_undecodable_pixels_name_the_transfer_syntax(tmp_path):
    s = make_series(tmp_path / "ct", order="sorted", rows=64, cols=64, n=2)
    ds = pydicom.dcmread(s.paths[1])
    ds.compress(pydicom.uid.RLELossless)
    ds.PixelData = ds.PixelData[:40] + b"\x00" * 40  # damaged RLE segments, same length class
    ds.save_as(s.paths[1], enforce_file_format=True)
    with pytest.raises(DicomReadError) as ei:
        load_ct(s.paths, series_uid=s.series_uid)
    assert ei.value.tag == "TransferSyntaxUID (0002,0010)"
    assert "1.2.840.10008.1.2.5" in ei.value.message and ei.value.file == str(s.paths[1])


# ------------------------------------------------------------------ multi-frame
def test_enhanced_ct_equals_single_frame_series(tmp_path):
    """An Enhanced CT (one file, frames in shuffled order, geometry in functional groups)."""
    from pipeline.testing.corpus import to_enhanced_ct

    s = make_series(tmp_path / "ct", n=5, order="sorted", iop=tuple(np.concatenate(
        [rot_x(10)[:, 0], rot_x(10)[:, 1]])))
    single = load_ct(s.paths, series_uid=s.series_uid)
    mf = to_enhanced_ct(s.paths, tmp_path / "enhanced.dcm", frame_order=[3, 0, 4, 1, 2])
    ds = pydicom.dcmread(mf, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1" and "ImagePositionPatient" not in ds
    vol = load_ct([mf], series_uid=s.series_uid)
    assert vol.grid.same_as(single.grid)
    np.testing.assert_array_equal(vol.array, single.array)
    assert any("multi-frame" in n for n in vol.notes)


def test_legacy_multiframe_ct_equals_its_source_slices():
    """dcmqi's Legacy Converted Enhanced CT of the 24x38x3 series: same grid, same voxels."""
    paths = sorted((DATA / "dcmqi" / "24x38x3" / "image").glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    single = load_ct(paths, series_uid=uid)
    mf_path = DATA / "dcmqi" / "24x38x3" / "multiframe" / "mf.dcm"
    mf_uid = load_series_headers([mf_path])[0].SeriesInstanceUID
    vol = load_ct([mf_path], series_uid=mf_uid)
    assert vol.grid.same_as(single.grid)
    np.testing.assert_array_equal(vol.array, single.array)
    assert single.array.max() > 0


def test_multiframe_missing_plane_position_names_frame(tmp_path):
    from pipeline.testing.corpus import to_enhanced_ct

    s = make_series(tmp_path / "ct", n=3, order="sorted")
    mf = to_enhanced_ct(s.paths, tmp_path / "e.dcm")
    ds = pydicom.dcmread(mf)
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(mf, enforce_file_format=True)
    with pytest.raises(MissingTagError) as ei:
        load_ct([mf], series_uid=s.series_uid)
    assert ei.value.tag == "ImagePositionPatient (0020,0032)" and "frame 2" in ei.value.message


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


GE_TILT = Path(__file__).resolve().parents[3] / "shared" / "reference_data" / "awkward_ct" / "ge_gantry_tilt_variable_spacing"


@pytest.mark.skipif(not GE_TILT.is_dir(), reason="shared reference data (GE tilted CT) not present")
def test_real_ge_gantry_tilt_refused_naming_tilt():
    """28 GE head slices, gantry tilt 18.5 degrees and variable spacing: refused, tilt named."""
    paths = sorted(GE_TILT.glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    with pytest.raises(GeometryError) as ei:
        load_ct(paths, series_uid=uid, on_irregular="refuse")
    m = re.search(r"sheared by ([0-9.]+) degrees", ei.value.message)
    assert m and float(m.group(1)) == pytest.approx(18.5, abs=0.1)
    assert ei.value.tag == "GantryDetectorTilt (0018,1120)"


@pytest.mark.skipif(not GE_TILT.is_dir(), reason="shared reference data (GE tilted CT) not present")
def test_real_ge_gantry_tilt_resampled_matches_scipy():
    """The real GE series resampled (tilt 18.5 degrees, steps 4.0 / 1.1 / 7.0 mm) equals an
    independent scipy computation from the per-slice positions: within 0.5 HU everywhere (ITK
    evaluates pixel coordinates in single precision: ~1e-4 pixel on edges of ~1000 HU per
    pixel), median difference below 0.01 HU."""
    paths = sorted(GE_TILT.glob("*.dcm"))
    hs = load_series_headers(paths)
    vol = load_ct(paths, series_uid=hs[0].SeriesInstanceUID)
    note = next(n for n in vol.notes if n.startswith("RESAMPLED"))
    assert "18.50 degrees" in note and "variable slice spacing" in note
    iop = np.asarray(hs[0].ImageOrientationPatient, float)
    assert not vol.grid.same_as(grid_from_slices(
        np.asarray(hs[0].ImagePositionPatient, float), iop, (0.4882812, 0.4882812), 512, 512,
        np.asarray([h.ImagePositionPatient for h in hs], float)))
    # acquired stack, sorted along the normal
    nrm = np.cross(iop[:3], iop[3:])
    pos = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in hs])
    order = np.argsort(pos @ nrm)
    stack = np.stack([pydicom.dcmread(paths[i]).pixel_array.astype(np.float32)
                      * float(hs[i].RescaleSlope) + float(hs[i].RescaleIntercept)
                      for i in order])
    pos = pos[order]
    ps = [float(v) for v in hs[0].PixelSpacing]
    # every 4th slice, every 7th row / column keeps the check fast (about 40,000 voxels)
    g = vol.grid
    zz, yy, xx = np.meshgrid(np.arange(0, g.shape_zyx[0], 4), np.arange(0, g.shape_zyx[1], 7),
                             np.arange(0, g.shape_zyx[2], 7), indexing="ij")
    idx = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
    p = g.zyx_to_lps(idx)
    proj = pos @ nrm
    t = p @ nrm
    k0 = np.clip(np.searchsorted(proj, t, side="right") - 1, 0, len(proj) - 2)
    inside = np.ones(len(p), bool)
    for k in (k0, k0 + 1):
        rel = p - pos[k]
        i, j = rel @ iop[:3] / ps[1], rel @ iop[3:] / ps[0]
        inside &= (i >= 0) & (i <= 511) & (j >= 0) & (j <= 511)
    assert inside.sum() > 20000
    ref = _scipy_reference(stack, pos, iop, ps, idx[inside], p[inside], k0[inside], t[inside],
                           proj)
    got = vol.array[tuple(idx[inside].T)]
    np.testing.assert_allclose(got, ref, atol=0.5)
    assert np.median(np.abs(got - ref)) < 0.01
    assert np.ptp(ref) > 1000  # real anatomy (bone and air), not a flat region
