"""Where a lesion sits: organ, site class, skin depth and distances to safety-relevant surfaces.

Everything here works on crops: the lesion's bounding box grown by a margin (``margin_mm``) is the
only region in which organ masks are looked at. Organ masks are :class:`LesionMask` records with
kind ORGAN and their own bounding box on the same grid as the lesion.

Surfaces: a coarse search uses voxel-face midpoints (:func:`pipeline.geometry.surface_points_lps`),
so two masks that share a face (or overlap) are 0 mm apart. A non-zero distance is then refined
with sub-voxel surfaces (:mod:`pipeline.anatomy.surfaces`): the lesion's smoothed iso-surface
against the organ's smoothed iso-surface near the closest point (for the skin: the study's
sub-voxel skin points, then the body mask smoothed near the nearest skin point), which removes
most of the staircase bias of face midpoints (2.5 x 2.5 x 3 mm phantom CT: worst skin-depth
error 1.8 mm with face midpoints, 0.9 mm with sub-voxel surfaces).

Organ names are mapped to the vocabulary by :func:`pipeline.anatomy.organs.organ_term`.

Frames and units: arrays (z, y, x); points DICOM LPS mm; distances mm.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from pipeline.anatomy.body import SkinSurface, min_tree_distance, surface_tree
from pipeline.anatomy.organs import normalise_name, organ_term
from pipeline.anatomy.stations import NODAL_STATIONS, nodal_station  # noqa: F401 - re-exported
from pipeline.anatomy.surfaces import (
    lesion_sigma_mm,
    local_surface_points,
    smoothed_surface_points,
)
from pipeline.errors import FeatureError
from pipeline.geometry import BBox, Grid, expand_bbox, surface_points_lps
from pipeline.records import LesionMask, SiteFeatures

log = logging.getLogger(__name__)

#: Vocabulary terms that never count as "the lesion's organ".
IGNORED_TERMS = frozenset({"body"})
#: Terms that are assigned only by overlap, never by adjacency: a node next to the aorta or a
#: rib is not "in" the aorta or the rib.
NO_ADJACENCY_TERMS = frozenset({"vessel", "bone", "muscle", "soft_tissue", "airway", "spinal_cord",
                                "spinal_canal", "ureter", "bile_duct"})
#: Terms that are soft tissue for the site class (superficial/deep soft tissue).
SOFT_TISSUE_TERMS = frozenset({"soft_tissue", "muscle"})


def is_node_name(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches any glob in ``patterns`` (case-insensitive)."""
    n = name.strip().lower()
    return any(fnmatch.fnmatchcase(n, p.lower()) for p in patterns)


# --------------------------------------------------------------------------- crop helpers
def _intersect(a: BBox, b: BBox) -> BBox | None:
    out = tuple((max(x[0], y[0]), min(x[1], y[1])) for x, y in zip(a, b))
    if any(lo >= hi for lo, hi in out):
        return None
    return out  # type: ignore[return-value]


def reframe(crop: np.ndarray, crop_bbox: BBox, target: BBox) -> np.ndarray:
    """The part of a crop (at ``crop_bbox``) inside ``target``, as a bool array on ``target``.

    Works for any overlap (none, partial, full); False outside the crop.
    """
    out = np.zeros(tuple(b - a for a, b in target), dtype=bool)
    inter = _intersect(crop_bbox, target)
    if inter is None:
        return out
    src = tuple(slice(i[0] - c[0], i[1] - c[0]) for i, c in zip(inter, crop_bbox))
    dst = tuple(slice(i[0] - t[0], i[1] - t[0]) for i, t in zip(inter, target))
    out[dst] = crop[src]
    return out


def _grow(bbox: BBox, grid: Grid, voxels: int = 1) -> BBox:
    return tuple(
        (max(0, a - voxels), min(n, b + voxels)) for (a, b), n in zip(bbox, grid.shape_zyx)
    )  # type: ignore[return-value]


def _region_union(
    crops: list[tuple[np.ndarray, BBox]], grid: Grid, region: BBox, *, fill_holes: bool
) -> tuple[np.ndarray, BBox]:
    """Union of masks on ``region`` grown by one voxel (cavities filled if ``fill_holes``)."""
    ext = _grow(region, grid)
    union = np.zeros(tuple(b - a for a, b in ext), dtype=bool)
    for crop, bb in crops:
        union |= reframe(crop, bb, ext)
    if fill_holes and union.any():
        union = ndi.binary_fill_holes(union)
    return union, ext


def region_surface(
    crops: list[tuple[np.ndarray, BBox]], grid: Grid, region: BBox, *, fill_holes: bool
) -> np.ndarray:
    """Surface points (LPS) of the union of masks, restricted to ``region``.

    The union is built on ``region`` grown by one voxel, so that faces on the region's border
    are real (not created by cropping); faces outside ``region``, and faces on the grid's
    border (where the scan cuts an organ: not an anatomical surface), are dropped.
    ``fill_holes`` fills enclosed cavities of the union inside the grown region (e.g. a
    tumour or vessel excluded from an organ mask).
    """
    union, ext = _region_union(crops, grid, region, fill_holes=fill_holes)
    if not union.any():
        return np.zeros((0, 3))
    pts = surface_points_lps(union, grid, offset_zyx=tuple(a for a, _ in ext))
    if len(pts) == 0:
        return pts
    idx = grid.lps_to_zyx(pts)
    lo = np.array([a for a, _ in region], dtype=float) - 0.5 - 1e-6
    hi = np.array([b for _, b in region], dtype=float) - 0.5 + 1e-6
    glo = np.zeros(3) - 1e-6
    ghi = np.asarray(grid.shape_zyx, dtype=float) - 1.0 + 1e-6
    keep = np.all((idx >= lo) & (idx <= hi) & (idx >= glo) & (idx <= ghi), axis=1)
    return pts[keep]


@dataclass(frozen=True, eq=False)
class LesionSurface:
    """A lesion's surface two ways (LPS mm).

    Attributes
    ----------
    faces : (N, 3)
        Voxel-face midpoints (coarse searches, "touching" tests).
    smooth : (M, 3)
        Sub-voxel vertices (:func:`pipeline.anatomy.surfaces.smoothed_surface_points`, sigma
        from :func:`pipeline.anatomy.surfaces.lesion_sigma_mm`); the face midpoints when the
        lesion is too small to smooth.
    """

    faces: np.ndarray
    smooth: np.ndarray


def lesion_surface(mask: LesionMask, *, smoothing_voxels: float = 0.4) -> LesionSurface:
    """Face midpoints and sub-voxel surface of a lesion mask (computed once per lesion)."""
    crop = np.asarray(mask.crop, dtype=bool)
    offset = tuple(a for a, _ in mask.bbox_zyx)
    faces = surface_points_lps(crop, mask.grid, offset_zyx=offset)
    if smoothing_voxels <= 0:
        return LesionSurface(faces, faces)
    sigma = lesion_sigma_mm(crop, mask.grid, smoothing_voxels)
    smooth = smoothed_surface_points(crop, mask.grid, offset_zyx=offset, sigma_mm=sigma)
    return LesionSurface(faces, smooth if len(smooth) else faces)


def nearest_pair(a: np.ndarray, b: np.ndarray, max_mm: float) -> tuple[float, np.ndarray] | None:
    """(smallest distance between point sets a and b if <= max_mm, the point of b) or None."""
    if len(a) == 0 or len(b) == 0:
        return None
    tree = surface_tree(b)
    m = min_tree_distance(tree, a, max_distance=max_mm)
    if not np.isfinite(m):
        return None
    d, i = tree.query(a, distance_upper_bound=m * (1 + 1e-9) + 1e-9)
    j = int(np.argmin(d))
    return float(m), b[int(i[j])]


def _refine(
    surf: LesionSurface, coarse: tuple[float, np.ndarray] | None, union: np.ndarray,
    union_bbox: BBox, grid: Grid, sigma_mm: float,
) -> float | None:
    """Sub-voxel surface distance (mm) near a coarse closest pair (face midpoints).

    0 when the coarse surfaces touch (shared face or overlap). Otherwise the mask ``union`` is
    smoothed in a window (6 mm + 0.3 x the distance, at most 25 mm) around the coarse closest
    point and its iso-surface compared with the lesion's sub-voxel surface.
    """
    if coarse is None:
        return None
    d0, q0 = coarse
    if d0 < 1e-6:
        return 0.0
    if sigma_mm <= 0:
        return d0
    half = min(25.0, 6.0 + 0.3 * d0)
    pts = local_surface_points(union, union_bbox, grid, q0, half_mm=half, sigma_mm=sigma_mm)
    if len(pts) == 0:
        return d0
    d = float(min_tree_distance(surface_tree(pts), surf.smooth))
    return max(d, 0.0)


def refined_skin_depth(
    surf: LesionSurface, skin: SkinSurface, body: np.ndarray, body_bbox: BBox, grid: Grid, *,
    sigma_mm: float, half_mm: float = 25.0,
) -> float:
    """Skin depth (mm) against a locally refined skin surface.

    The nearest skin point ``q`` of the study's :class:`SkinSurface` to the lesion's sub-voxel
    surface is found first; the body mask is then smoothed (``sigma_mm``, replicated border) in
    a window of ``half_mm`` around ``q`` and its iso-surface compared with the lesion's
    sub-voxel surface. The window is wide because for a deep lesion the skin is nearly
    equidistant over a large patch. Falls back to the study's skin points if the window holds
    no skin.
    """
    coarse = min_tree_distance(skin.tree, surf.smooth)  # pruned: fast from deep inside
    if sigma_mm <= 0 or not np.isfinite(coarse):
        return float(coarse)
    # the skin point achieving it: skin points in the ball that can hold it, against the lesion
    c = surf.smooth.mean(axis=0)
    reach = float(np.max(np.linalg.norm(surf.smooth - c, axis=1)))
    ids = skin.tree.query_ball_point(c, coarse + reach + 1e-6)
    if not ids:
        return float(coarse)
    d, _ = cKDTree(surf.smooth).query(skin.points_lps[ids])
    q = skin.points_lps[ids[int(np.argmin(d))]]
    pts = local_surface_points(body, body_bbox, grid, q, half_mm=half_mm, sigma_mm=sigma_mm)
    if len(pts) == 0:
        return float(coarse)
    return float(min_tree_distance(surface_tree(pts), surf.smooth))


def _overlap_count(lesion: LesionMask, organ: LesionMask) -> int:
    inter = _intersect(lesion.bbox_zyx, organ.bbox_zyx)
    if inter is None:
        return 0
    a = reframe(np.asarray(lesion.crop, bool), lesion.bbox_zyx, inter)
    b = reframe(np.asarray(organ.crop, bool), organ.bbox_zyx, inter)
    return int(np.count_nonzero(a & b))


def _check_grid(lesion: LesionMask, organ: LesionMask, name: str) -> None:
    if not lesion.grid.same_as(organ.grid):
        raise FeatureError(
            f"organ mask {name!r} is on another grid than lesion {lesion.name!r}",
            hint="map organ masks to the lesion's (CT) grid once per study before site_features",
        )


# --------------------------------------------------------------------------- main entry
def site_features(
    mask: LesionMask,
    *,
    organs: dict[str, LesionMask],
    skin: SkinSurface | None,
    node_name_patterns: Iterable[str] = ("*node*", "LN_*", "*_LN*", "*lymph*"),
    superficial_depth_mm: float = 30.0,
    organ_min_overlap: float = 0.5,
    organ_max_distance_mm: float = 5.0,
    vessel_names: Iterable[str] | None = None,
    margin_mm: float = 30.0,
    lesion_smoothing_voxels: float = 0.4,
    organ_smoothing_voxels: float = 1.0,
    surface: LesionSurface | None = None,
    measure_vessels: bool = True,
    body: tuple[np.ndarray, BBox] | None = None,
    skin_smoothing_voxels: float = 2.0,
) -> SiteFeatures:
    """Organ, site class, skin depth and safety distances of one lesion.

    Parameters
    ----------
    mask : LesionMask
        The lesion (crop + bbox on its grid).
    organs : dict of str -> LesionMask
        Organ masks of the study on the same grid, keyed by structure name (the name is mapped
        to the organ vocabulary with :func:`organ_term`). May be empty.
    skin : SkinSurface or None
        Skin surface of the study (:meth:`SkinSurface.from_body_mask`); None when unknown.
    node_name_patterns : iterable of str
        Case-insensitive globs on the lesion name that mark a lymph node.
    superficial_depth_mm : float
        Skin depth (mm) at or below which soft tissue and nodes are "superficial".
    organ_min_overlap : float
        Fraction of the lesion's voxels inside an organ (summed over masks of the same
        vocabulary term, e.g. lung lobes) needed to assign that organ by overlap.
    organ_max_distance_mm : float
        A lesion that is not inside an organ but within this surface distance (mm) of a
        parenchymal organ is assigned to it with reason "adjacent".
    vessel_names : iterable of str, optional
        Only organ masks whose normalised name contains one of these strings are vessels for
        ``vessel_distance_mm``. Default: every mask whose organ term is ``vessel``.
    margin_mm : float
        Distances are searched in the lesion's bounding box grown by this margin; larger
        distances are reported as None with a reason ("no ... within X mm").
    lesion_smoothing_voxels, organ_smoothing_voxels : float
        Gaussian sigma (x the largest voxel side) of the sub-voxel surfaces of the lesion
        (:func:`lesion_surface`) and of organs near the closest point; 0 = face midpoints.
    surface : LesionSurface, optional
        The lesion's surface if already computed.
    measure_vessels : bool
        False: leave ``vessel_distance_mm`` / ``vessel_name`` empty (the caller measures
        vessels itself, e.g. :func:`pipeline.anatomy.safety.vessel_columns`).
    body : (array, bbox), optional
        The body mask (any dtype, non-zero inside) and its index box on the grid; when given,
        the skin is refined locally (:func:`refined_skin_depth`, sigma
        ``skin_smoothing_voxels`` x the largest voxel side).

    Returns
    -------
    SiteFeatures
        ``organ`` -- decided in this order:

        1. ``organs`` empty: "lymph_node" if the name matches ``node_name_patterns`` (reason
           "from lesion name ..."), else "unknown" (reason "no organ masks for this study").
        2. The vocabulary term with the largest overlap fraction, if >= ``organ_min_overlap``.
        3. "lymph_node" if the lesion name matches a node pattern (a node touching an organ is
           still a node).
        4. The term with the largest overlap if > 0, else the nearest parenchymal organ (not in
           :data:`NO_ADJACENCY_TERMS`) within ``organ_max_distance_mm``: reason "adjacent ...".
        5. "soft_tissue", reason "outside all segmented organs".

        ``site`` -- "superficial_soft_tissue" / "deep_soft_tissue" (organ soft_tissue or muscle),
        "superficial_node" / "deep_node" (organ lymph_node), split at ``superficial_depth_mm`` of
        skin depth; "superficial_unknown" / "deep_unknown" for organ "unknown"; the suffix
        "depth_unknown" replaces the prefix when skin depth is unknown ("soft_tissue_depth_unknown",
        "node_depth_unknown", "unknown"); every other organ gives "visceral:<organ>" (bone and
        vessel included).

        ``skin_depth_mm`` -- smallest distance from the lesion's sub-voxel surface to the skin
        (the study's skin points, refined locally when ``body`` is given).

        ``liver_capsule_distance_mm`` (organ liver) and ``lung_pleura_distance_mm`` (organ
        lung): distance from the lesion surface to the outer surface of the organ (union of its
        masks with the lesion, cavities filled), 0 when the lesion touches or crosses it.

        ``vessel_distance_mm`` / ``vessel_name`` -- nearest vessel mask, surface to surface, 0
        when touching or overlapping.

        Distances that are not 0 are refined with sub-voxel surfaces near the closest point.
        ``anatomy_reason`` -- "; "-joined reasons for the distances that are None.
    """
    grid = mask.grid
    crop = np.asarray(mask.crop, dtype=bool)
    n_vox = int(np.count_nonzero(crop))
    if n_vox == 0:
        raise FeatureError(f"lesion mask {mask.name!r} is empty")
    surf = surface or lesion_surface(mask, smoothing_voxels=lesion_smoothing_voxels)
    lesion_pts = surf.faces
    node_by_name = is_node_name(mask.name, node_name_patterns)
    for name, org in organs.items():
        _check_grid(mask, org, name)
    terms = {name: organ_term(name) for name in organs}
    organ_sigma = organ_smoothing_voxels * float(max(grid.spacing_xyz_mm))

    # ---------------------------------------------------------------- skin depth
    if skin is None:
        skin_depth, skin_reason = None, "no skin surface for this study"
    else:
        if body is not None:
            skin_depth = refined_skin_depth(
                surf, skin, body[0], body[1], grid,
                sigma_mm=skin_smoothing_voxels * float(max(grid.spacing_xyz_mm)))
        else:
            skin_depth = skin.min_depth_mm(surf.smooth)
        skin_reason = ""

    # ---------------------------------------------------------------- organ
    overlap_fraction: float | None = None
    if not organs:
        if node_by_name:
            organ = "lymph_node"
            organ_reason = f"from lesion name {mask.name!r} (no organ masks for this study)"
        else:
            organ, organ_reason = "unknown", "no organ masks for this study"
    else:
        by_term: dict[str, int] = {}
        for name, org in organs.items():
            t = terms[name]
            if t in IGNORED_TERMS:
                continue
            by_term[t] = by_term.get(t, 0) + _overlap_count(mask, org)
        best_term, best_count = (None, 0)
        for t, c in by_term.items():
            if c > best_count:
                best_term, best_count = t, c
        overlap_fraction = best_count / n_vox
        if best_term is not None and overlap_fraction >= organ_min_overlap:
            organ = best_term
            organ_reason = f"{overlap_fraction:.0%} of the lesion inside the {best_term} mask"
        elif node_by_name:
            organ, organ_reason = "lymph_node", f"from lesion name {mask.name!r}"
        elif best_term is not None and best_term not in NO_ADJACENCY_TERMS:
            organ = best_term
            organ_reason = (
                f"adjacent: {overlap_fraction:.0%} of the lesion inside the {best_term} mask "
                f"(< {organ_min_overlap:.0%})"
            )
        else:
            near = _nearest_organ(mask, lesion_pts, organs, terms, organ_max_distance_mm)
            if near is not None:
                organ = near[0]
                organ_reason = f"adjacent: {near[1]:.1f} mm from the {near[0]} mask"
            else:
                organ, organ_reason = "soft_tissue", "outside all segmented organs"

    site = _site_class(organ, skin_depth, superficial_depth_mm)

    # ---------------------------------------------------------------- distances on a crop
    region = expand_bbox(mask.bbox_zyx, grid, margin_mm)
    reasons: list[str] = []
    capsule = None
    if organ == "liver":
        capsule = _organ_surface_distance(
            mask, surf, organs, terms, "liver", region, margin_mm, organ_sigma
        )
        if capsule is None:
            reasons.append(f"liver capsule: no liver surface within {margin_mm:g} mm")
    pleura = None
    if organ == "lung":
        pleura = _organ_surface_distance(
            mask, surf, organs, terms, "lung", region, margin_mm, organ_sigma
        )
        if pleura is None:
            reasons.append(f"lung pleura: no lung surface within {margin_mm:g} mm")

    vessel_d, vessel_name = None, ""
    if not measure_vessels:
        vessels = None
    elif vessel_names is None:
        vessels = {name: org for name, org in organs.items() if terms[name] == "vessel"}
        what = "vessel masks"
    else:
        vessel_names = tuple(vessel_names)
        vessels = {
            name: org
            for name, org in organs.items()
            if any(v.lower() in normalise_name(name) for v in vessel_names)
        }
        what = f"vessel masks ({', '.join(vessel_names)})"
    if vessels is None:
        pass
    elif not vessels:
        reasons.append(f"vessel: no {what}")
    else:
        for name, org in vessels.items():
            d = mask_distance(mask, surf, org, region, margin_mm, organ_sigma)
            if d is not None and (vessel_d is None or d[0] < vessel_d):
                vessel_d, vessel_name = d[0], name
        if vessel_d is None:
            reasons.append(f"vessel: no vessel within {margin_mm:g} mm")

    return SiteFeatures(
        organ=organ,
        organ_reason=organ_reason,
        organ_overlap_fraction=overlap_fraction,
        site=site,
        skin_depth_mm=skin_depth,
        skin_depth_reason=skin_reason,
        liver_capsule_distance_mm=capsule,
        vessel_distance_mm=vessel_d,
        vessel_name=vessel_name,
        lung_pleura_distance_mm=pleura,
        anatomy_reason="; ".join(reasons),
        liver_capsule_distance_min_mm=(capsule if capsule is not None else float(margin_mm))
        if organ == "liver" and any(terms[n] == "liver" for n in organs) else None,
        lung_pleura_distance_min_mm=(pleura if pleura is not None else float(margin_mm))
        if organ == "lung" and any(terms[n] == "lung" for n in organs) else None,
        vessel_distance_min_mm=(vessel_d if vessel_d is not None else float(margin_mm))
        if vessels else None,
    )


def _site_class(organ: str, depth: float | None, superficial_mm: float) -> str:
    if organ in SOFT_TISSUE_TERMS or organ == "lymph_node" or organ == "unknown":
        stem = {"lymph_node": "node", "unknown": "unknown"}.get(organ, "soft_tissue")
        if depth is None:
            return "unknown" if organ == "unknown" else f"{stem}_depth_unknown"
        return f"{'superficial' if depth <= superficial_mm else 'deep'}_{stem}"
    return f"visceral:{organ}"


def mask_distance(
    lesion: LesionMask, surf: LesionSurface, organ: LesionMask, region: BBox, max_mm: float,
    sigma_mm: float = 0.0,
) -> tuple[float, np.ndarray | None] | None:
    """Surface-to-surface distance (mm) from the lesion to one mask within ``region``.

    Returns (distance, closest face midpoint of the mask or None when they overlap); 0 when
    they overlap or share a face; None when no surface of the mask in ``region`` lies within
    ``max_mm`` (``region`` must contain the lesion's bbox grown by ``max_mm``). With
    ``sigma_mm`` > 0 a non-zero distance is refined with sub-voxel surfaces (:func:`_refine`).
    """
    if _overlap_count(lesion, organ) > 0:
        return 0.0, None
    if _intersect(_grow(region, lesion.grid), organ.bbox_zyx) is None:
        return None
    crops = [(np.asarray(organ.crop, bool), organ.bbox_zyx)]
    pts = region_surface(crops, lesion.grid, region, fill_holes=False)
    coarse = nearest_pair(surf.faces, pts, max_mm)
    if coarse is None:
        return None
    d = _refine(surf, coarse, np.asarray(organ.crop, bool), organ.bbox_zyx, lesion.grid, sigma_mm)
    return (d if d is not None else coarse[0]), coarse[1]


def _nearest_organ(
    lesion: LesionMask,
    lesion_pts: np.ndarray,
    organs: dict[str, LesionMask],
    terms: dict[str, str],
    max_mm: float,
) -> tuple[str, float] | None:
    """Nearest parenchymal organ term within ``max_mm`` of the lesion surface, with distance."""
    region = expand_bbox(lesion.bbox_zyx, lesion.grid, max_mm)
    surf = LesionSurface(lesion_pts, lesion_pts)
    best: tuple[str, float] | None = None
    for name, org in organs.items():
        t = terms[name]
        if t in IGNORED_TERMS or t in NO_ADJACENCY_TERMS:
            continue
        d = mask_distance(lesion, surf, org, region, max_mm)
        if d is not None and (best is None or d[0] < best[1]):
            best = (t, d[0])
    return best


def _organ_surface_distance(
    lesion: LesionMask,
    surf: LesionSurface,
    organs: dict[str, LesionMask],
    terms: dict[str, str],
    term: str,
    region: BBox,
    max_mm: float,
    sigma_mm: float = 0.0,
) -> float | None:
    """Distance (mm) from the lesion surface to the outer surface of an organ (capsule/pleura).

    The organ is the union of all masks with vocabulary ``term`` plus the lesion itself (so a
    lesion cut out of the organ mask does not count as a surface), cavities filled; 0 when the
    lesion reaches the organ surface. None when no organ surface lies within ``max_mm``.
    """
    crops = [
        (np.asarray(o.crop, bool), o.bbox_zyx) for n, o in organs.items() if terms[n] == term
    ]
    crops.append((np.asarray(lesion.crop, bool), lesion.bbox_zyx))
    union, ext = _region_union(crops, lesion.grid, region, fill_holes=True)
    pts = region_surface(crops, lesion.grid, region, fill_holes=True)
    coarse = nearest_pair(surf.faces, pts, max_mm)
    return _refine(surf, coarse, union, ext, lesion.grid, sigma_mm)
