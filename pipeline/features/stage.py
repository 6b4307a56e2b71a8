"""Entry point of the feature stage for one study: prepare once, then one call per lesion.

``study.py`` calls :func:`prepare` once per study and :func:`lesion_columns` once per lesion; the
returned dict becomes part of the lesion's row. Everything per lesion works on the lesion's crop.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pipeline.features.pet import pet_features
from pipeline.features.shape import shape_features
from pipeline.geometry import Grid
from pipeline.records import LesionMask, Volume

log = logging.getLogger(__name__)


@dataclass
class FeatureContext:
    """Images of one study that feature extraction reads (loaded once, never copied per lesion).

    Attributes
    ----------
    ct : dict role -> Volume
        ``"noncontrast"`` and/or ``"contrast"`` CT in HU.
    suv : Volume or None
        PET in SUVbw on the PET grid (None when SUV is unavailable; see ``suv_reason``).
    activity : Volume or None
        PET activity concentration (Bq/mL) on the PET grid.
    suv_reason : str
        Why SUV is unavailable ("" when it is).
    """

    ct: dict[str, Volume] = field(default_factory=dict)
    suv: Volume | None = None
    activity: Volume | None = None
    suv_reason: str = ""
    lesion_grid: Grid | None = None
    organs: dict[str, LesionMask] = field(default_factory=dict)


def prepare(ct: dict[str, Volume], suv: Volume | None, activity: Volume | None,
            suv_reason: str, cfg: dict, *, lesion_grid: Grid | None = None,
            organs: dict[str, LesionMask] | None = None) -> FeatureContext:
    """Build the per-study context (no per-lesion work).

    Parameters
    ----------
    ct : role ("noncontrast" / "contrast") -> CT Volume in HU.
    suv, activity : PET in SUVbw and Bq/mL (None when unavailable; ``suv_reason`` says why).
    lesion_grid : grid of the lesion masks.
    organs : organ masks already on ``lesion_grid`` (from the anatomy stage).
    """
    return FeatureContext(ct=dict(ct), suv=suv, activity=activity, suv_reason=suv_reason,
                          lesion_grid=lesion_grid, organs=dict(organs or {}))


def lesion_columns(mask: LesionMask, ctx: FeatureContext, cfg: dict) -> dict:
    """Feature columns of one lesion (shape on the mask grid, PET on the PET grid)."""
    fcfg = cfg["features"]
    row = asdict(shape_features(mask))
    row.update(asdict(pet_features(
        mask, ctx.suv, activity=ctx.activity, suv_reason=ctx.suv_reason,
        peak_volume_ml=fcfg["pet"]["peak_volume_ml"], min_coverage=fcfg["pet"]["min_coverage"],
    )))
    return row
