"""Straight needle path planner: from the skin to a target point, avoiding what must not be crossed.

Method
------
1. **Directions.** ``n_directions`` unit vectors spread evenly (Fibonacci lattice) over the band
   of the sphere within ``max_angle_from_axial_deg`` of the axial plane (the craniocaudal
   angulation limit of CT-guided work; the axial plane is the patient's, LPS z = const).
2. **Rays.** Each ray starts at the target point and goes outward. It is traced through the
   voxels of the study's :class:`~pipeline.anatomy.tissue.TissueMap` *exactly* (every voxel the
   line passes through, with the length of line inside it: the crossings of the ray with the
   voxel boundary planes of the three axes, merged and sorted), vectorised over all rays. The
   cost grows with the number of directions times the path length, never with the volume.
3. **Skin entry.** Going outward, the first voxel outside the body mask: the entry point is on
   that voxel's face. A ray that leaves the image while still inside the body has no known skin
   (``fov``); one that re-enters the body within ``external_clearance_mm`` beyond the skin (an
   arm in the way) is blocked (``external``).
4. **Safety.** Between the target and the skin a path is unsafe if it crosses (outside the
   lesion itself) a ``BONE`` voxel, gas that is not aerated lung (bowel gas, airway), aerated
   lung when the target is not in the lung, or (anywhere) a ``LARGE_VESSEL`` voxel, a structure
   whose organ term is in ``forbidden_terms`` (unless it is the target's organ), or if it
   enters the target organ more than ``max_target_organ_entries`` times between the skin and
   the lesion (a second capsule / pleura crossing), or is longer than
   ``max_path_length_mm``.
5. **Choice.** The shortest safe path; among safe paths within ``length_tolerance_mm`` of it,
   the one with the largest clearance to the vessel masks. The chosen direction is then refined
   locally (``refine_levels`` rounds of 5 x 5 directions on a shrinking angular grid) to the
   shortest safe path near it.
6. **Normal parenchyma before the lesion** (organs of ``parenchyma_terms``, the liver by
   default): the length of path inside the target organ between its capsule and the lesion
   surface is reported (``liver_parenchyma_path_mm``). A cuff of normal liver tamponades the
   track (less bleeding, leakage and seeding than a direct capsule-to-tumour puncture), so when
   some safe path within ``parenchyma_length_allowance_mm`` of the shortest crosses at least
   ``min_parenchyma_mm``, only such paths are chosen (steps 5 and the refinement).
7. **Ultrasound window.** True when some safe direction (coarse or refined) has no gas and no
   bone on its path outside the lesion and a length at most ``us_max_depth_mm``.

8. **Fissures** (:func:`fissure_crossings`, when lung lobe masks are known, e.g.
   TotalSegmentator's ``lung_upper_lobe_left`` ...): along the chosen path, outside the lesion,
   the lobes passed through; going from one lobe to another within ``fissure_max_gap_mm`` of
   path is a fissure crossed (two pleural layers: a higher pneumothorax risk). A gap longer than
   that is not a fissure (the path left the lung). Without lobe masks nothing is said
   (``fissure_crossings`` empty with ``fissure_reason``).

Columns (see :func:`plan_access`): the entry point (LPS mm), the unit needle direction from
the entry towards the target, lengths to the lesion surface and to the target, aerated lung
crossed between the skin and the lesion surface, pleura crossings (entries into the lung
between the skin and the lesion), entries into the target organ, minimum distance from the
needle axis to a vessel mask, the ultrasound window and, when no path is safe, why.
Peritoneum crossings are not reported: no mask source segments the peritoneum.

Frames and units: LPS mm; directions are unit vectors in LPS; angles degrees.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pipeline.anatomy.tissue import AIR, BODY, BONE, LARGE_VESSEL, LUNG, TissueMap
from pipeline.geometry import Grid
from pipeline.records import LesionMask

log = logging.getLogger(__name__)

# unsafe reasons (bits)
R_BONE, R_VESSEL, R_FORBIDDEN, R_LUNG, R_GAS, R_CAPSULE, R_LONG, R_FOV, R_EXTERNAL = (
    1 << i for i in range(9))
#: Organ terms without a capsule: entries into them are not counted (``target_organ_entries``).
NO_CAPSULE_TERMS = frozenset({"", "unknown", "soft_tissue", "muscle", "lymph_node", "bone",
                              "vessel", "body"})
REASON_TEXT = {
    R_BONE: "bone", R_VESSEL: "large vessel", R_FORBIDDEN: "forbidden structure",
    R_LUNG: "aerated lung", R_GAS: "gas (bowel or airway)", R_CAPSULE: "second capsule/pleura "
    "crossing", R_LONG: "longer than the maximum path", R_FOV: "skin outside the image",
    R_EXTERNAL: "body in the way outside the skin (arm?)",
}


@dataclass(frozen=True)
class AccessSettings:
    """Planner settings (config ``anatomy.access``); lengths mm, angles degrees."""

    n_directions: int = 400
    max_angle_from_axial_deg: float = 30.0
    max_path_length_mm: float = 150.0
    external_clearance_mm: float = 30.0
    forbidden_terms: tuple[str, ...] = ()
    max_target_organ_entries: int = 1
    length_tolerance_mm: float = 2.0
    refine_levels: int = 3
    us_max_depth_mm: float = 100.0
    clearance_cap_mm: float = 50.0
    min_parenchyma_mm: float = 0.0
    parenchyma_length_allowance_mm: float = 0.0
    parenchyma_terms: tuple[str, ...] = ("liver",)
    fissure_max_gap_mm: float = 5.0

    @classmethod
    def from_config(cls, a: dict) -> AccessSettings:
        """From the ``anatomy.access`` section of the configuration."""
        return cls(
            n_directions=int(a["n_directions"]),
            max_angle_from_axial_deg=float(a["max_angle_from_axial_deg"]),
            max_path_length_mm=float(a["max_path_length_mm"]),
            external_clearance_mm=float(a["external_clearance_mm"]),
            forbidden_terms=tuple(a["forbidden_terms"]),
            max_target_organ_entries=int(a["max_target_organ_entries"]),
            length_tolerance_mm=float(a["length_tolerance_mm"]),
            refine_levels=int(a["refine_levels"]),
            us_max_depth_mm=float(a["us_max_depth_mm"]),
            clearance_cap_mm=float(a["clearance_cap_mm"]),
            min_parenchyma_mm=float(a.get("min_parenchyma_mm", 0.0)),
            parenchyma_length_allowance_mm=float(a.get("parenchyma_length_allowance_mm", 0.0)),
            parenchyma_terms=tuple(a.get("parenchyma_terms", ("liver",))),
            fissure_max_gap_mm=float(a.get("fissure_max_gap_mm", 5.0)),
        )


def band_directions(n: int, max_angle_from_axial_deg: float) -> np.ndarray:
    """``n`` unit vectors (LPS) evenly spread over the sphere band ``|elevation| <= max``.

    Fibonacci lattice on the band: ``z`` uniform in ``[-sin(max), sin(max)]`` (equal areas),
    azimuth advancing by the golden angle.
    """
    n = max(int(n), 1)
    s = math.sin(math.radians(min(max(max_angle_from_axial_deg, 0.0), 90.0)))
    i = np.arange(n)
    z = s * (1.0 - 2.0 * (i + 0.5) / n)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def _spacing_rad(n: int, max_angle_deg: float) -> float:
    """Typical angular spacing (rad) of :func:`band_directions`."""
    s = math.sin(math.radians(min(max(max_angle_deg, 0.0), 90.0)))
    area = 4.0 * math.pi * max(s, 1e-3)
    return math.sqrt(area / max(n, 1))


def _local_directions(d: np.ndarray, half_rad: float, max_angle_deg: float, k: int = 5):
    """k x k directions around ``d`` on an (elevation, azimuth) grid of half-width ``half_rad``."""
    el0 = math.asin(float(np.clip(d[2], -1, 1)))
    az0 = math.atan2(d[1], d[0])
    offs = np.linspace(-half_rad, half_rad, k)
    el, az = np.meshgrid(el0 + offs, az0 + offs / max(math.cos(el0), 0.2), indexing="ij")
    el, az = el.ravel(), az.ravel()
    lim = math.radians(max_angle_deg)
    keep = np.abs(el) <= lim + 1e-12
    el, az = el[keep], az[keep]
    return np.column_stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


# --------------------------------------------------------------------------- ray tracing
@dataclass
class Traced:
    """Voxel segments of a bundle of rays (arrays (N rays, M segments), sorted along each ray).

    ``t0``/``t1`` are the distances (mm) from the target where the ray enters/leaves the voxel
    ``idx`` (grid (z, y, x)); ``valid`` marks real segments (padding is False).
    """

    t0: np.ndarray
    t1: np.ndarray
    valid: np.ndarray
    idx: np.ndarray


def trace_rays(grid: Grid, origin_lps: np.ndarray, dirs_lps: np.ndarray, t_max: float) -> Traced:
    """Exact voxel traversal of rays ``origin + t d``, ``0 <= t <= t_max`` (mm), vectorised.

    Voxels are the cubes around the grid's voxel centres (nearest-neighbour cells): the ray
    crosses a cell boundary where a continuous index passes ``k + 1/2``. Crossing parameters of
    the three axes are merged by one sort per ray; each segment's voxel is the one containing
    its midpoint.
    """
    p0 = grid.lps_to_zyx(np.asarray(origin_lps, float)[None, :])[0]
    q = grid.lps_to_zyx(np.asarray(origin_lps, float)[None, :] + np.asarray(dirs_lps, float))
    v = q - p0[None, :]  # index units per mm, (N, 3) zyx
    n = len(v)
    cols = [np.zeros((n, 1)), np.full((n, 1), float(t_max))]
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            va = v[:, a]
            kmax = math.ceil(t_max * float(np.abs(va).max())) + 2
            k = np.arange(kmax, dtype=float)[None, :]
            b_pos = math.floor(p0[a] + 0.5) + 0.5
            b_neg = math.ceil(p0[a] - 0.5) - 0.5
            t = np.where(va[:, None] > 0, (b_pos + k - p0[a]) / va[:, None],
                         (b_neg - k - p0[a]) / va[:, None])
            t[~np.isfinite(t) | (t <= 0) | (t >= t_max)] = np.inf
            cols.append(t)
    tt = np.sort(np.concatenate(cols, axis=1), axis=1)
    t0, t1 = tt[:, :-1], tt[:, 1:]
    valid = np.isfinite(t1) & (t1 > t0 + 1e-9)
    mid = np.where(valid, 0.5 * (t0 + np.where(np.isfinite(t1), t1, t0)), 0.0)
    idx = np.rint(p0[None, None, :] + mid[:, :, None] * v[:, None, :]).astype(np.int64)
    return Traced(t0=np.where(valid, t0, 0.0), t1=np.where(valid, t1, 0.0), valid=valid, idx=idx)


def _lookup(arr: np.ndarray, bbox, idx: np.ndarray, valid: np.ndarray, fill=0,
            *more: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
    """Values of a bbox-cropped array at grid indices (fill outside the box / invalid).

    ``more`` are further arrays of the same shape on the same box, looked up at the same
    places (the indices are checked once); then a tuple, ``arr`` first, is returned.
    """
    lo = np.array([b[0] for b in bbox])
    shp = np.array(arr.shape)
    rel = idx - lo
    inside = valid & np.all((rel >= 0) & (rel < shp), axis=-1)
    where = tuple(rel[inside].T)
    outs = []
    for a in (arr, *more):
        out = np.full(valid.shape, fill, dtype=a.dtype)
        out[inside] = a[where]
        outs.append(out)
    return tuple(outs) if more else outs[0]


# --------------------------------------------------------------------------- evaluation
@dataclass
class RayEval:
    """Per-ray results (arrays of length N)."""

    dirs: np.ndarray
    unsafe: np.ndarray
    entry_t: np.ndarray
    surface_t: np.ndarray
    lung_mm: np.ndarray
    pleura: np.ndarray
    organ_entries: np.ndarray
    gas_free: np.ndarray
    organ_mm: np.ndarray
    blockers: list


def evaluate_rays(
    tmap: TissueMap,
    lesion: LesionMask,
    target_lps: np.ndarray,
    dirs: np.ndarray,
    *,
    target_term: str,
    settings: AccessSettings,
) -> RayEval:
    """Trace ``dirs`` from the target and apply the safety rules (module doc) to each ray."""
    s = settings
    t_max = s.max_path_length_mm + s.external_clearance_mm
    tr = trace_rays(tmap.grid, target_lps, dirs, t_max)
    valid = tr.valid
    n, m = valid.shape
    if tmap.labels.shape == tmap.flags.shape:  # one box: the indices are checked once
        flags, labels = _lookup(tmap.flags, tmap.bbox, tr.idx, valid, 0, tmap.labels)
    else:
        flags = _lookup(tmap.flags, tmap.bbox, tr.idx, valid)
        labels = _lookup(tmap.labels, tmap.bbox, tr.idx, valid)
    les = _lookup(np.asarray(lesion.crop, bool), lesion.bbox_zyx, tr.idx, valid, False)
    in_grid = np.all((tr.idx >= 0) & (tr.idx < np.asarray(tmap.grid.shape_zyx)), axis=-1)
    col = np.arange(m)[None, :]
    rows = np.arange(n)

    outside = valid & ((flags & BODY) == 0)
    has_exit = outside.any(axis=1)
    e = np.where(has_exit, np.argmax(outside, axis=1), m - 1)
    entry_t = np.where(has_exit, tr.t0[rows, e], np.inf)
    path = valid & (col < e[:, None])
    les_on = les & path
    has_les = les_on.any(axis=1)
    s_idx = np.where(has_les, m - 1 - np.argmax(les_on[:, ::-1], axis=1), -1)
    surface_t = np.where(has_les, tr.t1[rows, np.maximum(s_idx, 0)], 0.0)
    outer = path & (col > s_idx[:, None])  # between the lesion surface and the skin
    notles = path & ~les
    seglen = np.where(valid, tr.t1 - tr.t0, 0.0)

    unsafe = np.zeros(n, dtype=np.int64)
    unsafe[~has_exit] |= R_LONG
    unsafe[entry_t > s.max_path_length_mm] |= R_LONG
    fov = has_exit & ~in_grid[rows, e]
    unsafe[fov] |= R_FOV
    bone = notles & ((flags & BONE) != 0)
    unsafe[bone.any(axis=1)] |= R_BONE
    vessel = path & ((flags & LARGE_VESSEL) != 0)
    unsafe[vessel.any(axis=1)] |= R_VESSEL
    lung_target = target_term == "lung"
    gas = notles & ((flags & AIR) != 0)
    lung_gas = gas & ((flags & LUNG) != 0)
    other_gas = gas & ((flags & LUNG) == 0)
    unsafe[other_gas.any(axis=1)] |= R_GAS
    if not lung_target:
        unsafe[lung_gas.any(axis=1)] |= R_LUNG
    forb = tmap.labels_of_terms(t for t in s.forbidden_terms if t != target_term)
    forb_hit = path & np.isin(labels, forb) if len(forb) else np.zeros_like(path)
    unsafe[forb_hit.any(axis=1)] |= R_FORBIDDEN
    # entries (going inward) into the lung and into the target organ, skin -> lesion surface
    lung_in = (flags & LUNG) != 0
    nxt = np.zeros_like(lung_in)
    nxt[:, :-1] = lung_in[:, 1:]
    pleura = (outer & lung_in & ~np.where(col + 1 < e[:, None], nxt, False)).sum(axis=1)
    if lung_target:
        org_in = lung_in
    elif target_term not in NO_CAPSULE_TERMS:
        org_in = np.isin(labels, tmap.labels_of_terms([target_term]))
    else:
        org_in = np.zeros_like(lung_in)
    onxt = np.zeros_like(org_in)
    onxt[:, :-1] = org_in[:, 1:]
    entries = (outer & org_in & ~np.where(col + 1 < e[:, None], onxt, False)).sum(axis=1)
    unsafe[entries > s.max_target_organ_entries] |= R_CAPSULE
    # arm / other body part in the way beyond the skin
    ext = valid & (tr.t0 >= entry_t[:, None]) & (tr.t0 < entry_t[:, None] + s.external_clearance_mm)
    unsafe[(ext & ((flags & BODY) != 0)).any(axis=1)] |= R_EXTERNAL
    lung_mm = (np.where(outer & lung_gas, seglen, 0.0)).sum(axis=1)
    gas_free = ~gas.any(axis=1)
    # target-organ tissue (not lesion) between the lesion surface and the skin
    organ_mm = (np.where(outer & org_in & ~les, seglen, 0.0)).sum(axis=1)

    blockers = []
    for r in range(n):
        names = set()
        if unsafe[r] & R_FORBIDDEN:
            names |= {tmap.structures[int(v) - 1] for v in np.unique(labels[r][forb_hit[r]])}
        if unsafe[r] & R_VESSEL:
            vl = labels[r][vessel[r]]
            names |= {tmap.structures[int(v) - 1] for v in np.unique(vl) if v > 0}
        blockers.append(sorted(names))
    return RayEval(dirs=np.asarray(dirs, float), unsafe=unsafe, entry_t=entry_t,
                   surface_t=surface_t, lung_mm=lung_mm, pleura=pleura, organ_entries=entries,
                   gas_free=gas_free, organ_mm=organ_mm, blockers=blockers)


def _concat(a: RayEval, b: RayEval) -> RayEval:
    return RayEval(*(np.concatenate([getattr(a, f), getattr(b, f)])
                     for f in ("dirs", "unsafe", "entry_t", "surface_t", "lung_mm", "pleura",
                               "organ_entries", "gas_free", "organ_mm")),
                   blockers=a.blockers + b.blockers)


def path_clearance_mm(tmap: TissueMap, entry: np.ndarray, target: np.ndarray,
                      cap_mm: float | None = None, step_mm: float = 0.5) -> float | None:
    """Smallest distance (mm) from the needle axis (entry -> target) to a vessel mask surface.

    The axis is sampled every ``step_mm``; vessel surfaces are the face midpoints of the vessel
    masks. With ``cap_mm`` (for comparing candidate paths) larger distances are returned as
    ``cap_mm``. None without vessel masks.
    """
    if tmap.vessel_tree is None:
        return None
    length = float(np.linalg.norm(target - entry))
    k = max(2, math.ceil(length / step_mm) + 1)
    pts = entry[None, :] + np.linspace(0.0, 1.0, k)[:, None] * (target - entry)[None, :]
    if cap_mm is None:
        return float(np.min(tmap.vessel_tree.query(pts)[0]))
    d = tmap.vessel_tree.query(pts, distance_upper_bound=cap_mm)[0]
    return float(min(np.min(d), cap_mm))


def _reason_summary(ev: RayEval, n_dirs: int, s: AccessSettings) -> str:
    counts = {}
    for bit, text in REASON_TEXT.items():
        c = int(np.count_nonzero(ev.unsafe & bit))
        if c:
            counts[text] = c
    parts = ", ".join(f"{k} {100.0 * v / len(ev.unsafe):.0f} %" for k, v in
                      sorted(counts.items(), key=lambda kv: -kv[1]))
    msg = (f"no safe straight path among {n_dirs} directions within "
           f"{s.max_angle_from_axial_deg:g} deg of the axial plane and {s.max_path_length_mm:g} mm")
    finite = np.isfinite(ev.entry_t)
    if finite.any():
        r = int(np.argmin(np.where(finite, ev.entry_t, np.inf)))
        why = [REASON_TEXT[b] for b in REASON_TEXT if ev.unsafe[r] & b]
        if ev.blockers[r]:
            why.append("(" + ", ".join(ev.blockers[r]) + ")")
        msg += f"; the shortest ({ev.entry_t[r]:.0f} mm) crosses " + " ".join(why)
    if parts:
        msg += f"; directions blocked by: {parts}"
    return msg


def subvoxel_entry_t(skin, target: np.ndarray, dirs: np.ndarray, entry_t: np.ndarray,
                     radius_mm: float) -> np.ndarray:
    """Entry distances (mm) refined on the skin's sub-voxel points.

    The voxel traversal puts the entry on a voxel face (a staircase, up to half a voxel off
    the skin). For each ray, the skin points within ``radius_mm`` of that entry are fitted with
    a plane (centroid, smallest principal axis) and the ray is intersected with it. Rays with
    fewer than 6 points, a grazing plane (|cos| < 0.2) or a correction larger than
    ``radius_mm`` keep their voxel entry.
    """
    out = np.array(entry_t, dtype=float)
    if skin is None:
        return out
    pts, tree = skin.points_lps, skin.tree
    for r, (d, t) in enumerate(zip(dirs, entry_t)):
        if not np.isfinite(t):
            continue
        ids = tree.query_ball_point(target + d * t, radius_mm)
        if len(ids) < 6:
            continue
        p = pts[ids]
        c = p.mean(axis=0)
        _, v = np.linalg.eigh((p - c).T @ (p - c))
        n = v[:, 0]
        cos = float(d @ n)
        if abs(cos) < 0.2:
            continue
        ts = float((c - target) @ n) / cos
        if abs(ts - t) <= radius_mm:
            out[r] = ts
    return out


# --------------------------------------------------------------------------- entry point
def plan_access(
    tmap: TissueMap,
    lesion: LesionMask,
    target_lps: np.ndarray,
    *,
    target_term: str,
    settings: AccessSettings,
    skin=None,
) -> dict:
    """Plan a straight needle path to ``target_lps`` (see the module doc).

    Parameters
    ----------
    tmap : TissueMap
        The study's tissue map (same grid as ``lesion``).
    lesion : LesionMask
        The lesion (the path's own lesion voxels are not obstacles).
    target_lps : (3,) LPS mm
        Target point (inside the lesion).
    target_term : str
        Organ term of the lesion ("lung", "liver" ... or "" when unknown): decides whether
        aerated lung may be crossed and which organ's capsule is counted; forbidden structures
        of that term are allowed.
    settings : AccessSettings
    skin : SkinSurface, optional
        The study's skin points: path lengths of the best candidates are refined to the
        sub-voxel skin (:func:`subvoxel_entry_t`) before choosing; without it, lengths end on
        voxel faces.

    Returns
    -------
    dict of columns: ``safe_path_found``, ``path_length_mm``, ``path_length_to_surface_mm``,
    ``entry_x_mm``/``_y_mm``/``_z_mm``, ``path_direction_x``/``_y``/``_z`` (unit, entry ->
    target), ``path_angle_from_axial_deg``, ``aerated_lung_path_mm``, ``pleura_crossings``,
    ``target_organ_entries``, ``liver_parenchyma_path_mm`` (liver targets: normal liver
    crossed between the capsule and the lesion, mm; None otherwise), ``vessel_clearance_mm``
    (+ ``vessel_clearance_reason``), ``us_window``, ``safe_direction_fraction``,
    ``access_reason``.
    """
    s = settings
    target = np.asarray(target_lps, dtype=float)
    out = empty_access_columns()
    zyx = np.rint(tmap.grid.lps_to_zyx(target[None, :])[0]).astype(int)
    rel = zyx - np.array([b[0] for b in tmap.bbox])
    inside = np.all((rel >= 0) & (rel < np.array(tmap.flags.shape)))
    if not inside or not (tmap.flags[tuple(rel)] & BODY):
        out["access_reason"] = "target point outside the body mask"
        out["safe_path_found"] = False
        return out
    dirs = band_directions(s.n_directions, s.max_angle_from_axial_deg)
    ev = evaluate_rays(tmap, lesion, target, dirs, target_term=target_term, settings=s)
    safe = ev.unsafe == 0
    out["safe_direction_fraction"] = float(np.count_nonzero(safe)) / len(dirs)
    if not safe.any():
        out["safe_path_found"] = False
        out["us_window"] = False
        out["access_reason"] = _reason_summary(ev, len(dirs), s)
        return out
    vox = float(max(tmap.grid.spacing_xyz_mm))
    radius = 2.0 * vox
    us_ev = ev  # every safe direction counts for the ultrasound window
    # prefer paths through normal parenchyma (liver) when one is available at a modest detour
    cuff = (target_term in s.parenchyma_terms and s.min_parenchyma_mm > 0.0)
    if cuff:
        thick = safe & (ev.organ_mm >= s.min_parenchyma_mm)
        shortest = float(ev.entry_t[safe].min())
        if (thick & (ev.entry_t <= shortest + s.parenchyma_length_allowance_mm)).any():
            safe = thick
        else:
            cuff = False

    def refined_lengths(e: RayEval, ok: np.ndarray, limit: float) -> np.ndarray:
        """Entry distances, sub-voxel for the safe rays up to ``limit`` (inf elsewhere)."""
        sel = np.flatnonzero(ok & (e.entry_t <= limit))
        out = np.full(len(e.entry_t), np.inf)
        out[sel] = subvoxel_entry_t(skin, target, e.dirs[sel], e.entry_t[sel], radius)
        return out

    best_vox = float(ev.entry_t[safe].min())
    length = refined_lengths(ev, safe, best_vox + s.length_tolerance_mm + 2.0 * vox)
    best_len = float(length.min())
    cand = np.flatnonzero(length <= best_len + s.length_tolerance_mm)
    clear = {}
    if tmap.vessel_tree is not None and len(cand) > 1:
        for r in cand:
            entry = target + ev.dirs[r] * length[r]
            clear[r] = path_clearance_mm(tmap, entry, target, s.clearance_cap_mm, step_mm=1.0)
        r_best = max(cand, key=lambda r: (round(clear[r], 1), -length[r]))
    else:
        r_best = int(cand[np.argmin(length[cand])])
    # local refinement to the shortest safe path near the chosen direction
    half = _spacing_rad(s.n_directions, s.max_angle_from_axial_deg)
    best = (float(length[r_best]), ev.dirs[r_best], r_best, ev)
    for _ in range(max(s.refine_levels, 0)):
        loc = _local_directions(best[1], half, s.max_angle_from_axial_deg)
        if len(loc) == 0:
            break
        lev = evaluate_rays(tmap, lesion, target, loc, target_term=target_term, settings=s)
        us_ev = _concat(us_ev, lev)
        ok = lev.unsafe == 0
        if cuff:
            ok &= lev.organ_mm >= s.min_parenchyma_mm
        if ok.any():
            ln = refined_lengths(lev, ok, best[0] + 2.0 * vox)
            r = int(np.argmin(ln))
            if ln[r] < best[0] - 1e-9:
                best = (float(ln[r]), lev.dirs[r], r, lev)
        half /= 2.0
    length, d, r, e = best
    entry = target + d * length
    needle = -d
    out.update({
        "safe_path_found": True,
        "path_length_mm": length,
        "path_length_to_surface_mm": float(length - e.surface_t[r]),
        "entry_x_mm": float(entry[0]), "entry_y_mm": float(entry[1]),
        "entry_z_mm": float(entry[2]),
        "path_direction_x": float(needle[0]), "path_direction_y": float(needle[1]),
        "path_direction_z": float(needle[2]),
        "path_angle_from_axial_deg": float(math.degrees(math.asin(min(abs(needle[2]), 1.0)))),
        "aerated_lung_path_mm": float(e.lung_mm[r]),
        "pleura_crossings": int(e.pleura[r]),
        "target_organ_entries": (int(e.organ_entries[r]) if target_term not in NO_CAPSULE_TERMS
                                 else None),
        "liver_parenchyma_path_mm": float(e.organ_mm[r]) if target_term == "liver" else None,
        "access_reason": "",
    })
    clr = path_clearance_mm(tmap, entry, target)
    if clr is None:
        out["vessel_clearance_reason"] = "no vessel masks for this study"
    else:
        out["vessel_clearance_mm"] = clr
    us = (us_ev.unsafe == 0) & us_ev.gas_free & (us_ev.entry_t <= s.us_max_depth_mm)
    out["us_window"] = bool(us.any())
    if not target_term:
        out["access_reason"] = "organ unknown: target organ capsule not checked"
    return out


@dataclass(frozen=True)
class LobeMap:
    """Lung lobe labels of a study on the lesion grid.

    Attributes
    ----------
    grid : Grid
        The lesion grid.
    labels : (z, y, x) uint8 array
        0 = no lobe, k = ``names[k - 1]``, on the index box ``bbox`` of ``grid``.
    bbox : tuple of 3 (start, stop)
        Index box (z, y, x) of ``labels`` on ``grid``.
    names : tuple of str
        Lobe names (as the masks were named, e.g. ``lung_upper_lobe_left``).
    """

    grid: Grid
    labels: np.ndarray
    bbox: tuple
    names: tuple[str, ...]


def fissure_crossings(lobes: LobeMap, lesion: LesionMask, entry_lps: np.ndarray,
                      target_lps: np.ndarray, *, max_gap_mm: float) -> tuple[int, list[str]]:
    """Fissures crossed by the straight path from ``target_lps`` to ``entry_lps``.

    The segment is traced voxel by voxel (:func:`trace_rays`); lesion voxels are skipped. Each
    time the path, having been in lobe A, reaches a different lobe B within ``max_gap_mm`` of
    path (a fissure: the lobes touch, or a thin unlabelled gap between them), one crossing is
    counted. A longer gap (the path left the lung and came back, through pleura) is not one.

    Parameters
    ----------
    lobes : LobeMap
    lesion : LesionMask
        The target lesion (same grid as ``lobes``).
    entry_lps, target_lps : (3,) LPS mm
        Skin entry and target point of the planned path.
    max_gap_mm : float
        Longest unlabelled stretch (mm) between two lobes that still counts as a fissure.

    Returns
    -------
    (crossings, lobe names passed, target side first, consecutive repeats merged)
    """
    target = np.asarray(target_lps, float)
    d = np.asarray(entry_lps, float) - target
    length = float(np.linalg.norm(d))
    if length <= 0:
        return 0, []
    tr = trace_rays(lobes.grid, target, (d / length)[None, :], length)
    lab = _lookup(lobes.labels, lobes.bbox, tr.idx, tr.valid)[0]
    les = _lookup(np.asarray(lesion.crop, bool), lesion.bbox_zyx, tr.idx, tr.valid, False)[0]
    crossings, seq = 0, []
    cur, cur_end = 0, -math.inf
    for k in np.flatnonzero(tr.valid[0] & ~les):
        v = int(lab[k])
        if v == 0:
            continue
        if v != cur:
            if cur and tr.t0[0, k] - cur_end <= max_gap_mm + 1e-9:
                crossings += 1
            seq.append(lobes.names[v - 1])
            cur = v
        cur_end = float(tr.t1[0, k])
    return crossings, seq


def empty_access_columns() -> dict:
    """The planner's columns, all empty (None / "")."""
    keys = ("path_length_mm", "path_length_to_surface_mm", "entry_x_mm", "entry_y_mm",
            "entry_z_mm", "path_direction_x", "path_direction_y", "path_direction_z",
            "path_angle_from_axial_deg", "aerated_lung_path_mm", "pleura_crossings",
            "target_organ_entries", "liver_parenchyma_path_mm", "vessel_clearance_mm", "us_window",
            "safe_direction_fraction", "fissure_crossings")
    out = {k: None for k in keys}
    out.update({"safe_path_found": None, "vessel_clearance_reason": "", "access_reason": "",
                "fissure_lobes": "", "fissure_reason": ""})
    return out
