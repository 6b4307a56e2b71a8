"""Study-wide tissue map: body, bone, gas, lung and vessels as bit flags, organs as labels.

Built ONCE per study (:func:`build_tissue_map`) on the bounding box of the body, so that every
per-lesion question ("what does this needle cross?") is a lookup, never a whole-volume
computation.

Flags (``TissueMap.flags``, uint8 bits)
---------------------------------------
=============== ===========================================================================
``BODY``        the body mask (:func:`pipeline.anatomy.body.body_mask`: table removed, lungs
                and bowel gas inside).
``BONE``        CT > ``bone_threshold_hu`` inside the body, minus vessel masks (contrast-filled
                lumen is not bone), OR any organ mask of term ``bone``. Calcifications, metal
                and excreted contrast above the threshold count as bone too (conservative).
``AIR``         CT < ``air_threshold_hu`` inside the body: aerated lung, airway, bowel gas.
``LUNG``        organ masks of term ``lung`` (any side, lobes merged); without lung masks, the
                ``AIR`` voxels (every internal gas then counts as lung: documented
                limitation).
``VESSEL``      organ masks of term ``vessel``.
``LARGE_VESSEL`` the part of each vessel mask whose local caliber (diameter of the largest
                inscribed ball containing the voxel) is at least ``vessel_caliber_threshold_mm``:
                a morphological opening by a ball of that diameter, done with two distance
                transforms on each vessel mask's own bounding box (:func:`_large_vessel`).
=============== ===========================================================================

Labels (``TissueMap.labels``) hold, per voxel, the index (1-based) of a structure of
``TissueMap.structures`` (0 = none). One label per voxel: vessels and bones are painted first,
other organs next, structures of ``forbidden_terms`` last (where masks overlap, the forbidden
one wins).

Frames and units: arrays (z, y, x) on the CT grid; HU; mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from pipeline.anatomy.organs import organ_term
from pipeline.errors import FeatureError
from pipeline.geometry import BBox, Grid, bbox_of, surface_points_lps
from pipeline.records import LesionMask

log = logging.getLogger(__name__)

BODY, BONE, AIR, LUNG, VESSEL, LARGE_VESSEL = 1, 2, 4, 8, 16, 32


@dataclass
class TissueMap:
    """The study's tissue flags and organ labels on the body's bounding box (see module doc).

    Attributes
    ----------
    grid : Grid
        The CT grid.
    bbox : BBox
        Index box of ``flags`` / ``labels`` on ``grid`` (the body's bounding box).
    flags : (z, y, x) uint8
        Bit flags BODY, BONE, AIR, LUNG, VESSEL, LARGE_VESSEL.
    labels : (z, y, x) uint8 or uint16
        Structure index (1-based into ``structures``), 0 = none.
    structures : tuple of str
        Structure names of the labels.
    terms : tuple of str
        Organ term of each structure.
    lung_from_masks : bool
        True if ``LUNG`` comes from lung organ masks, False if from HU (all internal gas).
    vessel_tree : cKDTree or None
        Face midpoints of all vessel masks (LPS mm), for path clearances.
    lung_base : cKDTree or None
        Lung base (diaphragm) surface points, LPS mm (:func:`lung_base_points`).
    notes : list of str
        How the map was built (for provenance).
    """

    grid: Grid
    bbox: BBox
    flags: np.ndarray
    labels: np.ndarray
    structures: tuple[str, ...]
    terms: tuple[str, ...]
    lung_from_masks: bool
    vessel_tree: cKDTree | None = None
    lung_base: cKDTree | None = None
    notes: list[str] = field(default_factory=list)

    def labels_of_terms(self, terms) -> np.ndarray:
        """Label values (1-based) of the structures whose organ term is in ``terms``."""
        ts = set(terms)
        return np.array([i + 1 for i, t in enumerate(self.terms) if t in ts], dtype=np.int64)


def _paste(dst: np.ndarray, dst_bbox: BBox, crop: np.ndarray, crop_bbox: BBox) -> tuple:
    """Slices (dst, src) of the overlap of a crop with the destination box."""
    inter = tuple((max(a[0], b[0]), min(a[1], b[1])) for a, b in zip(crop_bbox, dst_bbox))
    if any(lo >= hi for lo, hi in inter):
        return None, None
    d = tuple(slice(i[0] - b[0], i[1] - b[0]) for i, b in zip(inter, dst_bbox))
    s = tuple(slice(i[0] - c[0], i[1] - c[0]) for i, c in zip(inter, crop_bbox))
    return d, s


def _large_vessel(m: LesionMask, grid: Grid, caliber_threshold_mm: float
                  ) -> tuple[np.ndarray, BBox]:
    """Part of a vessel mask at least ``caliber_threshold_mm`` wide, on its bbox (+1 voxel).

    Morphological opening by a ball of that diameter, with two Euclidean distance transforms:
    the centres ``q`` whose distance to the surface (distance to the nearest outside voxel
    centre minus half the smallest voxel side) is at least the radius, dilated by the radius
    plus one voxel (so that the outermost voxel layer of a large vessel is included), within
    the vessel. On a coarse grid the smallest vessel found large is about two voxels wide.
    """
    bb = tuple((max(0, a - 1), min(n, b + 1)) for (a, b), n in zip(m.bbox_zyx, grid.shape_zyx))
    vol = np.zeros(tuple(b - a for a, b in bb), dtype=bool)
    d, s = _paste(vol, bb, np.asarray(m.crop, bool), m.bbox_zyx)
    vol[d] = np.asarray(m.crop, bool)[s]
    sp = tuple(float(v) for v in np.asarray(grid.spacing_xyz_mm)[::-1])
    # pad so that the grid border is not mistaken for the vessel wall's outside
    edt = ndi.distance_transform_edt(np.pad(vol, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    r0 = 0.5 * caliber_threshold_mm
    core = (edt - 0.5 * min(sp)) >= r0
    if not core.any():
        return np.zeros_like(vol), bb
    # dilation by the radius plus one voxel: the outermost voxel layer (centres half a voxel
    # inside the surface) is then included, as a ball of the radius would cover it
    large = (ndi.distance_transform_edt(~core, sampling=sp) <= r0 + max(sp) + 1e-6) & vol
    return large, bb


def lung_base_points(lung: np.ndarray, grid: Grid, offset_zyx, *, sigma_mm: float = 4.0,
                     min_cos: float = 0.5) -> np.ndarray:
    """Lung base (diaphragm) surface points, LPS mm.

    Faces between a lung voxel and the voxel below it (inferior, -z in LPS) that is not lung,
    kept where the outward normal of the lung (from the gradient of the lung mask smoothed with
    ``sigma_mm``) points within ``acos(min_cos)`` of straight down: the domes and the posterior
    recesses, not the lateral walls. Faces on the grid's first/last slice are not anatomy and are
    dropped. Needs a grid whose slice axis is within 45 degrees of z.
    """
    lung = np.asarray(lung, dtype=bool)
    bb = bbox_of(lung)
    if bb is None:
        return np.zeros((0, 3))
    sp = np.asarray(grid.spacing_xyz_mm, float)[::-1]
    sig = sigma_mm / sp
    pad = np.ceil(3 * sig).astype(int) + 1
    bb = tuple((max(0, a - p), min(n, b + p)) for (a, b), p, n in zip(bb, pad, lung.shape))
    lung = lung[tuple(slice(a, b) for a, b in bb)]
    offset_zyx = tuple(int(o) + a for o, (a, _) in zip(offset_zyx, bb))
    kz = grid.direction_matrix[:, 2]
    if abs(kz[2]) < np.cos(np.radians(45)):
        return np.zeros((0, 3))
    down = -1 if kz[2] > 0 else 1  # index step along k that goes inferior
    below = np.roll(lung, -down, axis=0)
    face = lung & ~below
    # the roll wraps: the inferior-most slice of the array has no valid neighbour
    if down == -1:
        face[0] = False
    else:
        face[-1] = False
    k_abs = np.arange(lung.shape[0]) + offset_zyx[0]
    face[(k_abs == 0) | (k_abs == grid.shape_zyx[0] - 1)] = False
    idx = np.argwhere(face)
    if len(idx) == 0:
        return np.zeros((0, 3))
    sm = ndi.gaussian_filter(lung.astype(np.float32), sig)
    g = np.empty((len(idx), 3))
    for ax in range(3):  # central differences of the smoothed mask at the face voxels
        up, dn = idx.copy(), idx.copy()
        up[:, ax] = np.minimum(up[:, ax] + 1, lung.shape[ax] - 1)
        dn[:, ax] = np.maximum(dn[:, ax] - 1, 0)
        g[:, ax] = (sm[tuple(up.T)] - sm[tuple(dn.T)]) / ((up[:, ax] - dn[:, ax]) * sp[ax] + 1e-12)
    # outward normal = -gradient (the mask decreases outward); in LPS via the direction matrix
    n_idx = -g[:, ::-1]  # (di, dj, dk) components
    n_lps = n_idx @ grid.direction_matrix.T
    norm = np.linalg.norm(n_lps, axis=1) + 1e-12
    keep = (-n_lps[:, 2] / norm) >= min_cos
    pts = idx[keep].astype(float)
    pts[:, 0] += 0.5 * down
    return grid.zyx_to_lps(pts + np.asarray(offset_zyx, float))


def build_tissue_map(
    ct_hu: np.ndarray,
    grid: Grid,
    body: np.ndarray,
    organs: dict[str, LesionMask],
    *,
    bone_threshold_hu: float,
    air_threshold_hu: float,
    vessel_caliber_threshold_mm: float,
    forbidden_terms=(),
    diaphragm_sigma_mm: float = 4.0,
    diaphragm_min_cos: float = 0.5,
) -> TissueMap:
    """Build the study's :class:`TissueMap` (once per study).

    Parameters
    ----------
    ct_hu : (z, y, x) CT in HU on ``grid``.
    body : (z, y, x) bool body mask on ``grid``.
    organs : structure -> organ mask on ``grid`` (:func:`pipeline.anatomy.organs.canonical_organs`).
    bone_threshold_hu, air_threshold_hu : float
        HU thresholds of bone (above) and gas (below), inside the body.
    vessel_caliber_threshold_mm : float
        Vessel parts at least this wide are ``LARGE_VESSEL``.
    forbidden_terms : iterable of str
        Organ terms painted last in ``labels``.
    diaphragm_sigma_mm, diaphragm_min_cos : float
        See :func:`lung_base_points`.
    """
    bb = bbox_of(body)
    if bb is None:
        raise FeatureError(
            "the CT has no body voxel: expected connected tissue above the body threshold, found "
            "none on the CT grid",
            hint="check that the series is a CT in HU (RescaleSlope/Intercept (0028,1053)/(0028,1052)) "
                 "and that anatomy.body_threshold_hu in the configuration suits it",
        )
    sl = tuple(slice(a, b) for a, b in bb)
    ct = np.asarray(ct_hu)[sl]
    b = np.asarray(body, bool)[sl]
    flags = np.zeros(b.shape, dtype=np.uint8)
    flags[b] = BODY
    notes: list[str] = []

    terms = {name: organ_term(name) for name in organs}
    shape = b.shape
    vessel = np.zeros(shape, bool)
    large = np.zeros(shape, bool)
    for name, m in organs.items():
        if terms[name] != "vessel":
            continue
        d, s = _paste(vessel, bb, np.asarray(m.crop, bool), m.bbox_zyx)
        if d is not None:
            vessel[d] |= np.asarray(m.crop, bool)[s]
        lg, vbb = _large_vessel(m, grid, vessel_caliber_threshold_mm)
        d, s = _paste(large, bb, lg, vbb)
        if d is not None:
            large[d] |= lg[s]
    bone = (ct > bone_threshold_hu) & b & ~vessel
    for name, m in organs.items():
        if terms[name] == "bone":
            d, s = _paste(bone, bb, np.asarray(m.crop, bool), m.bbox_zyx)
            if d is not None:
                bone[d] |= np.asarray(m.crop, bool)[s]
    air = (ct < air_threshold_hu) & b
    lung = np.zeros(shape, bool)
    lung_from_masks = False
    for name, m in organs.items():
        if terms[name] == "lung":
            d, s = _paste(lung, bb, np.asarray(m.crop, bool), m.bbox_zyx)
            if d is not None:
                lung[d] |= np.asarray(m.crop, bool)[s]
                lung_from_masks = True
    if not lung_from_masks:
        lung = air.copy()
        notes.append("no lung masks: every gas voxel inside the body counts as aerated lung")
    flags[bone] |= BONE
    flags[air] |= AIR
    flags[lung] |= LUNG
    flags[vessel] |= VESSEL
    flags[large] |= LARGE_VESSEL

    names = [n for n in organs if terms[n] != "body"]
    forb = set(forbidden_terms)

    def rank(n: str) -> int:
        t = terms[n]
        return 0 if t in ("vessel", "bone") else (2 if t in forb else 1)

    names.sort(key=rank)
    dtype = np.uint8 if len(names) < 255 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    for i, n in enumerate(names, start=1):
        m = organs[n]
        d, s = _paste(labels, bb, np.asarray(m.crop, bool), m.bbox_zyx)
        if d is not None:
            labels[d][np.asarray(m.crop, bool)[s]] = i

    vessel_tree = None
    vbb = bbox_of(vessel)
    if vbb is not None:
        # on the vessels' own box: the same faces (outside the box is no vessel) and the same
        # points, in the same order, without rolling the whole body box six times
        pts = surface_points_lps(vessel[tuple(slice(a, b) for a, b in vbb)], grid,
                                 offset_zyx=tuple(a + v for (a, _), (v, _) in zip(bb, vbb)))
        if len(pts):
            vessel_tree = cKDTree(pts, balanced_tree=False, compact_nodes=False)
    base = lung_base_points(lung, grid, tuple(a for a, _ in bb), sigma_mm=diaphragm_sigma_mm,
                            min_cos=diaphragm_min_cos)
    lung_base = cKDTree(base, balanced_tree=False, compact_nodes=False) if len(base) else None
    if not lung.any():
        notes.append("no aerated lung in the scan: diaphragm unknown")
    log.info("tissue map: %s voxels, bone %.0f mL, gas %.0f mL, %d structures",
             "x".join(map(str, shape)), bone.sum() * grid.voxel_volume_mm3 / 1000,
             air.sum() * grid.voxel_volume_mm3 / 1000, len(names))
    return TissueMap(
        grid=grid, bbox=bb, flags=flags, labels=labels, structures=tuple(names),
        terms=tuple(terms[n] for n in names), lung_from_masks=lung_from_masks,
        vessel_tree=vessel_tree, lung_base=lung_base, notes=notes,
    )
