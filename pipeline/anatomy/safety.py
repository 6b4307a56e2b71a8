"""Procedural safety measurements of one lesion: liver capsule, vessels, mobility, critical structures.

All computations work on crops around the lesion, plus lookups in the study's
:class:`~pipeline.anatomy.tissue.TissueMap` (vessel distance transforms, lung base points) built
once per study.

Definitions
-----------
``exophytic_fraction`` (liver lesions)
    Fraction of the lesion's voxels outside the liver. When at least half of the lesion lies in
    the liver mask (the mask includes the tumour), that is 1 - the overlap fraction. Otherwise
    the lesion was probably cut out of the liver mask, leaving a notch: "the liver" is then the
    liver mask closed (morphological closing, a ball of 1.5 x the lesion's largest half-extent,
    on a crop around the lesion), so only the part bulging out of the liver's envelope counts
    as exophytic. Limitations of that case: the closing ball (radius ``r``) still sinks
    ``r - sqrt(r^2 - a^2)`` into a notch opening of radius ``a``, so a rim of a few mm under the
    opening counts as exophytic (a 10 mm lesion 4 mm inside a flat capsule: 0.28 instead of
    0.17); a cut-out lesion lying in a natural concavity of the liver (gallbladder fossa,
    hilum) counts as inside.
``vessel_distance_mm`` / ``vessel_name``
    Surface-to-surface distance to the relevant vessel mask (any structure of organ term
    ``vessel``), 0 when touching or overlapping. The relevant vessel is the one in contact
    (within ``vessel_abut_distance_mm``) with the largest contact angle, else the nearest.
``vessel_caliber_mm``
    Caliber of that vessel at its point closest to the lesion: the equivalent diameter
    ``2 sqrt(A / pi)`` of the vessel's cross-section there (:func:`cross_section_caliber_mm`;
    ``A`` = vessel volume in a slab through the point, perpendicular to the local vessel axis,
    divided by the slab thickness; only the connected piece of the vessel nearest the point).
    Unlike a distance-transform radius, this does not depend on where the vessel's centre
    falls between voxel centres.
``vessel_contact_angle_deg``
    The largest angle of the vessel's circumference in contact with the lesion, over the
    vessel's cross-sections. The local vessel axis is the first principal axis of the vessel
    voxels near the lesion; cross-sections are the grid's slices when that axis is within 25
    degrees of a grid axis (the common case: aorta and cava are axial), otherwise planes of a
    frame rotated onto the axis (nearest-neighbour resampling at the smallest voxel side). In
    each cross-section, wall pixels are vessel pixels with a 4-neighbour outside the vessel;
    each stands for the angular sector (seen from the centroid of its connected vessel
    section) half-way to its angular neighbours; it is in contact when a 4-neighbour is a
    lesion pixel. It lies between the true contact arc and the arc within one voxel of the
    lesion (a fat plane thinner than a voxel is not resolved), up to the angular size of a wall
    voxel at each end of the arc (tested against the phantom's analytic arcs).
``vessel_relation``
    "encasing" when the contact angle exceeds ``vessel_encasing_angle_deg`` (180 by default),
    "abutting" when there is contact or the distance is at most ``vessel_abut_threshold_mm``,
    else "none". None (with ``vessel_reason``) without vessel masks.
``vessel_abut_threshold_mm`` / ``vessel_abut_basis``
    Contact at the resolution of the scan: a surface gap smaller than one voxel cannot show a
    fat plane, yet the voxelized surfaces of two touching structures are measured up to about a
    voxel apart. The threshold is the larger of ``vessel_abut_distance_mm`` (the fat-plane width
    counted as contact) and the voxel diagonal ``sqrt(sx^2 + sy^2 + sz^2)`` of the lesion grid;
    ``vessel_abut_basis`` states the voxel size and which of the two applied (for the message).
``intravascular_fraction``
    Fraction of the lesion's voxels inside any vessel mask (tumour in a lumen; 0 when the
    lesion only touches vessels).
``diaphragm_distance_mm``
    Distance from the lesion's surface to the lung base (the inferior-facing surface of the
    lungs, :func:`pipeline.anatomy.tissue.lung_base_points`: the diaphragm domes and recesses,
    from the lung masks or, without them, from aerated lung on CT). A proxy of respiratory
    mobility; None without lung in the scan.
``critical_structure_distance_mm`` / ``critical_structure_name``
    Nearest mask among ``critical_structures`` (structure names without side suffix or organ
    terms: spinal cord / canal, vertebral column (which holds the canal), ureters, bile ducts
    ...), surface to surface, within ``distance_margin_mm``.

Frames and units: arrays (z, y, x); points LPS mm; distances mm; angles degrees.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy.body import min_tree_distance
from pipeline.anatomy.organs import organ_term
from pipeline.anatomy.site import (
    LesionSurface,
    nearest_pair,
    reframe,
    region_surface,
    mask_distance,
)
from pipeline.anatomy.surfaces import window_bbox
from pipeline.anatomy.tissue import TissueMap
from pipeline.geometry import Grid, expand_bbox
from pipeline.records import LesionMask

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- liver
def exophytic_fraction(lesion: LesionMask, organ_masks: list[LesionMask]) -> float | None:
    """Fraction of lesion voxels outside the closed organ envelope (see module doc)."""
    if not organ_masks:
        return None
    grid = lesion.grid
    crop = np.asarray(lesion.crop, bool)
    n = int(crop.sum())
    if n == 0:
        return None
    inside_mask = np.zeros(crop.shape, dtype=bool)
    for m in organ_masks:
        inside_mask |= reframe(np.asarray(m.crop, bool), m.bbox_zyx, lesion.bbox_zyx)
    overlap = float(np.count_nonzero(crop & inside_mask)) / n
    if overlap >= 0.5:  # the organ mask includes the lesion: no notch to close
        return 1.0 - overlap
    sp = np.asarray(grid.spacing_xyz_mm, float)[::-1]
    half_ext = float((np.asarray(crop.shape) * sp).max()) / 2.0
    r = 1.5 * half_ext
    region = expand_bbox(lesion.bbox_zyx, grid, 2.0 * r + 2.0 * float(sp.max()))
    liver = np.zeros(tuple(b - a for a, b in region), dtype=bool)
    for m in organ_masks:
        liver |= reframe(np.asarray(m.crop, bool), m.bbox_zyx, region)
    if not liver.any():
        return 1.0
    spt = tuple(float(v) for v in sp)
    # closing = erosion of the dilation, both by a ball of radius r, with distance transforms
    dil = ndi.distance_transform_edt(~liver, sampling=spt) <= r
    closed = ndi.distance_transform_edt(dil, sampling=spt) > r
    inside = liver | closed
    les = reframe(crop, lesion.bbox_zyx, region)
    return float(np.count_nonzero(les & ~inside)) / n


# --------------------------------------------------------------------------- vessels
def _pca_axis(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit first principal axis of (N, 3) points and the ratio of the first two eigenvalues."""
    c = points - points.mean(axis=0)
    w, v = np.linalg.eigh(c.T @ c / max(len(points) - 1, 1))
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order]
    return v[:, 0], float(w[0] / max(w[1], 1e-12))


def _slice_angle(v2: np.ndarray, l2: np.ndarray, sy: float, sx: float) -> float:
    """Contact angle (deg) in one cross-section (2D vessel and lesion masks, pixel sizes)."""
    if not v2.any() or not l2.any():
        return 0.0
    pv = np.pad(v2, 1)
    interior = pv[1:-1, 1:-1] & pv[:-2, 1:-1] & pv[2:, 1:-1] & pv[1:-1, :-2] & pv[1:-1, 2:]
    wall = v2 & ~interior
    pl = np.pad(l2, 1)
    near = pl[:-2, 1:-1] | pl[2:, 1:-1] | pl[1:-1, :-2] | pl[1:-1, 2:]
    contact = wall & near
    if not contact.any():
        return 0.0
    lab, _ = ndi.label(v2, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    best = 0.0
    for comp in np.unique(lab[contact]):
        sel = lab == comp
        jj, ii = np.nonzero(sel)
        cj, ci = jj.mean(), ii.mean()
        wj, wi = np.nonzero(wall & sel)
        ang = np.arctan2((wj - cj) * sy, (wi - ci) * sx)
        order = np.argsort(ang)
        ang, hit = ang[order], contact[wj, wi][order]
        if len(ang) < 2:
            continue
        gaps = np.diff(np.concatenate([ang, ang[:1] + 2.0 * math.pi]))
        sector = 0.5 * (gaps + np.roll(gaps, 1))
        best = max(best, math.degrees(float(sector[hit].sum())))
    return min(best, 360.0)


def contact_angle_deg(
    lesion: LesionMask, vessel: LesionMask, *, region_margin_mm: float,
    axis_tolerance_deg: float = 25.0,
) -> float:
    """Largest vessel circumference angle (deg) in contact with the lesion (module doc)."""
    grid = lesion.grid
    region = expand_bbox(lesion.bbox_zyx, grid, region_margin_mm)
    v = reframe(np.asarray(vessel.crop, bool), vessel.bbox_zyx, region)
    le = reframe(np.asarray(lesion.crop, bool), lesion.bbox_zyx, region)
    if not v.any():
        return 0.0
    if not (ndi.binary_dilation(le) & v).any():
        return 0.0
    lo = np.array([a for a, _ in region])
    pts = grid.zyx_to_lps(np.argwhere(v) + lo)
    axis, ratio = _pca_axis(pts) if len(pts) > 3 else (grid.slice_normal, 1.0)
    if ratio < 1.5:  # no clear vessel direction in the crop: use the slice normal
        axis = grid.slice_normal
    cos_axes = np.abs(grid.direction_matrix.T @ axis)  # along i, j, k
    best_axis = int(np.argmax(cos_axes))
    sx, sy, sz = grid.spacing_xyz_mm
    if cos_axes[best_axis] >= math.cos(math.radians(axis_tolerance_deg)):
        arr_axis = {0: 2, 1: 1, 2: 0}[best_axis]  # i -> x (axis 2), j -> y (1), k -> z (0)
        sp2 = {0: (sy, sx), 1: (sz, sx), 2: (sz, sy)}[arr_axis]
        best = 0.0
        for k in np.flatnonzero(le.any(axis=tuple(a for a in range(3) if a != arr_axis))):
            v2 = np.take(v, k, axis=arr_axis)
            l2 = np.take(le, k, axis=arr_axis)
            best = max(best, _slice_angle(v2, l2, *sp2))
        return best
    # oblique vessel: resample into a frame whose third axis is the vessel axis
    h = float(min(grid.spacing_xyz_mm))
    a = axis / np.linalg.norm(axis)
    u = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    w = np.cross(a, u)
    corners = grid.zyx_to_lps(np.array([[z, y, x] for z in region[0] for y in region[1]
                                        for x in region[2]], float) - 0.5)
    c0 = corners.mean(axis=0)
    rel = corners - c0
    ext = [np.abs(rel @ e).max() for e in (u, w, a)]
    nu, nw, na = (math.ceil(2 * e / h) + 1 for e in ext)
    gu = (np.arange(nu) - (nu - 1) / 2) * h
    gw = (np.arange(nw) - (nw - 1) / 2) * h
    ga = (np.arange(na) - (na - 1) / 2) * h
    A, W, U = np.meshgrid(ga, gw, gu, indexing="ij")
    p = c0 + A[..., None] * a + W[..., None] * w + U[..., None] * u
    idx = grid.lps_to_zyx(p.reshape(-1, 3)) - lo
    vv = ndi.map_coordinates(v.astype(np.uint8), idx.T, order=0, cval=0).reshape(A.shape) > 0
    ll = ndi.map_coordinates(le.astype(np.uint8), idx.T, order=0, cval=0).reshape(A.shape) > 0
    best = 0.0
    for k in np.flatnonzero(ll.any(axis=(1, 2))):
        best = max(best, _slice_angle(vv[k], ll[k], h, h))
    return best


def _local_axis(pts: np.ndarray, grid: Grid) -> np.ndarray:
    """Vessel axis from (N, 3) LPS points: first principal axis, or the slice normal when the
    points show no clear direction (first/second eigenvalue ratio < 1.5)."""
    if len(pts) <= 3:
        return grid.slice_normal
    axis, ratio = _pca_axis(pts)
    return axis if ratio >= 1.5 else grid.slice_normal


def cross_section_caliber_mm(vessel: LesionMask, point_lps: np.ndarray, *,
                             window_mm: float = 40.0) -> float | None:
    """Equivalent diameter (mm) of a vessel's cross-section through a point (module doc).

    The vessel voxels within ``window_mm`` of the point give the local axis (principal axis);
    the slab of thickness ``2 x`` the largest voxel side through the point, perpendicular to
    the axis, is cut; the 26-connected piece of vessel in the slab nearest the point gives the
    area ``A = count x voxel volume / thickness``.
    """
    grid = vessel.grid
    p = np.asarray(point_lps, dtype=float)
    win = window_bbox(p, grid, window_mm)
    v = reframe(np.asarray(vessel.crop, bool), vessel.bbox_zyx, win)
    if not v.any():
        return None
    lo = np.array([a for a, _ in win])
    idx = np.argwhere(v)
    pts = grid.zyx_to_lps(idx + lo)
    near = np.linalg.norm(pts - p, axis=1) <= window_mm
    axis = _local_axis(pts[near], grid)
    t = 2.0 * float(max(grid.spacing_xyz_mm))
    along = (pts - p) @ axis
    in_slab = (along >= -t / 2.0) & (along < t / 2.0)
    if not in_slab.any():
        return None
    slab = np.zeros(v.shape, dtype=bool)
    slab[tuple(idx[in_slab].T)] = True
    lab, _ = ndi.label(slab, structure=np.ones((3, 3, 3), bool))
    sel = idx[in_slab]
    d = np.linalg.norm(pts[in_slab] - p, axis=1)
    comp = lab[tuple(sel[int(np.argmin(d))])]
    count = int(np.count_nonzero(lab == comp))
    area = count * grid.voxel_volume_mm3 / t
    return float(2.0 * math.sqrt(area / math.pi))


def _intravascular_fraction(lesion: LesionMask, vessels: dict[str, LesionMask]) -> float:
    crop = np.asarray(lesion.crop, bool)
    inside = np.zeros(crop.shape, dtype=bool)
    for m in vessels.values():
        inside |= reframe(np.asarray(m.crop, bool), m.bbox_zyx, lesion.bbox_zyx)
    return float(np.count_nonzero(crop & inside)) / max(int(crop.sum()), 1)


def abut_threshold_mm(grid: Grid, fat_plane_mm: float) -> tuple[float, str]:
    """Surface gap (mm) up to which a lesion counts as abutting a vessel, and why.

    The larger of ``fat_plane_mm`` (the configured fat-plane width) and the voxel diagonal of
    ``grid`` (mm): a gap under one voxel shows no fat plane at this resolution.

    Returns
    -------
    (threshold_mm, basis) where basis reads e.g. "under the voxel diagonal 2.7 mm (voxel 0.78 x
    0.78 x 2.50 mm), no fat plane visible".
    """
    sx, sy, sz = (float(v) for v in grid.spacing_xyz_mm)
    diag = math.sqrt(sx * sx + sy * sy + sz * sz)
    vox = f"voxel {sx:.2f} x {sy:.2f} x {sz:.2f} mm"
    if diag >= fat_plane_mm:
        return diag, f"under the voxel diagonal {diag:.1f} mm ({vox}), no fat plane visible"
    return float(fat_plane_mm), f"under the {fat_plane_mm:g} mm fat plane ({vox})"


def vessel_columns(
    lesion: LesionMask,
    surf: LesionSurface,
    organs: dict[str, LesionMask],
    tmap: TissueMap | None,
    *,
    margin_mm: float,
    abut_distance_mm: float,
    encasing_angle_deg: float,
    organ_sigma_mm: float,
) -> dict:
    """Vessel columns of one lesion (see the module doc)."""
    out = {"vessel_distance_mm": None, "vessel_name": "", "vessel_caliber_mm": None,
           "vessel_contact_angle_deg": None, "vessel_relation": None,
           "intravascular_fraction": None, "vessel_abut_threshold_mm": None,
           "vessel_abut_basis": "", "vessel_reason": ""}
    vessels = {n: m for n, m in organs.items() if organ_term(n) == "vessel"}
    if not vessels:
        out["vessel_reason"] = "no vessel masks for this study"
        return out
    grid = lesion.grid
    thr, basis = abut_threshold_mm(grid, abut_distance_mm)
    out["vessel_abut_threshold_mm"], out["vessel_abut_basis"] = thr, basis
    abut_distance_mm = thr
    region = expand_bbox(lesion.bbox_zyx, grid, margin_mm)
    dists = {}
    for name, m in vessels.items():
        d = mask_distance(lesion, surf, m, region, margin_mm, organ_sigma_mm)
        if d is not None:
            dists[name] = d[0]
    out["intravascular_fraction"] = _intravascular_fraction(lesion, vessels)
    if not dists:
        out["vessel_relation"] = "none"
        out["vessel_reason"] = f"no vessel within {margin_mm:g} mm"
        return out
    info = {}
    for name, d in dists.items():
        cal = None
        pts = region_surface([(np.asarray(vessels[name].crop, bool), vessels[name].bbox_zyx)],
                              grid, region, fill_holes=False)
        pair = nearest_pair(surf.faces, pts, margin_mm + 1.0)
        if pair is not None:
            cal = cross_section_caliber_mm(vessels[name], pair[1])
        angle = 0.0
        if d <= abut_distance_mm:
            rm = (cal if cal is not None else 30.0) + 5.0
            angle = contact_angle_deg(lesion, vessels[name], region_margin_mm=rm)
        info[name] = (d, cal, angle)
    touching = [n for n, (d, _, _) in info.items() if d <= abut_distance_mm]
    if touching:
        name = max(touching, key=lambda n: (info[n][2], -info[n][0]))
    else:
        name = min(info, key=lambda n: info[n][0])
    d, cal, angle = info[name]
    if angle > encasing_angle_deg:
        rel = "encasing"
    elif angle > 0.0 or d <= abut_distance_mm:
        rel = "abutting"
    else:
        rel = "none"
    out.update({"vessel_distance_mm": d, "vessel_name": name, "vessel_caliber_mm": cal,
                "vessel_contact_angle_deg": angle, "vessel_relation": rel})
    if cal is None:
        out["vessel_reason"] = "vessel caliber unknown (no vessel cross-section at the point)"
    return out


# --------------------------------------------------------------------------- mobility, critical
def diaphragm_distance(surf: LesionSurface, tmap: TissueMap | None) -> tuple[float | None, str]:
    """(distance from the lesion surface to the lung base, reason if None)."""
    if tmap is None:
        return None, "no CT on the lesion grid: diaphragm unknown"
    if tmap.lung_base is None:
        return None, "no lung base in the scan: diaphragm unknown"
    return float(min_tree_distance(tmap.lung_base, surf.smooth)), ""


def _base_name(structure: str) -> str:
    return re.sub(r"_(left|right)$", "", structure)


def critical_columns(
    lesion: LesionMask, surf: LesionSurface, organs: dict[str, LesionMask], *,
    critical: tuple[str, ...], margin_mm: float, organ_sigma_mm: float,
) -> dict:
    """Nearest critical structure (module doc)."""
    out = {"critical_structure_distance_mm": None, "critical_structure_name": "",
           "critical_structure_reason": ""}
    wanted = set(critical)
    masks = {n: m for n, m in organs.items()
             if _base_name(n) in wanted or organ_term(n) in wanted}
    if not masks:
        out["critical_structure_reason"] = (
            f"no masks of critical structures ({', '.join(critical)}) for this study")
        return out
    region = expand_bbox(lesion.bbox_zyx, lesion.grid, margin_mm)
    best = None
    for name, m in masks.items():
        d = mask_distance(lesion, surf, m, region, margin_mm, organ_sigma_mm)
        if d is not None and (best is None or d[0] < best[1]):
            best = (name, d[0])
    if best is None:
        out["critical_structure_reason"] = (
            f"no critical structure ({', '.join(sorted(masks))}) within {margin_mm:g} mm")
    else:
        out["critical_structure_name"], out["critical_structure_distance_mm"] = best
    return out


def liver_columns(lesion: LesionMask, organs: dict[str, LesionMask], organ: str) -> dict:
    """``exophytic_fraction`` (+ reason) for liver lesions; None for other organs."""
    if organ != "liver":
        return {"exophytic_fraction": None, "exophytic_reason": "not a liver lesion"}
    livers = [m for n, m in organs.items() if organ_term(n) == "liver"]
    if not livers:
        return {"exophytic_fraction": None, "exophytic_reason": "no liver mask"}
    return {"exophytic_fraction": exophytic_fraction(lesion, livers), "exophytic_reason": ""}
