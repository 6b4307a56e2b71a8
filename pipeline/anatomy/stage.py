"""Entry point of the anatomy stage for one study: prepare once, then one call per lesion.

``study.py`` calls :func:`prepare` once per study and :func:`lesion_columns` once per lesion.

:func:`prepare` (whole-study work, once):

* organ masks brought onto the lesion grid and mapped to one structure vocabulary
  (:func:`pipeline.anatomy.organs.canonical_organs`: "Lung_L", lobes, ``lung_left`` all become
  ``lung_left``; vertebrae become ``vertebral_column`` ...);
* from the CT on the lesion grid: body mask (table removed), skin surface, and the tissue map
  (bone and gas from HU, lung, vessels with their distance transforms, organ labels; see
  :mod:`pipeline.anatomy.tissue`).

:func:`lesion_columns` (per lesion, crops and lookups only): site and skin depth
(:mod:`pipeline.anatomy.site`), safety measurements (:mod:`pipeline.anatomy.safety`) and the
needle path (:mod:`pipeline.anatomy.access`).

Columns (units in the names; a value that cannot be measured is None with a ``*_reason``):

==================================== =================================================================
organ, organ_reason,                 :func:`pipeline.anatomy.site.site_features`
organ_overlap_fraction, site,
skin_depth_mm, skin_depth_reason,
liver_capsule_distance_mm,
lung_pleura_distance_mm,
anatomy_reason
exophytic_fraction (+ _reason)       liver lesions (:mod:`pipeline.anatomy.safety`)
vessel_distance_mm, vessel_name,     :func:`pipeline.anatomy.safety.vessel_columns`
vessel_caliber_mm,
vessel_contact_angle_deg,
vessel_relation,
intravascular_fraction,
vessel_reason
diaphragm_distance_mm (+ _reason)    lung base distance (mobility)
critical_structure_distance_mm,      nearest of ``anatomy.critical_structures``
critical_structure_name (+ _reason)
target_x_mm/_y_mm/_z_mm,             the needle's target point (:func:`target_point`): SUVpeak
                                     centre, else viable tissue when the centre is necrotic,
                                     else the centroid
target_point_source, target_point_note
safe_path_found, path_length_mm,     :func:`pipeline.anatomy.access.plan_access`
path_length_to_surface_mm,
entry_x_mm/_y_mm/_z_mm,
path_direction_x/_y/_z,
path_angle_from_axial_deg,
aerated_lung_path_mm,
pleura_crossings,
target_organ_entries,
vessel_clearance_mm (+ _reason),
us_window, safe_direction_fraction,
access_reason
fissure_crossings, fissure_lobes,    lung fissures crossed by the planned path when lobe masks are
fissure_reason                       known (:func:`pipeline.anatomy.access.fissure_crossings`)
==================================== =================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy.access import (
    AccessSettings,
    LobeMap,
    empty_access_columns,
    fissure_crossings,
    plan_access,
)
from pipeline.anatomy.body import SkinSurface, body_mask
from pipeline.anatomy.organs import canonical_organs, normalise_name
from pipeline.anatomy.safety import (
    critical_columns,
    diaphragm_distance,
    liver_columns,
    vessel_columns,
)
from pipeline.anatomy.site import lesion_surface, site_features
from pipeline.anatomy.tissue import AIR, TissueMap, build_tissue_map
from pipeline.geometry import Grid, bbox_of, resample
from pipeline.records import LesionMask, Volume

log = logging.getLogger(__name__)

#: Target-point rule used when the configuration has no ``ranking.target_point`` (the same
#: defaults as the ranking, so that the planned path and the ranking's target agree).
DEFAULT_TARGET_POINT = {"sources": ["suv_peak", "viable", "centroid"], "avid_min_suv_max": 2.5}


@dataclass
class AnatomyContext:
    """Whole-study anatomy computed once.

    Attributes
    ----------
    grid : Grid
        The lesion masks' grid (the CT they were drawn on).
    ct : Volume or None
        The CT on ``grid`` used for body/skin (None if no CT shares the lesion grid).
    skin : SkinSurface or None
        Skin surface for depth queries; None with ``skin_reason``.
    organs : dict structure -> LesionMask
        Organ masks on ``grid``, keyed by structure (:func:`canonical_organs`).
    tissue : TissueMap or None
        Bone, gas, lung, vessel flags and organ labels (None with ``tissue_reason``).
    lobes : LobeMap or None
        Lung lobe labels when the organ masks name lobes (TotalSegmentator
        ``lung_upper_lobe_left`` ...), for fissure crossings; None when lobes are unknown.
    notes : list of str
        How the anatomy was built (for provenance / warnings).
    """

    grid: Grid
    ct: Volume | None = None
    skin: SkinSurface | None = None
    skin_reason: str = ""
    organs: dict[str, LesionMask] = field(default_factory=dict)
    tissue: TissueMap | None = None
    tissue_reason: str = ""
    lobes: LobeMap | None = None
    notes: list[str] = field(default_factory=list)


def organs_on_grid(organs: dict[str, LesionMask], grid: Grid) -> dict[str, LesionMask]:
    """Bring organ masks onto the lesion grid once (nearest neighbour), if they differ."""
    out = {}
    for name, m in organs.items():
        if m.grid.same_as(grid):
            out[name] = m
            continue
        full = resample(m.full(), m.grid, grid, interpolation="nearest")
        bb = bbox_of(full)
        if bb is None:
            continue
        crop = full[tuple(slice(b0, b1) for b0, b1 in bb)]
        out[name] = LesionMask(
            name=m.name, source=m.source, grid=grid, bbox_zyx=bb, crop=crop, kind=m.kind,
            source_uid=m.source_uid, referenced_series_uid=m.referenced_series_uid,
            segment_number=m.segment_number, tracking_uid=m.tracking_uid,
        )
        log.info("organ mask %s resampled onto the lesion grid (nearest neighbour)", name)
    return out


def lobe_map(organs: Mapping[str, LesionMask], grid: Grid) -> LobeMap | None:
    """Lung lobe labels from organ masks whose name names a lobe, or None without any.

    A mask is a lobe when its normalised name contains ``lobe`` and ``lung`` or a lobe word
    (``upper``, ``middle``, ``lower``): TotalSegmentator's ``lung_upper_lobe_left`` ...,
    ``RUL``-style names are not guessed. Masks must already be on ``grid``
    (:func:`organs_on_grid`); a voxel claimed by two lobes keeps the first (name order).
    """
    names = sorted(n for n in organs if "lobe" in normalise_name(n) and any(
        w in normalise_name(n) for w in ("lung", "upper", "middle", "lower")))
    if not names:
        return None
    boxes = [organs[n].bbox_zyx for n in names]
    bbox = tuple((min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3))
    labels = np.zeros(tuple(b1 - b0 for b0, b1 in bbox), dtype=np.uint8)
    for k, n in enumerate(names, start=1):
        m = organs[n]
        sl = tuple(slice(b[0] - o[0], b[1] - o[0]) for b, o in zip(m.bbox_zyx, bbox))
        sub = labels[sl]
        sub[(sub == 0) & np.asarray(m.crop, bool)] = k
    return LobeMap(grid=grid, labels=labels, bbox=bbox, names=tuple(names))


def prepare(cts: dict[str, Volume], lesion_grid: Grid, organs: dict[str, LesionMask],
            cfg: dict, *, organ_segment_names: Mapping[int, str] | None = None
            ) -> AnatomyContext:
    """Organ masks, body mask, skin surface and tissue map for one study.

    Parameters
    ----------
    cts : role -> CT Volume (HU); the first one on ``lesion_grid`` is used (the non-contrast
        CT when both phases share the grid, as the study passes it first).
    lesion_grid : grid of the lesion masks.
    organs : organ masks from the study's organ segmentation (any grid, any naming).
    cfg : validated configuration (``anatomy`` section).
    organ_segment_names : SegmentNumber -> structure, optional
        For a SEG organ source: structures decided from the coded segment types
        (:func:`pipeline.anatomy.organs.structures_of_codes`).
    """
    a = cfg["anatomy"]
    on_grid = organs_on_grid(organs, lesion_grid)
    ctx = AnatomyContext(grid=lesion_grid, organs=canonical_organs(
        on_grid, segment_names=organ_segment_names))
    ctx.lobes = lobe_map(on_grid, lesion_grid)
    if ctx.lobes is not None:
        ctx.notes.append(f"lung lobes known ({', '.join(ctx.lobes.names)}): fissure crossings "
                         "of needle paths evaluated")
    ct = next((v for v in cts.values() if v.grid.same_as(lesion_grid)), None)
    if ct is None:
        ctx.skin_reason = "no CT on the lesion mask's grid"
        ctx.tissue_reason = "no CT on the lesion mask's grid"
        return ctx
    ctx.ct = ct
    body = body_mask(ct.array, ct.grid, threshold_hu=a["body_threshold_hu"])
    ctx.skin = SkinSurface.from_body_mask(body, ct.grid)
    acc = a["access"]
    ctx.tissue = build_tissue_map(
        ct.array, ct.grid, body, ctx.organs,
        bone_threshold_hu=a["bone_threshold_hu"], air_threshold_hu=a["air_threshold_hu"],
        vessel_caliber_threshold_mm=a["vessel_caliber_threshold_mm"],
        forbidden_terms=tuple(acc["forbidden_terms"]),
        diaphragm_sigma_mm=a["diaphragm_smoothing_mm"],
        diaphragm_min_cos=a["diaphragm_normal_min_cos"],
    )
    ctx.notes.extend(ctx.tissue.notes)
    if not ctx.organs:
        ctx.notes.append("no organ masks: organ unknown; body, bone and lung from HU only")
    return ctx


def _finite(v) -> bool:
    try:
        return v is not None and np.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _in_lesion(mask: LesionMask, point: np.ndarray) -> bool:
    idx = np.rint(mask.grid.lps_to_zyx(point[None, :])[0]).astype(int) - [
        b[0] for b in mask.bbox_zyx]
    crop = np.asarray(mask.crop, bool)
    return bool(np.all((idx >= 0) & (idx < crop.shape)) and crop[tuple(idx)])


def target_point(mask: LesionMask, features: dict | None, cfg: dict
                 ) -> tuple[np.ndarray, str, str]:
    """The needle's target point: (LPS mm, source, note).

    Same rule as the ranking (``ranking.target_point``): the first usable source among
    ``suv_peak`` (the SUVpeak sphere centre, the most active part on PET, only for an avid
    lesion: ``suv_max >= avid_min_suv_max``, and only if it falls inside the CT lesion mask),
    ``viable`` (when the lesion centre is necrotic, the viable tissue farthest from the lesion
    border and the non-enhancing core: ``viable_target_*_mm`` of
    :func:`pipeline.features.ct.viable_target_point`; never inside the core) and ``centroid``
    (the lesion centroid; for a lesion whose centroid lies outside its own mask, e.g. a C-shaped
    lesion, the lesion voxel nearest to the centroid, with a note). The note says where the
    point is and why when a later source was used.
    """
    f = features or {}
    tp = dict(DEFAULT_TARGET_POINT)
    tp.update((cfg.get("ranking") or {}).get("target_point") or {})
    notes = []
    for src in tp["sources"]:
        if src == "suv_peak":
            xyz = [f.get(f"suv_peak_{ax}_mm") for ax in "xyz"]
            if not all(_finite(v) for v in xyz) or not _finite(f.get("suv_peak")):
                continue
            if not (_finite(f.get("suv_max")) and float(f["suv_max"]) >= tp["avid_min_suv_max"]):
                continue
            p = np.array([float(v) for v in xyz])
            if _in_lesion(mask, p):
                return p, "suv_peak", ""
            notes.append("SUVpeak centre outside the CT lesion mask")
        elif src == "viable":
            xyz = [f.get(f"viable_target_{ax}_mm") for ax in "xyz"]
            if not all(_finite(v) for v in xyz):
                continue
            p = np.array([float(v) for v in xyz])
            if not _in_lesion(mask, p):
                notes.append("viable target point outside the lesion mask")
                continue
            nf = f.get("necrosis_fraction")
            how = f" ({float(nf):.0%} necrotic)" if _finite(nf) else ""
            notes.append(f"lesion centre necrotic{how}: target in the viable tissue farthest "
                         "from the lesion border and the non-enhancing core")
            return p, "viable", "; ".join(notes)
        elif src == "centroid":
            xyz = [f.get(f"centroid_{ax}_mm") for ax in "xyz"]
            if all(_finite(v) for v in xyz):
                p = np.array([float(v) for v in xyz])
            else:
                idx = np.argwhere(np.asarray(mask.crop, bool)).mean(axis=0)
                p = mask.grid.zyx_to_lps((idx + [b[0] for b in mask.bbox_zyx])[None, :])[0]
            if not _in_lesion(mask, p):
                idx = np.argwhere(np.asarray(mask.crop, bool)) + [b[0] for b in mask.bbox_zyx]
                pts = mask.grid.zyx_to_lps(idx)
                p = pts[int(np.argmin(np.linalg.norm(pts - p, axis=1)))]
                notes.append("centroid outside the lesion: nearest lesion voxel")
            return p, "centroid", "; ".join(notes)
    # no usable source in the configuration: the lesion centroid voxel
    idx = np.argwhere(np.asarray(mask.crop, bool))
    c = idx.mean(axis=0)
    p_idx = idx[int(np.argmin(np.linalg.norm(idx - c, axis=1)))] + [b[0] for b in mask.bbox_zyx]
    notes.append("no configured target source usable: lesion voxel nearest the centroid")
    return mask.grid.zyx_to_lps(p_idx[None, :].astype(float))[0], "centroid", "; ".join(notes)


def _shell_air_fraction(mask: LesionMask, tmap: TissueMap) -> float:
    """Fraction of the one-voxel shell around the lesion that is gas (CT)."""
    crop = np.pad(np.asarray(mask.crop, bool), 1)
    shell = ndi.binary_dilation(crop) & ~crop
    idx = np.argwhere(shell) + [b[0] - 1 for b in mask.bbox_zyx]
    rel = idx - [b[0] for b in tmap.bbox]
    ok = np.all((rel >= 0) & (rel < tmap.flags.shape), axis=1)
    if not ok.any():
        return 0.0
    vals = tmap.flags[tuple(rel[ok].T)]
    return float(np.count_nonzero(vals & AIR)) / len(idx)


def lesion_columns(mask: LesionMask, ctx: AnatomyContext, cfg: dict,
                   features: dict | None = None) -> dict:
    """Anatomy columns of one lesion (crop-based; see the module doc for the list).

    ``features`` are the lesion's feature columns (``suv_peak_x_mm`` ..., ``suv_max``,
    ``centroid_x_mm`` ...), used for the target point.
    """
    a = cfg["anatomy"]
    organ_sigma = a["organ_surface_smoothing_voxels"] * float(max(mask.grid.spacing_xyz_mm))
    surf = lesion_surface(mask, smoothing_voxels=a["lesion_surface_smoothing_voxels"])
    site = site_features(
        mask, organs=ctx.organs, skin=ctx.skin,
        node_name_patterns=tuple(a["node_name_patterns"]),
        superficial_depth_mm=a["superficial_depth_mm"],
        organ_min_overlap=a["organ_min_overlap"],
        organ_max_distance_mm=a["organ_max_distance_mm"],
        margin_mm=a["distance_margin_mm"],
        lesion_smoothing_voxels=a["lesion_surface_smoothing_voxels"],
        organ_smoothing_voxels=a["organ_surface_smoothing_voxels"],
        surface=surf, measure_vessels=False,
        body=(ctx.tissue.flags, ctx.tissue.bbox) if ctx.tissue is not None else None,
        skin_smoothing_voxels=a["skin_surface_smoothing_voxels"],
    )
    row = asdict(site)
    if ctx.skin is None and not row.get("skin_depth_reason"):
        row["skin_depth_reason"] = ctx.skin_reason
    # drop the site's vessel reason: the vessel columns below carry their own
    row["anatomy_reason"] = "; ".join(
        r for r in str(row.get("anatomy_reason", "")).split("; ") if r and not r.startswith("vessel"))
    organ = site.organ
    row.update(liver_columns(mask, ctx.organs, organ))
    row.update(vessel_columns(
        mask, surf, ctx.organs, ctx.tissue, margin_mm=a["distance_margin_mm"],
        abut_distance_mm=a["vessel_abut_distance_mm"],
        encasing_angle_deg=a["vessel_encasing_angle_deg"], organ_sigma_mm=organ_sigma))
    d, why = diaphragm_distance(surf, ctx.tissue)
    row["diaphragm_distance_mm"], row["diaphragm_reason"] = d, why
    row.update(critical_columns(
        mask, surf, ctx.organs, critical=tuple(a["critical_structures"]),
        margin_mm=a["distance_margin_mm"], organ_sigma_mm=organ_sigma))

    point, source, note = target_point(mask, features, cfg)
    row.update({"target_x_mm": float(point[0]), "target_y_mm": float(point[1]),
                "target_z_mm": float(point[2]), "target_point_source": source,
                "target_point_note": note})
    if ctx.tissue is None:
        row.update(empty_access_columns())
        row["access_reason"] = f"needle path not planned: {ctx.tissue_reason}"
        row["fissure_reason"] = "no planned needle path"
        return row
    term = organ
    if organ == "unknown":
        term = "lung" if _shell_air_fraction(mask, ctx.tissue) > 0.5 else ""
    acc = plan_access(ctx.tissue, mask, point, target_term=term,
                      settings=AccessSettings.from_config(a["access"]), skin=ctx.skin)
    if organ == "unknown" and term == "lung" and acc.get("access_reason", "") == "":
        acc["access_reason"] = "organ unknown: planned as a lung target (surrounded by gas)"
    row.update(acc)
    row.update(_fissure_columns(mask, ctx, acc, point, a["access"]))
    return row


def _fissure_columns(mask: LesionMask, ctx: AnatomyContext, acc: dict, point: np.ndarray,
                     acfg: dict) -> dict:
    """``fissure_crossings``, ``fissure_lobes``, ``fissure_reason`` of the planned path."""
    if ctx.lobes is None:
        return {"fissure_crossings": None, "fissure_lobes": "",
                "fissure_reason": "lung lobes not segmented: fissure crossings not evaluated"}
    if not acc.get("safe_path_found"):
        return {"fissure_crossings": None, "fissure_lobes": "",
                "fissure_reason": "no planned needle path"}
    entry = np.array([acc[f"entry_{ax}_mm"] for ax in "xyz"], dtype=float)
    n, seq = fissure_crossings(ctx.lobes, mask, entry, point,
                               max_gap_mm=float(acfg.get("fissure_max_gap_mm", 5.0)))
    return {"fissure_crossings": int(n), "fissure_lobes": " > ".join(seq), "fissure_reason": ""}
