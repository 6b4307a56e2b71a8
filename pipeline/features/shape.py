"""Size and position of a lesion from its mask: volume, RECIST diameters, 3D extent, centroid.

All work is done on the lesion's crop (:attr:`LesionMask.crop`); the full grid is never
allocated. Surfaces are the voxel-face midpoints of :func:`pipeline.geometry.surface_points_lps`
(midway between an inside and an outside voxel centre), so the diameter of a voxelised sphere
is its extent in whole voxels, not the distance between voxel centres.

Frames and units
----------------
* Arrays are (z, y, x); points are DICOM LPS millimetres, mapped with the grid's affine, so
  oblique grids (rotated direction cosines) are handled.
* "In-plane" means the acquisition plane of the grid: the plane spanned by its i (column) and
  j (row) axes. For an ordinary axial CT that is the axial plane, as RECIST requires.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.errors import FeatureError
from pipeline.geometry import Grid, max_pairwise_distance, surface_points_lps
from pipeline.records import LesionMask, ShapeFeatures

log = logging.getLogger(__name__)


def _in_plane_basis(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (LPS) of the grid's i and j axes: an orthonormal basis of a slice plane."""
    d = grid.direction_matrix
    u_i = d[:, 0] / np.linalg.norm(d[:, 0])
    u_j = d[:, 1] / np.linalg.norm(d[:, 1])
    return u_i, u_j


def _short_axis_2d(points_2d: np.ndarray, a: np.ndarray, b: np.ndarray, strip_mm: float) -> float:
    """Longest chord perpendicular to the segment ``a``-``b`` among 2D outline points.

    The outline points are binned in strips of width ``strip_mm`` along the long axis; in each
    strip the extent across the long axis (max - min of the perpendicular coordinate) is a chord
    perpendicular to the long axis; the longest such chord is returned (mm).
    """
    d = b - a
    norm = float(np.linalg.norm(d))
    if norm <= 0 or len(points_2d) < 2:
        return 0.0
    u = d / norm
    v = np.array([-u[1], u[0]])
    rel = points_2d - a
    pu = rel @ u
    pv = rel @ v
    strip = np.floor(pu / strip_mm).astype(np.int64)
    strip -= strip.min()
    n = int(strip.max()) + 1
    vmax = np.full(n, -np.inf)
    vmin = np.full(n, np.inf)
    np.maximum.at(vmax, strip, pv)
    np.minimum.at(vmin, strip, pv)
    ok = np.isfinite(vmax) & np.isfinite(vmin)
    return float(np.max(vmax[ok] - vmin[ok])) if ok.any() else 0.0


def shape_features(mask: LesionMask) -> ShapeFeatures:
    """Volume, RECIST diameters, maximal 3D diameter and centroid of a lesion mask.

    Parameters
    ----------
    mask : LesionMask
        The lesion as a boolean crop (z, y, x) at ``mask.bbox_zyx`` on ``mask.grid``.

    Returns
    -------
    ShapeFeatures
        * ``volume_ml`` -- voxel count x voxel volume (mm^3) / 1000.
        * ``longest_diameter_mm`` -- RECIST long axis: over every slice of the crop, the largest
          distance between two in-plane face-midpoint outline points of that slice; the slice
          with the largest value wins.
        * ``short_axis_mm`` -- in that same slice, the longest chord perpendicular to the long
          axis: outline points are binned in strips one in-plane pixel diagonal wide along the
          long axis, and the largest across-axis extent of a strip is taken. For convex outlines
          this is the longest perpendicular diameter; for concave ones a strip may bridge a notch.
        * ``max_3d_diameter_mm`` -- largest distance between any two face-midpoint surface
          points (all faces, caps included).
        * ``centroid_x_mm``, ``centroid_y_mm``, ``centroid_z_mm`` -- mean LPS position (mm) of
          the voxel centres.

    Raises
    ------
    FeatureError
        If the mask is empty.
    """
    grid = mask.grid
    crop = np.asarray(mask.crop, dtype=bool)
    n_vox = int(np.count_nonzero(crop))
    if n_vox == 0:
        raise FeatureError(
            f"lesion mask {mask.name!r} is empty: no voxel to measure",
            hint="check the segmentation; an empty lesion segment gets a row of zeros and reasons "
            "(pipeline.io.study_loader.empty_lesion_columns), never shape features",
        )
    offset = np.array([b[0] for b in mask.bbox_zyx], dtype=float)

    volume_ml = n_vox * grid.voxel_volume_mm3 / 1000.0

    # Centroid: the affine map commutes with the mean, so map the mean index once.
    idx_mean = np.argwhere(crop).mean(axis=0) + offset
    centroid = grid.zyx_to_lps(idx_mean[None, :])[0]

    # 3D extent over all faces.
    pts3 = surface_points_lps(crop, grid, offset_zyx=offset)
    d3, _, _ = max_pairwise_distance(pts3)

    # RECIST: in-plane outline per slice, in 2D in-plane coordinates (mm).
    pts_ip = surface_points_lps(crop, grid, offset_zyx=offset, in_plane_only=True)
    k = np.rint(grid.lps_to_zyx(pts_ip)[:, 0]).astype(np.int64)
    u_i, u_j = _in_plane_basis(grid)
    p2 = np.column_stack([pts_ip @ u_i, pts_ip @ u_j])
    order = np.argsort(k, kind="stable")
    k_sorted = k[order]
    starts = np.flatnonzero(np.r_[True, np.diff(k_sorted) != 0])
    stops = np.r_[starts[1:], len(k_sorted)]
    best = (-1.0, None, None, None)
    for s, e in zip(starts, stops):
        sel = p2[order[s:e]]
        d, a, b = max_pairwise_distance(sel)
        if d > best[0]:
            best = (d, a, b, sel)
    longest, a, b, sel = best
    sx, sy, _ = grid.spacing_xyz_mm
    short = _short_axis_2d(sel, a, b, strip_mm=float(np.hypot(sx, sy))) if sel is not None else 0.0

    return ShapeFeatures(
        volume_ml=float(volume_ml),
        voxel_count=n_vox,
        longest_diameter_mm=float(max(longest, 0.0)),
        short_axis_mm=float(short),
        max_3d_diameter_mm=float(d3),
        centroid_x_mm=float(centroid[0]),
        centroid_y_mm=float(centroid[1]),
        centroid_z_mm=float(centroid[2]),
    )
