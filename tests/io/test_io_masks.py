"""SEG, RTSTRUCT and NIfTI label maps onto image grids (synthetic and real files)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from io_synth import DATA, make_series, rot_x, write_rtstruct, write_seg
from matplotlib.path import Path as MplPath

from pipeline.errors import SegmentationError
from pipeline.geometry import Grid
from pipeline.io.dicom import load_ct, load_series_headers
from pipeline.io.labelmap import read_labelmap, read_sidecar
from pipeline.io.rtstruct import classify_roi, read_rtstruct
from pipeline.io.seg import classify_segment, read_seg
from pipeline.records import MaskSource, SegmentKind
from pipeline.testing.contours import contour_volume_ml

PAT = dict(lesion_name_patterns=("gtv*", "*lesion*"), organ_name_patterns=("liver", "*lung*"))


# ------------------------------------------------------------------ classification
def test_classify_segment_order():
    assert classify_segment(name="liver", category_code="49755003") is SegmentKind.LESION
    assert classify_segment(name="GTV", category_code="91723000") is SegmentKind.ORGAN
    assert classify_segment(name="x", category_code="85756007", type_code="108369006") \
        is SegmentKind.LESION
    assert classify_segment(name="Lesion 3", category_code="85756007", **PAT) is SegmentKind.LESION
    assert classify_segment(name="LIVER", **PAT) is SegmentKind.ORGAN
    assert classify_segment(name="ROI-1", **PAT) is SegmentKind.UNKNOWN
    assert classify_roi("lung_subpleural", "GTV", **PAT) is SegmentKind.LESION
    assert classify_roi("Body", "EXTERNAL", **PAT) is SegmentKind.ORGAN
    assert classify_roi("ROI-1", "ORGAN", **PAT) is SegmentKind.ORGAN
    assert classify_roi("gtv_node", "ORGAN", **PAT) is SegmentKind.LESION


# ------------------------------------------------------------------ SEG, synthetic
@pytest.fixture()
def oblique_ct(tmp_path):
    r = rot_x(25)
    iop = tuple(np.concatenate([r[:, 0], r[:, 1]]))
    s = make_series(tmp_path / "ct", iop=iop, n=7, rows=9, cols=11, step=2.0)
    return s, load_ct(s.paths, series_uid=s.series_uid)


def test_seg_maps_frames_by_position(tmp_path, oblique_ct):
    s, vol = oblique_ct
    a = np.zeros(vol.grid.shape_zyx, bool)
    a[1:4, 2:5, 3:9] = True
    a[2, 3, 4] = False
    b = np.zeros(vol.grid.shape_zyx, bool)
    b[5, 7, 1] = True
    empty = np.zeros(vol.grid.shape_zyx, bool)
    uid = write_seg(tmp_path / "seg.dcm", ref=s, masks={1: a, 2: b, 3: empty},
                    labels={1: "lesion_a", 2: "lesion_b", 3: "lesion_empty"})
    # highdicom stores only non-empty frames, ordered by its own dimension index
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert ds.NumberOfFrames == 4
    warnings: list[str] = []
    masks = read_seg(tmp_path / "seg.dcm", grids={s.series_uid: vol.grid}, warnings=warnings)
    assert [m.name for m in masks] == ["lesion_a", "lesion_b"]
    assert np.array_equal(masks[0].full(), a) and np.array_equal(masks[1].full(), b)
    assert masks[0].bbox_zyx == ((1, 4), (2, 5), (3, 9))
    assert masks[1].crop.shape == (1, 1, 1)
    m = masks[0]
    assert m.source is MaskSource.SEG and m.kind is SegmentKind.LESION
    assert m.source_uid == uid and m.referenced_series_uid == s.series_uid
    assert m.segment_number == 1 and m.grid == vol.grid
    assert len(warnings) == 1 and "lesion_empty" in warnings[0]


def test_seg_fractional_threshold(tmp_path, oblique_ct):
    s, vol = oblique_ct
    a = np.zeros(vol.grid.shape_zyx, bool)
    a[2:5, 1:4, 1:4] = True
    write_seg(tmp_path / "f.dcm", ref=s, masks={1: a}, labels={1: "liver"},
              category="organ", fractional=True)
    masks = read_seg(tmp_path / "f.dcm", grids={s.series_uid: vol.grid})
    assert masks[0].kind is SegmentKind.ORGAN
    assert np.array_equal(masks[0].full(), a)


def test_seg_of_missing_series(tmp_path, oblique_ct):
    s, vol = oblique_ct
    a = np.zeros(vol.grid.shape_zyx, bool)
    a[1, 1, 1] = True
    uid = write_seg(tmp_path / "s.dcm", ref=s, masks={1: a}, labels={1: "x"})
    with pytest.raises(SegmentationError) as ei:
        read_seg(tmp_path / "s.dcm", grids={"1.2.3": vol.grid, "1.2.4": vol.grid})
    e = ei.value
    assert e.file == str(tmp_path / "s.dcm") and e.series_uid == uid
    assert s.series_uid in e.message and e.tag == "ReferencedSeriesSequence (0008,1115)"
    assert e.hint


def test_seg_on_wrong_grid(tmp_path, oblique_ct):
    s, vol = oblique_ct
    a = np.zeros(vol.grid.shape_zyx, bool)
    a[6, 1, 1] = True
    write_seg(tmp_path / "s.dcm", ref=s, masks={1: a}, labels={1: "x"})
    g = vol.grid
    shorter = Grid((5,) + g.shape_zyx[1:], g.spacing_xyz_mm, g.origin_lps_mm, g.direction)
    with pytest.raises(SegmentationError, match="matches no slice"):
        read_seg(tmp_path / "s.dcm", grids={s.series_uid: shorter})


def _repoint(seg_path, series_uid):
    """Make a SEG reference another image series (frames keep their own geometry)."""
    ds = pydicom.dcmread(seg_path)
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = series_uid
    ds.save_as(seg_path)


def test_seg_frames_on_a_finer_inplane_grid_resampled_nearest(tmp_path):
    """SEG frames at half the pixel spacing (voxel edges aligned): nearest neighbour gives the
    coarse mask exactly; a warning says the frames were resampled."""
    a = make_series(tmp_path / "a", n=6, rows=8, cols=10, pixel_spacing=(0.8, 0.7))
    ga = load_ct(a.paths, series_uid=a.series_uid).grid
    origin_b = np.asarray(a.positions[0]) - 0.25 * 0.8 * np.array([0, 1, 0]) - 0.25 * 0.7 * \
        np.array([1, 0, 0])
    b = make_series(tmp_path / "b", n=6, rows=16, cols=20, pixel_spacing=(0.4, 0.35),
                    origin=tuple(origin_b), study_uid=a.study_uid, for_uid=None)
    coarse = np.zeros(ga.shape_zyx, bool)
    coarse[1:4, 2:6, 3:8] = True
    coarse[2, 3, 4] = False
    fine = coarse.repeat(2, axis=1).repeat(2, axis=2)
    write_seg(tmp_path / "s.dcm", ref=b, masks={1: fine}, labels={1: "lesion"})
    _repoint(tmp_path / "s.dcm", a.series_uid)
    warnings: list[str] = []
    masks = read_seg(tmp_path / "s.dcm", grids={a.series_uid: ga}, warnings=warnings)
    assert np.array_equal(masks[0].full(), coarse)
    assert any("resampled with nearest neighbour" in w for w in warnings)


def test_seg_on_thinner_slices_mapped_by_position(tmp_path):
    """SEG drawn on 1.25 mm slices of which only some hold the segment, read on a 2.5 mm CT:
    each CT plane takes the SEG plane at its position (every other SEG plane)."""
    a = make_series(tmp_path / "a", n=6, step=2.5, origin=(0.0, 0.0, 0.0))
    ga = load_ct(a.paths, series_uid=a.series_uid).grid
    b = make_series(tmp_path / "b", n=11, step=1.25, origin=(0.0, 0.0, 0.0),
                    study_uid=a.study_uid)
    rng = np.random.default_rng(3)
    fine = np.zeros((11, 8, 10), bool)
    fine[2:9] = rng.random((7, 8, 10)) > 0.5
    fine[5] = False  # an empty SEG plane between CT planes: omitted from the SEG
    write_seg(tmp_path / "s.dcm", ref=b, masks={1: fine}, labels={1: "lesion"})
    _repoint(tmp_path / "s.dcm", a.series_uid)
    masks = read_seg(tmp_path / "s.dcm", grids={a.series_uid: ga})
    assert np.array_equal(masks[0].full(), fine[::2])


def test_seg_referencing_the_pet_loads_on_the_pet_grid(tmp_path):
    ct = make_series(tmp_path / "ct", n=6)
    pet = make_series(tmp_path / "pt", modality="PT", n=4, rows=6, cols=7, step=4.0,
                      pixel_spacing=(2.0, 2.0), study_uid=ct.study_uid)
    from pipeline.io.dicom import load_pet_activity

    act, _ = load_pet_activity(pet.paths, series_uid=pet.series_uid)
    m = np.zeros((4, 6, 7), bool)
    m[1:3, 2:4, 2:5] = True
    write_seg(tmp_path / "s.dcm", ref=pet, masks={1: m}, labels={1: "lesion"})
    grids = {ct.series_uid: load_ct(ct.paths, series_uid=ct.series_uid).grid,
             pet.series_uid: act.grid}
    masks = read_seg(tmp_path / "s.dcm", grids=grids)
    assert masks[0].grid == act.grid and masks[0].referenced_series_uid == pet.series_uid
    assert np.array_equal(masks[0].full(), m)


def test_seg_drawn_on_a_tilted_series_follows_its_frames(tmp_path):
    """A SEG drawn on a gantry-tilted CT (frames sheared like the slices) read on the de-sheared
    CT: every mask voxel lies where a frame pixel was (nearest neighbour), and the centroid is
    the frames' centroid within half a pixel."""
    s = make_series(tmp_path / "ct", n=8, rows=20, cols=16, shear_deg=14.0, order="sorted",
                    pixel_spacing=(1.0, 1.0), step=2.0)
    vol = load_ct(s.paths, series_uid=s.series_uid)
    assert any(n.startswith("RESAMPLED") for n in vol.notes)
    m = np.zeros((8, 20, 16), bool)
    m[2:6, 6:12, 4:10] = True
    write_seg(tmp_path / "s.dcm", ref=s, masks={1: m}, labels={1: "lesion"})
    warnings: list[str] = []
    (got,) = read_seg(tmp_path / "s.dcm", grids={s.series_uid: vol.grid}, warnings=warnings)
    assert any("resampled with nearest" in w for w in warnings)
    # physical centres of the drawn pixels
    kk, jj, ii = np.nonzero(m)
    drawn = s.positions[kk] + ii[:, None] * 1.0 * s.iop[:3] + jj[:, None] * 1.0 * s.iop[3:]
    mine = vol.grid.zyx_to_lps(np.argwhere(got.full()))
    np.testing.assert_allclose(mine.mean(axis=0), drawn.mean(axis=0), atol=0.5)
    assert abs(len(mine) - len(drawn)) <= 0.1 * len(drawn)
    # every mask voxel centre is within half a pixel (in-plane) of a drawn pixel centre
    from scipy.spatial import cKDTree

    d, _ = cKDTree(drawn).query(mine)
    assert d.max() <= np.sqrt(0.5**2 + 0.5**2) + 1e-6


def test_nrrd_labelmap_equals_seg_through_read_labelmap():
    """dcmqi 24x38x3: the NRRD label map read by read_labelmap equals the SEG, voxel by voxel."""
    paths = sorted((DATA / "dcmqi" / "24x38x3" / "image").glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    vol = load_ct(paths, series_uid=uid)
    seg_mask = read_seg(DATA / "dcmqi" / "24x38x3" / "seg" / "label.seg", grids={uid: vol.grid})
    warnings: list[str] = []
    lm = read_labelmap(DATA / "dcmqi" / "24x38x3" / "nrrd" / "label.nrrd", grid=vol.grid,
                       names={1: "Liver"}, kind="organ", warnings=warnings)
    assert not warnings  # same grid: no resampling
    assert [m.name for m in lm] == ["Liver"]
    assert np.array_equal(lm[0].full(), seg_mask[0].full())


DCMQI_SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference_data" / "segmentations" / "dcmqi" / "segmentations"


@pytest.mark.skipif(not (DCMQI_SHARED / "ct-3slice").is_dir(),
                    reason="shared reference data (dcmqi 512x512 CT, 1.6 MB) not present")
def test_dcmqi_overlapping_segments_and_liver_equal_their_nrrds():
    """partial_overlaps.dcm: 5 overlapping BINARY segments; each equals its label value in the
    3 NRRD layers dcmqi wrote, voxel by voxel; liver.dcm equals liver_seg.nrrd."""
    paths = sorted((DCMQI_SHARED / "ct-3slice").glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    grid = load_ct(paths, series_uid=uid).grid
    masks = {m.segment_number: m.full()
             for m in read_seg(DCMQI_SHARED / "partial_overlaps.dcm", grids={uid: grid})}
    assert sorted(masks) == [1, 2, 3, 4, 5]
    ref = {}
    for i in (1, 2, 3):
        lm = read_labelmap(DCMQI_SHARED / f"partial_overlaps-{i}.nrrd", grid=grid, names={},
                           kind="unknown")
        for m in lm:
            ref[m.segment_number] = m.full()
    for n, m in masks.items():
        assert np.array_equal(m, ref[n]), n
    assert (masks[1] & masks[2]).any() or (masks[2] & masks[3]).any()  # they do overlap
    liver = read_seg(DCMQI_SHARED / "liver.dcm", grids={uid: grid})[0].full()
    nrrd = read_labelmap(DCMQI_SHARED / "liver_seg.nrrd", grid=grid, names={1: "Liver"},
                         kind="organ")[0].full()
    assert liver.sum() > 1000 and np.array_equal(liver, nrrd)


@pytest.mark.skipif(not (DCMQI_SHARED / "sparse-labelmap-ppv5.dcm").exists(),
                    reason="shared reference data (dcmqi LABELMAP SEG with padding) not present")
def test_labelmap_seg_with_pixel_padding_value():
    paths = sorted((DATA / "dcmqi" / "24x38x3" / "image").glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    grid = load_ct(paths, series_uid=uid).grid
    m = read_seg(DCMQI_SHARED / "sparse-labelmap-ppv5.dcm", grids={uid: grid})
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(DCMQI_SHARED /
                                                    "sparse_labelmap_ppv5_seg.nrrd"))) == 1
    assert [x.name for x in m] == ["Liver"] and np.array_equal(m[0].full(), ref)


# ------------------------------------------------------------------ SEG, real files
def _ct2():
    paths = sorted((DATA / "pydicom_ct2" / "CT2").iterdir())
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    return uid, load_ct(paths[1:], series_uid=uid)  # first slice is 202.5 mm away


@pytest.mark.parametrize("name", ["seg_image_ct_binary.dcm", "seg_image_ct_binary_fractional.dcm",
                                  "seg_image_ct_true_fractional.dcm"])
def test_highdicom_seg_on_pydicom_ct2(name):
    uid, vol = _ct2()
    path = DATA / "highdicom" / name
    masks = read_seg(path, grids={uid: vol.grid})
    assert len(masks) == 1 and masks[0].name == "first segment"
    # independent check: frame f -> slice with the same z position, value threshold 0.5
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(float) / float(ds.get("MaximumFractionalValue", 1) or 1)
    full = masks[0].full()
    zs = [round(float(z), 2) for z in (vol.grid.zyx_to_lps(np.array([[k, 0, 0]
                                                                      for k in range(3)]))[:, 2])]
    for f, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = zs.index(round(float(fg.PlanePositionSequence[0].ImagePositionPatient[2]), 2))
        assert np.array_equal(full[k], px[f] >= 0.5)
    assert masks[0].voxel_count == int((px >= 0.5).sum())


def test_highdicom_overlap_seg_needs_the_gap_slice():
    uid, vol = _ct2()
    with pytest.raises(SegmentationError) as ei:
        read_seg(DATA / "highdicom" / "seg_image_ct_binary_overlap.dcm", grids={uid: vol.grid})
    assert "seg_image_ct_binary_overlap.dcm" in str(ei.value)


@pytest.mark.parametrize("seg_name, nrrd_name", [
    ("24x38x3/seg/label.seg", "24x38x3/nrrd/label.nrrd"),
    ("sparse-labelmap-noppv.dcm", "sparse_labelmap_noppv_seg.nrrd"),
])
def test_dcmqi_seg_equals_nrrd_voxel_by_voxel(seg_name, nrrd_name):
    paths = sorted((DATA / "dcmqi" / "24x38x3" / "image").glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    vol = load_ct(paths, series_uid=uid)
    masks = read_seg(DATA / "dcmqi" / seg_name, grids={uid: vol.grid})
    assert [m.name for m in masks] == ["Liver"] and masks[0].kind is SegmentKind.ORGAN
    img = sitk.ReadImage(str(DATA / "dcmqi" / nrrd_name))
    assert Grid.from_sitk(img).same_as(vol.grid)
    ref = sitk.GetArrayFromImage(img) == 1
    assert ref.sum() > 100
    assert np.array_equal(masks[0].full(), ref)


# ------------------------------------------------------------------ RTSTRUCT
def _square(grid, k, y0, y1, x0, x1):
    """Closed polygon through index-space corners (z=k), as LPS points."""
    idx = np.array([[k, y0, x0], [k, y0, x1], [k, y1, x1], [k, y1, x0]], float)
    return grid.zyx_to_lps(idx)


def test_rtstruct_oblique_holes_and_islands(tmp_path, oblique_ct):
    s, vol = oblique_ct
    g = vol.grid
    outer = _square(g, 2, 0.5, 7.5, 0.5, 9.5)   # centres y 1..7, x 1..9
    hole = _square(g, 2, 2.5, 5.5, 2.5, 7.5)    # y 3..5, x 3..7
    island = _square(g, 2, 3.5, 4.5, 4.5, 5.5)  # y 4, x 5
    other = _square(g, 4, 1.5, 3.5, 1.5, 2.5)   # y 2..3, x 2
    write_rtstruct(tmp_path / "rt.dcm", ref=s, rois=[
        (3, "GTV ring", [outer, hole, island]), (7, "liver", [other]),
        (9, "empty roi", []),
    ])
    warnings: list[str] = []
    masks = read_rtstruct(tmp_path / "rt.dcm", grid=g, series_uid=s.series_uid,
                          sop_instance_uids=s.sop_uids, warnings=warnings, **PAT)
    assert [m.name for m in masks] == ["GTV ring", "liver"]
    expect = np.zeros(g.shape_zyx, bool)
    expect[2, 1:8, 1:10] = True
    expect[2, 3:6, 3:8] = False
    expect[2, 4, 5] = True
    assert np.array_equal(masks[0].full(), expect)
    assert masks[0].kind is SegmentKind.LESION and masks[0].segment_number == 3
    assert masks[0].source is MaskSource.RTSTRUCT
    e2 = np.zeros(g.shape_zyx, bool)
    e2[4, 2:4, 2] = True
    assert np.array_equal(masks[1].full(), e2) and masks[1].kind is SegmentKind.ORGAN
    assert any("empty roi" in w for w in warnings)


def test_rtstruct_contour_off_slice(tmp_path, oblique_ct):
    s, vol = oblique_ct
    c = _square(vol.grid, 9.0, 1, 3, 1, 3)  # beyond the 7 slices
    write_rtstruct(tmp_path / "rt.dcm", ref=s, rois=[(1, "GTV", [c])])
    with pytest.raises(SegmentationError, match="lies on no slice") as ei:
        read_rtstruct(tmp_path / "rt.dcm", grid=vol.grid, series_uid=s.series_uid)
    assert ei.value.file == str(tmp_path / "rt.dcm")


def test_rtstruct_of_another_series(tmp_path, oblique_ct):
    s, vol = oblique_ct
    write_rtstruct(tmp_path / "rt.dcm", ref=s, rois=[(1, "GTV", [_square(vol.grid, 1, 1, 3, 1, 3)])])
    with pytest.raises(SegmentationError) as ei:
        read_rtstruct(tmp_path / "rt.dcm", grid=vol.grid, series_uid="1.2.3.4")
    assert ei.value.tag == "RTReferencedSeriesSequence (3006,0014)"
    assert s.series_uid in ei.value.message


def _rt_utils_ct():
    paths = sorted((DATA / "rt_utils" / "mock_data").glob("ct_*.dcm"))
    hs = load_series_headers(paths)
    uid = hs[0].SeriesInstanceUID
    return uid, [h.SOPInstanceUID for h in hs], load_ct(paths, series_uid=uid)


def test_rt_utils_rtstruct_with_hole_matches_independent_rasterizer():
    uid, sops, vol = _rt_utils_ct()
    path = DATA / "rt_utils" / "mock_data" / "rt.dcm"
    masks = read_rtstruct(path, grid=vol.grid, series_uid=uid, sop_instance_uids=sops)
    assert len(masks) == 1 and masks[0].name == "ROI-1"
    # independent: matplotlib even-odd point-in-polygon at voxel centres, in LPS x/y
    ds = pydicom.dcmread(path)
    contours = [np.asarray(c.ContourData, float).reshape(-1, 3)
                for c in ds.ROIContourSequence[0].ContourSequence]
    g = vol.grid
    jj, ii = np.mgrid[0: g.shape_zyx[1], 0: g.shape_zyx[2]]
    centres = g.zyx_to_lps(np.stack([0 * jj.ravel(), jj.ravel(), ii.ravel()], axis=1))
    inside = np.zeros(len(centres), bool)
    for c in contours:
        inside ^= MplPath(c[:, :2]).contains_points(centres[:, :2])
    expect = np.zeros(g.shape_zyx, bool)
    expect[0] = inside.reshape(g.shape_zyx[1:])
    full = masks[0].full()
    # boundary voxels whose centre lies within 1e-6 mm of an edge may go either way
    assert abs(int(full.sum()) - int(expect.sum())) <= 0.01 * expect.sum()
    assert (full & expect).sum() >= 0.99 * expect.sum()
    # the octagonal hole is really empty: centre of the contour pair
    centre = g.lps_to_zyx(np.array([[-39.5, -39.5, 60.0]]))[0].round().astype(int)
    assert not full[tuple(centre)]


@pytest.mark.parametrize("name", ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"])
def test_rt_utils_broken_references(name):
    uid, sops, vol = _rt_utils_ct()
    path = DATA / "rt_utils" / "mock_data" / name
    with pytest.raises(SegmentationError) as ei:
        read_rtstruct(path, grid=vol.grid, series_uid=uid, sop_instance_uids=None)
    e = ei.value
    assert e.file == str(path) and name in str(e)
    assert "2.16.840.1.114362.1.11940992.23790159890.5634234" in e.message  # names the UID


@pytest.mark.parametrize(("name", "n_missing", "n_refs"), [
    ("invalid_reference_rt.dcm", 3, 5), ("non_existent_reference_rt.dcm", 1, 3)])
def test_rt_utils_references_to_absent_slices_are_a_partly_present_series(name, n_missing,
                                                                           n_refs):
    """The mock CT has the slices at z 60 and 65 mm; each ROI also has a contour at z 70 mm
    naming a third instance that is not there: the loaded slices are rasterized, with a warning."""
    uid, sops, vol = _rt_utils_ct()
    path = DATA / "rt_utils" / "mock_data" / name
    warnings: list[str] = []
    masks = read_rtstruct(path, grid=vol.grid, series_uid=uid, sop_instance_uids=sops,
                          warnings=warnings)
    assert masks and all(m.grid is vol.grid for m in masks)
    [w] = [w for w in warnings if "partly present" in w]
    assert f"{n_missing} of {n_refs} referenced image instance(s)" in w
    assert "4 of 12 closed contour(s) lie on absent slices" in w and "8 rasterized" in w
    assert "2.16.840.1.114362.1.11940992.23790159890.5634234" in w  # names the first missing UID


# ------------------------------------------------------------------ label maps
def _write_nifti(path, grid, labels_zyx, sidecar=None):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(labels_zyx.transpose(2, 1, 0)).astype(np.uint8),
                             grid.nifti_affine_ras()), path)
    if sidecar is not None:
        path.with_name(path.name.split(".")[0] + ".json").write_text(json.dumps(sidecar))


def test_labelmap_same_grid_exact(tmp_path, oblique_ct):
    _, vol = oblique_ct
    lab = np.zeros(vol.grid.shape_zyx, np.uint8)
    lab[1:3, 2:6, 2:4] = 1
    lab[5, 0, 0] = 4
    _write_nifti(tmp_path / "lm.nii.gz", vol.grid, lab,
                 {"names": {"1": "lesion one", "2": "gone"}, "kind": "lesion",
                  "referenced_series_uid": vol.series_uid, "patient_id": "P", "study_uid": "1"})
    sc = read_sidecar(tmp_path / "lm.nii.gz")
    assert sc["names"] == {1: "lesion one", 2: "gone"} and sc["kind"] is SegmentKind.LESION
    warnings: list[str] = []
    masks = read_labelmap(tmp_path / "lm.nii.gz", grid=vol.grid, names=sc["raw"]["names"],
                          kind=sc["kind"], warnings=warnings)  # str keys accepted
    assert [(m.name, m.segment_number) for m in masks] == [("lesion one", 1), ("label_4", 4)]
    assert np.array_equal(masks[0].full(), lab == 1)
    assert np.array_equal(masks[1].full(), lab == 4)
    assert masks[0].source is MaskSource.LABELMAP and masks[0].source_uid == "lm.nii.gz"
    assert any("'gone' is empty" in w for w in warnings)
    assert any("no name" in w for w in warnings)
    assert not any("resampled" in w for w in warnings)


def test_labelmap_other_grid_resampled(tmp_path, oblique_ct):
    _, vol = oblique_ct
    g = vol.grid
    # the same physical block on a grid with half the in-plane spacing
    fine = Grid((g.shape_zyx[0], g.shape_zyx[1] * 2, g.shape_zyx[2] * 2),
                (g.spacing_xyz_mm[0] / 2, g.spacing_xyz_mm[1] / 2, g.spacing_xyz_mm[2]),
                tuple(g.zyx_to_lps(np.array([[0, -0.25, -0.25]]))[0]), g.direction)
    lab = np.zeros(fine.shape_zyx, np.uint8)
    lab[2:4, 4:10, 6:14] = 1  # = coarse y 2..4, x 3..6
    _write_nifti(tmp_path / "lm.nii", fine, lab)
    warnings: list[str] = []
    masks = read_labelmap(tmp_path / "lm.nii", grid=g, names={1: "a"}, kind="organ",
                          warnings=warnings)
    expect = np.zeros(g.shape_zyx, bool)
    expect[2:4, 2:5, 3:7] = True
    assert np.array_equal(masks[0].full(), expect)
    assert masks[0].kind is SegmentKind.ORGAN
    assert any("resampled with nearest" in w for w in warnings)


def test_sidecar_errors(tmp_path):
    with pytest.raises(SegmentationError, match="no sidecar"):
        read_sidecar(tmp_path / "x.nii.gz")
    (tmp_path / "y.json").write_text('{"names": {"one": "a"}}')
    with pytest.raises(SegmentationError, match="names") as ei:
        read_sidecar(tmp_path / "y.nii.gz")
    assert ei.value.file == str(tmp_path / "y.json")
    (tmp_path / "z.json").write_text('{"labels": [{"value": 2, "name": "b"}], "kind": "organ"}')
    sc = read_sidecar(tmp_path / "z.json")
    assert sc["names"] == {2: "b"} and sc["kind"] is SegmentKind.ORGAN


def test_scanline_fill_matches_skimage_on_random_polygons():
    """Own even-odd scanline fill vs skimage.draw.polygon (pixel-centre rule), 300 polygons."""
    from skimage.draw import polygon

    from pipeline.io.rtstruct import fill_evenodd

    rng = np.random.default_rng(1)
    total = 0
    for _ in range(300):
        n = int(rng.integers(3, 14))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(2, 25, n)
        y = 30 + r * np.sin(ang) + rng.uniform(-0.5, 0.5)
        x = 28 + r * np.cos(ang)
        ours = fill_evenodd([np.c_[y, x]], 60, 56)  # partly outside: clipped
        rr, cc = polygon(y, x, (60, 56))
        ref = np.zeros((60, 56), bool)
        ref[rr, cc] = True
        assert np.array_equal(ours, ref)
        total += ref.sum()
    assert total > 10000


DICOMPYLER = Path(__file__).resolve().parents[3] / "shared" / "reference_data" / "segmentations" / "dicompyler"


@pytest.mark.skipif(not (DICOMPYLER / "rtss.dcm").exists(),
                    reason="shared reference data (dicompyler rtss.dcm, 1.9 MB) not present")
def test_dicompyler_heart_and_lung_volumes():
    """Real structure set with holes (Lt Lung): voxel volume vs the contours' own areas.

    Independent reference: shoelace area of each plane's contours (even-odd: outer minus holes)
    x the 3 mm plane spacing. dicompyler's published volumes (Heart 432.841, Lt Lung 1995.185 cm3)
    count the first and last planes with half thickness, a convention issue 3 will add.
    """
    ct = pydicom.dcmread(DICOMPYLER / "ct.0.dcm", stop_before_pixels=True)
    rt = pydicom.dcmread(DICOMPYLER / "rtss.dcm")
    grid = Grid((98, 512, 512), (1.074219, 1.074219, 3.0), (-275.0, -524.0, -122.44))
    masks = {m.segment_number: m for m in read_rtstruct(
        DICOMPYLER / "rtss.dcm", grid=grid, series_uid=ct.SeriesInstanceUID)}
    for rc in rt.ROIContourSequence:
        n = int(rc.ReferencedROINumber)
        if n not in (5, 6):
            continue
        area = 0.0
        for c in rc.ContourSequence:
            p = np.asarray(c.ContourData, float).reshape(-1, 3)
            others = [np.asarray(o.ContourData, float).reshape(-1, 3)
                      for o in rc.ContourSequence if o is not c
                      and abs(float(o.ContourData[2]) - p[0, 2]) < 0.01]
            depth = sum(MplPath(o[:, :2]).contains_point(p[0, :2]) for o in others)
            a = 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1)))
            area += a if depth % 2 == 0 else -a
        expect_cm3 = area * 3.0 / 1000
        got_cm3 = masks[n].voxel_count * grid.voxel_volume_mm3 / 1000
        assert got_cm3 == pytest.approx(expect_cm3, rel=0.005), (n, got_cm3, expect_cm3)
    heart = masks[5].voxel_count * grid.voxel_volume_mm3 / 1000
    assert heart == pytest.approx(432.841, rel=0.02)


@pytest.mark.skipif(not (DICOMPYLER / "rtss.dcm").exists(),
                    reason="shared reference data (dicompyler rtss.dcm, 1.9 MB) not present")
@pytest.mark.parametrize("roi, reference_cm3", [(5, 432.841), (6, 1995.185)],
                         ids=["Heart", "Lt Lung"])
def test_dicompyler_reference_volumes_within_1_percent(roi, reference_cm3):
    """dicompyler's published volumes (3 mm planes; Lt Lung has holes) within 1 % with the
    planning-system convention (end planes at half thickness); the full-thickness (voxel)
    convention is larger by about one plane's worth."""
    v = contour_volume_ml(DICOMPYLER / "rtss.dcm", roi)
    assert v == pytest.approx(reference_cm3, rel=0.01)
    full = contour_volume_ml(DICOMPYLER / "rtss.dcm", roi, end_planes="full")
    assert full > v


def test_contour_volume_of_a_box_with_a_hole(tmp_path, oblique_ct):
    """Oblique 3-plane ROI: 7.0 x 9.0 mm-index squares with a 3 x 5 hole on the middle plane."""
    s, vol = oblique_ct
    g = vol.grid
    outer = [_square(g, k, 0.5, 7.5, 0.5, 9.5) for k in (2, 3, 4)]
    hole = _square(g, 3, 2.5, 5.5, 2.5, 7.5)
    write_rtstruct(tmp_path / "rt.dcm", ref=s, rois=[(1, "GTV", outer + [hole])])
    sx, sy, sz = g.spacing_xyz_mm
    a_full = 7 * sy * 9 * sx
    a_mid = a_full - 3 * sy * 5 * sx
    expect = (0.5 * a_full + a_mid + 0.5 * a_full) * sz / 1000
    assert contour_volume_ml(tmp_path / "rt.dcm", 1) == pytest.approx(expect, rel=1e-6)  # 6-decimal LPS
    expect_full = (2 * a_full + a_mid) * sz / 1000
    assert contour_volume_ml(tmp_path / "rt.dcm", 1, end_planes="full") == pytest.approx(
        expect_full, rel=1e-6)
    # voxel volume equals the full-thickness convention when outlines follow voxel edges
    m = read_rtstruct(tmp_path / "rt.dcm", grid=g, series_uid=s.series_uid)[0]
    assert m.voxel_count * g.voxel_volume_mm3 / 1000 == pytest.approx(expect_full, rel=1e-6)


def test_rtstruct_on_the_real_oblique_anisotropic_ct(tmp_path):
    """rt-utils oriented_data (oblique, 3.5 / 2.5 mm pixels): contours drawn in index space
    and written in LPS come back as the same voxels."""
    paths = sorted((DATA / "rt_utils" / "oriented_data").glob("*.dcm"))
    hs = load_series_headers(paths)
    uid = hs[0].SeriesInstanceUID
    vol = load_ct(paths, series_uid=uid)
    g = vol.grid
    assert not g.is_axis_aligned()
    ref = type("Ref", (), {})()
    ref.study_uid, ref.series_uid = hs[0].StudyInstanceUID, uid
    ref.sop_uids = [h.SOPInstanceUID for h in hs]
    write_rtstruct(tmp_path / "rt.dcm", ref=ref, rois=[
        (1, "GTV", [_square(g, 1, 10.5, 30.5, 20.5, 60.5)])])
    m = read_rtstruct(tmp_path / "rt.dcm", grid=g, series_uid=uid,
                      sop_instance_uids=ref.sop_uids)[0]
    expect = np.zeros(g.shape_zyx, bool)
    expect[1, 11:31, 21:61] = True
    assert np.array_equal(m.full(), expect)


@pytest.mark.skipif(not (DCMQI_SHARED / "23x38x3").is_dir(),
                    reason="shared reference data (dcmqi 23x38x3) not present")
def test_dcmqi_seg_with_frames_not_byte_aligned():
    """23 x 38 = 874 bits per BINARY frame: frames do not start on byte boundaries."""
    d = DCMQI_SHARED / "23x38x3"
    paths = sorted((d / "image").glob("*.dcm"))
    uid = load_series_headers(paths[:1])[0].SeriesInstanceUID
    grid = load_ct(paths, series_uid=uid).grid
    (m,) = read_seg(d / "seg" / "label.seg", grids={uid: grid})
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "nrrd" / "label.nrrd"))) == 1
    assert ref.sum() > 100 and np.array_equal(m.full(), ref)


def _first_slices(grid, n):
    """The grid of the first ``n`` slices of ``grid`` (a cropped export of the same series)."""
    from dataclasses import replace

    return replace(grid, shape_zyx=(n, *grid.shape_zyx[1:]))


def test_rtstruct_on_partly_present_series_keeps_loaded_slices(tmp_path, oblique_ct):
    s, vol = oblique_ct
    g = vol.grid
    kept = _square(g, 2, 0.5, 3.5, 0.5, 4.5)    # slice 2: y 1..3, x 1..4 (12 voxels)
    absent = _square(g, 5, 1.5, 3.5, 1.5, 2.5)  # slice 5: not loaded
    write_rtstruct(tmp_path / "rt.dcm", ref=s, rois=[(1, "GTV", [kept, absent])])
    warnings: list[str] = []
    masks = read_rtstruct(tmp_path / "rt.dcm", grid=_first_slices(g, 4), series_uid=s.series_uid,
                          sop_instance_uids=s.sop_uids[:4], warnings=warnings, **PAT)
    assert len(masks) == 1
    expect = np.zeros((4, *g.shape_zyx[1:]), bool)
    expect[2, 1:4, 1:5] = True
    assert np.array_equal(masks[0].full(), expect)
    [w] = [w for w in warnings if "partly present" in w]
    assert "3 of 7 referenced image instance(s)" in w
    assert "1 of 2 closed contour(s) lie on absent slices" in w and "1 rasterized" in w


def test_rtstruct_on_partly_present_series_with_contour_image_refs(tmp_path, oblique_ct):
    s, vol = oblique_ct
    g = vol.grid
    # the only contour is drawn on (and names) the absent slice 6: nothing is left
    write_rtstruct(tmp_path / "rt.dcm", ref=s, contour_sop=s.sop_uids[6],
                   rois=[(1, "GTV", [_square(g, 6, 0.5, 3.5, 0.5, 4.5)])])
    with pytest.raises(SegmentationError, match="no contour falls on a loaded slice") as ei:
        read_rtstruct(tmp_path / "rt.dcm", grid=_first_slices(g, 4), series_uid=s.series_uid,
                      sop_instance_uids=s.sop_uids[:4], **PAT)
    assert "0 rasterized" in ei.value.message and ei.value.file == str(tmp_path / "rt.dcm")
    assert s.sop_uids[4] in ei.value.message  # first missing instance named


def test_rtstruct_partly_present_none_on_loaded_slices_fails(tmp_path, oblique_ct):
    s, vol = oblique_ct
    g = vol.grid
    write_rtstruct(tmp_path / "rt.dcm", ref=s, rois=[(1, "GTV", [_square(g, 5, 1, 3, 1, 3)])])
    with pytest.raises(SegmentationError, match="1 of 1 closed contour"):
        read_rtstruct(tmp_path / "rt.dcm", grid=_first_slices(g, 2), series_uid=s.series_uid,
                      sop_instance_uids=s.sop_uids[:2], **PAT)


def test_rtstruct_reference_to_absent_instance_on_loaded_slice_is_broken(tmp_path, oblique_ct):
    s, vol = oblique_ct
    g = vol.grid
    # names the absent slice 6 but lies on loaded slice 1: a broken reference, not a crop
    write_rtstruct(tmp_path / "rt.dcm", ref=s, contour_sop=s.sop_uids[6],
                   rois=[(1, "GTV", [_square(g, 1, 0.5, 3.5, 0.5, 4.5)])])
    with pytest.raises(SegmentationError, match="yet lies on its loaded slice 1") as ei:
        read_rtstruct(tmp_path / "rt.dcm", grid=_first_slices(g, 4), series_uid=s.series_uid,
                      sop_instance_uids=s.sop_uids[:4], **PAT)
    assert s.sop_uids[6] in ei.value.message
