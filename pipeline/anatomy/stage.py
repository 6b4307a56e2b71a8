"""Entry point of the anatomy stage for one study: prepare once, then one call per lesion.

``study.py`` calls :func:`prepare` once per study (body mask and skin surface from the CT the
lesions were drawn on; organ masks brought onto the lesion grid) and :func:`lesion_columns` once
per lesion (crop-based site, depth and distances).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pipeline.anatomy.body import SkinSurface, body_mask
from pipeline.anatomy.site import site_features
from pipeline.geometry import Grid, bbox_of, resample
from pipeline.records import LesionMask, Volume

log = logging.getLogger(__name__)


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
    organs : dict name -> LesionMask
        Organ masks on ``grid``.
    """

    grid: Grid
    ct: Volume | None = None
    skin: SkinSurface | None = None
    skin_reason: str = ""
    organs: dict[str, LesionMask] = field(default_factory=dict)


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


def prepare(cts: dict[str, Volume], lesion_grid: Grid, organs: dict[str, LesionMask],
            cfg: dict) -> AnatomyContext:
    """Body mask, skin surface and organ masks for one study.

    Parameters
    ----------
    cts : role -> CT Volume (HU); the first one on ``lesion_grid`` is used for the body.
    lesion_grid : grid of the lesion masks.
    organs : organ masks from the study's organ segmentation (any grid).
    """
    ctx = AnatomyContext(grid=lesion_grid, organs=organs_on_grid(organs, lesion_grid))
    ct = next((v for v in cts.values() if v.grid.same_as(lesion_grid)), None)
    if ct is None:
        ctx.skin_reason = "no CT on the lesion mask's grid"
        return ctx
    ctx.ct = ct
    body = body_mask(ct.array, ct.grid, threshold_hu=cfg["anatomy"]["body_threshold_hu"])
    ctx.skin = SkinSurface.from_body_mask(body, ct.grid)
    return ctx


def lesion_columns(mask: LesionMask, ctx: AnatomyContext, cfg: dict,
                   features: dict | None = None) -> dict:
    """Anatomy columns of one lesion (crop-based).

    ``features`` are the lesion's feature columns (e.g. the SUVpeak centre, a candidate target
    point), available to the anatomy stage.
    """
    a = cfg["anatomy"]
    site = site_features(
        mask, organs=ctx.organs, skin=ctx.skin,
        node_name_patterns=tuple(a["node_name_patterns"]),
        superficial_depth_mm=a["superficial_depth_mm"],
        organ_min_overlap=a["organ_min_overlap"],
        organ_max_distance_mm=a["organ_max_distance_mm"],
        vessel_names=tuple(a["vessel_names"]),
        margin_mm=a["distance_margin_mm"],
    )
    row = asdict(site)
    if ctx.skin is None and not row.get("skin_depth_reason"):
        row["skin_depth_reason"] = ctx.skin_reason
    return row
