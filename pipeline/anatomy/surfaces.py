"""Sub-voxel surfaces of binary masks, for distances that must beat the voxel size.

Face midpoints (:func:`pipeline.geometry.surface_points_lps`) put a mask's surface on a
staircase that is up to half a voxel off the true outline on either side; the *smallest*
distance between two such point sets picks the worst steps and is biased low (up to about one
voxel on a 2.5 mm grid). Here the mask is smoothed with a Gaussian and the 0.5 iso-surface is
extracted with marching cubes: the staircase averages out.

Smoothing moves a surface of principal curvatures k1, k2 inward by about
``sigma^2 (k1 + k2) / 2``, so ``sigma`` is kept small (a fraction of the voxel size, and of the
mask's own half-extent for small masks).

Frames and units: arrays (z, y, x); points LPS mm; sigma in mm.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from pipeline.geometry import BBox, Grid, bbox_of, surface_points_lps

log = logging.getLogger(__name__)


def smoothed_surface_points(
    mask: np.ndarray,
    grid: Grid,
    *,
    offset_zyx=(0, 0, 0),
    sigma_mm: float,
    edge_mode: bool = False,
    fallback: bool = True,
) -> np.ndarray:
    """Vertices (LPS mm) of the 0.5 iso-surface of a Gaussian-smoothed binary mask.

    Parameters
    ----------
    mask : (z, y, x) bool array, a crop of ``grid`` whose first voxel is ``offset_zyx``.
    grid : Grid
    sigma_mm : float
        Gaussian sigma, mm (converted to voxels per axis). 0 gives face midpoints.
    edge_mode : bool
        False: outside the crop is empty (a whole object such as a lesion). True: the crop is a
        window into a larger object (skin, an organ): the mask is extended by replicating its
        border and vertices within ``2 sigma`` of the crop border (where that extension bends
        the surface) are dropped.
    fallback : bool
        If the smoothed mask never reaches 0.5 (an object thinner than the smoothing), return
        the face midpoints instead of nothing.

    Returns
    -------
    (N, 3) float array, LPS mm (possibly empty).
    """
    from skimage.measure import marching_cubes

    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros((0, 3))
    if sigma_mm <= 0:
        return surface_points_lps(m, grid, offset_zyx=offset_zyx)
    sp = np.asarray(grid.spacing_xyz_mm, dtype=float)[::-1]
    sig = sigma_mm / sp
    pad = int(np.ceil(3.0 * sig.max())) + 1
    f = np.pad(m.astype(np.float32), pad, mode="edge" if edge_mode else "constant")
    s = ndi.gaussian_filter(f, sig, mode="nearest")
    if not (s.min() < 0.5 < s.max()):
        return surface_points_lps(m, grid, offset_zyx=offset_zyx) if fallback else np.zeros((0, 3))
    verts = marching_cubes(s, 0.5)[0]
    if edge_mode:
        margin = np.ceil(2.0 * sig)
        hi = pad + np.asarray(m.shape, dtype=float) - 1.0 - margin
        keep = np.all((verts >= pad + margin) & (verts <= hi), axis=1)
        verts = verts[keep]
    if len(verts) == 0:
        return np.zeros((0, 3))
    return grid.zyx_to_lps(verts - pad + np.asarray(offset_zyx, dtype=float))


def lesion_sigma_mm(crop: np.ndarray, grid: Grid, smoothing_voxels: float) -> float:
    """Smoothing for a lesion surface: ``smoothing_voxels`` x the largest voxel side, at most
    0.35 x the lesion's smallest half-extent (so that a small lesion is not smoothed away)."""
    sp = np.asarray(grid.spacing_xyz_mm, dtype=float)[::-1]
    ext = np.asarray(crop.shape, dtype=float) * sp
    return float(min(smoothing_voxels * sp.max(), 0.35 * ext.min() / 2.0))


def window_bbox(point_lps: np.ndarray, grid: Grid, half_mm: float) -> BBox:
    """Index box of the grid within ``half_mm`` of a point (clipped to the grid)."""
    c = grid.lps_to_zyx(np.asarray(point_lps, dtype=float)[None, :])[0]
    sp = np.asarray(grid.spacing_xyz_mm, dtype=float)[::-1]
    lo = np.floor(c - half_mm / sp).astype(int)
    hi = np.ceil(c + half_mm / sp).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(grid.shape_zyx))
    return tuple((int(a), int(max(b, a))) for a, b in zip(lo, hi))  # type: ignore[return-value]


def crop_of(crop: np.ndarray, crop_bbox: BBox, target: BBox) -> np.ndarray:
    """The part of a mask crop (at ``crop_bbox``) inside ``target``, False elsewhere.

    ``crop`` may be of any dtype (non-zero = inside), e.g. the tissue map's flags.
    """
    out = np.zeros(tuple(b - a for a, b in target), dtype=bool)
    inter = tuple((max(x[0], y[0]), min(x[1], y[1])) for x, y in zip(crop_bbox, target))
    if any(lo >= hi for lo, hi in inter):
        return out
    src = tuple(slice(i[0] - c[0], i[1] - c[0]) for i, c in zip(inter, crop_bbox))
    dst = tuple(slice(i[0] - t[0], i[1] - t[0]) for i, t in zip(inter, target))
    out[dst] = np.asarray(crop)[src] != 0  # index first: ``crop`` may be a large array
    return out


def local_surface_points(
    crop: np.ndarray, crop_bbox: BBox, grid: Grid, point_lps: np.ndarray, *,
    half_mm: float, sigma_mm: float,
) -> np.ndarray:
    """Sub-voxel surface vertices of a large mask (an organ, the body) near one point.

    The mask is cut to the window of ``half_mm`` around ``point_lps`` (the nearest face
    midpoint found by a coarse search), smoothed with ``edge_mode`` (the window is a piece of a
    larger object) and its iso-surface returned. Faces where the grid itself cuts the mask are
    not anatomical: the window is not extended beyond the grid, and the replicated border
    removes them.
    """
    win = window_bbox(point_lps, grid, half_mm)
    if any(b - a < 2 for a, b in win):
        return np.zeros((0, 3))
    sub = crop_of(crop, crop_bbox, win)
    if not sub.any() or sub.all():
        return np.zeros((0, 3))
    return smoothed_surface_points(sub, grid, offset_zyx=tuple(a for a, _ in win),
                                   sigma_mm=sigma_mm, edge_mode=True)


def tight(mask: np.ndarray) -> tuple[np.ndarray, BBox] | None:
    """(tight crop, its bbox in ``mask``'s index frame) or None if empty."""
    bb = bbox_of(mask)
    if bb is None:
        return None
    return mask[tuple(slice(a, b) for a, b in bb)], bb
