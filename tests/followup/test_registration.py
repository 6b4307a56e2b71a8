"""Follow-up registration on low-resolution references, against a KNOWN patient motion.

The "follow-up" is the phantom CT of another noise seed, resampled (SimpleITK, linear) as seen by
a scanner after the patient moved by a known rigid transform ``T_true`` (30 mm shift, 10 deg about
z, 3 deg about x) onto a grid with another origin. A lesion centre ``c`` (baseline LPS) lies at
``T_true(c)`` in the follow-up, so ``to_baseline(T_true(c))`` must give ``c`` back.

Tolerance: 2 mm on every lesion centre. The references are block means to about 4 mm (5 x 5 x 3 mm
voxels for the small phantom); a registration on them is good to a fraction of a voxel (measured:
below 0.5 mm, rigid or affine), and 2 mm is under half the coarsest reference voxel, well below the
20 mm matching limit.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.errors import FollowupError
from pipeline.followup import registration as R
from pipeline.geometry import Grid
from pipeline.records import Volume
from pipeline.testing.phantom import phantom_arrays

CFG = dict(resample_mm=4.0, body_threshold_hu=-500.0, metric="mattes", histogram_bins=50,
           sampling_fraction=0.1, max_iterations=200, affine=True, min_body_dice=0.9,
           max_lung_msd_mm=5.0)
TOL_MM = 2.0


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


#: True motion: baseline LPS -> follow-up scanner LPS, p_fu = ROT @ p_bl + SHIFT.
ROT = _rot("z", 10.0) @ _rot("x", 3.0)
SHIFT = np.array([10.0, -20.0, 20.0])  # |SHIFT| = 30 mm


def _follow_up(hu: np.ndarray, grid: Grid, fu_grid: Grid) -> np.ndarray:
    """``hu`` seen by a scanner on ``fu_grid`` after the patient moved by (ROT, SHIFT)."""
    inv = sitk.AffineTransform(3)  # resampling transform: follow-up point -> baseline point
    inv.SetMatrix(tuple(float(v) for v in ROT.T.ravel()))
    inv.SetTranslation(tuple(float(v) for v in -ROT.T @ SHIFT))
    out = sitk.Resample(grid.to_sitk(hu.astype(np.float32)),
                        fu_grid.to_sitk(np.zeros(fu_grid.shape_zyx, np.float32)), inv,
                        sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


@pytest.fixture(scope="module")
def case():
    base = phantom_arrays("small", 1, 0)
    other = phantom_arrays("small", 1, 1)  # same patient, other CT noise
    g = base.ct_grid
    fu_grid = Grid(g.shape_zyx, g.spacing_xyz_mm,
                   tuple(float(v) for v in np.array(g.origin_lps_mm) + [7.0, -11.0, 13.0]),
                   g.direction)
    fu = _follow_up(other.ct_noncontrast_hu, g, fu_grid)
    ref_b = R.reference_volume(base.ct_noncontrast_hu, g, resample_mm=4.0,
                               frame_of_reference_uid="1.2.3.1", series_uid="1.2.3.10")
    ref_f = R.reference_volume(fu, fu_grid, resample_mm=4.0,
                               frame_of_reference_uid="1.2.3.2", series_uid="1.2.3.20")
    centres = np.array([les.centre_lps_mm for les in base.design.lesions])
    return dict(base=base, other=other, ref_b=ref_b, ref_f=ref_f, centres=centres,
                fu=fu, fu_grid=fu_grid)


def _errors(res, centres):
    return np.linalg.norm(res.to_baseline(centres @ ROT.T + SHIFT) - centres, axis=1)


@pytest.mark.parametrize("affine", [False, True])
def test_known_motion_recovered(case, affine):
    res = R.register_followup(case["ref_b"], case["ref_f"], {**CFG, "affine": affine})
    assert res.status == "ok", res.reason
    assert res.reason == ""
    err = _errors(res, case["centres"])
    assert err.max() < TOL_MM, err
    true_angle = np.degrees(np.arccos((np.trace(ROT) - 1) / 2))  # 10.4 deg
    assert res.rotation_deg == pytest.approx(true_angle, abs=1.0)
    assert res.body_dice > 0.95
    assert res.lung_msd_mm is not None and res.lung_msd_mm < CFG["max_lung_msd_mm"]
    assert ("rigid only" in res.notes) == (not affine)
    d = res.as_dict()
    assert d["status"] == "ok" and len(d["followup_to_baseline"]) == 16
    # repeatable: fixed sampling seed
    again = R.register_followup(case["ref_b"], case["ref_f"], {**CFG, "affine": affine})
    assert np.allclose(again.followup_to_baseline, res.followup_to_baseline, atol=1e-9)


def test_same_frame_is_still_registered(case):
    """Same FrameOfReferenceUID but the patient moved: the motion is found, not assumed away."""
    ref_f = R.ReferenceVolume(case["ref_f"].hu, case["ref_f"].origin_lps_mm,
                              case["ref_f"].spacing_xyz_mm, case["ref_f"].direction,
                              case["ref_b"].frame_of_reference_uid, "1.2.3.20")
    res = R.register_followup(case["ref_b"], ref_f, {**CFG, "affine": False})
    assert res.status == "ok"
    assert _errors(res, case["centres"]).max() < TOL_MM


def test_same_frame_without_motion_is_identity(case):
    g = case["base"].ct_grid
    ref_f = R.reference_volume(case["other"].ct_noncontrast_hu, g, resample_mm=4.0,
                               frame_of_reference_uid="1.2.3.1", series_uid="1.2.3.30")
    res = R.register_followup(case["ref_b"], ref_f, {**CFG, "affine": False})
    assert res.status == "identity", res.notes
    assert np.array_equal(res.matrix, np.eye(4))
    assert res.translation_mm < R.IDENTITY_MAX_TRANSLATION_MM


@pytest.mark.parametrize("override, figure", [
    ({"min_body_dice": 1.0}, "body Dice"),
    ({"max_lung_msd_mm": 0.01}, "lung mean surface distance"),
])
def test_quality_failure_gives_failed_with_reason(case, override, figure):
    res = R.register_followup(case["ref_b"], case["ref_f"], {**CFG, "affine": False, **override})
    assert res.status == "failed"
    assert figure in res.reason
    key, value = next(iter(override.items()))
    assert f"{key} {value:.2f}" in res.reason
    # the transform is still recorded (and right), callers must not use it for matching
    assert not np.allclose(res.matrix, np.eye(4))
    assert _errors(res, case["centres"]).max() < TOL_MM


def test_unregistrable_follow_ups_fail_with_reason(case):
    ref_f = case["ref_f"]
    cropped = R.ReferenceVolume(ref_f.hu[:5], ref_f.origin_lps_mm, ref_f.spacing_xyz_mm,
                                ref_f.direction, "1.2.3.2", "s")
    res = R.register_followup(case["ref_b"], cropped, CFG)
    assert res.status == "failed" and "too small to register" in res.reason
    air = R.ReferenceVolume(np.full_like(ref_f.hu, -1000), ref_f.origin_lps_mm,
                            ref_f.spacing_xyz_mm, ref_f.direction, "1.2.3.2", "s")
    res = R.register_followup(case["ref_b"], air, CFG)
    assert res.status == "failed" and "no body" in res.reason and "follow-up" in res.reason


def test_no_lungs_skips_the_lung_check_with_a_note(case):
    """A follow-up of the upper abdomen only (28 slices, up to the lung bases).

    Tolerance 4 mm here: below the lungs the phantom is a smooth cylinder with ellipsoidal
    organs, so the slide along the body axis is weakly determined on 5 mm references (measured
    2.3 mm at the deep liver lesion; a shorter 25-slice crop gives 7.5 mm, still inside the 20 mm
    matching limit). Body masks cannot reveal such a slide (a cylinder looks the same).
    """
    fu_grid = case["fu_grid"]
    keep = fu_grid.zyx_to_lps(np.array([[k, 0, 0] for k in range(fu_grid.shape_zyx[0])]))[:, 2]
    # the lungs start at z = 0 (baseline); the follow-up's z is shifted by about +20 mm, so the
    # crop keeps at most a lung sliver below LUNG_MIN_ML
    ks = np.flatnonzero(keep < 12.0)
    sub = fu_grid.crop(((int(ks[0]), int(ks[-1]) + 1), (0, fu_grid.shape_zyx[1]),
                        (0, fu_grid.shape_zyx[2])))
    hu = case["fu"][ks[0]:ks[-1] + 1]
    ref_f = R.reference_volume(hu, sub, resample_mm=4.0, frame_of_reference_uid="1.2.3.2",
                               series_uid="s")
    res = R.register_followup(case["ref_b"], ref_f, {**CFG, "affine": False})
    assert res.lung_msd_mm is None
    assert "lung check skipped" in res.notes
    assert res.status == "ok", res.reason
    liver = np.array([[-70.0, 0.0, -30.0]])  # deep liver lesion centre, in the cropped volume
    assert _errors(res, liver).max() < 4.0


# --------------------------------------------------------------------------- reference files
def test_reference_round_trip(case, tmp_path):
    ref = case["ref_b"]
    path = tmp_path / "study" / R.REFERENCE_FILE
    R.write_reference(path, ref)
    assert [p.name for p in path.parent.iterdir()] == [R.REFERENCE_FILE]  # no temp file left
    back = R.read_reference(path)
    assert back.hu.dtype == np.int16 and np.array_equal(back.hu, ref.hu)
    assert back.origin_lps_mm == ref.origin_lps_mm
    assert back.spacing_xyz_mm == ref.spacing_xyz_mm
    assert back.direction == ref.direction
    assert (back.frame_of_reference_uid, back.series_uid) == ("1.2.3.1", "1.2.3.10")
    assert back.grid.same_as(ref.grid)


def test_reference_grid_is_the_block_mean_grid(case):
    ref, g = case["ref_b"], case["base"].ct_grid
    # 2.5 mm -> factor 2 (5 mm), 3 mm -> factor 1 (3 mm); origin = centre of the first block
    assert ref.spacing_xyz_mm == (5.0, 5.0, 3.0)
    assert ref.hu.shape == (56, 80, 80)
    assert np.allclose(ref.origin_lps_mm, np.array(g.origin_lps_mm) + [1.25, 1.25, 0.0])
    block = case["base"].ct_noncontrast_hu[10, 40:42, 60:62].clip(-1000, 1500).mean()
    assert ref.hu[10, 20, 30] == int(np.rint(block))


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04broken"])
def test_corrupt_reference_names_the_file(tmp_path, content):
    path = tmp_path / R.REFERENCE_FILE
    path.write_bytes(content)
    with pytest.raises(FollowupError) as exc:
        R.read_reference(path)
    assert str(path) in str(exc.value) and "unreadable" in str(exc.value)
    assert exc.value.hint


def test_missing_and_unavailable_references(tmp_path):
    with pytest.raises(FollowupError, match="not found"):
        R.read_reference(tmp_path / "nothing.npz")
    path = tmp_path / R.REFERENCE_FILE
    R.write_reference_unavailable(path, "the study has no CT")
    with pytest.raises(FollowupError, match="no registration reference: the study has no CT"):
        R.read_reference(path)


def test_study_reference_prefers_the_noncontrast_ct(case, tmp_path):
    base = case["base"]
    g = base.ct_grid
    nc = Volume(base.ct_noncontrast_hu, g, "HU", "1.2.3.10", "1.2.3.1")
    ce = Volume(base.ct_contrast_hu, g, "HU", "1.2.3.11", "1.2.3.1")
    cfg = {"followup": {"registration": CFG}}
    assert R.write_study_reference(tmp_path, {"contrast": ce, "noncontrast": nc}, cfg) is None
    ref = R.read_reference(tmp_path / R.REFERENCE_FILE)
    assert ref.series_uid == "1.2.3.10" and np.array_equal(ref.hu, case["ref_b"].hu)
    assert (tmp_path / R.REFERENCE_FILE).stat().st_size < 1_000_000
    assert R.write_study_reference(tmp_path, {"contrast": ce}, cfg) is None
    assert R.read_reference(tmp_path / R.REFERENCE_FILE).series_uid == "1.2.3.11"
    warning = R.write_study_reference(tmp_path, {}, cfg)
    assert "no CT" in warning
    with pytest.raises(FollowupError, match="no CT"):
        R.read_reference(tmp_path / R.REFERENCE_FILE)


# --------------------------------------------------------------------------- the study job
def test_study_job_writes_the_reference_and_a_placeholder_when_it_fails(case, tmp_path):
    from pipeline.config import load_config
    from pipeline.io.index import scan_archive
    from pipeline.sheet import build_study_sheet
    from pipeline.study import run_study
    from pipeline.testing import phantom

    root = tmp_path / "archive"
    phantom.generate_patient(root, patient_index=1, size="small", seed=0)
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    prov = run_study(row, index.files, root, load_config(), tmp_path / "ok")
    assert prov["status"] == "done", prov["failures"]
    ref = R.read_reference(tmp_path / "ok" / R.REFERENCE_FILE)
    assert ref.series_uid == row["ct_series_uid"]
    # the phantom's non-contrast CT read back from DICOM gives the same block means
    assert ref.grid.same_as(case["ref_b"].grid)
    assert np.abs(ref.hu.astype(int) - case["ref_b"].hu).max() <= 1

    bad = dict(row, ct_series_uid="1.2.826.0.1.3680043.99.1", ce_ct_series_uid="")
    prov = run_study(bad, index.files, root, load_config(), tmp_path / "failed")
    assert prov["status"] == "failed"
    with pytest.raises(FollowupError, match="no registration reference"):
        R.read_reference(tmp_path / "failed" / R.REFERENCE_FILE)
