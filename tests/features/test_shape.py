"""Shape features against analytic spheres and ellipsoids, including an oblique grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.errors import FeatureError
from pipeline.features.shape import shape_features
from pipeline.geometry import Grid, bbox_of
from pipeline.records import LesionMask, MaskSource


def rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    if axis == "x":
        return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def ellipsoid(grid: Grid, centre, radii, axes=np.eye(3), name="lesion") -> LesionMask:
    """Voxels whose centres lie in the ellipsoid; ``axes`` columns = ellipsoid axes in LPS."""
    centre = np.asarray(centre, float)
    radii = np.asarray(radii, float)
    ext = np.abs(axes) @ radii
    corners = centre + np.array(list(itertools.product(*[(-e, e) for e in ext])))
    idx = grid.lps_to_zyx(corners)
    lo = np.maximum(np.floor(idx.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, grid.shape_zyx)
    zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    pts = grid.zyx_to_lps(np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()]))
    local = (pts - centre) @ axes
    inside = (((local / radii) ** 2).sum(1) <= 1.0).reshape(zz.shape)
    bb = bbox_of(inside)
    crop = inside[tuple(slice(a, b) for a, b in bb)]
    bbox = tuple((int(a + l), int(b + l)) for (a, b), l in zip(bb, lo))
    return LesionMask(name, MaskSource.SEG, grid, bbox, crop)


def diag(grid: Grid) -> float:
    return float(np.linalg.norm(grid.spacing_xyz_mm))


AXIAL_FINE = Grid((200, 512, 512), (0.8, 0.8, 2.5), (-200.0, -180.0, -300.0))
AXIAL_COARSE = Grid((150, 200, 200), (2.5, 2.5, 3.0), (-250.0, -250.0, -200.0))
OBLIQUE_DIR = rot("z", 25) @ rot("x", 12)
OBLIQUE = Grid(
    (150, 300, 300), (0.9, 0.9, 2.0), (-120.0, -130.0, -90.0), tuple(OBLIQUE_DIR.ravel())
)


@pytest.mark.parametrize("grid", [AXIAL_FINE, AXIAL_COARSE, OBLIQUE], ids=["fine", "coarse", "oblique"])
@pytest.mark.parametrize("r", [8.0, 15.0])
def test_sphere(grid, r):
    centre = np.array([12.3, -7.9, 20.6])
    f = shape_features(ellipsoid(grid, centre, (r, r, r)))
    analytic = 4 / 3 * np.pi * r**3 / 1000
    assert f.volume_ml == pytest.approx(analytic, rel=0.05)
    assert abs(f.longest_diameter_mm - 2 * r) <= diag(grid)
    assert abs(f.short_axis_mm - 2 * r) <= diag(grid)
    assert f.short_axis_mm <= f.longest_diameter_mm + 1e-9
    assert abs(f.max_3d_diameter_mm - 2 * r) <= diag(grid)
    got = np.array([f.centroid_x_mm, f.centroid_y_mm, f.centroid_z_mm])
    assert np.linalg.norm(got - centre) <= 1.0
    assert f.voxel_count == int(np.count_nonzero(ellipsoid(grid, centre, (r, r, r)).crop))


def test_ellipsoid_axes_axial():
    grid = AXIAL_FINE
    a, b, c = 16.0, 9.0, 6.0
    f = shape_features(ellipsoid(grid, (0.0, 5.0, -10.0), (a, b, c)))
    assert f.volume_ml == pytest.approx(4 / 3 * np.pi * a * b * c / 1000, rel=0.05)
    assert abs(f.longest_diameter_mm - 2 * a) <= diag(grid)
    assert abs(f.short_axis_mm - 2 * b) <= diag(grid)
    assert abs(f.max_3d_diameter_mm - 2 * a) <= diag(grid)


def test_ellipse_rotated_in_plane_short_axis_perpendicular():
    """Long axis at 30 deg in the axial plane: short axis is the perpendicular diameter."""
    grid = AXIAL_COARSE
    a, b, c = 20.0, 10.0, 7.0
    f = shape_features(ellipsoid(grid, (3.0, 4.0, 5.0), (a, b, c), axes=rot("z", 30)))
    assert abs(f.longest_diameter_mm - 2 * a) <= diag(grid)
    assert abs(f.short_axis_mm - 2 * b) <= diag(grid)


def test_longest_diameter_is_in_plane_not_3d():
    """A cigar along z: the RECIST (in-plane) diameter is the small one, 3D is the long one."""
    grid = AXIAL_FINE
    f = shape_features(ellipsoid(grid, (0.0, 0.0, 0.0), (6.0, 6.0, 25.0)))
    assert abs(f.longest_diameter_mm - 12.0) <= diag(grid)
    assert abs(f.max_3d_diameter_mm - 50.0) <= diag(grid)


def test_oblique_ellipsoid_in_acquisition_plane():
    """On an oblique grid, "in-plane" is the acquisition plane: axes aligned with i and j."""
    grid = OBLIQUE
    a, b, c = 18.0, 11.0, 6.0
    m = ellipsoid(grid, (5.0, -3.0, 8.0), (a, b, c), axes=OBLIQUE_DIR)
    f = shape_features(m)
    assert f.volume_ml == pytest.approx(4 / 3 * np.pi * a * b * c / 1000, rel=0.05)
    assert abs(f.longest_diameter_mm - 2 * a) <= diag(grid)
    assert abs(f.short_axis_mm - 2 * b) <= diag(grid)
    assert np.linalg.norm(
        np.array([f.centroid_x_mm, f.centroid_y_mm, f.centroid_z_mm]) - [5.0, -3.0, 8.0]
    ) <= 1.0


def test_single_voxel():
    grid = AXIAL_FINE
    m = LesionMask("dot", MaskSource.SEG, grid, ((10, 11), (20, 21), (30, 31)), np.ones((1, 1, 1), bool))
    f = shape_features(m)
    assert f.volume_ml == pytest.approx(grid.voxel_volume_mm3 / 1000)
    assert f.longest_diameter_mm == pytest.approx(0.8)
    assert f.max_3d_diameter_mm == pytest.approx(2.5)
    c = grid.zyx_to_lps(np.array([[10, 20, 30]]))[0]
    assert [f.centroid_x_mm, f.centroid_y_mm, f.centroid_z_mm] == pytest.approx(list(c))


def test_empty_mask_raises():
    m = LesionMask("empty", MaskSource.SEG, AXIAL_FINE, ((0, 2), (0, 2), (0, 2)), np.zeros((2, 2, 2), bool))
    with pytest.raises(FeatureError, match="empty"):
        shape_features(m)
