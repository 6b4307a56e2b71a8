"""Tests of ``pipeline.geometry``, the module every other one trusts for index <-> LPS mapping.

Every expectation is computed here from first principles (rotation matrices, closed-form
volumes and surfaces), never by calling another function of the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import geometry as G
from pipeline.errors import GeometryError

RNG = np.random.default_rng(20261205)


def _rotation(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _oblique_grid() -> G.Grid:
    d = _rotation("z", 17.0) @ _rotation("x", 11.0)
    return G.Grid((20, 30, 40), (0.7, 0.8, 2.5), (-120.0, 35.5, 801.25), tuple(d.ravel()))


# --------------------------------------------------------------------------- Grid
def test_index_to_lps_follows_the_dicom_formula():
    """p = origin + D @ (spacing * (i, j, k)) with D's columns the i, j, k axes (DICOM PS3.3 C.7.6.2.1.1)."""
    g = _oblique_grid()
    d = np.asarray(g.direction).reshape(3, 3)
    zyx = np.array([[3, 7, 11], [0, 0, 0], [19, 29, 39]], dtype=float)
    expected = [np.asarray(g.origin_lps_mm) + d @ (np.array([x, y, z]) * np.array(g.spacing_xyz_mm))
                for z, y, x in zyx]
    np.testing.assert_allclose(g.zyx_to_lps(zyx), np.array(expected), atol=1e-9)


def test_lps_round_trip_and_containment():
    g = _oblique_grid()
    idx = RNG.uniform(-2, 40, size=(200, 3))
    np.testing.assert_allclose(g.lps_to_zyx(g.zyx_to_lps(idx)), idx, atol=1e-9)
    inside = g.contains_zyx(np.array([[0, 0, 0], [19, 29, 39], [20, 0, 0], [-1, 5, 5]]))
    assert inside.tolist() == [True, True, False, False]


def test_voxel_volume_normal_and_alignment():
    g = _oblique_grid()
    assert g.voxel_volume_mm3 == pytest.approx(0.7 * 0.8 * 2.5)
    d = np.asarray(g.direction).reshape(3, 3)
    np.testing.assert_allclose(g.slice_normal, np.cross(d[:, 0], d[:, 1]), atol=1e-12)
    assert not g.is_axis_aligned()
    assert G.Grid((2, 2, 2), (1, 1, 1), (0, 0, 0)).is_axis_aligned()


def test_crop_keeps_the_physical_position_of_each_voxel():
    g = _oblique_grid()
    bbox = ((4, 9), (10, 20), (5, 33))
    c = g.crop(bbox)
    assert c.shape_zyx == (5, 10, 28)
    local = np.array([[0, 0, 0], [4, 9, 27], [2, 3, 4]], dtype=float)
    offset = np.array([b[0] for b in bbox], dtype=float)
    np.testing.assert_allclose(c.zyx_to_lps(local), g.zyx_to_lps(local + offset), atol=1e-9)


def test_same_as_tolerance():
    g = _oblique_grid()
    moved = G.Grid(g.shape_zyx, g.spacing_xyz_mm,
                   tuple(np.asarray(g.origin_lps_mm) + [0.0005, 0, 0]), g.direction)
    far = G.Grid(g.shape_zyx, g.spacing_xyz_mm,
                 tuple(np.asarray(g.origin_lps_mm) + [0.01, 0, 0]), g.direction)
    assert g.same_as(moved) and not g.same_as(far)


def test_sitk_bridge_round_trip_and_shape_check():
    g = _oblique_grid()
    arr = RNG.normal(size=g.shape_zyx).astype(np.float32)
    img = g.to_sitk(arr)
    # SimpleITK's own index -> physical mapping agrees with the grid's
    for zyx in ([0, 0, 0], [5, 6, 7], [19, 29, 39]):
        np.testing.assert_allclose(
            img.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]),
            g.zyx_to_lps(np.array(zyx, float))[0], atol=1e-6)
    assert G.Grid.from_sitk(img).same_as(g, tol_mm=1e-9)
    with pytest.raises(GeometryError):
        g.to_sitk(np.zeros((1, 2, 3)))


def test_nifti_affine_is_ras_and_round_trips():
    g = _oblique_grid()
    a = g.nifti_affine_ras()
    ijk = np.array([6.0, 2.0, 9.0, 1.0])
    ras = a @ ijk
    lps = g.zyx_to_lps(ijk[2::-1][None, :])[0]
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-9)
    back = G.Grid.from_nifti_affine(a, g.shape_zyx[::-1])
    assert back.same_as(g, tol_mm=1e-9)
    with pytest.raises(GeometryError):
        G.Grid.from_nifti_affine(np.diag([0.0, 1.0, 1.0, 1.0]), (2, 2, 2))


# --------------------------------------------------------------------------- DICOM slices
def test_slices_sorted_along_normal_not_by_list_order():
    iop = np.array([1, 0, 0, 0, 0, -1], dtype=float)  # coronal: normal = x cross -z = +y
    np.testing.assert_allclose(G.slice_normal(iop), [0, 1, 0], atol=1e-12)
    positions = np.array([[0, 5.0, 0], [0, -5.0, 0], [0, 0.0, 0], [0, 10.0, 0]])
    order, proj = G.sort_slices(positions, iop)
    assert order.tolist() == [1, 2, 0, 3]
    np.testing.assert_allclose(proj, [-5, 0, 5, 10])
    with pytest.raises(GeometryError, match="parallel"):
        G.slice_normal(np.array([1, 0, 0, 1, 0, 0], dtype=float))


def test_grid_from_slices_uses_pixel_spacing_row_column_order():
    iop = np.array([1, 0, 0, 0, 1, 0], dtype=float)
    pos = np.array([[-10.0, -20.0, z] for z in (0.0, 3.0, 6.0, 9.0)])
    g = G.grid_from_slices(pos[0], iop, (0.5, 0.9), 64, 32, pos)
    # PixelSpacing = (row spacing along j, column spacing along i)
    assert g.spacing_xyz_mm == (0.9, 0.5, 3.0)
    assert g.shape_zyx == (4, 64, 32)
    np.testing.assert_allclose(g.zyx_to_lps(np.array([[3, 10, 10]], float))[0], [-1.0, -15.0, 9.0])


def test_gantry_tilt_shear_angle():
    tilt = 18.5
    iop = np.array([1, 0, 0, 0, 1, 0], dtype=float)
    step = 2.5
    pos = np.array([[0.0, k * step * math.tan(math.radians(tilt)), k * step] for k in range(10)])
    assert G.stack_shear_deg(pos, iop) == pytest.approx(tilt, abs=1e-9)
    lay = G.stack_layout(pos, iop)
    np.testing.assert_allclose(lay.steps_mm, step)
    assert lay.max_offset_mm == pytest.approx(9 * step * math.tan(math.radians(tilt)))
    assert G.stack_shear_deg(pos[:, [0, 0, 2]] * [1, 0, 1], iop) == pytest.approx(0.0, abs=1e-9)


def test_regular_stack_grid_and_resample_stack_of_a_tilted_stack():
    """A sheared stack of a linear field is de-sheared exactly (linear interpolation is exact)."""
    tilt = 15.0
    iop = np.array([1, 0, 0, 0, 1, 0], dtype=float)
    ps = (1.0, 1.0)
    steps = np.array([0.0, 2.0, 4.0, 7.0, 10.0, 12.0])  # irregular spacing
    shift = math.tan(math.radians(tilt))
    pos = np.array([[0.0, z * shift, z] for z in steps])
    rows, cols = 20, 16

    def field(p):  # a linear function of LPS position
        return 2.0 * p[..., 0] - 1.5 * p[..., 1] + 0.75 * p[..., 2] + 10.0

    slices = []
    for p0 in pos:
        jj, ii = np.mgrid[0:rows, 0:cols]
        pts = p0 + ii[..., None] * ps[1] * iop[:3] + jj[..., None] * ps[0] * iop[3:]
        slices.append(field(pts))
    target = G.regular_stack_grid(pos, iop, ps, rows, cols, step_mm=1.0)
    assert target.shape_zyx[0] == 13  # 0..12 mm at 1 mm
    out = G.resample_stack(np.array(slices), pos, iop, ps, target, fill=np.nan)
    # compare away from each slice footprint's edge (the last half pixel is extrapolated by
    # the in-plane resampler): voxels whose in-plane neighbours are all inside
    from scipy import ndimage

    ok = ndimage.binary_erosion(np.isfinite(out), structure=np.ones((1, 3, 3), bool))
    idx = np.argwhere(ok)
    assert len(idx) > 0.5 * out.size
    truth = field(target.zyx_to_lps(idx.astype(float)))
    np.testing.assert_allclose(out[tuple(idx.T)], truth, atol=1e-3)


# --------------------------------------------------------------------------- resampling
def test_resample_identity_and_known_shift():
    src = G.Grid((6, 8, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    arr = RNG.normal(size=src.shape_zyx).astype(np.float32)
    np.testing.assert_allclose(G.resample(arr, src, src), arr, atol=1e-6)
    # a destination shifted by exactly one voxel along x reads the neighbouring column
    dst = G.Grid(src.shape_zyx, src.spacing_xyz_mm, (1.0, 0.0, 0.0))
    out = G.resample(arr, src, dst, default=-7.0, interpolation="nearest")
    np.testing.assert_allclose(out[:, :, :-1], arr[:, :, 1:])
    assert np.all(out[:, :, -1] == -7.0)
    mask = arr > 0
    assert G.resample(mask, src, src, interpolation="nearest").dtype == bool


def test_mask_coverage_conserves_volume():
    """A mask mapped to a coarser grid keeps its volume (sum of coverage x voxel volume)."""
    src = G.Grid((12, 12, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    dst = G.Grid((4, 4, 4), (3.0, 3.0, 3.0), (1.0, 1.0, 1.0))
    crop = np.ones((6, 6, 6), dtype=bool)
    bbox = ((3, 9), (3, 9), (3, 9))
    res = G.map_mask_coverage(crop, bbox, src, dst, supersample=2)
    assert res is not None
    _, cov = res
    assert float(cov.sum()) * dst.voxel_volume_mm3 == pytest.approx(216.0, rel=1e-6)
    assert G.map_mask_coverage(np.zeros((2, 2, 2), bool), ((0, 2),) * 3, src, dst) is None


# --------------------------------------------------------------------------- crops and surfaces
def test_bbox_expand_and_paste():
    m = np.zeros((10, 12, 14), dtype=bool)
    m[2:5, 3:7, 4:6] = True
    bb = G.bbox_of(m)
    assert bb == ((2, 5), (3, 7), (4, 6))
    assert G.bbox_of(np.zeros((2, 2, 2), bool)) is None
    g = G.Grid(m.shape, (1.0, 1.0, 2.5), (0, 0, 0))
    # 3 mm margin: ceil(3/2.5)=2 slices, 3 pixels in-plane, clipped at the grid
    assert G.expand_bbox(bb, g, 3.0) == ((0, 7), (0, 10), (1, 9))
    crop = m[2:5, 3:7, 4:6]
    pasted = G.paste(crop, bb, ((0, 10), (0, 12), (0, 14)))
    assert np.array_equal(pasted, m)


def test_surface_points_of_a_box_lie_on_its_faces():
    g = G.Grid((20, 20, 20), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0))
    m = np.zeros((4, 5, 6), dtype=bool)
    m[1:3, 1:4, 1:5] = True  # 2 x 3 x 4 voxels (z, y, x)
    off = (5, 6, 7)
    pts = G.surface_points_lps(m, g, offset_zyx=off)
    # faces: 2*(3*4) + 2*(2*4) + 2*(2*3) = 52
    assert len(pts) == 52
    lo = g.zyx_to_lps(np.array([[off[0] + 0.5, off[1] + 0.5, off[2] + 0.5]]))[0]
    hi = g.zyx_to_lps(np.array([[off[0] + 2.5, off[1] + 3.5, off[2] + 4.5]]))[0]
    on_face = np.isclose(pts, lo).any(axis=1) | np.isclose(pts, hi).any(axis=1)
    assert on_face.all()
    inplane = G.surface_points_lps(m, g, offset_zyx=off, in_plane_only=True)
    assert len(inplane) == 52 - 2 * 12


def test_max_pairwise_distance_matches_brute_force():
    pts = RNG.normal(size=(500, 3)) * [10, 5, 2]
    d, a, b = G.max_pairwise_distance(pts)
    brute = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()
    assert d == pytest.approx(brute, rel=1e-12)
    assert np.linalg.norm(a - b) == pytest.approx(d)
    assert G.max_pairwise_distance(pts[:1])[0] == 0.0


# --------------------------------------------------------------------------- planes -> grid
def test_sample_planes_nearest_places_each_plane_by_its_position():
    target = G.Grid((6, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    iop = (1, 0, 0, 0, 1, 0)
    m = np.zeros((10, 10), dtype=bool)
    m[2:5, 3:6] = True
    # one plane at z = 4 mm (slice 2) shifted by +1 mm in x (one column)
    res = G.sample_planes_nearest([((1.0, 0.0, 4.0), iop, (1.0, 1.0), m)], target)
    assert res is not None
    bbox, crop = res
    assert bbox == ((2, 3), (2, 5), (4, 7))
    assert crop.all()
    with pytest.raises(GeometryError):
        G.sample_planes_nearest([((0, 0, 0), iop, (1, 1), m), ((0, 0, 2), (1, 0, 0, 0, 0, 1), (1, 1), m)],
                                target)
    assert G.sample_planes_nearest([], target) is None
