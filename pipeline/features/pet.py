"""PET uptake of a lesion on the PET's own grid: SUVmax, SUVmean, SUVpeak (PERCIST) and its centre.

The lesion mask lives on the CT grid; PET values are never resampled. Instead the mask is mapped
to the (coarser) PET grid with :func:`pipeline.geometry.map_mask_coverage`, which gives, for each
PET voxel, the fraction of it covered by the lesion. A PET voxel belongs to the lesion when its
coverage is at least ``min_coverage``.

All work happens on a PET crop: the lesion's PET bounding box plus the SUVpeak sphere radius.

Frames and units: arrays (z, y, x); points DICOM LPS mm; SUV in the units of ``suv.units``
(normally SUVbw, g/mL); activity in Bq/mL.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.geometry import BBox, Grid, map_mask_coverage
from pipeline.records import LesionMask, PetFeatures, Volume

log = logging.getLogger(__name__)

#: Largest number of supersampled points handed to ``map_mask_coverage`` in one call; big
#: lesions are mapped slab by slab so memory stays bounded (about 100 MB per call).
MAX_POINTS_PER_CALL = 2_000_000
#: Lesions with more CT voxels than this are mapped with supersample 2 instead of 3.
AUTO_SUPERSAMPLE_MAX_VOXELS = 100_000


def peak_radius_mm(peak_volume_ml: float) -> float:
    """Radius (mm) of a sphere of ``peak_volume_ml`` mL: (3 V / 4 pi)^(1/3), 6.2 mm for 1 mL."""
    return float((3.0 * peak_volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


def sphere_offsets(grid: Grid, radius_mm: float) -> np.ndarray:
    """Integer (dz, dy, dx) offsets of the voxels whose centres lie within ``radius_mm``.

    Anisotropic spacing aware: the distance of an offset is
    ``sqrt((dx*sx)^2 + (dy*sy)^2 + (dz*sz)^2)`` with the grid spacing in mm (the direction
    matrix is orthonormal, so it does not change distances). Always contains (0, 0, 0).
    """
    sx, sy, sz = grid.spacing_xyz_mm
    m = [int(np.floor(radius_mm / s + 1e-9)) for s in (sz, sy, sx)]
    dz, dy, dx = np.meshgrid(
        *[np.arange(-mi, mi + 1) for mi in m], indexing="ij"
    )
    dist2 = (dz * sz) ** 2 + (dy * sy) ** 2 + (dx * sx) ** 2
    keep = dist2 <= radius_mm**2 + 1e-9
    return np.column_stack([dz[keep], dy[keep], dx[keep]]).astype(np.int64)


def lesion_coverage(
    mask: LesionMask, dst: Grid, *, supersample: int = 3
) -> tuple[BBox, np.ndarray] | None:
    """Coverage fractions of the lesion on ``dst`` (see :func:`pipeline.geometry.map_mask_coverage`).

    Large lesions are mapped in slabs of CT slices so that at most :data:`MAX_POINTS_PER_CALL`
    supersampled points exist at once; the slabs' coverages are summed on their union box.

    Returns
    -------
    (bbox_dst, coverage) or None when the lesion lies outside ``dst``. ``coverage`` is float32
    in [0, 1], (z, y, x) on the ``dst`` box ``bbox_dst``.
    """
    crop = np.asarray(mask.crop, dtype=bool)
    per_slice = np.count_nonzero(crop.reshape(crop.shape[0], -1), axis=1) * supersample**3
    parts: list[tuple[BBox, np.ndarray]] = []
    z0 = 0
    nz = crop.shape[0]
    (bz0, _), by, bx = mask.bbox_zyx
    while z0 < nz:
        z1 = z0 + 1
        total = int(per_slice[z0])
        while z1 < nz and total + int(per_slice[z1]) <= MAX_POINTS_PER_CALL:
            total += int(per_slice[z1])
            z1 += 1
        if total:
            sub_bbox = ((bz0 + z0, bz0 + z1), by, bx)
            res = map_mask_coverage(crop[z0:z1], sub_bbox, mask.grid, dst, supersample=supersample)
            if res is not None:
                parts.append(res)
        z0 = z1
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    lo = np.min([[b[0] for b in p[0]] for p in parts], axis=0)
    hi = np.max([[b[1] for b in p[0]] for p in parts], axis=0)
    cov = np.zeros(tuple(int(v) for v in hi - lo), dtype=np.float32)
    for bb, c in parts:
        sl = tuple(slice(b[0] - l, b[1] - l) for b, l in zip(bb, lo))
        cov[sl] += c
    np.clip(cov, 0.0, 1.0, out=cov)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi)), cov  # type: ignore[return-value]


def _lesion_voxels(
    mask: LesionMask, grid: Grid, min_coverage: float, supersample: int
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Full-grid (N, 3) indices of the lesion's PET voxels, their coverage, and a note.

    Voxels with coverage >= ``min_coverage``; when there are none (lesion smaller than a PET
    voxel), every voxel the lesion touches (coverage > 0), with a note saying so.
    """
    res = lesion_coverage(mask, grid, supersample=supersample)
    if res is None:
        return None
    bbox, cov = res
    note = ""
    sel = cov >= min_coverage
    if not sel.any():
        sel = cov > 0
        note = (
            f"no PET voxel is at least {min_coverage:.0%} covered by the lesion (lesion smaller "
            f"than a PET voxel, max coverage {float(cov.max()):.2f}): SUV taken over the "
            f"{int(sel.sum())} PET voxels the lesion touches (coverage > 0)"
        )
    idx = np.argwhere(sel) + np.array([b[0] for b in bbox])
    return idx, cov[sel], note


def pet_features(
    mask: LesionMask,
    suv: Volume | None,
    *,
    activity: Volume | None = None,
    suv_reason: str = "",
    peak_volume_ml: float = 1.0,
    min_coverage: float = 0.5,
    supersample: int | None = None,
) -> PetFeatures:
    """SUVmax, SUVmean, SUVpeak and the SUVpeak sphere centre of a lesion.

    Parameters
    ----------
    mask : LesionMask
        Lesion on its (CT) grid.
    suv : Volume or None
        SUV image (z, y, x) on the PET grid. None when SUV is unavailable: every SUV field is
        then None and ``suv_reason`` is passed through.
    activity : Volume, optional
        Activity concentration (Bq/mL) image; gives ``activity_max_bqml`` even without SUV.
    suv_reason : str
        Why SUV is unavailable (used when ``suv`` is None).
    peak_volume_ml : float
        Volume of the SUVpeak sphere, mL (PERCIST: 1 mL, radius 6.2 mm).
    min_coverage : float
        A PET voxel belongs to the lesion when at least this fraction of it is covered by the
        CT mask.
    supersample : int, optional
        Points per CT voxel edge when mapping the mask to the PET grid (3 -> 27 points/voxel).
        Default: 3 for lesions up to :data:`AUTO_SUPERSAMPLE_MAX_VOXELS` CT voxels, else 2
        (partial volume matters for small lesions; a 500 mL lesion maps in 0.5 s instead of
        1.6 s).

    Returns
    -------
    PetFeatures
        * ``suv_max``, ``suv_mean`` -- max and (unweighted) mean SUV over the lesion's PET voxels.
        * ``suv_peak`` -- PERCIST SUVpeak: the largest mean SUV inside a sphere of
          ``peak_volume_ml`` (the PET voxels whose centres are within the sphere radius of the
          sphere centre, spacing aware; voxels outside the PET field of view are left out of the
          mean), over every candidate centre = every lesion PET voxel centre.
        * ``suv_peak_x_mm``, ``suv_peak_y_mm``, ``suv_peak_z_mm`` -- that best centre, LPS mm
          (a suggested target point).
        * ``pet_voxel_count`` -- number of lesion PET voxels.
        * ``activity_max_bqml`` -- max activity over the lesion voxels of ``activity``'s grid.
        * ``suv_reason`` -- why values are None, or a note on how they were obtained
          (e.g. lesion smaller than a PET voxel). Unavailable values are None, never 0.
    """
    if supersample is None:
        supersample = 3 if mask.voxel_count <= AUTO_SUPERSAMPLE_MAX_VOXELS else 2
    act_max = None
    notes: list[str] = []
    if activity is not None:
        vox = _lesion_voxels(mask, activity.grid, min_coverage, supersample)
        if vox is not None:
            act_max = float(np.max(np.asarray(activity.array)[tuple(vox[0].T)]))

    if suv is None:
        reason = suv_reason or "no SUV image for this study"
        return PetFeatures(activity_max_bqml=act_max, suv_reason=reason)

    pgrid = suv.grid
    vox = _lesion_voxels(mask, pgrid, min_coverage, supersample)
    if vox is None:
        return PetFeatures(
            activity_max_bqml=act_max,
            suv_reason="lesion lies outside the PET field of view",
        )
    idx, cov_sel, note = vox
    if note:
        notes.append(note)
    arr = np.asarray(suv.array)
    values = arr[tuple(idx.T)].astype(np.float64)
    finite_v = np.isfinite(values)
    if not finite_v.any():
        return PetFeatures(
            activity_max_bqml=act_max,
            suv_reason="no finite SUV value in the lesion's PET voxels",
        )
    if not finite_v.all():
        notes.append(f"{int((~finite_v).sum())} lesion PET voxels without a finite SUV left out")
        idx, cov_sel, values = idx[finite_v], cov_sel[finite_v], values[finite_v]
    suv_max = float(values.max())
    suv_mean = float(values.mean())

    # SUVpeak on a PET crop: lesion voxels' box + sphere radius, zero/invalid outside the FOV.
    radius = peak_radius_mm(peak_volume_ml)
    offs = sphere_offsets(pgrid, radius)
    margin = np.abs(offs).max(axis=0)
    lo = idx.min(axis=0) - margin
    hi = idx.max(axis=0) + margin + 1
    shape = tuple(int(v) for v in hi - lo)
    vals = np.zeros(shape, dtype=np.float64)
    valid = np.zeros(shape, dtype=bool)
    g_lo = np.maximum(lo, 0)
    g_hi = np.minimum(hi, np.asarray(pgrid.shape_zyx))
    src = tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_hi))
    dst = tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(g_lo, g_hi, lo))
    vals[dst] = arr[src]
    valid[dst] = True
    finite = np.isfinite(vals)
    valid &= finite
    vals[~finite] = 0.0

    cand = idx - lo  # candidate centres in crop indices
    sums = np.zeros(len(cand))
    counts = np.zeros(len(cand))
    for off in offs:
        p = tuple((cand + off).T)
        sums += vals[p]
        counts += valid[p]
    means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    best = int(np.argmax(means))
    if np.isfinite(means[best]):
        # Ties (a uniform region holds many equally good spheres): take the tied centre nearest
        # the lesion's coverage-weighted PET centroid, the most central target point.
        tied = np.flatnonzero(means >= means[best] - 1e-6 * max(abs(means[best]), 1e-12))
        if len(tied) > 1:
            w = cov_sel.astype(np.float64)
            centroid = (idx * w[:, None]).sum(0) / w.sum()
            sp = np.asarray(pgrid.spacing_xyz_mm)[::-1]
            d2 = (((idx[tied] - centroid) * sp) ** 2).sum(1)
            best = int(tied[np.argmin(d2)])
    if not np.isfinite(means[best]):
        notes.append("no valid PET voxel around the lesion for SUVpeak")
        peak, centre = None, (None, None, None)
    else:
        peak = float(means[best])
        c = pgrid.zyx_to_lps(idx[best][None, :].astype(float))[0]
        centre = (float(c[0]), float(c[1]), float(c[2]))
        if counts[best] < len(offs):
            notes.append("SUVpeak sphere cut by the PET field of view")

    return PetFeatures(
        suv_max=suv_max,
        suv_mean=suv_mean,
        suv_peak=peak,
        suv_peak_x_mm=centre[0],
        suv_peak_y_mm=centre[1],
        suv_peak_z_mm=centre[2],
        pet_voxel_count=int(len(idx)),
        activity_max_bqml=act_max,
        suv_reason="; ".join(notes),
    )
