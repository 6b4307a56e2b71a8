"""Tests of the ground-truth phantom, checked against independent reads of the files it writes.

The readers here are deliberately naive and independent of the pipeline's own I/O: pydicom for
the images (sorted by ImagePositionPatient), highdicom for SEG, nibabel for the label map, and the
SUV formula applied to the PET headers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import time
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.errors import ConfigError
from pipeline.geometry import Grid
from pipeline.testing import phantom as P

NAMES = [
    "soft_tissue_flank",
    "node_axillary_R",
    "liver_deep",
    "liver_subcapsular",
    "lung_nodule_tiny",
    "necrotic_mass",
    "node_paraaortic",
    "lung_subpleural",
]


# --------------------------------------------------------------------------- fixtures / readers
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("phantom")
    calls = []
    t0 = time.perf_counter()
    folders = P.generate_cohort(
        out, n_patients=2, size="small", seed=0, progress=lambda *a: calls.append(a)
    )
    elapsed = time.perf_counter() - t0
    return {"folders": folders, "calls": calls, "elapsed": elapsed, "out": out}


@pytest.fixture(scope="module")
def p1(cohort) -> Path:
    return cohort["folders"][0]


@pytest.fixture(scope="module")
def truth(p1) -> dict:
    return json.loads((p1 / "truth.json").read_text())


def read_series(folder: Path) -> tuple[list[pydicom.Dataset], np.ndarray, Grid]:
    """Datasets sorted by z, rescaled volume (z, y, x) float64 and its grid."""
    dss = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    vol = np.stack(
        [
            d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
            for d in dss
        ]
    )
    pos = np.array([d.ImagePositionPatient for d in dss], dtype=float)
    dz = float(np.median(np.diff(pos @ normal)))
    ps = [float(v) for v in dss[0].PixelSpacing]
    grid = Grid(vol.shape, (ps[1], ps[0], dz), tuple(pos[0]))
    return dss, vol, grid


def axes(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nz, ny, nx = grid.shape_zyx
    (sx, sy, sz), (ox, oy, oz) = grid.spacing_xyz_mm, grid.origin_lps_mm
    return ox + sx * np.arange(nx), oy + sy * np.arange(ny), oz + sz * np.arange(nz)


def inside(grid: Grid, centre, semi) -> np.ndarray:
    xs, ys, zs = axes(grid)
    q = (
        ((xs[None, None, :] - centre[0]) / semi[0]) ** 2
        + ((ys[None, :, None] - centre[1]) / semi[1]) ** 2
        + ((zs[:, None, None] - centre[2]) / semi[2]) ** 2
    )
    return q <= 1.0


def nearest_index(grid: Grid, point) -> tuple[int, int, int]:
    zyx = np.rint(grid.lps_to_zyx(np.asarray(point, float)[None, :])[0]).astype(int)
    return tuple(int(v) for v in zyx)


def dicom_time(t: str) -> dt.timedelta:
    t = t.split(".")[0]
    return dt.timedelta(hours=int(t[0:2]), minutes=int(t[2:4]), seconds=int(t[4:6]))


def suv_factor_from_headers(ds: pydicom.Dataset) -> float:
    """SUVbw per Bq/mL from one PET header (DecayCorrection START, decay to SeriesTime)."""
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    start = dicom_time(rp.RadiopharmaceuticalStartTime)
    delta = (dicom_time(ds.SeriesTime) - start).total_seconds()
    half_life = float(rp.RadionuclideHalfLife)
    decayed = float(rp.RadionuclideTotalDose) * math.exp(-math.log(2) * delta / half_life)
    return float(ds.PatientWeight) * 1000.0 / decayed


def seg_masks(
    seg_path: Path, source: list[pydicom.Dataset]
) -> tuple[hd.seg.Segmentation, np.ndarray]:
    """(seg, (z, y, x, n_segments) uint8) aligned with ``source`` (sorted by z)."""
    seg = hd.seg.segread(seg_path)
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in source],
        segment_numbers=seg.get_segment_numbers(),
        combine_segments=False,
    )
    return seg, arr


# --------------------------------------------------------------------------- layout
def test_layout_and_every_file_reads(cohort, p1, truth):
    assert [f.name for f in cohort["folders"]] == ["PHANTOM001", "PHANTOM002"]
    assert [c[:2] for c in cohort["calls"]] == [(1, 2), (2, 2)]
    expected = {"CT_noncontrast": 56, "CT_contrast": 56, "PET": 42}
    for sub, n in expected.items():
        assert len(list((p1 / sub).glob("*.dcm"))) == n
    for f in ["SEG_lesions.dcm", "SEG_organs.dcm", "RTSTRUCT_lesions.dcm", "truth.json",
              "labelmap/lesions.nii.gz", "labelmap/lesions.json"]:
        assert (p1 / f).is_file(), f
    frames = set()
    for f in p1.rglob("*.dcm"):
        ds = pydicom.dcmread(f)  # Part 10: raises without a preamble/meta
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.PatientID == "PHANTOM001"
        assert str(ds.PatientName) == "Phantom^Patient001"
        assert ds.StudyInstanceUID == truth["study_uid"]
        if "FrameOfReferenceUID" in ds:
            frames.add(ds.FrameOfReferenceUID)
    assert frames == {truth["frame_of_reference_uid"]}


def test_ct_headers_and_shuffled_names(p1, truth):
    nc, _, g_nc = read_series(p1 / "CT_noncontrast")
    ce, _, g_ce = read_series(p1 / "CT_contrast")
    assert g_nc.same_as(g_ce)
    assert g_nc.shape_zyx == (56, 160, 160)
    assert g_nc.spacing_xyz_mm == pytest.approx((2.5, 2.5, 3.0))
    xs, _, zs = axes(g_nc)
    assert np.mean(xs) == pytest.approx(0.0) and np.mean(zs) == pytest.approx(0.0)  # centred
    d = nc[0]
    assert d.SOPClassUID == pydicom.uid.CTImageStorage
    assert d.SeriesDescription == "CT ABD NON-CONTRAST" and "ContrastBolusAgent" not in d
    assert ce[0].SeriesDescription == "CT ABD PORTAL VENOUS"
    assert ce[0].ContrastBolusAgent == "IOHEXOL"
    assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(d.RescaleSlope) == 1.0 and float(d.RescaleIntercept) == -1024.0
    assert {x.SeriesInstanceUID for x in nc} == {truth["series"]["ct_noncontrast"]}
    assert {x.SeriesInstanceUID for x in ce} == {truth["series"]["ct_contrast"]}
    # file names are not in z order
    files = sorted((p1 / "CT_noncontrast").glob("*.dcm"))
    z_by_name = [
        float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files
    ]
    assert z_by_name != sorted(z_by_name) and z_by_name != sorted(z_by_name, reverse=True)


# --------------------------------------------------------------------------- CT values
def test_ct_hu_at_lesion_centres(p1, truth):
    for sub, key in (("CT_noncontrast", "noncontrast"), ("CT_contrast", "contrast")):
        _, vol, grid = read_series(p1 / sub)
        for les in truth["lesions"]:
            c, semi = les["centre_lps_mm"], les["semi_axes_mm"]
            k, j, i = nearest_index(grid, c)
            block = (slice(k - 1, k + 2), slice(j - 1, j + 2), slice(i - 1, i + 2))
            in_les = inside(grid, c, semi)[block]
            expected = les[f"hu_{key}"]
            if les["necrotic_core_radius_mm"] > 0:
                r = les["necrotic_core_radius_mm"]
                in_les = in_les & inside(grid, c, (r, r, r))[block]
                expected = les[f"hu_core_{key}"]
            vals = vol[block][in_les]
            assert len(vals) >= 5, les["name"]
            tol = max(5.0, 4.0 * 8.0 / math.sqrt(len(vals)))
            assert abs(vals.mean() - expected) < tol, (sub, les["name"], vals.mean(), expected)


def test_ct_background_anatomy(p1):
    _, nc, grid = read_series(p1 / "CT_noncontrast")
    _, ce, _ = read_series(p1 / "CT_contrast")

    def hu(vol, x, y, z):
        k, j, i = nearest_index(grid, (x, y, z))
        return vol[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean()

    assert hu(nc, 0, -185, 0) == pytest.approx(-1000, abs=6)  # air in front of the body
    assert hu(nc, 0, 135, 0) == pytest.approx(300, abs=6)  # table (4 pixel rows in the 10 mm slab)
    assert hu(nc, 0, 126, 0) == pytest.approx(-1000, abs=6)  # air gap body-table
    assert hu(nc, 0, 75, 0) == pytest.approx(700, abs=6)  # spine
    assert hu(nc, 20, 40, 0) == pytest.approx(40, abs=6)  # aorta, no contrast
    assert hu(ce, 20, 40, 0) == pytest.approx(250, abs=6)  # aorta, contrast
    assert hu(nc, -40, 0, -30) == pytest.approx(55, abs=6)  # liver
    assert hu(ce, -40, 0, -30) == pytest.approx(110, abs=6)
    assert hu(ce, 95, 40, -30) == pytest.approx(120, abs=6)  # spleen
    assert hu(nc, -80, 10, 60) == pytest.approx(-850, abs=6)  # lung
    assert hu(nc, 0, -114, 0) == pytest.approx(-100, abs=6)  # subcutaneous fat
    assert hu(nc, 0, -60, 40) == pytest.approx(40, abs=6)  # soft tissue
    # noise level inside uniform liver (z = -4.5, x in [-49, -24], y in [-11, 14])
    assert 6.0 < float(np.std(nc[26, 75:85, 60:70])) < 10.0


# --------------------------------------------------------------------------- PET
def test_pet_headers_and_suv_at_lesion_centres(p1, truth):
    dss, act, grid = read_series(p1 / "PET")
    d = dss[0]
    assert d.SOPClassUID == pydicom.uid.PositronEmissionTomographyImageStorage
    assert d.Units == "BQML" and d.DecayCorrection == "START"
    assert {"ATTN", "DECY"} <= set(d.CorrectedImage)
    assert d.SeriesTime == "110000" and d.SeriesDate == "20240115"
    acq = sorted(x.AcquisitionTime for x in dss)
    assert acq[0] >= "110200" and acq[-1] < "110500"
    rp = d.RadiopharmaceuticalInformationSequence[0]
    assert rp.Radiopharmaceutical == "Fluorodeoxyglucose"
    assert float(rp.RadionuclideHalfLife) == 6586.2 and float(rp.RadionuclideTotalDose) == 370e6
    assert rp.RadiopharmaceuticalStartTime == "100000"
    assert rp.RadiopharmaceuticalStartDateTime.startswith("20240115100000")
    assert float(d.PatientWeight) == 75.0 and float(d.PatientSize) == 1.75 and d.PatientSex == "M"
    assert d.NumberOfSlices == 42 and sorted(x.ImageIndex for x in dss) == list(range(1, 43))
    assert "FrameReferenceTime" in d and "ActualFrameDuration" in d
    # one slope per slice (slice max / 32000): slices with different maxima differ
    assert len({float(x.RescaleSlope) for x in dss}) >= 5
    assert all(float(x.RescaleIntercept) == 0 for x in dss)
    assert grid.shape_zyx == (42, 96, 96) and grid.spacing_xyz_mm == pytest.approx((4, 4, 4))
    _, _, ct = read_series(p1 / "CT_contrast")
    assert not grid.same_as(ct)

    factor = suv_factor_from_headers(d)
    assert factor == pytest.approx(truth["pet"]["suvbw_factor"], rel=1e-9)
    suv = act * factor
    for les in truth["lesions"]:
        expected = les["suv_core"] if les["necrotic_core_radius_mm"] > 0 else les["suv"]
        k, j, i = nearest_index(grid, les["centre_lps_mm"])
        assert suv[k, j, i] == pytest.approx(expected, rel=5e-3), les["name"]
        m = inside(grid, les["centre_lps_mm"], les["semi_axes_mm"])
        assert m.sum() == les["pet_voxel_count"] > 0
        assert suv[m].max() == pytest.approx(les["suv_max_voxelized"], rel=1e-6)
        assert les["suv_max_voxelized"] == pytest.approx(les["suv"], rel=5e-3)
    # background: liver 2.0, lung 0.4, outside 0
    for point, value in (((-40, 0, -30), 2.0), ((-80, 10, 62), 0.4), ((0, -190, 0), 0.0)):
        k, j, i = nearest_index(grid, point)
        assert suv[k, j, i] == pytest.approx(value, abs=2e-3)


def test_second_patient_differs_and_follows_its_own_headers(cohort, truth):
    p2 = cohort["folders"][1]
    t2 = json.loads((p2 / "truth.json").read_text())
    assert t2["patient_id"] == "PHANTOM002"
    assert t2["study_uid"] != truth["study_uid"]
    assert [l["name"] for l in t2["lesions"]] == NAMES
    assert t2["pet"]["weight_kg"] != 75.0 and t2["pet"]["dose_bq"] != 370e6
    moved = [np.linalg.norm(np.subtract(a["centre_lps_mm"], b["centre_lps_mm"]))
             for a, b in zip(t2["lesions"], truth["lesions"])]
    assert 0 < max(moved) < 8.0
    dss, act, grid = read_series(p2 / "PET")
    suv = act * suv_factor_from_headers(dss[0])
    for les in t2["lesions"]:
        expected = les["suv_core"] if les["necrotic_core_radius_mm"] > 0 else les["suv"]
        k, j, i = nearest_index(grid, les["centre_lps_mm"])
        assert suv[k, j, i] == pytest.approx(expected, rel=5e-3), les["name"]


# --------------------------------------------------------------------------- SEG, NIfTI, RTSTRUCT
def test_seg_lesions_roundtrip(p1, truth):
    ce, _, _ = read_series(p1 / "CT_contrast")
    seg, arr = seg_masks(p1 / "SEG_lesions.dcm", ce)
    assert seg.SeriesInstanceUID == truth["series"]["seg_lesions"]
    numbers = seg.get_segment_numbers()
    assert len(numbers) == 8
    labels = [seg.get_segment_description(n).segment_label for n in numbers]
    assert labels == NAMES
    ref_series = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    assert ref_series == {truth["series"]["ct_contrast"]}
    by_name = {l["name"]: l for l in truth["lesions"]}
    for idx, n in enumerate(numbers):
        desc = seg.get_segment_description(n)
        assert desc.segmented_property_category.value == "49755003"
        assert desc.segmented_property_type.value in ("108369006", "52988006")
        assert desc.tracking_uid and desc.tracking_id
        assert int(arr[..., idx].sum()) == by_name[labels[idx]]["voxel_count"]
    # the SEG matches the analytic mask on the read CT grid
    _, _, grid = read_series(p1 / "CT_contrast")
    for idx, name in enumerate(labels):
        les = by_name[name]
        analytic = inside(grid, les["centre_lps_mm"], les["semi_axes_mm"])
        assert np.array_equal(arr[..., idx] > 0, analytic), name


def test_nifti_labelmap_matches_seg(p1, truth):
    ce, _, grid = read_series(p1 / "CT_contrast")
    _, arr = seg_masks(p1 / "SEG_lesions.dcm", ce)
    img = nib.load(p1 / "labelmap" / "lesions.nii.gz")
    side = json.loads((p1 / "labelmap" / "lesions.json").read_text())
    assert side["kind"] == "lesion"
    assert side["referenced_series_uid"] == truth["series"]["ct_contrast"]
    assert side["study_uid"] == truth["study_uid"] and side["patient_id"] == "PHANTOM001"
    assert side["labels"] == {str(k): n for k, n in enumerate(NAMES, start=1)}
    assert np.allclose(img.affine, grid.nifti_affine_ras())
    # independent: voxel (0,0,0) in RAS is (-x, -y, z) of the first CT voxel
    ox, oy, oz = grid.origin_lps_mm
    assert np.allclose(img.affine[:3, 3], [-ox, -oy, oz])
    data = np.asarray(img.dataobj).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
    assert data.shape == grid.shape_zyx
    for k in range(1, 9):
        assert np.array_equal(data == k, arr[..., k - 1] > 0)


def test_seg_organs_and_lesions_in_their_organs(p1, truth):
    nc, vol_nc, _ = read_series(p1 / "CT_noncontrast")
    ce, _, _ = read_series(p1 / "CT_contrast")
    seg, organs = seg_masks(p1 / "SEG_organs.dcm", nc)
    assert seg.SeriesInstanceUID == truth["series"]["seg_organs"]
    labels = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    assert labels == ["liver", "spleen", "lung_left", "lung_right", "aorta", "vertebral_column"]
    for n in seg.get_segment_numbers():
        desc = seg.get_segment_description(n)
        assert desc.segmented_property_category.value == "91723000"
        assert desc.segmented_property_type.scheme_designator == "SCT"
    refs = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    assert refs == {truth["series"]["ct_noncontrast"]}
    assert (organs.sum(axis=-1) <= 1).all()  # organs do not overlap
    organ = {name: organs[..., i] > 0 for i, name in enumerate(labels)}
    _, lesions = seg_masks(p1 / "SEG_lesions.dcm", ce)
    any_organ = organs.sum(axis=-1) > 0
    host = {
        "soft_tissue_flank": None, "node_axillary_R": None, "necrotic_mass": None,
        "node_paraaortic": None, "liver_deep": "liver", "liver_subcapsular": "liver",
        "lung_nodule_tiny": "lung_left", "lung_subpleural": "lung_right",
    }
    for i, name in enumerate(NAMES):
        m = lesions[..., i] > 0
        if host[name] is None:  # soft tissue / node: inside the body, touching no organ
            assert not (m & any_organ).any(), name
        else:
            assert (m & ~organ[host[name]]).sum() == 0, name  # a liver lesion is inside the liver
    # lesions avoid the table and the air gap; no two lesions share a voxel
    assert (lesions.sum(axis=-1) <= 1).all()
    assert np.all(vol_nc[lesions.sum(axis=-1) > 0] > -300)


def test_rtstruct(p1, truth):
    ce, _, grid = read_series(p1 / "CT_contrast")
    z_of = {d.SOPInstanceUID: float(d.ImagePositionPatient[2]) for d in ce}
    rs = pydicom.dcmread(p1 / "RTSTRUCT_lesions.dcm")
    assert rs.Modality == "RTSTRUCT" and rs.SOPClassUID == pydicom.uid.RTStructureSetStorage
    assert rs.SeriesInstanceUID == truth["series"]["rtstruct"]
    ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == truth["frame_of_reference_uid"]
    ser = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ser.SeriesInstanceUID == truth["series"]["ct_contrast"]
    assert {c.ReferencedSOPInstanceUID for c in ser.ContourImageSequence} == set(z_of)
    names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
    assert list(names.values()) == NAMES
    assert len(rs.RTROIObservationsSequence) == 8
    by_name = {l["name"]: l for l in truth["lesions"]}
    zs = np.array(sorted(z_of.values()))
    for rc in rs.ROIContourSequence:
        les = by_name[names[rc.ReferencedROINumber]]
        (cx, cy, cz), (a, b, c) = les["centre_lps_mm"], les["semi_axes_mm"]
        assert len(rc.ContourSequence) == int(np.sum(np.abs(zs - cz) < c))
        for item in rc.ContourSequence:
            assert item.ContourGeometricType == "CLOSED_PLANAR"
            pts = np.array(item.ContourData, dtype=float).reshape(-1, 3)
            assert len(pts) == item.NumberOfContourPoints >= 64
            z = pts[0, 2]
            assert np.allclose(pts[:, 2], z)
            assert z_of[item.ContourImageSequence[0].ReferencedSOPInstanceUID] == pytest.approx(z)
            s = 1 - ((z - cz) / c) ** 2
            x, y = pts[:, 0], pts[:, 1]
            area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
            assert area == pytest.approx(math.pi * a * b * s, rel=2e-3)


# --------------------------------------------------------------------------- truth
def _ellipse_distance_bruteforce(px: float, py: float, a: float, b: float) -> float:
    """Point-to-ellipse distance by dense sampling (independent of the phantom's solver)."""
    t = np.linspace(0, 2 * np.pi, 2_000_001)
    return float(np.min(np.hypot(a * np.cos(t) - px, b * np.sin(t) - py)))


def test_truth_is_self_consistent(truth):
    assert [l["name"] for l in truth["lesions"]] == NAMES
    assert truth["ct_grid"]["shape_zyx"] == [56, 160, 160]
    assert truth["pet"]["weight_kg"] == 75.0 and truth["pet"]["dose_bq"] == 370e6
    assert truth["pet"]["injection_time"] == "2024-01-15T10:00:00"
    assert truth["pet"]["series_time"] == "2024-01-15T11:00:00"
    decay = math.exp(-math.log(2) * 3600 / 6586.2)
    assert truth["pet"]["suvbw_factor"] == pytest.approx(75000 / (370e6 * decay), rel=1e-12)
    voxel_ml = 2.5 * 2.5 * 3.0 / 1000
    for les in truth["lesions"]:
        a, b, c = les["semi_axes_mm"]
        assert les["volume_ml_analytic"] == pytest.approx(4 / 3 * math.pi * a * b * c / 1000)
        assert les["volume_ml_voxelized"] == pytest.approx(les["voxel_count"] * voxel_ml)
        if min(a, b, c) >= 8:
            ratio = les["volume_ml_voxelized"] / les["volume_ml_analytic"]
            assert ratio == pytest.approx(1.0, abs=0.05), les["name"]
            assert np.allclose(les["centroid_lps_mm_voxelized"], les["centre_lps_mm"], atol=1.0)
        assert les["longest_axial_diameter_mm"] == 2 * max(a, b)
        assert les["short_axis_mm"] == 2 * min(a, b)
        assert les["max_3d_diameter_mm"] == 2 * max(a, b, c)
        assert les["skin_depth_mm"] > 0, les["name"]
        if a == b == c:  # sphere: skin depth = in-plane centre-to-ellipse distance - r
            cx, cy, _ = les["centre_lps_mm"]
            ref = _ellipse_distance_bruteforce(cx, cy, 170.0, 120.0) - a
            assert les["skin_depth_mm"] == pytest.approx(ref, abs=1e-3), les["name"]
            ref_aorta = math.hypot(cx - 20, cy - 40) - 12 - a
            assert les["aorta_distance_mm"] == pytest.approx(ref_aorta, abs=1e-6)
        assert les["aorta_distance_mm"] >= 0
        assert les["vertebral_column_distance_mm"] > 0
    by = {l["name"]: l for l in truth["lesions"]}
    assert by["necrotic_mass"]["necrotic_core_fraction"] == pytest.approx((20 / 30) ** 3)
    assert by["necrotic_mass"]["longest_axial_diameter_mm"] > 50
    assert by["lung_nodule_tiny"]["longest_axial_diameter_mm"] < 10
    assert by["node_paraaortic"]["aorta_distance_mm"] == pytest.approx(0.0, abs=1e-6)
    assert by["liver_subcapsular"]["liver_capsule_distance_mm"] == pytest.approx(0.0, abs=1e-6)
    assert by["liver_deep"]["liver_capsule_distance_mm"] == pytest.approx(60 - 15, abs=1e-6)
    assert by["lung_subpleural"]["lung_pleura_distance_mm"] == pytest.approx(3.0, abs=1e-6)
    assert by["soft_tissue_flank"]["skin_depth_mm"] < 12  # superficial targets
    assert by["node_axillary_R"]["skin_depth_mm"] < 12
    assert by["liver_deep"]["skin_depth_mm"] > 50
    for name in NAMES:
        assert by[name]["organ"] in ("soft_tissue", "lymph_node", "liver", "lung")
        assert ("node" in name) == (by[name]["organ"] == "lymph_node")


def test_lesions_separated_analytically():
    lesions = P.lesion_designs()
    assert [l.name for l in lesions] == NAMES
    for i, a in enumerate(lesions):
        for b in lesions[i + 1 :]:
            gap = np.linalg.norm(np.subtract(a.centre_lps_mm, b.centre_lps_mm))
            assert gap > max(a.semi_axes_mm) + max(b.semi_axes_mm) + 5, (a.name, b.name)
        assert P.structure_distance(a, "vertebral_column") > 5
        # the table is at y >= 130, the body ends at y = 120
        assert a.centre_lps_mm[1] + a.semi_axes_mm[1] < 120


# --------------------------------------------------------------------------- arrays API
def test_phantom_arrays_and_jittered_patients():
    arr = P.phantom_arrays("small", 1, 0)
    assert arr.ct_grid.shape_zyx == (56, 160, 160) and arr.pet_grid.shape_zyx == (42, 96, 96)
    assert arr.ct_noncontrast_hu.shape == arr.ct_contrast_hu.shape == arr.lesion_labels.shape
    assert arr.lesion_names == tuple(NAMES)
    # host tissue: every voxel of a lesion lies in its intended tissue
    for k, les in enumerate(arr.design.lesions, start=1):
        tissues = np.unique(arr.tissue_labels[arr.lesion_labels == k])
        under = {P.Tissue(int(t)).name for t in tissues}
        assert under <= set(les.host_tissues), (les.name, under)
    assert not (arr.body_mask & (arr.tissue_labels == P.Tissue.TABLE)).any()
    assert arr.organ_mask("liver")[arr.lesion_labels == 3].all()
    again = P.phantom_arrays("small", 1, 0)
    assert np.array_equal(again.ct_contrast_hu, arr.ct_contrast_hu)  # deterministic
    other_seed = P.phantom_arrays("small", 1, 1)
    assert np.array_equal(other_seed.lesion_labels, arr.lesion_labels)  # patient 1 is canonical
    assert not np.array_equal(other_seed.ct_contrast_hu, arr.ct_contrast_hu)  # noise is seeded

    d3 = P.patient_design(3, seed=0)
    assert d3 == P.patient_design(3, seed=0)
    assert d3 != P.patient_design(3, seed=1)
    for base, les in zip(P.lesion_designs(), d3.lesions):
        assert les.name == base.name
        assert 0.9 <= les.suv / base.suv <= 1.1
        assert np.all(np.abs(np.subtract(les.centre_lps_mm, base.centre_lps_mm)) < 8.0)
    by = {l.name: l for l in d3.lesions}
    assert P.structure_distance(by["node_paraaortic"], "aorta") == pytest.approx(0.0, abs=1e-5)
    assert P.structure_distance(by["liver_subcapsular"], "liver") == pytest.approx(0.0, abs=1e-5)
    assert P.structure_distance(by["lung_subpleural"], "lung_right") == pytest.approx(3.0, abs=1e-5)
    assert P.structure_distance(by["node_axillary_R"], "skin") == pytest.approx(5.0, abs=1e-5)
    P.phantom_arrays("small", 3, 0)  # raises on overlap or a lesion outside its host tissue


def test_ellipsoid_distance_solver():
    rng = np.random.default_rng(5)
    pts = rng.uniform(-200, 200, size=(20, 2))
    d = P.ellipsoid_signed_distance(pts, (0, 0), (170, 120))
    for p, v in zip(pts, d):
        ref = _ellipse_distance_bruteforce(p[0], p[1], 170, 120)
        assert abs(abs(v) - ref) < 1e-3
        assert (v > 0) == ((p[0] / 170) ** 2 + (p[1] / 120) ** 2 < 1)
    # degenerate: the centre of an ellipsoid is the smallest semi-axis away from the surface
    centre = np.array([[0.0, 0.0, 0.0]])
    assert P.ellipsoid_signed_distance(centre, (0, 0, 0), (80, 70, 60))[0] == pytest.approx(60)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        P.lesion_designs("huge")
    with pytest.raises(ConfigError):
        P.generate_patient(tmp_path, 0)
    with pytest.raises(ConfigError):
        P.lesion_designs("small", "bogus")
    with pytest.raises(ConfigError):
        P.generate_patient(tmp_path, 1, organ_formats=("png",))
    with pytest.raises(ConfigError):
        P.generate_patient(tmp_path, 1, contrast_shift_mm=(50.0, 0.0, 0.0))
    with pytest.raises(ConfigError):
        P.generate_cohort(tmp_path, 1, variant="bogus")
    (tmp_path / "PHANTOM001").mkdir()
    (tmp_path / "PHANTOM001" / "precious.txt").write_text("not a phantom")
    with pytest.raises(FileExistsError):
        P.generate_patient(tmp_path, 1)
    assert (tmp_path / "PHANTOM001" / "precious.txt").exists()


# =========================================================================== standard is pinned
#: truth.json keys as they were before the extended variant; the standard patient 1 is pinned on
#: them (new keys may be added, these values may not change).
LEGACY_TOP_KEYS = [
    "generator", "size", "seed", "patient_index", "patient_id", "patient_name", "study_uid",
    "frame_of_reference_uid", "series", "pet", "ct_grid", "pet_grid", "ct_noise_sigma_hu", "organs",
]
LEGACY_LESION_KEYS = [
    "label", "name", "organ", "site", "host_tissues", "centre_lps_mm", "semi_axes_mm",
    "volume_ml_analytic", "volume_ml_voxelized", "voxel_count", "longest_axial_diameter_mm",
    "short_axis_mm", "max_3d_diameter_mm", "centroid_lps_mm_voxelized", "skin_depth_mm", "suv",
    "suv_core", "suv_max_voxelized", "pet_voxel_count", "hu_noncontrast", "hu_contrast",
    "hu_core_noncontrast", "hu_core_contrast", "necrotic_core_radius_mm", "necrotic_core_fraction",
    "liver_capsule_distance_mm", "lung_pleura_distance_mm", "aorta_distance_mm",
    "vertebral_column_distance_mm", "purpose",
]
#: Computed from the generator *before* the extended variant was added (size small, seed 0).
STANDARD_P1_TRUTH_SHA256 = "62783b6c46ec1d8f4a7fa327766478e697b5249166b24a8480ef1092a5ebc060"
STANDARD_P1_SEG_PIXELS_SHA256 = "94a880fc82d380a9bac3f6ef9de6b45c9a13f0198b66ca3998671506a4208092"


def _rounded(v):
    if isinstance(v, float):
        return float(f"{v:.6g}")  # robust to last-bit differences between platforms
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


def legacy_truth_hash(truth: dict) -> str:
    doc = {
        "top": {k: _rounded(truth[k]) for k in LEGACY_TOP_KEYS},
        "lesions": [{k: _rounded(les[k]) for k in LEGACY_LESION_KEYS} for les in truth["lesions"]],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def test_standard_patient1_is_unchanged(p1, truth):
    assert legacy_truth_hash(truth) == STANDARD_P1_TRUTH_SHA256
    seg = pydicom.dcmread(p1 / "SEG_lesions.dcm")
    assert hashlib.sha256(seg.PixelData).hexdigest() == STANDARD_P1_SEG_PIXELS_SHA256
    assert truth["variant"] == "standard" and truth["organ_formats"] == ["seg"]
    assert truth["contrast_shift_mm"] is None
    assert truth["contrast_frame_of_reference_uid"] == truth["frame_of_reference_uid"]
    for extra in ("RTSTRUCT_organs.dcm", "SEG_lesions_noncontrast.dcm", "totalseg"):
        assert not (p1 / extra).exists(), extra
    # the new keys exist for the standard lesions too
    by = {l["name"]: l for l in truth["lesions"]}
    assert by["node_paraaortic"]["relation_to_aorta"] == "abutting"
    assert by["node_paraaortic"]["aorta_contact_angle_deg"] == 0.0  # tangent: point contact
    assert 0 < by["node_paraaortic"]["aorta_contact_angle_deg_within_voxel"] < 180
    assert by["necrotic_mass"]["uniform"] is False and by["liver_deep"]["uniform"] is True


# =========================================================================== extended variant
EXT_NAMES = NAMES + ["aorta_encasing", "liver_exophytic", "lung_deep", "noncontrast_invisible",
                     "nodule_superficial_8mm", "nodule_deep_8mm", "node_axillary_L",
                     "node_inguinal_R"]
SHIFT = (3.0, -2.0, 4.5)
ORGAN_ROIS = {"Liver": "liver", "Spleen": "spleen", "Lung_L": "lung_left", "Lung_R": "lung_right",
              "Aorta": "aorta", "Spine": "vertebral_column"}


@pytest.fixture(scope="module")
def ext(tmp_path_factory) -> dict:
    """Extended patient 1 with a shifted contrast CT (all organ formats by default)."""
    out = tmp_path_factory.mktemp("phantom_ext")
    t0 = time.perf_counter()
    folder = P.generate_patient(out, 1, "small", 0, variant="extended", contrast_shift_mm=SHIFT)
    elapsed = time.perf_counter() - t0
    t = json.loads((folder / "truth.json").read_text())
    nc, nc_vol, nc_grid = read_series(folder / "CT_noncontrast")
    ce, ce_vol, ce_grid = read_series(folder / "CT_contrast")
    _, organs = seg_masks(folder / "SEG_organs.dcm", nc)
    _, les_nc = seg_masks(folder / "SEG_lesions_noncontrast.dcm", nc)
    _, les_ce = seg_masks(folder / "SEG_lesions.dcm", ce)
    return {
        "folder": folder, "truth": t, "by": {l["name"]: l for l in t["lesions"]},
        "elapsed": elapsed, "nc": nc, "nc_vol": nc_vol, "grid": nc_grid, "ce": ce,
        "ce_vol": ce_vol, "ce_grid": ce_grid,
        "organs": {name: organs[..., i] > 0 for i, name in enumerate(P.ORGAN_NAMES)},
        "les_nc": {name: les_nc[..., i] > 0 for i, name in enumerate(EXT_NAMES)},
        "les_ce": {name: les_ce[..., i] > 0 for i, name in enumerate(EXT_NAMES)},
    }


def test_extended_designs_are_separated_and_keep_the_standard_ones():
    lesions = P.lesion_designs("small", "extended")
    assert [l.name for l in lesions] == EXT_NAMES
    assert lesions[:8] == P.lesion_designs("small")
    for i, a in enumerate(lesions):
        for b in lesions[i + 1 :]:
            gap = np.linalg.norm(np.subtract(a.centre_lps_mm, b.centre_lps_mm))
            assert gap > max(a.semi_axes_mm) + max(b.semi_axes_mm) + 5, (a.name, b.name)
        assert P.structure_distance(a, "vertebral_column") > 5, a.name
        assert a.centre_lps_mm[1] + a.semi_axes_mm[1] < 120
    # jittered extended patients: the standard lesions and demographics are those of the
    # standard patient; anchors hold; the generator's overlap / host checks pass
    d3s, d3e = P.patient_design(3, 0), P.patient_design(3, 0, variant="extended")
    assert d3e.lesions[:8] == d3s.lesions and d3e.weight_kg == d3s.weight_kg
    exo = {l.name: l for l in d3e.lesions}["liver_exophytic"]
    assert P.structure_distance(exo, "liver@centre") == pytest.approx(
        P.EXOPHYTIC_CENTRE_DEPTH_MM, abs=1e-5)
    arr = P.phantom_arrays("small", 3, 0, "extended")  # raises on overlap / wrong host tissue
    by3 = {l.name: l for l in d3e.lesions}
    assert P.aorta_contact_angle_analytic(by3["aorta_encasing"]) > 180
    assert 0 < P.aorta_contact_angle_analytic(by3["node_paraaortic"], within_mm=2.5) < 180
    label = {name: k for k, name in enumerate(arr.lesion_names, start=1)}
    m = arr.lesion_labels == label["liver_exophytic"]
    assert 0.3 <= (m & ~arr.organ_mask("liver")).sum() / m.sum() <= 0.6
    assert P.exophytic_fraction_analytic(exo) == pytest.approx(0.44, abs=0.05)


def test_extended_truth(ext):
    t, by = ext["truth"], ext["by"]
    assert [l["name"] for l in t["lesions"]] == EXT_NAMES
    assert t["variant"] == "extended"
    assert t["organ_formats"] == ["seg", "rtstruct", "totalseg"]
    for les in t["lesions"]:
        name = les["name"]
        # aorta relation: encasing > 180 degrees, abutting <= 180, the others do not touch it
        if name == "aorta_encasing":
            assert les["relation_to_aorta"] == "encasing"
            assert les["aorta_contact_angle_deg"] > 180
            assert les["aorta_contact_angle_deg_within_voxel"] >= les["aorta_contact_angle_deg"]
            assert les["aorta_distance_mm"] == 0.0 and les["excludes_aortic_lumen"] is True
        elif name == "node_paraaortic":
            assert les["relation_to_aorta"] == "abutting"
            assert les["aorta_contact_angle_deg"] == 0.0
            assert 0 < les["aorta_contact_angle_deg_within_voxel"] < 180
            assert les["aorta_distance_mm"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert les["relation_to_aorta"] == "none", name
            assert les["aorta_contact_angle_deg"] == 0.0 and les["aorta_distance_mm"] > 5, name
        a, b, c = les["semi_axes_mm"]
        if a == b == c and not les["excludes_aortic_lumen"]:  # surface-to-surface, analytic
            cx, cy, _ = les["centre_lps_mm"]
            assert les["aorta_distance_mm"] == pytest.approx(math.hypot(cx - 20, cy - 40) - 12 - a,
                                                             abs=1e-6)
            # sphere: the shortest path to the centre is the skin depth + radius
            assert les["path_length_analytic_mm"] == pytest.approx(les["skin_depth_mm"] + a,
                                                                   abs=1e-3), name
            assert les["path_length_to_surface_mm"] == pytest.approx(les["skin_depth_mm"],
                                                                     abs=1e-3), name
        # the entry is on the skin and is the nearest skin point to the centre
        ex, ey, ez = les["path_entry_lps_mm"]
        assert (ex / 170) ** 2 + (ey / 120) ** 2 == pytest.approx(1.0, abs=1e-9)
        cx, cy, cz = les["centre_lps_mm"]
        assert ez == cz
        ref = _ellipse_distance_bruteforce(cx, cy, 170.0, 120.0)
        assert les["path_length_analytic_mm"] == pytest.approx(ref, abs=1e-3), name
        assert les["designed_enhancement_hu"] == les["hu_contrast"] - les["hu_noncontrast"]
        assert les["designed_cnr_noncontrast"] == pytest.approx(
            abs(les["hu_noncontrast"] - les["host_hu_noncontrast"]) / 8.0)
        assert les["uniform"] == (les["necrotic_core_radius_mm"] == 0)
        assert les["centre_lps_mm_contrast"] == pytest.approx(np.add(les["centre_lps_mm"], SHIFT))
        if min(a, b, c) >= 8:
            ratio = les["volume_ml_voxelized"] / les["volume_ml_analytic"]
            assert ratio == pytest.approx(1.0, abs=0.05), name
        if les["uniform"]:  # no blur: every PET voxel of a uniform lesion is at its SUV
            assert les["mtv41_ml_voxelized"] == pytest.approx(les["pet_voxel_count"] * 0.064)
            assert les["suv_mean_voxelized"] == pytest.approx(les["suv"], rel=5e-3)
            assert les["necrotic_core_fraction"] == 0 == les["necrotic_core_fraction_voxelized"]
    nec = by["necrotic_mass"]
    assert 0.3 < nec["mtv41_ml_voxelized"] / (nec["pet_voxel_count"] * 0.064) < 0.9
    assert nec["necrotic_core_fraction_voxelized"] == pytest.approx(nec["necrotic_core_fraction"],
                                                                    abs=0.05)
    # exophytic liver lesion; the others are inside the liver
    exo = by["liver_exophytic"]
    assert 0.3 <= exo["exophytic_fraction"] <= 0.6
    assert exo["exophytic_fraction"] == pytest.approx(exo["exophytic_fraction_analytic"], abs=0.05)
    assert exo["liver_capsule_distance_mm"] == 0.0
    for name in ("liver_deep", "liver_subcapsular", "noncontrast_invisible"):
        assert by[name]["exophytic_fraction"] == 0.0, name
    assert by["liver_subcapsular"]["liver_capsule_distance_mm"] == pytest.approx(0.0, abs=1e-6)
    assert by["noncontrast_invisible"]["liver_capsule_distance_mm"] > 10
    # invisible without contrast, enhancing with it
    inv = by["noncontrast_invisible"]
    assert inv["hu_noncontrast"] == inv["host_hu_noncontrast"] == 55.0
    assert inv["designed_cnr_noncontrast"] == 0.0 and inv["designed_enhancement_hu"] == 85.0
    assert inv["suv"] == 5.0 and inv["designed_cnr_contrast"] > 3
    # clear straight path of the superficial lesion
    flank = by["soft_tissue_flank"]
    assert flank["path_tissues"] == ["fat"] and flank["path_lesions_crossed"] == []
    assert flank["aerated_lung_path_mm_analytic"] == 0.0


def _segment_in_ellipsoid_mm(p0, p1, centre, semi) -> float:
    """Length of the segment p0-p1 inside an ellipsoid (independent quadratic solve)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    o = (p0 - centre) / semi
    d = (p1 - p0) / semi
    a, b, c = d @ d, 2 * o @ d, o @ o - 1
    disc = b * b - 4 * a * c
    if disc <= 0:
        return 0.0
    t0, t1 = (-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)
    return max(0.0, min(t1, 1.0) - max(t0, 0.0)) * float(np.linalg.norm(p1 - p0))


def test_lung_deep_path_crosses_aerated_lung(ext):
    les = ext["by"]["lung_deep"]
    assert les["host_tissues"] == ["lung_right"]
    assert les["path_tissues"] == ["fat", "soft_tissue", "lung_right"]
    assert les["path_lesions_crossed"] == []
    entry, surf = les["path_entry_lps_mm"], les["path_surface_point_lps_mm"]
    ref = _segment_in_ellipsoid_mm(entry, surf, np.array([-80.0, 10, 50]), np.array([55.0, 75, 50]))
    assert les["aerated_lung_path_mm_analytic"] == pytest.approx(ref, abs=1e-6)
    assert les["aerated_lung_path_mm_analytic"] > 30
    assert les["lung_pleura_distance_mm"] > 15 and les["skin_depth_mm"] > 60
    # the voxelized CT agrees: sample the path in the non-contrast CT (lung is -850 HU)
    grid, vol = ext["grid"], ext["nc_vol"]
    n = 2000
    pts = np.asarray(entry) + np.linspace(0, 1, n)[:, None] * np.subtract(surf, entry)[None, :]
    idx = np.rint(grid.lps_to_zyx(pts)).astype(int)
    hu = vol[idx[:, 0], idx[:, 1], idx[:, 2]]
    step = float(np.linalg.norm(np.subtract(surf, entry))) / (n - 1)
    assert float((hu < -500).sum()) * step == pytest.approx(ref, abs=4.0)


def test_extended_masks_on_the_images(ext):
    by, organs, les_nc, les_ce = ext["by"], ext["organs"], ext["les_nc"], ext["les_ce"]
    for name in EXT_NAMES:
        assert int(les_nc[name].sum()) == by[name]["voxel_count"], name
        assert int(les_ce[name].sum()) == by[name]["voxel_count_contrast"], name
    # the encasing lesion wraps the aorta but excludes its lumen; the organ masks ignore lesions
    enc = les_nc["aorta_encasing"]
    assert not (enc & organs["aorta"]).any()
    assert organs["aorta"].sum(axis=(1, 2)).min() > 0  # the aorta runs through every slice

    def wall_fraction(lesion: np.ndarray) -> float:
        """Largest per-slice fraction of aortic wall pixels with a lesion 4-neighbour."""
        best = 0.0
        for k in np.flatnonzero(lesion.any(axis=(1, 2))):
            a = organs["aorta"][k]
            inner = a.copy()
            inner[1:, :] &= a[:-1, :]
            inner[:-1, :] &= a[1:, :]
            inner[:, 1:] &= a[:, :-1]
            inner[:, :-1] &= a[:, 1:]
            wall = a & ~inner
            l2 = lesion[k]
            near = np.zeros_like(l2)
            near[1:, :] |= l2[:-1, :]
            near[:-1, :] |= l2[1:, :]
            near[:, 1:] |= l2[:, :-1]
            near[:, :-1] |= l2[:, 1:]
            best = max(best, float((wall & near).sum()) / float(wall.sum()))
        return best

    assert wall_fraction(enc) > 0.5
    assert 0 < wall_fraction(les_nc["node_paraaortic"]) < 0.5
    assert wall_fraction(les_nc["liver_deep"]) == 0.0
    # exophytic fraction is the voxel fraction outside the organ SEG's liver (not extended)
    exo = les_nc["liver_exophytic"]
    frac = float((exo & ~organs["liver"]).sum()) / float(exo.sum())
    assert frac == pytest.approx(by["liver_exophytic"]["exophytic_fraction"], abs=1e-12)
    assert not (les_nc["noncontrast_invisible"] & ~organs["liver"]).any()
    # noncontrast_invisible: lesion and surrounding liver differ by noise only without contrast
    from scipy import ndimage

    inv = les_nc["noncontrast_invisible"]
    ring = ndimage.binary_dilation(inv, iterations=3) & ~inv & organs["liver"]
    nc = ext["nc_vol"]
    cnr_nc = abs(nc[inv].mean() - nc[ring].mean()) / nc[ring].std()
    assert cnr_nc < 0.3
    other = les_nc["liver_deep"]
    ring_o = ndimage.binary_dilation(other, iterations=3) & ~other & organs["liver"]
    assert abs(nc[other].mean() - nc[ring_o].mean()) / nc[ring_o].std() > 0.8
    inv_ce = les_ce["noncontrast_invisible"]
    ring_ce = ndimage.binary_dilation(inv_ce, iterations=3) & ~inv_ce
    ce = ext["ce_vol"]
    assert ce[inv_ce].mean() == pytest.approx(140, abs=2)
    assert ce[inv_ce].mean() - np.median(ce[ring_ce]) > 20


def test_lesion_rtstruct_with_crescent_rasterizes_like_the_seg(ext):
    from pipeline.io.rtstruct import read_rtstruct

    t, ce, grid = ext["truth"], ext["ce"], ext["ce_grid"]
    rs = pydicom.dcmread(ext["folder"] / "RTSTRUCT_lesions.dcm")
    assert rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == (
        t["contrast_frame_of_reference_uid"])
    masks = read_rtstruct(ext["folder"] / "RTSTRUCT_lesions.dcm", grid=grid,
                          series_uid=t["series"]["ct_contrast"],
                          sop_instance_uids=[d.SOPInstanceUID for d in ce])
    counts = {m.name: m.voxel_count for m in masks}
    assert list(counts) == EXT_NAMES
    for name in EXT_NAMES:
        n = int(ext["les_ce"][name].sum())
        assert abs(counts[name] - n) <= 0.03 * n, (name, counts[name], n)


def test_rtstruct_organs_rasterize_like_the_seg(ext):
    from pipeline.io.rtstruct import read_rtstruct
    from pipeline.records import SegmentKind

    t, nc, grid = ext["truth"], ext["nc"], ext["grid"]
    path = ext["folder"] / "RTSTRUCT_organs.dcm"
    rs = pydicom.dcmread(path)
    assert rs.Modality == "RTSTRUCT" and rs.SeriesInstanceUID == t["series"]["rtstruct_organs"]
    ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == t["frame_of_reference_uid"]
    ser = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ser.SeriesInstanceUID == t["series"]["ct_noncontrast"]
    names = [r.ROIName for r in rs.StructureSetROISequence]
    assert names == list(ORGAN_ROIS)
    assert {o.RTROIInterpretedType for o in rs.RTROIObservationsSequence} == {"ORGAN"}
    # holes / several pieces on one slice are separate contours (the right lung wraps the dome
    # of the liver: outline + hole)
    lung_r = rs.ROIContourSequence[names.index("Lung_R")].ContourSequence
    zs = [round(float(c.ContourData[2]), 3) for c in lung_r]
    assert max(zs.count(z) for z in set(zs)) >= 2
    for c in lung_r:
        assert c.ContourGeometricType == "CLOSED_PLANAR"
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert len(pts) == c.NumberOfContourPoints and np.ptp(pts[:, 2]) == 0
    masks = read_rtstruct(path, grid=grid, series_uid=t["series"]["ct_noncontrast"],
                          sop_instance_uids=[d.SOPInstanceUID for d in nc])
    assert [m.name for m in masks] == list(ORGAN_ROIS)
    for m in masks:
        assert m.kind is SegmentKind.ORGAN
        seg = ext["organs"][ORGAN_ROIS[m.name]]
        n = int(seg.sum())
        assert abs(m.voxel_count - n) <= 0.03 * n, (m.name, m.voxel_count, n)
        full = np.zeros(grid.shape_zyx, bool)
        full[tuple(slice(a, b) for a, b in m.bbox_zyx)] = m.crop
        assert (full != seg).sum() <= 0.03 * n


def test_totalseg_folder_equals_the_seg(ext):
    folder = ext["folder"] / "totalseg"
    readme = (folder / "README.txt").read_text()
    assert ext["truth"]["series"]["ct_noncontrast"] in readme
    files = sorted(p.name for p in folder.glob("*.nii.gz"))
    expected = {name for name, *_ in P.TOTALSEG_STRUCTURES}
    assert {f[: -len(".nii.gz")] for f in files} == expected
    for name in ("liver", "spleen", "aorta", "lung_upper_lobe_left", "lung_lower_lobe_left",
                 "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
                 "vertebrae_L1"):
        assert name in expected
    union = {o: np.zeros(ext["grid"].shape_zyx, bool) for o in P.ORGAN_NAMES}
    organ_of = {name: organ for name, organ, _, _ in P.TOTALSEG_STRUCTURES}
    for f in files:
        img = nib.load(folder / f)
        assert img.get_data_dtype() == np.uint8
        grid = Grid.from_nifti_affine(img.affine, img.shape)  # RAS -> LPS
        assert grid.same_as(ext["grid"])
        data = np.asarray(img.dataobj).transpose(2, 1, 0)
        assert set(np.unique(data)) <= {0, 1}
        m = data > 0
        organ = organ_of[f[: -len(".nii.gz")]]
        assert m.any() and not (m & union[organ]).any(), f  # lobes / vertebrae are disjoint
        union[organ] |= m
    for organ in P.ORGAN_NAMES:
        assert np.array_equal(union[organ], ext["organs"][organ]), organ


def test_shifted_contrast_series(ext):
    t, by, folder = ext["truth"], ext["by"], ext["folder"]
    assert t["contrast_shift_mm"] == list(SHIFT)
    fr, fr_ce = t["frame_of_reference_uid"], t["contrast_frame_of_reference_uid"]
    assert fr != fr_ce
    assert {d.FrameOfReferenceUID for d in ext["ce"]} == {fr_ce}
    assert {d.FrameOfReferenceUID for d in ext["nc"]} == {fr}
    pet = pydicom.dcmread(next((folder / "PET").glob("*.dcm")), stop_before_pixels=True)
    assert pet.FrameOfReferenceUID == fr
    seg_ce = pydicom.dcmread(folder / "SEG_lesions.dcm", stop_before_pixels=True)
    seg_nc = pydicom.dcmread(folder / "SEG_lesions_noncontrast.dcm", stop_before_pixels=True)
    assert seg_ce.FrameOfReferenceUID == fr_ce and seg_nc.FrameOfReferenceUID == fr
    assert seg_ce.ReferencedSeriesSequence[0].SeriesInstanceUID == t["series"]["ct_contrast"]
    assert seg_nc.ReferencedSeriesSequence[0].SeriesInstanceUID == t["series"]["ct_noncontrast"]
    assert seg_nc.SeriesInstanceUID == t["series"]["seg_lesions_noncontrast"]
    side = json.loads((folder / "labelmap" / "lesions.json").read_text())
    assert side["frame_of_reference_uid"] == fr_ce
    assert t["files"]["SEG_lesions_noncontrast.dcm"]["references_series"] == "ct_noncontrast"
    assert ext["grid"].same_as(ext["ce_grid"])  # same grid, shifted content
    # the lesions move by the offset, in the SEGs ...
    grid = ext["grid"]
    for name in ("necrotic_mass", "liver_deep", "soft_tissue_flank"):
        c_nc = grid.zyx_to_lps(np.argwhere(ext["les_nc"][name]).mean(axis=0)[None])[0]
        c_ce = grid.zyx_to_lps(np.argwhere(ext["les_ce"][name]).mean(axis=0)[None])[0]
        assert c_ce - c_nc == pytest.approx(SHIFT, abs=0.6), name
        assert c_nc == pytest.approx(by[name]["centre_lps_mm"], abs=0.6)
    # ... and in the contrast image itself: the enhancing aorta and a lesion's HU
    ce = ext["ce_vol"]
    k = nearest_index(grid, (0, 0, 0))[0]
    xs, ys, _ = axes(grid)
    near = np.hypot(xs[None, :] - 20, ys[:, None] - 40) < 17  # not the spine, not the table
    jj, ii = np.nonzero((ce[k] > 180) & near)  # the enhanced aorta (250 HU)
    cx, cy, _ = grid.zyx_to_lps(np.array([[k, jj.mean(), ii.mean()]]))[0]
    assert (cx, cy) == pytest.approx((20 + SHIFT[0], 40 + SHIFT[1]), abs=0.5)
    c = np.add(by["liver_deep"]["centre_lps_mm"], SHIFT)
    kk, j, i = nearest_index(grid, c)
    assert ce[kk - 1 : kk + 2, j - 1 : j + 2, i - 1 : i + 2].mean() == pytest.approx(140, abs=6)
