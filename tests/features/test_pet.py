"""PET features: CT-grid mask mapped to a coarser, offset PET grid with a uniform sphere."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pipeline.features.pet as pet_mod
from pipeline.features.pet import lesion_coverage, peak_radius_mm, pet_features, sphere_offsets
from pipeline.geometry import Grid, bbox_of
from pipeline.records import LesionMask, MaskSource, Volume

CT = Grid((160, 400, 400), (0.8, 0.8, 2.5), (-160.0, -160.0, -200.0))
PET4 = Grid((60, 64, 64), (4.0, 4.0, 4.0), (-126.7, -127.3, -121.9))  # offset from CT
PET_ANISO = Grid((80, 100, 100), (2.5, 2.5, 3.0), (-124.1, -123.6, -119.3))


def sphere_mask(grid: Grid, centre, r: float, name="lesion") -> LesionMask:
    centre = np.asarray(centre, float)
    corners = centre + np.array(list(itertools.product((-r, r), repeat=3)))
    idx = grid.lps_to_zyx(corners)
    lo = np.maximum(np.floor(idx.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, grid.shape_zyx)
    zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    pts = grid.zyx_to_lps(np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()]))
    inside = (np.linalg.norm(pts - centre, axis=1) <= r).reshape(zz.shape)
    bb = bbox_of(inside)
    crop = inside[tuple(slice(a, b) for a, b in bb)]
    return LesionMask(name, MaskSource.SEG, grid, tuple((int(a + l), int(b + l)) for (a, b), l in zip(bb, lo)), crop)


def pet_sphere(grid: Grid, centre, r: float, suv: float, background: float, n_sub: int = 5) -> Volume:
    """PET with partial volume: each voxel = background + (suv - background) x fraction inside."""
    arr = np.full(grid.shape_zyx, background, dtype=np.float32)
    centre = np.asarray(centre, float)
    sx, sy, sz = grid.spacing_xyz_mm
    reach = r + np.linalg.norm([sx, sy, sz])
    idx = grid.lps_to_zyx(centre[None])[0]
    m = [int(np.ceil(reach / s)) for s in (sz, sy, sx)]
    lo = np.maximum(np.floor(idx).astype(int) - m, 0)
    hi = np.minimum(np.ceil(idx).astype(int) + m + 1, grid.shape_zyx)
    vox = np.array(list(itertools.product(*[range(a, b) for a, b in zip(lo, hi)])), float)
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    sub = np.array(list(itertools.product(offs, repeat=3)))
    pts = grid.zyx_to_lps((vox[:, None, :] + sub[None]).reshape(-1, 3))
    frac = (np.linalg.norm(pts - centre, axis=1) <= r).reshape(len(vox), -1).mean(1)
    vi = vox.astype(int)
    arr[vi[:, 0], vi[:, 1], vi[:, 2]] = background + (suv - background) * frac
    return Volume(arr, grid, "SUVbw", "1.2.3")


CENTRE = np.array([10.3, -20.6, 15.2])


def test_peak_radius_and_sphere_offsets():
    assert peak_radius_mm(1.0) == pytest.approx(6.2035, abs=1e-3)
    iso = Grid((10, 10, 10), (4.0, 4.0, 4.0), (0, 0, 0))
    assert len(sphere_offsets(iso, 6.2035)) == 19  # centre, 6 faces, 12 edges; corners at 6.93 mm out
    an = Grid((10, 10, 10), (2.0, 2.0, 5.0), (0, 0, 0))
    offs = sphere_offsets(an, 6.2035)
    d = np.sqrt((offs[:, 2] * 2.0) ** 2 + (offs[:, 1] * 2.0) ** 2 + (offs[:, 0] * 5.0) ** 2)
    assert d.max() <= 6.2035 and np.abs(offs[:, 0]).max() == 1 and np.abs(offs[:, 2]).max() == 3


@pytest.mark.parametrize(
    "pgrid,r", [(PET4, 12.0), (PET4, 15.0), (PET_ANISO, 10.0), (PET_ANISO, 14.0)],
    ids=["4mm-d24", "4mm-d30", "aniso-d20", "aniso-d28"],
)
def test_uniform_sphere(pgrid, r):
    suv_set = 7.5
    suv = pet_sphere(pgrid, CENTRE, r, suv_set, background=1.0)
    f = pet_features(sphere_mask(CT, CENTRE, r), suv)
    assert f.suv_max == pytest.approx(suv_set, rel=1e-6)  # fully covered voxels exist
    assert f.suv_peak == pytest.approx(suv_set, rel=0.01)
    assert 1.0 < f.suv_mean <= suv_set + 1e-6
    peak = np.array([f.suv_peak_x_mm, f.suv_peak_y_mm, f.suv_peak_z_mm])
    assert np.linalg.norm(peak - CENTRE) <= np.linalg.norm(pgrid.spacing_xyz_mm)
    # PET lesion voxels ~ the sphere volume in PET voxels (coverage >= 0.5)
    n_expected = 4 / 3 * np.pi * r**3 / pgrid.voxel_volume_mm3
    assert f.pet_voxel_count == pytest.approx(n_expected, rel=0.25)
    assert f.suv_reason == ""


def test_peak_prefers_hot_spot():
    """A hot 1 mL region inside a uniform lesion: SUVpeak moves there."""
    suv = pet_sphere(PET4, CENTRE, 20.0, 4.0, background=1.0)
    hot_c = CENTRE + np.array([8.0, 0.0, 0.0])
    k = np.rint(PET4.lps_to_zyx(hot_c[None])[0]).astype(int)
    arr = suv.array.copy()
    arr[k[0], k[1], k[2]] = 12.0
    f = pet_features(sphere_mask(CT, CENTRE, 20.0), Volume(arr, PET4, "SUVbw", "x"))
    assert f.suv_max == pytest.approx(12.0)
    assert f.suv_peak == pytest.approx((18 * 4.0 + 12.0) / 19, rel=1e-6)
    # every sphere holding the hot voxel ties; the chosen centre holds it and is the most central
    got = np.array([f.suv_peak_x_mm, f.suv_peak_y_mm, f.suv_peak_z_mm])
    hot = PET4.zyx_to_lps(k[None].astype(float))[0]
    assert np.linalg.norm(got - hot) <= peak_radius_mm(1.0)
    assert np.linalg.norm(got - CENTRE) < np.linalg.norm(hot - CENTRE)


def test_no_suv_gives_none_with_reason_and_activity():
    suv = pet_sphere(PET4, CENTRE, 12.0, 5.0, background=1.0)
    act = Volume(suv.array * 2500.0, PET4, "BQML", "1.2.3")
    f = pet_features(sphere_mask(CT, CENTRE, 12.0), None, activity=act, suv_reason="PET lacks RadiopharmaceuticalInformationSequence")
    assert f.suv_max is None and f.suv_mean is None and f.suv_peak is None
    assert f.suv_peak_x_mm is None and f.pet_voxel_count is None
    assert f.suv_reason == "PET lacks RadiopharmaceuticalInformationSequence"
    assert f.activity_max_bqml == pytest.approx(5.0 * 2500.0, rel=1e-5)
    g = pet_features(sphere_mask(CT, CENTRE, 12.0), None)
    assert g.suv_max is None and g.activity_max_bqml is None and g.suv_reason


def test_lesion_smaller_than_pet_voxel():
    suv = pet_sphere(PET4, CENTRE, 1.2, 9.0, background=1.0)
    f = pet_features(sphere_mask(CT, CENTRE, 1.2), suv)
    assert f.suv_max is not None and f.suv_max > 1.0
    assert f.pet_voxel_count >= 1
    assert "smaller than a PET voxel" in f.suv_reason
    assert f.suv_peak is not None


def test_lesion_outside_pet_fov():
    far = np.array([10.0, 10.0, 160.0])  # PET z covers about -122..114 mm
    suv = pet_sphere(PET4, CENTRE, 10.0, 5.0, background=1.0)
    f = pet_features(sphere_mask(CT, far, 8.0), suv)
    assert f.suv_max is None and f.suv_peak is None
    assert "outside the PET field of view" in f.suv_reason


def test_chunked_coverage_equals_single_call(monkeypatch):
    m = sphere_mask(CT, CENTRE, 14.0)
    bb1, c1 = lesion_coverage(m, PET4, supersample=2)
    monkeypatch.setattr(pet_mod, "MAX_POINTS_PER_CALL", 5000)
    bb2, c2 = lesion_coverage(m, PET4, supersample=2)
    assert bb1 == bb2
    np.testing.assert_allclose(c1, c2, atol=1e-6)
    # total coverage x PET voxel volume ~ mask volume (map_mask_coverage clips aliasing above 1)
    assert c1.sum() * PET4.voxel_volume_mm3 == pytest.approx(m.voxel_count * CT.voxel_volume_mm3, rel=0.05)


def test_non_finite_suv_voxels_are_left_out():
    suv = pet_sphere(PET4, CENTRE, 12.0, 5.0, background=1.0)
    arr = suv.array.copy()
    k = np.rint(PET4.lps_to_zyx(CENTRE[None])[0]).astype(int)
    arr[k[0], k[1], k[2]] = np.nan
    f = pet_features(sphere_mask(CT, CENTRE, 12.0), Volume(arr, PET4, "SUVbw", "x"))
    assert f.suv_max == pytest.approx(5.0) and np.isfinite(f.suv_mean) and np.isfinite(f.suv_peak)
    assert "without a finite SUV" in f.suv_reason
