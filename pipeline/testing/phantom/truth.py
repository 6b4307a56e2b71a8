"""Ground truth of the phantom: analytic values from the designed shapes, and voxel counts.

Analytic truth (skin paths, aerated lung along a path, contact angles with the aorta, exophytic
fractions) is computed in closed form, or by dense sampling, from the designs of
:mod:`.design`; voxelized truth (volumes, centroids, MTV, ...) counts voxels of the rendered
arrays (:mod:`.render`). :func:`truth_dict` is the content of ``truth.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.geometry import Grid
from pipeline.testing.phantom.design import (
    AORTA_CENTRE_XY_MM,
    AORTA_RADIUS_MM,
    BODY_SEMI_AXES_XY_MM,
    CT_NOISE_SIGMA_HU,
    GENERATOR,
    LIVER,
    LUNG_LEFT,
    LUNG_RIGHT,
    ORGAN_NAMES,
    ORGAN_ROI_NAMES,
    SPINE_CENTRE_XY_MM,
    SPINE_RADIUS_MM,
    SPLEEN,
    TISSUE_VALUES,
    TOTALSEG_STRUCTURES,
    Ellipsoid,
    LesionDesign,
    Tissue,
    classify_tissue,
    grid_dict,
    label_lesions,
    structure_distance,
)
from pipeline.testing.phantom.render import PhantomArrays


def ellipse_closest_point(px: float, py: float, a: float, b: float) -> tuple[float, float]:
    """Closest point (x, y) of the origin-centred ellipse (semi-axes a, b) to (px, py).

    Same Lagrange bisection as :func:`ellipsoid_signed_distance` (Eberly), in 2-D. A point on
    the major axis close enough to the centre (``|p| < (a^2 - b^2) / a``) has two mirror-image
    closest points; the one with negative minor coordinate is returned (for the body ellipse,
    the anterior one: a supine patient is approached from the front).
    """
    if a > b and abs(py) < 1e-9 and abs(px) < (a * a - b * b) / a:
        x = a * a * px / (a * a - b * b)
        return float(x), float(-b * math.sqrt(max(0.0, 1.0 - (x / a) ** 2)))
    if b > a and abs(px) < 1e-9 and abs(py) < (b * b - a * a) / b:
        y = b * b * py / (b * b - a * a)
        return float(-a * math.sqrt(max(0.0, 1.0 - (y / b) ** 2))), float(y)
    e = np.array([a, b], dtype=float)
    sgn = np.where(np.array([px, py]) < 0, -1.0, 1.0)
    q = np.maximum(np.abs(np.array([px, py], dtype=float)), 1e-9)
    k = int(np.argmin(e))
    emin = e[k]
    eq = e * q
    lo = -emin**2 + emin * q[k]
    hi = -emin**2 + float(np.sqrt(np.sum(eq**2)))
    e2 = e**2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        f = float(np.sum((eq / (mid + e2)) ** 2)) - 1.0
        if f > 0:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    x = e2 * q / (t + e2)
    return float(sgn[0] * x[0]), float(sgn[1] * x[1])


def skin_path(les: LesionDesign) -> dict:
    """The shortest straight path from the skin to the lesion centre.

    The skin is the elliptic cylinder of the body, so the nearest skin point to the centre lies
    in the centre's axial plane: ``entry`` = closest point of the body ellipse to (cx, cy), at
    z = cz. Direction: from the entry towards the centre. The lesion surface is crossed
    ``1 / sqrt(sum((u_i / a_i)^2))`` before the centre (ray-ellipsoid intersection).

    Returns
    -------
    dict with ``entry`` (3,), ``direction`` (3,) unit, ``length_mm`` (entry -> centre),
    ``surface_point`` (3,), ``length_to_surface_mm`` (entry -> lesion surface).
    """
    c = np.asarray(les.centre_lps_mm, dtype=float)
    ex, ey = ellipse_closest_point(c[0], c[1], *BODY_SEMI_AXES_XY_MM)
    entry = np.array([ex, ey, c[2]])
    v = c - entry
    length = float(np.linalg.norm(v))
    u = v / length
    t_in = 1.0 / math.sqrt(float(np.sum((u / np.asarray(les.semi_axes_mm)) ** 2)))
    surface = c - t_in * u
    return {
        "entry": entry,
        "direction": u,
        "length_mm": length,
        "surface_point": surface,
        "length_to_surface_mm": length - t_in,
    }


def _ellipsoid_interval(p0, p1, shape: Ellipsoid) -> tuple[float, float] | None:
    """Parameter interval [t0, t1] within [0, 1] of the segment p0 -> p1 inside an ellipsoid."""
    c, e = np.asarray(shape.centre_lps_mm), np.asarray(shape.semi_axes_mm)
    o, d = (np.asarray(p0) - c) / e, (np.asarray(p1) - np.asarray(p0)) / e
    return _quadratic_interval(float(d @ d), 2.0 * float(o @ d), float(o @ o) - 1.0)


def _cylinder_interval(p0, p1, centre_xy, radius: float) -> tuple[float, float] | None:
    """Parameter interval within [0, 1] of the segment inside a z-aligned circular cylinder."""
    o = np.asarray(p0[:2], dtype=float) - np.asarray(centre_xy)
    d = np.asarray(p1[:2], dtype=float) - np.asarray(p0[:2], dtype=float)
    return _quadratic_interval(float(d @ d), 2.0 * float(o @ d), float(o @ o) - radius**2)


def _quadratic_interval(a: float, b: float, c: float) -> tuple[float, float] | None:
    """Where a t^2 + b t + c <= 0 within [0, 1] (a >= 0), as one interval or None."""
    if a < 1e-15:
        return (0.0, 1.0) if c <= 0 else None
    disc = b * b - 4 * a * c
    if disc <= 0:
        return None
    r = math.sqrt(disc)
    t0, t1 = max((-b - r) / (2 * a), 0.0), min((-b + r) / (2 * a), 1.0)
    return (t0, t1) if t1 > t0 else None


def _union(intervals):
    out: list[list[float]] = []
    for a, b in sorted(i for i in intervals if i is not None):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _subtract(base, cut):
    out = []
    for a, b in base:
        pieces = [(a, b)]
        for c0, c1 in cut:
            nxt = []
            for p0, p1 in pieces:
                if c1 <= p0 or c0 >= p1:
                    nxt.append((p0, p1))
                    continue
                if c0 > p0:
                    nxt.append((p0, c0))
                if c1 < p1:
                    nxt.append((c1, p1))
            pieces = nxt
        out.extend(pieces)
    return out


def aerated_lung_length_mm(p0, p1) -> float:
    """Length (mm) of the segment p0 -> p1 lying in aerated lung, analytically.

    Lung tissue = (left lung ellipsoid U right lung ellipsoid) minus the structures painted over
    it (liver, spleen, aorta, vertebral column; see :func:`classify_tissue`). Intersections are
    exact roots of quadratics. The segment must lie inside the body (true for skin paths).
    """
    lungs = _union([_ellipsoid_interval(p0, p1, LUNG_LEFT),
                    _ellipsoid_interval(p0, p1, LUNG_RIGHT)])
    cut = _union([
        _ellipsoid_interval(p0, p1, LIVER),
        _ellipsoid_interval(p0, p1, SPLEEN),
        _cylinder_interval(p0, p1, AORTA_CENTRE_XY_MM, AORTA_RADIUS_MM),
        _cylinder_interval(p0, p1, SPINE_CENTRE_XY_MM, SPINE_RADIUS_MM),
    ])
    length = float(np.linalg.norm(np.subtract(p1, p0)))
    return float(sum(b - a for a, b in _subtract(lungs, cut)) * length)


def path_crossings(p0, p1, lesions: Sequence[LesionDesign], own: int, step_mm: float = 0.05):
    """Tissues and other lesions met along the segment p0 -> p1 (dense sampling, step 0.05 mm,
    from 1 micrometre after p0, which is on the skin for skin paths).

    Returns
    -------
    tissues : list of str
        Tissue names (lower case) in the order met from p0, consecutive repeats merged.
    lesions : list of str
        Names of other lesions (not label ``own``) the segment enters.
    """
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    n = max(2, math.ceil(length / step_mm) + 1)
    t = np.linspace(min(1e-3 / length, 0.5), 1.0, n)  # start 1 um inside: p0 is on the skin
    pts = p0[None, :] + t[:, None] * (p1 - p0)[None, :]
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    tissue = classify_tissue(x, y, z)
    labels, _, _ = label_lesions(x, y, z, lesions)
    names = []
    for v in tissue:
        nm = Tissue(int(v)).name.lower()
        if not names or names[-1] != nm:
            names.append(nm)
    others = [lesions[int(k) - 1].name for k in dict.fromkeys(labels.tolist()) if k and k != own]
    return names, others


def aorta_contact_angle_analytic(les: LesionDesign, n: int = 360_000, *,
                                 within_mm: float = 0.0) -> float:
    """Degrees of the aortic circumference in contact with the lesion at its widest level (z = cz).

    The arc of the aorta circle (radius :data:`AORTA_RADIUS_MM`) lying inside or on the lesion's
    axial cross-section (the outer ellipse), or within ``within_mm`` of it, sampled at ``n``
    angles. With ``within_mm=0``: 0 for a lesion tangent to the aorta (point contact) or apart
    from it. With ``within_mm`` = the in-plane voxel size: the arc a voxel image cannot tell from
    contact (no fat plane is resolved thinner than a voxel), the upper bound of a voxel measure.
    Closed-form geometry only: nothing of the pipeline's own measurement is used.
    """
    (cx, cy, _), (a, b, _) = les.centre_lps_mm, les.semi_axes_mm
    ax, ay = AORTA_CENTRE_XY_MM
    if math.hypot(cx - ax, cy - ay) > max(a, b) + AORTA_RADIUS_MM + within_mm:
        return 0.0
    if within_mm > 0:
        n = min(n, 36_000)
    th = (np.arange(n) + 0.5) * (2.0 * math.pi / n)
    x = ax + AORTA_RADIUS_MM * np.cos(th)
    y = ay + AORTA_RADIUS_MM * np.sin(th)
    inside = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0 + 1e-12
    if within_mm > 0:
        # distance of the remaining arc points to the ellipse boundary (densely sampled)
        cand = np.flatnonzero(~inside & (np.hypot(x - cx, y - cy) <= max(a, b) + within_mm))
        phi = np.linspace(0.0, 2.0 * math.pi, 7200, endpoint=False)
        ex, ey = cx + a * np.cos(phi), cy + b * np.sin(phi)
        for chunk in np.array_split(cand, max(1, len(cand) // 512)):
            if len(chunk) == 0:
                continue
            d2 = (x[chunk, None] - ex[None, :]) ** 2 + (y[chunk, None] - ey[None, :]) ** 2
            inside[chunk] = d2.min(axis=1) <= within_mm ** 2
    return float(inside.sum()) * 360.0 / n


def aorta_relation(les: LesionDesign) -> str:
    """``encasing`` (analytic contact angle > 180 degrees), ``abutting`` (surfaces touch,
    angle <= 180) or ``none``."""
    if aorta_contact_angle_analytic(les) > 180.0:
        return "encasing"
    if les.exclude_aorta or abs(structure_distance(les, "aorta")) < 1e-6:
        return "abutting"
    return "none"


def exophytic_fraction_analytic(les: LesionDesign, step_mm: float = 0.2) -> float:
    """Fraction of the lesion volume outside the liver ellipsoid (regular 0.2 mm sampling)."""
    (cx, cy, cz), (a, b, c) = les.centre_lps_mm, les.semi_axes_mm
    axes_ = [np.arange(-r + step_mm / 2, r, step_mm) for r in (a, b, c)]
    x = cx + axes_[0][None, None, :]
    y = cy + axes_[1][None, :, None]
    z = cz + axes_[2][:, None, None]
    m = les.contains(x, y, z)
    out = m & ~LIVER.contains(x, y, z)
    return float(out.sum()) / float(m.sum())


# --------------------------------------------------------------------------- truth
def lesion_truth(arrays: PhantomArrays, pet_suv_stored: np.ndarray | None = None) -> list[dict]:
    """Ground-truth table of the lesions (analytic and voxelised values).

    Parameters
    ----------
    arrays : PhantomArrays
    pet_suv_stored : (z, y, x) array, optional
        SUV as a reader gets it from the written PET (``stored * slope * suvbw_factor``); used for
        ``suv_max_voxelized``. Defaults to the exact PET.

    Returns
    -------
    list of dict, one per lesion in label order (see :func:`truth_dict`).
    """
    cg = arrays.ct_grid
    pet = arrays.pet_suv if pet_suv_stored is None else pet_suv_stored
    out = []
    for k, les in enumerate(arrays.design.lesions, start=1):
        a, b, c = les.semi_axes_mm
        shape = les.shape
        mask = arrays.lesion_labels == k
        idx = np.argwhere(mask)
        n = int(len(idx))
        centroid = cg.zyx_to_lps(idx.mean(axis=0)[None, :])[0] if n else np.full(3, np.nan)
        pet_mask = arrays.pet_lesion_labels == k
        suv_max_vox = float(pet[pet_mask].max()) if pet_mask.any() else None
        core = les.core
        core_frac = 0.0 if core is None else core.volume_mm3 / shape.volume_mm3
        liver_d = structure_distance(les, "liver") if les.organ == "liver" else None
        if liver_d is not None and liver_d < -1e-3:
            liver_d = 0.0  # the lesion crosses the capsule (exophytic): it touches it
        aorta_d = structure_distance(les, "aorta")
        if aorta_d < -1e-3:
            aorta_d = 0.0  # the lesion wraps around the aorta (its lumen is excluded): touching
        lung_key = next((h.lower() for h in les.host_tissues if h.startswith("LUNG")), None)
        pleura_d = structure_distance(les, lung_key) if lung_key else None
        out.append(
            {
                "label": k,
                "name": les.name,
                "organ": les.organ,
                "site": les.site,
                "host_tissues": [h.lower() for h in les.host_tissues],
                "centre_lps_mm": [float(v) for v in les.centre_lps_mm],
                "semi_axes_mm": [float(v) for v in les.semi_axes_mm],
                "volume_ml_analytic": les.volume_mm3_analytic / 1000.0,
                "volume_ml_voxelized": n * cg.voxel_volume_mm3 / 1000.0,
                "voxel_count": n,
                "longest_axial_diameter_mm": 2.0 * max(a, b),
                "short_axis_mm": 2.0 * min(a, b),
                "max_3d_diameter_mm": 2.0 * max(a, b, c),
                "centroid_lps_mm_voxelized": [float(v) for v in centroid],
                "skin_depth_mm": structure_distance(les, "skin"),
                "suv": les.suv,
                "suv_core": les.core_suv if core is not None else None,
                "suv_max_voxelized": suv_max_vox,
                "pet_voxel_count": int(pet_mask.sum()),
                "hu_noncontrast": les.hu_noncontrast,
                "hu_contrast": les.hu_contrast,
                "hu_core_noncontrast": les.core_hu_noncontrast if core is not None else None,
                "hu_core_contrast": les.core_hu_contrast if core is not None else None,
                "necrotic_core_radius_mm": les.core_radius_mm,
                "necrotic_core_fraction": core_frac,
                "liver_capsule_distance_mm": liver_d,
                "lung_pleura_distance_mm": pleura_d,
                "aorta_distance_mm": aorta_d,
                "vertebral_column_distance_mm": structure_distance(les, "vertebral_column"),
                "purpose": les.purpose,
            }
        )
        out[-1].update(_more_truth(arrays, k, pet))
    return out


def _host_tissue(les: LesionDesign) -> Tissue:
    """The tissue a lesion's conspicuity is designed against: its first host tissue."""
    return Tissue[les.host_tissues[0]]


def _more_truth(arrays: PhantomArrays, k: int, pet: np.ndarray) -> dict:
    """Truth keys added for the anatomy / biomarker issues (every lesion, both variants)."""
    les = arrays.design.lesions[k - 1]
    cg, pg = arrays.ct_grid, arrays.pet_grid
    mask = arrays.lesion_labels == k
    n = int(mask.sum())
    core = les.core
    # PET: voxels whose centre is inside the lesion (no blur, so no background voxel counts)
    pet_mask = arrays.pet_lesion_labels == k
    vals = pet[pet_mask]
    pet_ml = pg.voxel_volume_mm3 / 1000.0
    if len(vals):
        mtv41 = float(np.count_nonzero(vals >= 0.41 * float(vals.max()))) * pet_ml
        mtv25 = float(np.count_nonzero(vals >= 2.5)) * pet_ml
        suv_mean = float(vals.mean())
    else:
        mtv41 = mtv25 = 0.0
        suv_mean = None
    # CT design
    host = _host_tissue(les)
    host_nc, host_ce, _ = TISSUE_VALUES[host]
    # liver
    if les.organ == "liver":
        liver = arrays.tissue_labels == int(Tissue.LIVER)
        exo_vox = float(np.count_nonzero(mask & ~liver)) / n if n else None
        exo_an = exophytic_fraction_analytic(les)
    else:
        exo_vox = exo_an = None
    # straight path from the skin to the centre
    path = skin_path(les)
    tissues, crossed = path_crossings(path["entry"], path["surface_point"],
                                      arrays.design.lesions, k)
    shift = np.zeros(3) if arrays.contrast_shift_mm is None else np.asarray(
        arrays.contrast_shift_mm)
    mask_ce = arrays.lesion_labels_contrast == k
    return {
        "uniform": core is None,
        "excludes_aortic_lumen": les.exclude_aorta,
        "necrotic_core_fraction_voxelized": (
            float(np.count_nonzero(mask & arrays.lesion_core)) / n if (n and core is not None)
            else 0.0
        ),
        "suv_mean_voxelized": suv_mean,
        "mtv41_ml_voxelized": mtv41,
        "mtv25_ml_voxelized": mtv25,
        "designed_enhancement_hu": les.hu_contrast - les.hu_noncontrast,
        "designed_core_enhancement_hu": (
            les.core_hu_contrast - les.core_hu_noncontrast if core is not None else None
        ),
        "host_tissue": host.name.lower(),
        "host_hu_noncontrast": host_nc,
        "host_hu_contrast": host_ce,
        "designed_cnr_noncontrast": abs(les.hu_noncontrast - host_nc) / CT_NOISE_SIGMA_HU,
        "designed_cnr_contrast": abs(les.hu_contrast - host_ce) / CT_NOISE_SIGMA_HU,
        "aorta_contact_angle_deg": aorta_contact_angle_analytic(les),
        "aorta_contact_angle_deg_within_voxel": aorta_contact_angle_analytic(
            les, within_mm=float(max(cg.spacing_xyz_mm[:2]))),
        "relation_to_aorta": aorta_relation(les),
        "exophytic_fraction": exo_vox,
        "exophytic_fraction_analytic": exo_an,
        "path_entry_lps_mm": [float(v) for v in path["entry"]],
        "path_direction_lps": [float(v) for v in path["direction"]],
        "path_length_analytic_mm": path["length_mm"],
        "path_length_to_surface_mm": path["length_to_surface_mm"],
        "path_surface_point_lps_mm": [float(v) for v in path["surface_point"]],
        "aerated_lung_path_mm_analytic": aerated_lung_length_mm(path["entry"],
                                                                path["surface_point"]),
        "path_tissues": tissues,
        "path_lesions_crossed": crossed,
        "centre_lps_mm_contrast": [float(c + d) for c, d in zip(les.centre_lps_mm, shift)],
        "voxel_count_contrast": int(mask_ce.sum()),
    }


def truth_dict(
    arrays: PhantomArrays,
    uids: dict[str, str],
    pet_suv_stored=None,
    organ_formats: Sequence[str] = ("seg",),
) -> dict:
    """The content of ``truth.json``.

    Parameters
    ----------
    arrays : PhantomArrays
    uids : dict
        ``study_uid``, ``frame_of_reference_uid``, ``frame_of_reference_uid_contrast`` and the
        series keys ``ct_noncontrast``, ``ct_contrast``, ``pet``, ``seg_lesions``,
        ``seg_organs``, ``rtstruct`` (+ ``rtstruct_organs``, ``seg_lesions_noncontrast``).
    pet_suv_stored : array, optional
        SUV as read back from the written PET (see :func:`lesion_truth`).
    organ_formats : sequence of str
        The organ mask formats written (see :func:`generate_patient`).
    """
    d = arrays.design
    shifted = arrays.contrast_shift_mm is not None
    series_keys = ["ct_noncontrast", "ct_contrast", "pet", "seg_lesions", "seg_organs", "rtstruct"]
    if "seg" not in organ_formats:
        series_keys.remove("seg_organs")
    if "rtstruct" in organ_formats:
        series_keys.append("rtstruct_organs")
    if shifted:
        series_keys.append("seg_lesions_noncontrast")
    frame_ce = uids.get("frame_of_reference_uid_contrast", uids["frame_of_reference_uid"])
    return {
        "generator": GENERATOR,
        "size": d.size,
        "seed": d.seed,
        "patient_index": d.patient_index,
        "patient_id": d.patient_id,
        "patient_name": d.patient_name,
        "study_uid": uids["study_uid"],
        "frame_of_reference_uid": uids["frame_of_reference_uid"],
        "series": {k: uids[k] for k in series_keys},
        "pet": {
            "weight_kg": d.weight_kg,
            "height_m": d.height_m,
            "dose_bq": d.dose_bq,
            "injection_time": d.injection_datetime.isoformat(),
            "series_time": d.pet_series_datetime.isoformat(),
            "half_life_s": d.half_life_s,
            "decay_to_series": d.decay_to_series,
            "suvbw_factor": d.suvbw_factor,
            "units": "BQML",
        },
        "ct_grid": grid_dict(arrays.ct_grid),
        "pet_grid": grid_dict(arrays.pet_grid),
        "ct_noise_sigma_hu": CT_NOISE_SIGMA_HU,
        "organs": list(ORGAN_NAMES),
        "variant": d.variant,
        "organ_formats": list(organ_formats),
        "contrast_shift_mm": list(arrays.contrast_shift_mm) if shifted else None,
        "contrast_frame_of_reference_uid": frame_ce,
        "files": _files_truth(arrays, uids, organ_formats),
        "lesions": lesion_truth(arrays, pet_suv_stored),
    }


def _files_truth(arrays: PhantomArrays, uids: dict[str, str], organ_formats) -> dict:
    """What each written file is, what it references and in which frame of reference."""
    fr = uids["frame_of_reference_uid"]
    fr_ce = uids.get("frame_of_reference_uid_contrast", fr)
    nc = {"references_series": "ct_noncontrast", "frame_of_reference_uid": fr}
    ce = {"references_series": "ct_contrast", "frame_of_reference_uid": fr_ce}
    out = {
        "CT_noncontrast/": {"series": "ct_noncontrast", "frame_of_reference_uid": fr},
        "CT_contrast/": {"series": "ct_contrast", "frame_of_reference_uid": fr_ce},
        "PET/": {"series": "pet", "frame_of_reference_uid": fr},
        "SEG_lesions.dcm": {"series": "seg_lesions", "kind": "lesion", **ce},
        "RTSTRUCT_lesions.dcm": {"series": "rtstruct", "kind": "lesion", **ce},
        "labelmap/lesions.nii.gz": {"kind": "lesion", **ce},
    }
    if arrays.contrast_shift_mm is not None:
        out["SEG_lesions_noncontrast.dcm"] = {
            "series": "seg_lesions_noncontrast", "kind": "lesion", **nc,
        }
    if "seg" in organ_formats:
        out["SEG_organs.dcm"] = {"series": "seg_organs", "kind": "organ", **nc}
    if "rtstruct" in organ_formats:
        out["RTSTRUCT_organs.dcm"] = {
            "series": "rtstruct_organs", "kind": "organ",
            "roi_names": {ORGAN_ROI_NAMES[o]: o for o in ORGAN_NAMES}, **nc,
        }
    if "totalseg" in organ_formats:
        out["totalseg/"] = {
            "kind": "organ", "format": "TotalSegmentator v2 NIfTI (one binary mask per file)",
            "structures": {name: organ for name, organ, _, _ in TOTALSEG_STRUCTURES}, **nc,
        }
    return out
