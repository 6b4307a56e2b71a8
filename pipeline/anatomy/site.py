"""Where a lesion sits: organ, site class, skin depth and distances to safety-relevant surfaces.

Everything here works on crops: the lesion's bounding box grown by a margin (``margin_mm``) is the
only region in which organ masks are looked at. Organ masks are :class:`LesionMask` records with
kind ORGAN and their own bounding box on the same grid as the lesion.

Surfaces are voxel-face midpoints (:func:`pipeline.geometry.surface_points_lps`); the distance
between two surfaces is the smallest distance between their face midpoints, so two masks that
share a face are 0 mm apart and two masks separated by a gap of ``g`` voxels along an axis are
``g x spacing`` apart.

Frames and units: arrays (z, y, x); points DICOM LPS mm; distances mm.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy.body import SkinSurface, min_tree_distance, surface_tree
from pipeline.errors import FeatureError
from pipeline.geometry import BBox, Grid, expand_bbox, surface_points_lps
from pipeline.records import LesionMask, SiteFeatures

log = logging.getLogger(__name__)

#: Organ mask names (normalised: lower case, spaces and hyphens -> "_") to the organ vocabulary.
#: Covers the phantom's organ SEG, TotalSegmentator's structure names and common RTSTRUCT ROI
#: names. Names not found here are tried against :data:`ORGAN_NAME_PATTERNS`, then kept as they
#: are (normalised).
ORGAN_VOCABULARY: dict[str, str] = {
    # liver, spleen, pancreas, gallbladder
    "liver": "liver",
    "spleen": "spleen",
    "pancreas": "pancreas",
    "gallbladder": "gallbladder",
    # lungs
    "lung": "lung",
    "lungs": "lung",
    "lung_left": "lung",
    "lung_right": "lung",
    "left_lung": "lung",
    "right_lung": "lung",
    "lung_l": "lung",
    "lung_r": "lung",
    # kidneys, adrenals
    "kidney": "kidney",
    "kidney_left": "kidney",
    "kidney_right": "kidney",
    "kidney_l": "kidney",
    "kidney_r": "kidney",
    "adrenal_gland_left": "adrenal",
    "adrenal_gland_right": "adrenal",
    "adrenal": "adrenal",
    # hollow organs
    "stomach": "stomach",
    "esophagus": "esophagus",
    "small_bowel": "bowel",
    "duodenum": "bowel",
    "colon": "bowel",
    "bowel": "bowel",
    "urinary_bladder": "bladder",
    "bladder": "bladder",
    "trachea": "airway",
    # others
    "heart": "heart",
    "brain": "brain",
    "thyroid_gland": "thyroid",
    "thyroid": "thyroid",
    "prostate": "prostate",
    "breast": "breast",
    "spinal_cord": "spinal_cord",
    "spinalcord": "spinal_cord",
    # vessels
    "aorta": "vessel",
    "vena_cava": "vessel",
    "inferior_vena_cava": "vessel",
    "superior_vena_cava": "vessel",
    "ivc": "vessel",
    "svc": "vessel",
    "portal_vein": "vessel",
    "portal_vein_and_splenic_vein": "vessel",
    "pulmonary_artery": "vessel",
    # bone
    "vertebral_column": "bone",
    "spine": "bone",
    "sternum": "bone",
    "sacrum": "bone",
    "skull": "bone",
    "bone": "bone",
    "bones": "bone",
    # soft tissue
    "skeletal_muscle": "muscle",
    "muscle": "muscle",
    "subcutaneous_fat": "soft_tissue",
    "soft_tissue": "soft_tissue",
    # whole-body outlines: never an organ of a lesion
    "body": "body",
    "skin": "body",
    "external": "body",
    "body_outline": "body",
}

#: Glob patterns (on normalised names), tried in order after :data:`ORGAN_VOCABULARY`.
ORGAN_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    ("lung_*lobe*", "lung"),
    ("vertebrae_*", "bone"),
    ("rib_*", "bone"),
    ("hip_*", "bone"),
    ("femur_*", "bone"),
    ("humerus_*", "bone"),
    ("scapula_*", "bone"),
    ("clavicula_*", "bone"),
    ("iliac_artery_*", "vessel"),
    ("iliac_vena_*", "vessel"),
    ("*artery*", "vessel"),
    ("*_vein*", "vessel"),
    ("kidney_*", "kidney"),
    ("adrenal_*", "adrenal"),
    ("gluteus_*", "muscle"),
    ("autochthon_*", "muscle"),
    ("iliopsoas_*", "muscle"),
)

#: Vocabulary terms that never count as "the lesion's organ".
IGNORED_TERMS = frozenset({"body"})
#: Terms that are assigned only by overlap, never by adjacency: a node next to the aorta or a
#: rib is not "in" the aorta or the rib.
NO_ADJACENCY_TERMS = frozenset({"vessel", "bone", "muscle", "soft_tissue", "airway", "spinal_cord"})
#: Terms that are soft tissue for the site class (superficial/deep soft tissue).
SOFT_TISSUE_TERMS = frozenset({"soft_tissue", "muscle"})


def normalise_name(name: str) -> str:
    """Lower case, surrounding blanks stripped, spaces and hyphens replaced by underscores."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def organ_term(name: str) -> str:
    """The organ vocabulary term of an organ mask name (see :data:`ORGAN_VOCABULARY`)."""
    n = normalise_name(name)
    if n in ORGAN_VOCABULARY:
        return ORGAN_VOCABULARY[n]
    for pattern, term in ORGAN_NAME_PATTERNS:
        if fnmatch.fnmatchcase(n, pattern):
            return term
    return n


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


def _reframe(crop: np.ndarray, crop_bbox: BBox, target: BBox) -> np.ndarray:
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


def _region_surface(
    crops: list[tuple[np.ndarray, BBox]], grid: Grid, region: BBox, *, fill_holes: bool
) -> np.ndarray:
    """Surface points (LPS) of the union of masks, restricted to ``region``.

    The union is built on ``region`` grown by one voxel, so that faces on the region's border
    are real (not created by cropping); faces outside ``region``, and faces on the grid's
    border (where the scan cuts an organ: not an anatomical surface), are dropped.
    ``fill_holes`` fills enclosed cavities of the union inside the grown region (e.g. a
    tumour or vessel excluded from an organ mask).
    """
    ext = _grow(region, grid)
    union = np.zeros(tuple(b - a for a, b in ext), dtype=bool)
    for crop, bb in crops:
        union |= _reframe(crop, bb, ext)
    if not union.any():
        return np.zeros((0, 3))
    if fill_holes:
        union = ndi.binary_fill_holes(union)
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


def _min_distance(a: np.ndarray, b: np.ndarray, max_mm: float) -> float | None:
    """Smallest distance (mm) between point sets if <= ``max_mm``, else None; < 1e-6 -> 0."""
    if len(a) == 0 or len(b) == 0:
        return None
    m = min_tree_distance(surface_tree(b), a, max_distance=max_mm)
    if not np.isfinite(m):
        return None
    return 0.0 if m < 1e-6 else m


def _overlap_count(lesion: LesionMask, organ: LesionMask) -> int:
    inter = _intersect(lesion.bbox_zyx, organ.bbox_zyx)
    if inter is None:
        return 0
    a = _reframe(np.asarray(lesion.crop, bool), lesion.bbox_zyx, inter)
    b = _reframe(np.asarray(organ.crop, bool), organ.bbox_zyx, inter)
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
    vessel_names: Iterable[str] = ("aorta", "vena_cava", "portal_vein"),
    margin_mm: float = 30.0,
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
    vessel_names : iterable of str
        An organ mask is a vessel for ``vessel_distance_mm`` when one of these strings is a
        substring of its normalised name (so "vena_cava" matches "inferior_vena_cava").
    margin_mm : float
        Distances are searched in the lesion's bounding box grown by this margin; larger
        distances are reported as None with a reason ("no ... within X mm").

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

        ``skin_depth_mm`` -- smallest skin distance over the lesion's surface points (all faces).

        ``liver_capsule_distance_mm`` (organ liver) and ``lung_pleura_distance_mm`` (organ
        lung): distance from the lesion surface to the outer surface of the organ (union of its
        masks with the lesion, cavities filled), 0 when the lesion touches or crosses it.

        ``vessel_distance_mm`` / ``vessel_name`` -- nearest vessel mask, surface to surface, 0
        when touching or overlapping.

        ``anatomy_reason`` -- "; "-joined reasons for the distances that are None.
    """
    grid = mask.grid
    crop = np.asarray(mask.crop, dtype=bool)
    n_vox = int(np.count_nonzero(crop))
    if n_vox == 0:
        raise FeatureError(f"lesion mask {mask.name!r} is empty")
    offset = tuple(a for a, _ in mask.bbox_zyx)
    lesion_pts = surface_points_lps(crop, grid, offset_zyx=offset)
    node_by_name = is_node_name(mask.name, node_name_patterns)
    for name, org in organs.items():
        _check_grid(mask, org, name)
    terms = {name: organ_term(name) for name in organs}

    # ---------------------------------------------------------------- skin depth
    if skin is None:
        skin_depth, skin_reason = None, "no skin surface for this study"
    else:
        skin_depth = skin.min_depth_mm(lesion_pts)
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
            mask, lesion_pts, organs, terms, "liver", region, margin_mm
        )
        if capsule is None:
            reasons.append(f"liver capsule: no liver surface within {margin_mm:g} mm")
    pleura = None
    if organ == "lung":
        pleura = _organ_surface_distance(mask, lesion_pts, organs, terms, "lung", region, margin_mm)
        if pleura is None:
            reasons.append(f"lung pleura: no lung surface within {margin_mm:g} mm")

    vessel_d, vessel_name = None, ""
    vessels = {
        name: org
        for name, org in organs.items()
        if any(v.lower() in normalise_name(name) for v in vessel_names)
    }
    if not vessels:
        reasons.append(f"vessel: no vessel masks ({', '.join(vessel_names)})")
    else:
        for name, org in vessels.items():
            d = _mask_distance(mask, lesion_pts, org, region, margin_mm)
            if d is not None and (vessel_d is None or d < vessel_d):
                vessel_d, vessel_name = d, name
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
    )


def _site_class(organ: str, depth: float | None, superficial_mm: float) -> str:
    if organ in SOFT_TISSUE_TERMS or organ == "lymph_node" or organ == "unknown":
        stem = {"lymph_node": "node", "unknown": "unknown"}.get(organ, "soft_tissue")
        if depth is None:
            return "unknown" if organ == "unknown" else f"{stem}_depth_unknown"
        return f"{'superficial' if depth <= superficial_mm else 'deep'}_{stem}"
    return f"visceral:{organ}"


def _mask_distance(
    lesion: LesionMask, lesion_pts: np.ndarray, organ: LesionMask, region: BBox, max_mm: float
) -> float | None:
    """Surface-to-surface distance (mm) from the lesion to one mask within ``region``.

    0 when they overlap or share a face; None when no surface of the mask in ``region`` lies
    within ``max_mm`` (``region`` must contain the lesion's bbox grown by ``max_mm``).
    """
    if _overlap_count(lesion, organ) > 0:
        return 0.0
    if _intersect(_grow(region, lesion.grid), organ.bbox_zyx) is None:
        return None
    pts = _region_surface(
        [(np.asarray(organ.crop, bool), organ.bbox_zyx)], lesion.grid, region, fill_holes=False
    )
    return _min_distance(lesion_pts, pts, max_mm)


def _nearest_organ(
    lesion: LesionMask,
    lesion_pts: np.ndarray,
    organs: dict[str, LesionMask],
    terms: dict[str, str],
    max_mm: float,
) -> tuple[str, float] | None:
    """Nearest parenchymal organ term within ``max_mm`` of the lesion surface, with distance."""
    region = expand_bbox(lesion.bbox_zyx, lesion.grid, max_mm)
    best: tuple[str, float] | None = None
    for name, org in organs.items():
        t = terms[name]
        if t in IGNORED_TERMS or t in NO_ADJACENCY_TERMS:
            continue
        d = _mask_distance(lesion, lesion_pts, org, region, max_mm)
        if d is not None and (best is None or d < best[1]):
            best = (t, d)
    return best


def _organ_surface_distance(
    lesion: LesionMask,
    lesion_pts: np.ndarray,
    organs: dict[str, LesionMask],
    terms: dict[str, str],
    term: str,
    region: BBox,
    max_mm: float,
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
    pts = _region_surface(crops, lesion.grid, region, fill_holes=True)
    return _min_distance(lesion_pts, pts, max_mm)
