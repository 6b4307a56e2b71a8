"""CT biomarkers of a lesion: HU on both phases, enhancement, non-contrast conspicuity, necrosis.

Everything runs on one crop per lesion: the lesion's bounding box on its own grid plus a margin
(``features.crop_margin_mm``, at least the peri-lesional ring). Each CT phase is *sampled* at
that crop's voxel centres: exactly (sliced) when the phase is the lesion's own grid, with linear
interpolation when it is another grid in the same frame, and through the study's rigid
registration when it is in another frame (:mod:`pipeline.features.registration`). Organ masks,
the other lesions and the PET are brought onto the crop the same way.

Columns (HU = Hounsfield units; ``nc`` = non-contrast, ``ce`` = contrast-enhanced)
--------------------------------------------------------------------------------------
The lesion *interior* is the set of lesion voxels deeper inside the border (3D distance between
voxel centres) than ``interior_border_mm`` -- and, when a phase has to be interpolated (another
grid or another frame), than one voxel diagonal of that phase, the reach of linear
interpolation. The whole lesion is used, with a note, when fewer than ``min_interior_voxels``
remain; an interpolated phase is then not measured at all. Partial volume with surrounding
tissue (scanner blur, interpolation) cannot reach the interior, so intensity statistics are
taken there: on the phantom this takes the lung lesions' enhancement error under a 4 mm shift of
the contrast CT from about +150 HU (whole lesion) to under 2.5 HU.

* ``ct_nc_hu_mean``, ``ct_nc_hu_std``, ``ct_nc_hu_median`` and the same for ``ct_ce_`` -- over
  the lesion interior (None when the phase covers less than ``min_phase_coverage`` of the
  lesion); ``ct_hu_reason``.
* ``enhancement_hu`` -- mean(contrast HU - non-contrast HU) over the lesion interior;
  ``enhancement_viable_hu`` -- the same over the interior voxels that are not necrotic by the
  CT criterion below. When the interior is too small and a phase had to be interpolated, that
  phase's statistics and the enhancement are left empty rather than reporting border partial
  volume (a 7 mm lung nodule would otherwise "enhance" by hundreds of HU).
  ``enhancement_reason``; ``registration_status`` (the study's phase alignment, see
  :data:`pipeline.features.registration.STATUSES`). A failed registration is never used: the
  enhancement is then None with the reason.
* ``noncontrast_cnr`` -- |mean interior HU - mean ring HU| / std(ring HU) on the non-contrast CT,
  where the ring holds the voxels between ``ring_gap_mm`` and ``ring_gap_mm + ring_width_mm``
  from the lesion (3D distance, spacing aware), inside the organ holding the lesion (the organ
  mask covering at least ``ring_organ_min_overlap`` of it) -- or, without such an organ, inside
  the body (ring voxels above ``ring_air_hu``) -- and outside every other lesion.
  ``contrast_cnr`` is the same on the contrast CT; ``cnr_ring_region`` names the region
  (``organ:<name>`` or ``body``); ``noncontrast_cnr_reason``.
* ``necrosis_fraction`` -- fraction of lesion voxels that are necrotic:
  CT criterion = non-enhancing (enhancement < ``nonenhancing_max_hu``) **or** fluid density
  (``fluid_min_hu`` <= non-contrast HU <= ``fluid_max_hu``; on the contrast CT when it is the only
  phase); PET criterion = PET-cold: the CT voxel lies in one of the lesion's own PET voxels
  (coverage >= ``features.pet.min_coverage``) whose SUV < ``pet_cold_fraction`` x the lesion's
  SUVmax (nearest PET voxel; border CT voxels in mostly-background PET voxels are never called
  cold). With both, ``pet_combine`` = ``"and"``
  (default: necrosis is non-enhancing *and* non-avid, the paper's definition) or ``"or"``.
  Before thresholding, each phase is median-filtered in a ``smoothing_voxels``-wide cube over
  lesion voxels only (surrounding tissue never leaks in): the per-voxel CT noise drops about
  four-fold while the border between a necrotic core and a viable rim stays where it is (a
  mean filter would shift it whenever a threshold is not midway between the two). ``necrosis_fraction_ct``,
  ``necrosis_fraction_pet`` give each criterion alone; ``necrosis_reason`` says which criteria
  were used or why the value is None.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from pipeline.features.registration import (
    grid_through,
    is_subgrid,
    mask_on_grid,
    sample_volume,
)
from pipeline.geometry import expand_bbox, paste
from pipeline.records import LesionMask, Volume

log = logging.getLogger(__name__)

PHASES = (("noncontrast", "nc"), ("contrast", "ce"))


def _empty_columns(status: str) -> dict:
    row: dict = {}
    for _, short in PHASES:
        for stat in ("mean", "std", "median"):
            row[f"ct_{short}_hu_{stat}"] = None
    row.update({
        "ct_hu_reason": "", "enhancement_hu": None, "enhancement_viable_hu": None,
        "enhancement_reason": "", "registration_status": status,
        "noncontrast_cnr": None, "contrast_cnr": None, "cnr_ring_region": "",
        "noncontrast_cnr_reason": "", "necrosis_fraction": None, "necrosis_fraction_ct": None,
        "necrosis_fraction_pet": None, "necrosis_reason": "",
    })
    return row


def _masked_median(values: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """Median of ``values`` over the ``mask`` voxels of a ``size``-wide cubic window.

    Only windows centred on ``mask`` voxels are computed, and only ``mask`` voxels enter them
    (NaN counts as missing), so surrounding tissue never leaks into the lesion. A median, unlike
    a mean, keeps a boundary between two lesion components where it is: a voxel takes the value
    of the majority of its window. Outside ``mask`` the result is NaN.
    """
    ok = mask & np.isfinite(values)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    if size <= 1 or not ok.any():
        out[ok] = values[ok]
        return out
    h = size // 2
    padded = np.pad(np.where(ok, values, np.nan).astype(np.float32), h, constant_values=np.nan)
    idx = np.argwhere(ok)
    offs = np.stack(np.meshgrid(*[np.arange(-h, h + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    # the windows gathered by flat index (voxel + offset, in elements of ``padded``)
    steps = np.asarray(padded.strides) // padded.itemsize
    nb = padded.ravel()[((idx + h) @ steps)[:, None] + (offs @ steps)[None, :]]
    nb.sort(axis=1)  # NaN sort last
    n = np.count_nonzero(np.isfinite(nb), axis=1)
    rows = np.arange(len(idx))
    med = 0.5 * (nb[rows, (n - 1) // 2] + nb[rows, n // 2])
    out[tuple(idx.T)] = med
    return out


def ct_columns(mask: LesionMask, ctx, cfg: dict, *, suv_max: float | None = None,
               pet_coverage=None) -> dict:
    """CT columns of one lesion (see the module docstring).

    Parameters
    ----------
    mask : LesionMask
        The lesion on the grid it was drawn on.
    ctx : pipeline.features.stage.FeatureContext
        The study's images, frames, organs and lesions.
    cfg : the validated configuration (reads ``features``).
    suv_max : float, optional
        The lesion's SUVmax (for the PET-cold criterion).
    pet_coverage : (bbox, coverage), optional
        The lesion's coverage on the PET grid (:func:`pipeline.features.pet.lesion_coverage`,
        lesion expressed in the PET frame); computed when not given.

    Returns
    -------
    dict of column -> value (None when unavailable, with the reason columns filled).
    """
    fcfg = cfg["features"]
    ccfg = fcfg["ct"]
    ncfg = ccfg["necrosis"]
    frames = ctx.frames
    row = _empty_columns(frames.alignment.status)
    space = frames.space_of_mask(mask)
    grid = mask.grid
    ring_outer = float(ccfg["ring_gap_mm"]) + float(ccfg["ring_width_mm"])
    margin = max(float(fcfg["crop_margin_mm"]), ring_outer + max(grid.spacing_xyz_mm))
    bbox = expand_bbox(mask.bbox_zyx, grid, margin)
    cgrid = grid.crop(bbox)
    les = paste(np.asarray(mask.crop, dtype=bool), mask.bbox_zyx, bbox)
    n_les = int(les.sum())

    # ---- where each phase comes from: its transform and sampling grid (interpolated or not)
    why: dict[str, str] = {}
    plan: dict[str, tuple] = {}
    for role, short in PHASES:
        vol = ctx.ct.get(role)
        if vol is None:
            why[short] = f"no {role} CT"
            continue
        t, reason = frames.transform(space, frames.space_of_series.get(vol.series_uid, "nc"))
        if reason:
            why[short] = f"{role} CT unusable for this lesion: {reason}"
            continue
        dst = grid_through(cgrid, t)
        plan[short] = (role, vol, dst, not is_subgrid(vol.grid, dst))

    # ---- the lesion interior: voxels deeper than the border inside the lesion. Partial volume
    # with the surrounding tissue cannot reach them: scanner blur (interior_border_mm) and, for
    # a phase interpolated from another grid or frame, the interpolation (one voxel diagonal of
    # that phase). HU statistics, enhancement and the lesion side of the CNR are measured there.
    depth = ndimage.distance_transform_edt(les, sampling=tuple(cgrid.spacing_xyz_mm[::-1]))
    border = float(ccfg["interior_border_mm"])
    for _, vol, _, interpolated in plan.values():
        if interpolated:
            border = max(border, float(np.linalg.norm(vol.grid.spacing_xyz_mm)))
    roi = les & (depth > border)
    n_roi = int(roi.sum())
    if n_roi >= int(ccfg["min_interior_voxels"]):
        roi_note = ""
    else:
        roi = les
        roi_note = (f"lesion interior too small ({n_roi} voxels > {border:.1f} mm inside the "
                    "border): whole lesion used, border partial volume included")

    # ---- sample every phase at the crop's voxel centres
    hu: dict[str, np.ndarray] = {}
    for short, (role, vol, dst, interpolated) in plan.items():
        if roi_note and interpolated:
            why[short] = (f"lesion too small to measure on the {role} CT, which is interpolated "
                          f"onto the lesion grid ({n_roi} voxels > {border:.1f} mm inside the "
                          "border): its border samples mix in surrounding tissue")
            continue
        arr = sample_volume(vol, dst, interpolation="linear")
        covered = float(np.count_nonzero(np.isfinite(arr) & les)) / n_les
        if covered < float(ccfg["min_phase_coverage"]):
            why[short] = (f"the {role} CT covers only {covered:.0%} of the lesion "
                          f"(< {float(ccfg['min_phase_coverage']):.0%})")
            continue
        hu[short] = arr
        v = arr[roi & np.isfinite(arr)].astype(np.float64)
        if len(v) == 0:
            why[short] = f"the {role} CT does not cover the lesion interior"
            continue
        row[f"ct_{short}_hu_mean"] = float(v.mean())
        row[f"ct_{short}_hu_std"] = float(v.std())
        row[f"ct_{short}_hu_median"] = float(np.median(v))
        if covered < 1.0:
            why[short] = (f"the {role} CT covers {covered:.1%} of the lesion (stats over those "
                          "voxels)")
    notes = [roi_note] if roi_note else []
    if border > float(ccfg["interior_border_mm"]) and not roi_note:
        notes.append(f"interior = voxels > {border:.1f} mm inside the border (one voxel "
                     "diagonal of an interpolated phase)")
    row["ct_hu_reason"] = "; ".join(notes + [why[k] for k in ("nc", "ce") if k in why])

    # ---- enhancement
    if "nc" in hu and "ce" in hu:
        both = roi & np.isfinite(hu["nc"]) & np.isfinite(hu["ce"])
        diff = (hu["ce"] - hu["nc"])[both].astype(np.float64)
        row["enhancement_hu"] = float(diff.mean())
        how = {
            "same_frame_resampled": "phases share a frame of reference",
            "registered_ok": "phases in different frames, rigidly registered: "
                             + frames.alignment.reason,
            "not_needed": "",
        }.get(frames.alignment.status, "")
        row["enhancement_reason"] = "; ".join(x for x in [how] + notes if x)
    else:
        row["enhancement_reason"] = "; ".join(
            [why[s] for s in ("nc", "ce") if s in why]
            + [n for n in frames.notes if "both" in n]) or "enhancement needs both CT phases"

    # ---- peri-lesional ring and CNR
    _cnr(row, mask, ctx, ccfg, cgrid, les, roi, space, hu)

    # ---- necrosis
    _necrosis(row, mask, ctx, ncfg, cgrid, les, roi, space, hu, suv_max, pet_coverage,
              float(fcfg["pet"]["min_coverage"]))
    return row


def _grid_box(grid) -> np.ndarray:
    """LPS bounding box (6,: min x y z, max x y z, mm) of a grid's voxels (outer faces)."""
    n = np.asarray(grid.shape_zyx, dtype=float)
    corners = np.array([[z, y, x] for z in (-0.5, n[0] - 0.5) for y in (-0.5, n[1] - 0.5)
                        for x in (-0.5, n[2] - 0.5)])
    lps = grid.zyx_to_lps(corners)
    return np.concatenate([lps.min(axis=0), lps.max(axis=0)])


def _lesion_boxes(ctx, space: str) -> np.ndarray:
    """(n, 6) LPS boxes of ``ctx.lesions`` expressed in ``space`` (NaN when not mappable).

    Computed once per study and space (kept on ``ctx``), so that excluding the other lesions
    from a ring costs one vectorised comparison per lesion instead of a loop over all of them.
    """
    cache = ctx.__dict__.setdefault("_lesion_boxes_by_space", {})
    if space not in cache:
        frames = ctx.frames
        boxes = np.full((len(ctx.lesions), 6), np.nan)
        for i, other in enumerate(ctx.lesions):
            t, reason = frames.transform(frames.space_of_mask(other), space)
            if not reason and other.voxel_count:
                boxes[i] = _grid_box(grid_through(other.grid.crop(other.bbox_zyx), t))
        cache[space] = boxes
    return cache[space]


def _boxes_meet(boxes: np.ndarray, box: np.ndarray, tol_mm: float = 1e-3) -> np.ndarray:
    """Which of ``boxes`` (n, 6) intersect ``box`` (6,) (NaN rows never do)."""
    if not len(boxes):
        return np.zeros(0, dtype=bool)
    return np.all(boxes[:, :3] <= box[3:] + tol_mm, axis=1) & np.all(
        boxes[:, 3:] >= box[:3] - tol_mm, axis=1)


def _ring(mask: LesionMask, ctx, ccfg: dict, cgrid, les: np.ndarray, space: str,
          ref_hu: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Ring voxels on the crop, the region name and a note."""
    frames = ctx.frames
    sampling = tuple(float(v) for v in cgrid.spacing_xyz_mm[::-1])
    d = ndimage.distance_transform_edt(~les, sampling=sampling)
    gap, width = float(ccfg["ring_gap_mm"]), float(ccfg["ring_width_mm"])
    ring = (d > gap) & (d <= gap + width)
    note = ""
    # organ holding the lesion
    best, best_frac, best_mask = "", 0.0, None
    for name, organ in ctx.organs.items():
        t, reason = frames.transform(frames.space_of_mask(organ), space)
        if reason:
            note = f"organ masks unusable ({reason})"
            continue
        om = mask_on_grid(organ, cgrid, t)
        frac = float(np.count_nonzero(om & les)) / max(int(les.sum()), 1)
        if frac > best_frac:
            best, best_frac, best_mask = name, frac, om
    if best_mask is not None and best_frac >= float(ccfg["ring_organ_min_overlap"]):
        ring &= best_mask
        region = f"organ:{best}"
    else:
        ring &= np.nan_to_num(ref_hu, nan=-np.inf) > float(ccfg["ring_air_hu"])
        region = "body"
    # other lesions: only those whose box meets the crop (boxes computed once per study), so the
    # cost per lesion does not grow with the number of lesions
    near = _boxes_meet(_lesion_boxes(ctx, space), _grid_box(cgrid))
    for i in np.flatnonzero(near):
        other = ctx.lesions[i]
        if other is mask or (other.name == mask.name and other.bbox_zyx == mask.bbox_zyx
                             and other.grid.same_as(mask.grid)):
            continue
        t, reason = frames.transform(frames.space_of_mask(other), space)
        if reason:
            continue
        ring &= ~mask_on_grid(other, cgrid, t)
    return ring, region, note


def _cnr(row: dict, mask, ctx, ccfg: dict, cgrid, les, roi, space, hu: dict) -> None:
    ref = hu.get("nc", hu.get("ce"))
    if ref is None:
        row["noncontrast_cnr_reason"] = "no CT phase usable for this lesion"
        return
    ring, region, note = _ring(mask, ctx, ccfg, cgrid, les, space, ref)
    row["cnr_ring_region"] = region
    if not ctx.lesions:
        note = "; ".join(x for x in (note, ("other lesions unknown to the feature stage: not "
                                            "excluded from the ring")) if x)
    reasons = [note] if note else []
    for short, col in (("nc", "noncontrast_cnr"), ("ce", "contrast_cnr")):
        arr = hu.get(short)
        if arr is None:
            if short == "nc":
                reasons.append("no usable non-contrast CT")
            continue
        r = ring & np.isfinite(arr)
        n = int(r.sum())
        if n < int(ccfg["ring_min_voxels"]):
            if short == "nc":
                reasons.append(f"peri-lesional ring has {n} voxels (< {ccfg['ring_min_voxels']})")
            continue
        rv = arr[r].astype(np.float64)
        lv = arr[roi & np.isfinite(arr)].astype(np.float64)
        sd = float(rv.std())
        if not sd > 0 or len(lv) == 0:
            if short == "nc":
                reasons.append("ring HU has zero spread" if len(lv) else "no lesion voxel")
            continue
        row[col] = abs(float(lv.mean()) - float(rv.mean())) / sd
    row["noncontrast_cnr_reason"] = "; ".join(reasons)


def _necrosis(row: dict, mask, ctx, ncfg: dict, cgrid, les, roi, space, hu: dict,
              suv_max: float | None, pet_coverage, min_coverage: float) -> None:
    size = int(ncfg["smoothing_voxels"])
    crit: list[str] = []
    ct_nec = None
    valid = les.copy()
    nc_s = _masked_median(hu["nc"], les, size) if "nc" in hu else None
    ce_s = _masked_median(hu["ce"], les, size) if "ce" in hu else None
    fmin, fmax = float(ncfg["fluid_min_hu"]), float(ncfg["fluid_max_hu"])
    if nc_s is not None and ce_s is not None:
        ok = np.isfinite(nc_s) & np.isfinite(ce_s)
        enh_low = np.zeros_like(les)
        enh_low[ok] = (ce_s - nc_s)[ok] < float(ncfg["nonenhancing_max_hu"])
        fluid = np.zeros_like(les)
        fluid[ok] = (nc_s[ok] >= fmin) & (nc_s[ok] <= fmax)
        ct_nec = enh_low | fluid
        valid &= ok
        crit.append(f"non-enhancing (< {ncfg['nonenhancing_max_hu']:g} HU) or fluid "
                    f"({fmin:g}..{fmax:g} HU non-contrast)")
    elif nc_s is not None or ce_s is not None:
        arr = nc_s if nc_s is not None else ce_s
        ok = np.isfinite(arr)
        ct_nec = np.zeros_like(les)
        ct_nec[ok] = (arr[ok] >= fmin) & (arr[ok] <= fmax)
        valid &= ok
        crit.append(f"fluid density only ({fmin:g}..{fmax:g} HU on the "
                    f"{'non-contrast' if nc_s is not None else 'contrast'} CT; one phase)")
    cold = None
    pet_note = ""
    if ctx.suv is not None and suv_max is not None and suv_max > 0:
        t, reason = ctx.frames.transform(space, ctx.frames.pet_space or "nc")
        if reason:
            pet_note = f"PET criterion skipped: {reason}"
        else:
            # Only the lesion's own PET voxels (coverage >= min_coverage) can be cold: a CT
            # voxel at the border whose PET voxel is mostly background is not "non-avid".
            if pet_coverage is None:
                from dataclasses import replace

                from pipeline.features.pet import lesion_coverage

                pet_coverage = lesion_coverage(replace(mask, grid=grid_through(mask.grid, t)),
                                               ctx.suv.grid)
            cold = np.zeros_like(les)
            if pet_coverage is not None:
                cbb, cov = pet_coverage
                vals = np.asarray(ctx.suv.array)[tuple(slice(a, b) for a, b in cbb)]
                own = np.where(cov >= min_coverage, vals, np.nan).astype(np.float32)
                suv = sample_volume(Volume(own, ctx.suv.grid.crop(cbb), "SUV", ""),
                                    grid_through(cgrid, t), interpolation="nearest")
                ok = np.isfinite(suv)
                cold[ok] = suv[ok] < float(ncfg["pet_cold_fraction"]) * suv_max
            if ct_nec is None:
                valid = les.copy()
            crit.append(f"PET-cold (a lesion PET voxel with SUV < {ncfg['pet_cold_fraction']:g}"
                        f" x SUVmax {suv_max:.2f})")
    elif ctx.suv is None:
        pet_note = "no PET criterion (no SUV image)"
    n = int(valid.sum())
    if (ct_nec is None and cold is None) or n == 0:
        row["necrosis_reason"] = "; ".join(x for x in (
            "no CT phase or PET usable for necrosis", pet_note) if x)
        return
    frac = lambda m: float(np.count_nonzero(m & valid)) / n
    if ct_nec is not None:
        row["necrosis_fraction_ct"] = frac(ct_nec)
    if cold is not None:
        row["necrosis_fraction_pet"] = frac(cold)
    if ct_nec is not None and cold is not None:
        comb = ncfg["pet_combine"]
        nec = (ct_nec & cold) if comb == "and" else (ct_nec | cold)
        how = f"CT {'and' if comb == 'and' else 'or'} PET: "
    else:
        nec = ct_nec if ct_nec is not None else cold
        how = ""
    row["necrosis_fraction"] = frac(nec)
    row["necrosis_reason"] = how + "; ".join(crit) + (f"; {pet_note}" if pet_note else "") + (
        f"; {size}x{size}x{size} median within the lesion" if size > 1 else "")
    if "nc" in hu and "ce" in hu:
        # viable = interior voxels not necrotic by the CT criterion (enhancement is a CT notion;
        # the coarser PET would leave necrotic border voxels in the viable set)
        viable = valid & roi & ~(ct_nec if ct_nec is not None else nec) & np.isfinite(
            hu["nc"]) & np.isfinite(hu["ce"])
        if viable.any():
            row["enhancement_viable_hu"] = float((hu["ce"] - hu["nc"])[viable].astype(
                np.float64).mean())
