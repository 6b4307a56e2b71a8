"""PET uptake of a lesion on the PET's own grid: SUVmax/mean/peak (PERCIST), MTV, TLG, SUL, liver ratio.

The lesion mask lives on the CT grid; PET values are never resampled. Instead the mask is mapped
to the (coarser) PET grid with :func:`pipeline.geometry.map_mask_coverage`, which gives, for each
PET voxel, the fraction of it covered by the lesion. A PET voxel belongs to the lesion when its
coverage is at least ``min_coverage``.

All work happens on a PET crop: the lesion's PET bounding box plus the SUVpeak sphere radius.

Frames and units: arrays (z, y, x); points DICOM LPS mm; SUV in the units of ``suv.units``
(normally SUVbw, g/mL); activity in Bq/mL.

Columns of :func:`pet_columns` (the feature stage's PET part)
--------------------------------------------------------------
* ``suv_max``, ``suv_mean``, ``suv_peak``, ``suv_peak_x_mm/_y_mm/_z_mm``, ``pet_voxel_count``,
  ``activity_max_bqml``, ``suv_reason`` -- :func:`pet_features`.
* ``mtv41_ml`` -- metabolic tumour volume: the PET voxels the lesion touches (coverage > 0: the
  CT mask bounds the search region) with SUV >= 41 % of the lesion's SUVmax, x PET voxel volume
  (mL). Partial-volume voxels at the border are decided by their uptake, not by how much of them
  the CT mask covers; background outside the mask never counts.
* ``suv_mean41`` -- mean SUV of those voxels (g/mL); ``tlg41_g`` -- total lesion glycolysis =
  ``suv_mean41`` x ``mtv41_ml``: (g/mL) x mL = g.
* ``mtv25_ml`` -- the same with the absolute threshold SUV >= 2.5.
* ``sul_max``, ``sul_peak`` -- SUL (lean-body-mass SUV, Janmahasatian) = SUVbw x LBM / body
  weight, when the SUV audit provides the lean body mass (else None with ``sul_reason``).
* ``liver_reference_suv_mean`` (+ ``liver_reference_sul_mean``, ``liver_reference_x_mm/_y_mm/
  _z_mm``, ``liver_reference_reason``) and ``lesion_to_liver_suvpeak_ratio`` = ``suv_peak`` /
  liver reference mean: see :func:`liver_reference`.
* ``suv_kind`` -- "bw" (SUVbw), or the kind of a stored SUV that could not be converted to SUVbw
  ("lbm", "ibw", "bsa"); then the SUV columns above stay empty and ``suv_reason`` gives the
  stored values with their kind (never compared with SUVbw thresholds); "" without SUV.
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


def _axis_diagonal(matrix: np.ndarray) -> np.ndarray | None:
    """The diagonal of a 3 x 3 matrix whose off-diagonal entries are exactly zero, else None."""
    off = matrix[~np.eye(3, dtype=bool)]
    return np.diag(matrix).copy() if np.all(off == 0.0) else None


def mask_coverage(
    crop: np.ndarray, bbox: BBox, src: Grid, dst: Grid, supersample: int = 1
) -> tuple[BBox, np.ndarray] | None:
    """:func:`pipeline.geometry.map_mask_coverage`, axis by axis when both grids are axis aligned.

    When the direction matrices of ``src`` and ``dst`` have no off-diagonal terms, the ``dst``
    voxel of a supersampled point depends on each axis separately: along axis ``a`` the point
    ``(i + o)`` of ``src`` falls in ``dst`` voxel ``rint(((i + o) * s_a + origin_a - dst_origin_a)
    * inv_a)`` with the same floating-point operations as the general mapping (the matrix
    products only add exact zeros). The point counts are then the tensor product of three 1-D
    count matrices (``dst`` index x ``src`` index) applied to the mask, exact integers in float64
    as in the general path, so the result is identical bit for bit; it costs O(voxels) instead
    of 27 x voxels point transforms. Other grids use the general function.

    Returns
    -------
    (bbox_dst, coverage) or None, as :func:`pipeline.geometry.map_mask_coverage`.
    """
    m_src = src.affine()[:3, :3]
    fwd = _axis_diagonal(m_src)
    inv = _axis_diagonal(np.linalg.inv(dst.affine()[:3, :3]))
    if fwd is None or inv is None or not np.any(crop):
        return map_mask_coverage(crop, bbox, src, dst, supersample=supersample)
    crop = np.asarray(crop, dtype=bool)
    if supersample > 1:
        offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    else:
        offs = np.zeros(1)
    # (z, y, x) order: the affine's columns are (x, y, z)
    fwd, inv = fwd[::-1], inv[::-1]
    o_src = np.asarray(src.origin_lps_mm, dtype=float)[::-1]
    o_dst = np.asarray(dst.origin_lps_mm, dtype=float)[::-1]
    mats, los = [], []
    for a in range(3):
        i = np.arange(bbox[a][0], bbox[a][0] + crop.shape[a], dtype=np.int64)
        t = i[:, None].astype(float) + offs[None, :]  # (n_src, supersample)
        lps = t * fwd[a] + o_src[a]
        d = np.rint((lps - o_dst[a]) * inv[a]).astype(np.int64)
        inside = (d >= 0) & (d < dst.shape_zyx[a])
        if not inside.any():
            return None
        lo, hi = int(d[inside].min()), int(d[inside].max()) + 1
        w = np.zeros((hi - lo, len(i)), dtype=np.float64)
        rows, cols = np.nonzero(inside)
        np.add.at(w, (d[rows, cols] - lo, rows), 1.0)
        mats.append(w)
        los.append(lo)
    counts = np.einsum("az,by,cx,zyx->abc", mats[0], mats[1], mats[2],
                       crop.astype(np.float64), optimize=True)
    nz = [np.flatnonzero(counts.any(axis=tuple(b for b in range(3) if b != a)))
          for a in range(3)]
    if any(len(v) == 0 for v in nz):
        return None
    sl = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in nz)
    counts = counts[sl]
    point_volume = src.voxel_volume_mm3 / supersample**3
    coverage = np.clip(counts * point_volume / dst.voxel_volume_mm3, 0.0, 1.0).astype(np.float32)
    bbox_dst = tuple((lo + int(v[0]), lo + int(v[-1]) + 1) for lo, v in zip(los, nz))
    return bbox_dst, coverage  # type: ignore[return-value]


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
            res = mask_coverage(crop[z0:z1], sub_bbox, mask.grid, dst, supersample=supersample)
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
    mask: LesionMask, grid: Grid, min_coverage: float, supersample: int,
    coverage: tuple[BBox, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Full-grid (N, 3) indices of the lesion's PET voxels, their coverage, and a note.

    Voxels with coverage >= ``min_coverage``; when there are none (lesion smaller than a PET
    voxel), every voxel the lesion touches (coverage > 0), with a note saying so. ``coverage``
    (from :func:`lesion_coverage` on ``grid``) is used when given instead of being recomputed.
    """
    res = coverage if coverage is not None else lesion_coverage(mask, grid, supersample=supersample)
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
    coverage: tuple[BBox, np.ndarray] | None = None,
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
    coverage : (bbox, coverage), optional
        The lesion's coverage on ``suv.grid`` (:func:`lesion_coverage`), when the caller already
        has it (it is the costly step).

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
        same = suv is not None and coverage is not None and activity.grid.same_as(suv.grid)
        vox = _lesion_voxels(mask, activity.grid, min_coverage, supersample,
                             coverage if same else None)
        if vox is not None:
            act_max = float(np.max(np.asarray(activity.array)[tuple(vox[0].T)]))

    if suv is None:
        reason = suv_reason or "no SUV image for this study"
        return PetFeatures(activity_max_bqml=act_max, suv_reason=reason)

    pgrid = suv.grid
    vox = _lesion_voxels(mask, pgrid, min_coverage, supersample, coverage)
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
        pet_voxel_count=len(idx),
        activity_max_bqml=act_max,
        suv_reason="; ".join(notes),
    )


# --------------------------------------------------------------------------- volumes, SUL, liver
def metabolic_volumes(
    values: np.ndarray, voxel_ml: float, *, suv_max: float | None = None,
    fraction_of_max: float = 0.41, absolute_suv: float = 2.5,
) -> dict:
    """MTV at a fraction of SUVmax and at an absolute SUV, and TLG, from the lesion's PET voxels.

    Parameters
    ----------
    values : (N,) SUV of the PET voxels of the search region (finite).
    voxel_ml : PET voxel volume, mL.
    suv_max : the lesion's SUVmax the relative threshold refers to (default: ``values.max()``).
    fraction_of_max : relative threshold (0.41 = 41 % of SUVmax, EANM).
    absolute_suv : absolute threshold (2.5 g/mL).

    Returns
    -------
    dict with ``mtv41_ml``, ``suv_mean41``, ``tlg41_g`` (g/mL x mL = g) and ``mtv25_ml``
    (names keep "41" and "25" whatever the configured thresholds: the columns are read by rules).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"mtv41_ml": None, "suv_mean41": None, "tlg41_g": None, "mtv25_ml": None}
    ref = float(v.max()) if suv_max is None else float(suv_max)
    sel = v >= fraction_of_max * ref
    mtv = float(np.count_nonzero(sel)) * voxel_ml
    mean41 = float(v[sel].mean()) if sel.any() else None
    if mean41 is None:
        return {"mtv41_ml": 0.0, "suv_mean41": None, "tlg41_g": 0.0,
                "mtv25_ml": float(np.count_nonzero(v >= absolute_suv)) * voxel_ml}
    return {
        "mtv41_ml": mtv,
        "suv_mean41": mean41,
        "tlg41_g": mean41 * mtv,
        "mtv25_ml": float(np.count_nonzero(v >= absolute_suv)) * voxel_ml,
    }


def sul_per_suvbw(audit) -> tuple[float | None, str]:
    """SUL / SUVbw ratio (= lean body mass / body weight) from an SUV audit, with a reason.

    ``audit`` is a :class:`pipeline.io.suv.SUVAudit` (or anything with ``sul_factor``,
    ``suvbw_factor`` and ``sul_reason``); None gives (None, reason).
    """
    if audit is None:
        return None, "no SUV audit handed to the feature stage"
    sul, bw = getattr(audit, "sul_factor", None), getattr(audit, "suvbw_factor", None)
    if sul is None or bw is None or not bw > 0:
        return None, getattr(audit, "sul_reason", "") or "SUL factor unavailable"
    return float(sul) / float(bw), ""


def liver_reference(
    liver: LesionMask,
    suv: Volume,
    lesions: list[LesionMask],
    *,
    diameter_mm: float = 30.0,
    clearance_mm: float = 10.0,
    step_mm: float = 3.0,
    to_pet=None,
    lesion_transforms: list | None = None,
) -> dict:
    """PERCIST liver reference: mean SUV in a 3 cm sphere placed in the right liver lobe.

    Placement (automatic, deterministic), on the liver mask's grid subsampled to about
    ``step_mm``:

    1. Free space: distance (mm) of every liver voxel to the nearest non-liver voxel (so holes
       left by lesions in an organ mask count as outside) and to the nearest lesion voxel.
    2. Candidate centres: at least the sphere radius inside the liver and at least radius +
       ``clearance_mm`` from every lesion.
    3. Right lobe: candidates on the patient's right (LPS x at or below the median x of the
       liver voxels; the right lobe is the larger, rightward part). If there is none there, any
       candidate, with a note.
    4. The candidate with the most room (the smaller of its two margins) wins; ties go to the
       most rightward one.

    The mean is taken over the PET voxels whose centres lie within the sphere (spacing aware).

    Parameters
    ----------
    liver : LesionMask
        Liver organ mask (its grid is the lesion grid).
    suv : Volume
        SUV on the PET grid.
    lesions : list of LesionMask
        Every lesion of the study, to keep away from.
    diameter_mm : sphere diameter (PERCIST: 30 mm).
    clearance_mm : extra distance between the sphere surface and any lesion voxel.
    step_mm : subsampling of the liver mask for the search.
    to_pet : sitk.Transform, optional
        Maps the liver mask's frame to the PET frame (None: same frame).
    lesion_transforms : list, optional
        For each lesion, a transform from its frame to the liver's frame (None: same).

    Returns
    -------
    dict with ``liver_reference_suv_mean`` and ``liver_reference_suv_sd`` (sample SD of the
    sphere's voxels, the PERCIST "2 SD" term), ``liver_reference_x_mm/_y_mm/_z_mm`` (LPS, the
    liver mask's frame), ``liver_reference_voxels`` (PET voxels averaged) and
    ``liver_reference_reason`` (notes, or why the values are None).
    """
    from scipy import ndimage

    from pipeline.features.registration import mask_on_grid

    out = {"liver_reference_suv_mean": None, "liver_reference_suv_sd": None,
           "liver_reference_x_mm": None, "liver_reference_y_mm": None,
           "liver_reference_z_mm": None, "liver_reference_voxels": None,
           "liver_reference_reason": ""}
    r = diameter_mm / 2.0
    g = liver.grid
    f = [max(1, int(round(step_mm / s))) for s in g.spacing_xyz_mm[::-1]]  # z, y, x
    # pad by one subsampled voxel so that the liver's border counts as "outside"
    (z0, _), (y0, _), (x0, _) = liver.bbox_zyx
    crop = np.asarray(liver.crop, dtype=bool)[:: f[0], :: f[1], :: f[2]]
    sub_grid = Grid(crop.shape, (g.spacing_xyz_mm[0] * f[2], g.spacing_xyz_mm[1] * f[1],
                                 g.spacing_xyz_mm[2] * f[0]),
                    tuple(float(v) for v in g.zyx_to_lps(np.array([[z0, y0, x0]], float))[0]),
                    g.direction)
    live = np.pad(crop, 1)
    pad_grid = Grid(live.shape, sub_grid.spacing_xyz_mm,
                    tuple(float(v) for v in sub_grid.zyx_to_lps(np.array([[-1.0, -1.0, -1.0]]))[0]),
                    g.direction)
    les = np.zeros(live.shape, dtype=bool)
    for k, m in enumerate(lesions):
        t = lesion_transforms[k] if lesion_transforms else None
        les |= mask_on_grid(m, pad_grid, t)
    sampling = tuple(float(v) for v in pad_grid.spacing_xyz_mm[::-1])
    d_out = ndimage.distance_transform_edt(live, sampling=sampling)
    d_les = (ndimage.distance_transform_edt(~les, sampling=sampling) if les.any()
             else np.full(live.shape, np.inf))
    ok = live & ~les & (d_out >= r) & (d_les >= r + clearance_mm)
    notes = []
    if not ok.any():
        out["liver_reference_reason"] = (
            f"no room in the liver mask for a {diameter_mm:g} mm sphere at least "
            f"{clearance_mm:g} mm from every lesion")
        return out
    idx = np.argwhere(ok)
    pts = pad_grid.zyx_to_lps(idx.astype(float))
    liver_x = pad_grid.zyx_to_lps(np.argwhere(live & ~les).astype(float))[:, 0]
    right = pts[:, 0] <= np.median(liver_x)
    if right.any():
        idx, pts = idx[right], pts[right]
    else:
        notes.append("no room in the right lobe: sphere placed elsewhere in the liver")
    room = np.minimum(d_out[tuple(idx.T)] - r, d_les[tuple(idx.T)] - r - clearance_mm)
    best = np.flatnonzero(room >= room.max() - 1e-6)
    best = best[np.argmin(pts[best, 0])]
    centre = pts[best]
    centre_pet = np.asarray(to_pet.TransformPoint(tuple(float(v) for v in centre))) if (
        to_pet is not None) else centre
    pg = suv.grid
    vox = np.rint(pg.lps_to_zyx(centre_pet[None])[0]).astype(np.int64)
    # candidate voxels: a sphere one voxel diagonal wider than r around the nearest voxel, then
    # exact membership of their centres in the sphere about the (non-integer) centre
    cand = vox + sphere_offsets(pg, r + float(np.linalg.norm(pg.spacing_xyz_mm)))
    d = np.linalg.norm(pg.zyx_to_lps(cand.astype(float)) - centre_pet, axis=1)
    cand = cand[(d <= r) & pg.contains_zyx(cand)]
    if len(cand) == 0:
        out["liver_reference_reason"] = "the liver reference sphere lies outside the PET"
        return out
    vals = np.asarray(suv.array)[tuple(cand.T)].astype(np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        out["liver_reference_reason"] = "no finite SUV in the liver reference sphere"
        return out
    out.update(liver_reference_suv_mean=float(vals.mean()),
               liver_reference_suv_sd=float(vals.std(ddof=1)) if len(vals) > 1 else None,
               liver_reference_x_mm=float(centre[0]),
               liver_reference_y_mm=float(centre[1]), liver_reference_z_mm=float(centre[2]),
               liver_reference_voxels=len(vals))
    n_expected = 4.0 / 3.0 * np.pi * r**3 / pg.voxel_volume_mm3
    if len(vals) < 0.9 * n_expected:
        notes.append(f"sphere cut by the PET field of view ({len(vals)} of ~{n_expected:.0f} "
                     "voxels)")
    out["liver_reference_reason"] = "; ".join(notes)
    return out


def pet_columns(
    mask: LesionMask,
    suv: Volume | None,
    *,
    activity: Volume | None = None,
    suv_reason: str = "",
    pcfg: dict,
    coverage: tuple[BBox, np.ndarray] | None = None,
    sul_ratio: float | None = None,
    sul_reason: str = "",
    liver_ref: dict | None = None,
) -> dict:
    """Every PET column of one lesion (see the module docstring).

    Parameters
    ----------
    mask : LesionMask
        The lesion, expressed in the PET's frame (see
        :func:`pipeline.features.registration.grid_through`).
    suv, activity, suv_reason : as for :func:`pet_features`.
    pcfg : ``features.pet`` settings.
    coverage : the lesion's coverage on ``suv.grid`` when already computed.
    sul_ratio : SUL / SUVbw (lean body mass / weight) or None; ``sul_reason`` says why.
    liver_ref : the study's liver reference (:func:`liver_reference`) or None.
    """
    f = pet_features(mask, suv, activity=activity, suv_reason=suv_reason,
                     peak_volume_ml=pcfg["peak_volume_ml"], min_coverage=pcfg["min_coverage"],
                     coverage=coverage)
    from dataclasses import asdict

    row = asdict(f)
    row.update({"mtv41_ml": None, "suv_mean41": None, "tlg41_g": None, "mtv25_ml": None})
    if f.suv_max is not None and suv is not None:
        if coverage is None:
            coverage = lesion_coverage(
                mask, suv.grid, supersample=3 if mask.voxel_count <= AUTO_SUPERSAMPLE_MAX_VOXELS
                else 2)
        if coverage is not None:
            cbb, cov = coverage
            idx = np.argwhere(cov > 0) + np.array([b[0] for b in cbb])
            vals = np.asarray(suv.array)[tuple(idx.T)].astype(np.float64)
            vals = vals[np.isfinite(vals)]
            row.update(metabolic_volumes(
                vals, suv.grid.voxel_volume_mm3 / 1000.0, suv_max=f.suv_max,
                fraction_of_max=pcfg["mtv_fraction_of_max"], absolute_suv=pcfg["mtv_absolute_suv"]))
    # SUL
    if f.suv_max is not None and sul_ratio is not None:
        row["sul_max"] = f.suv_max * sul_ratio
        row["sul_peak"] = f.suv_peak * sul_ratio if f.suv_peak is not None else None
        row["sul_reason"] = ""
    else:
        row["sul_max"] = row["sul_peak"] = None
        row["sul_reason"] = f.suv_reason if f.suv_max is None else (
            sul_reason or "SUL unavailable")
    # liver reference and ratio
    lr = dict(liver_ref or {"liver_reference_suv_mean": None,
                            "liver_reference_reason": "no liver reference for this study"})
    row["liver_reference_suv_mean"] = lr.get("liver_reference_suv_mean")
    row["liver_reference_suv_sd"] = lr.get("liver_reference_suv_sd")
    row["liver_reference_sul_mean"] = (
        lr["liver_reference_suv_mean"] * sul_ratio
        if lr.get("liver_reference_suv_mean") is not None and sul_ratio is not None else None)
    for k in ("liver_reference_x_mm", "liver_reference_y_mm", "liver_reference_z_mm"):
        row[k] = lr.get(k)
    row["liver_reference_reason"] = lr.get("liver_reference_reason", "")
    ref = lr.get("liver_reference_suv_mean")
    row["lesion_to_liver_suvpeak_ratio"] = (
        f.suv_peak / ref if (f.suv_peak is not None and ref) else None)
    return _keep_suvbw_only(row, suv)


#: Volume units -> ``suv_kind`` column (pipeline.io.suv.SUV_KIND_UNITS, inverted).
_UNITS_KIND = {"SUVBW": "bw", "SUVLBM": "lbm", "SUVIBW": "ibw", "SUVBSA": "bsa"}
#: Columns in SUV units (g/mL or g) that only an SUVbw volume may fill; ratios and the relative
#: MTV41 are unit-free and stay.
_SUVBW_ONLY = ("suv_max", "suv_mean", "suv_peak", "suv_mean41", "tlg41_g", "mtv25_ml", "sul_max",
               "sul_peak", "liver_reference_suv_mean", "liver_reference_suv_sd",
               "liver_reference_sul_mean")


def _keep_suvbw_only(row: dict, suv: Volume | None) -> dict:
    """Add ``suv_kind`` ("bw", "lbm", "ibw", "bsa"; "" without SUV). A stored SUV of another
    kind (``suv.units`` SUVlbm / SUVibw / SUVbsa, from ``to_suv(..., kind="stored")``) is
    reported in ``suv_reason`` with its kind and never left in the SUVbw columns, which the
    rules compare with SUVbw thresholds."""
    kind = _UNITS_KIND.get(suv.units.upper(), suv.units) if suv is not None else ""
    row["suv_kind"] = kind
    if suv is None or kind == "bw" or row.get("suv_max") is None:
        return row
    stored = ", ".join(f"{k.replace('suv', suv.units)} {row[k]:.4g}"
                       for k in ("suv_max", "suv_peak", "suv_mean") if row.get(k) is not None)
    for k in _SUVBW_ONLY:
        row[k] = None
    row["suv_reason"] = (f"PET stored as {suv.units} (not convertible to SUVbw): {stored}; "
                         "not compared with SUVbw thresholds")
    row["sul_reason"] = row["suv_reason"]
    return row
