"""Entry point of the feature stage for one study: prepare once, then one call per lesion.

``study.py`` calls :func:`prepare` once per study and :func:`lesion_columns` once per lesion; the
returned dict becomes part of the lesion's row. Everything per lesion works on the lesion's crop.

Once per study (:func:`prepare`): the spaces of the images and the CT phase alignment (resampling
in a shared frame of reference, else one rigid registration with a quality check,
:mod:`pipeline.features.registration`), the PERCIST liver reference sphere
(:func:`pipeline.features.pet.liver_reference`), the SUL factor and the pyradiomics extractors.

Per lesion (:func:`lesion_columns`): shape on the mask grid; PET on the PET grid
(:func:`pipeline.features.pet.pet_columns`), with the lesion expressed in the PET's frame; CT on
a crop of the lesion grid (:func:`pipeline.features.ct.ct_columns`); radiomics
(:class:`pipeline.features.radiomics.RadiomicsRunner`). Wall time of each part accumulates in
``FeatureContext.timings_s``.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import asdict, dataclass, field, replace

from pipeline.features.ct import ct_columns
from pipeline.features.pet import (
    AUTO_SUPERSAMPLE_MAX_VOXELS,
    lesion_coverage,
    liver_reference,
    pet_columns,
    sul_per_suvbw,
)
from pipeline.features.registration import (
    PhaseAlignment,
    StudyFrames,
    grid_through,
    study_frames,
)
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
    lesion_grid : Grid or None
        Grid of the lesion masks.
    organs : dict name -> LesionMask
        Organ masks (on the lesion grid).
    lesions : list of LesionMask
        Every lesion of the study (kept out of peri-lesional rings and the liver reference).
    frames : StudyFrames
        Spaces of the images and the phase alignment.
    sul_ratio : float or None
        SUL / SUVbw (lean body mass / weight); ``sul_reason`` says why None.
    liver_ref : dict
        The study's liver reference (:func:`pipeline.features.pet.liver_reference`).
    radiomics : RadiomicsRunner or None
        None when ``features.radiomics.enabled`` is false or the extractors cannot be built
        (``radiomics_reason`` says why).
    timings_s : dict
        Accumulated wall time (s) of ``prepare``, ``registration``, ``liver_reference``,
        ``shape``, ``pet``, ``ct`` and ``radiomics``; ``n_lesions``.
    """

    ct: dict[str, Volume] = field(default_factory=dict)
    suv: Volume | None = None
    activity: Volume | None = None
    suv_reason: str = ""
    lesion_grid: Grid | None = None
    organs: dict[str, LesionMask] = field(default_factory=dict)
    lesions: list[LesionMask] = field(default_factory=list)
    frames: StudyFrames = field(default_factory=lambda: StudyFrames(PhaseAlignment("not_needed")))
    sul_ratio: float | None = None
    sul_reason: str = ""
    liver_ref: dict = field(default_factory=dict)
    radiomics: object | None = None
    radiomics_reason: str = ""
    timings_s: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        """What the feature stage decided for the study (for ``provenance.json``)."""
        out = {"registration": self.frames.alignment.as_dict(), "frame_notes": self.frames.notes,
               "liver_reference": self.liver_ref, "sul_reason": self.sul_reason,
               "radiomics": (self.radiomics.provenance() if self.radiomics is not None
                             else {"disabled_or_failed": self.radiomics_reason}),
               "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}
        return out


def _tick(ctx: FeatureContext, key: str, t0: float) -> float:
    t1 = time.perf_counter()
    ctx.timings_s[key] = ctx.timings_s.get(key, 0.0) + (t1 - t0)
    return t1


def _find_liver(organs: dict[str, LesionMask], patterns: list[str]) -> LesionMask | None:
    for pat in patterns:
        for name, m in organs.items():
            if fnmatch.fnmatch(name.lower(), pat.lower()):
                return m
    return None


def prepare(ct: dict[str, Volume], suv: Volume | None, activity: Volume | None,
            suv_reason: str, cfg: dict, *, lesion_grid: Grid | None = None,
            organs: dict[str, LesionMask] | None = None,
            lesions: list[LesionMask] | None = None, suv_audit=None) -> FeatureContext:
    """Build the per-study context (no per-lesion work).

    Parameters
    ----------
    ct : role ("noncontrast" / "contrast") -> CT Volume in HU (``frame_of_reference_uid`` set
        from the DICOM headers decides between resampling and registration).
    suv, activity : PET in SUVbw and Bq/mL (None when unavailable; ``suv_reason`` says why).
    cfg : the validated configuration.
    lesion_grid : grid of the lesion masks.
    organs : organ masks already on ``lesion_grid`` (from the anatomy stage).
    lesions : every lesion mask of the study (optional; without them the peri-lesional rings
        and the liver reference sphere cannot avoid the other lesions, which is noted).
    suv_audit : :class:`pipeline.io.suv.SUVAudit` of the PET (optional; gives SUL).
    """
    t0 = time.perf_counter()
    fcfg = cfg["features"]
    ctx = FeatureContext(ct=dict(ct), suv=suv, activity=activity, suv_reason=suv_reason,
                         lesion_grid=lesion_grid, organs=dict(organs or {}),
                         lesions=list(lesions or []))
    same = None
    nc, ce = ctx.ct.get("noncontrast"), ctx.ct.get("contrast")
    if nc is not None and ce is not None and (nc is ce or (
            nc.series_uid and nc.series_uid == ce.series_uid)):
        # one series named for both phases: a single CT, no enhancement can be measured
        same = "one CT series is named as both the non-contrast and the contrast phase"
        ctx.ct = {"noncontrast": nc}
    pet_ref = suv if suv is not None else activity
    t = time.perf_counter()
    ctx.frames = study_frames(ctx.ct, pet_ref, fcfg["registration"])
    if same:
        ctx.frames.alignment.reason = same
        ctx.frames.notes.append(same + ": treated as the non-contrast CT, no enhancement")
    t = _tick(ctx, "registration", t)
    ctx.sul_ratio, ctx.sul_reason = sul_per_suvbw(suv_audit)

    # liver reference (PERCIST)
    lcfg = fcfg["pet"]["liver_reference"]
    liver = _find_liver(ctx.organs, lcfg["organ_names"])
    if suv is None:
        ctx.liver_ref = {"liver_reference_reason": suv_reason or "no SUV image"}
    elif liver is None:
        ctx.liver_ref = {"liver_reference_reason": "no liver mask among the organ masks "
                                                   f"({sorted(ctx.organs) or 'none'})"}
    else:
        lspace = ctx.frames.space_of_mask(liver)
        to_pet, why = ctx.frames.transform(lspace, ctx.frames.pet_space or "nc")
        if why:
            ctx.liver_ref = {"liver_reference_reason": f"liver mask not mappable to the PET: {why}"}
        else:
            ltx = [ctx.frames.transform(ctx.frames.space_of_mask(m), lspace)[0]
                   for m in ctx.lesions]
            ctx.liver_ref = liver_reference(
                liver, suv, ctx.lesions, diameter_mm=lcfg["diameter_mm"],
                clearance_mm=lcfg["clearance_mm"], to_pet=to_pet, lesion_transforms=ltx)
            if not ctx.lesions:
                ctx.liver_ref["liver_reference_reason"] = "; ".join(x for x in (
                    ctx.liver_ref.get("liver_reference_reason", ""),
                    ("lesion masks not handed to the feature stage: the sphere may touch a "
                     "lesion")) if x)
    t = _tick(ctx, "liver_reference", t)

    # radiomics extractors
    rcfg = fcfg["radiomics"]
    if rcfg["enabled"]:
        from pipeline.features.radiomics import RadiomicsRunner

        try:
            ctx.radiomics = RadiomicsRunner(rcfg)
        except Exception as exc:  # noqa: BLE001 - a bad parameter file must not stop the study
            ctx.radiomics_reason = f"radiomics extractors could not be built: {exc}"
            log.error(ctx.radiomics_reason)
    else:
        ctx.radiomics_reason = "radiomics disabled (features.radiomics.enabled: false)"
    _tick(ctx, "radiomics_setup", t)
    _tick(ctx, "prepare", t0)
    log.info("feature stage prepared: registration %s; liver reference %s",
             ctx.frames.alignment.status, ctx.liver_ref.get("liver_reference_suv_mean"))
    return ctx


def lesion_columns(mask: LesionMask, ctx: FeatureContext, cfg: dict) -> dict:
    """Feature columns of one lesion (shape on the mask grid, PET on the PET grid, CT on crops).

    Returns
    -------
    dict
        Shape columns (:class:`pipeline.records.ShapeFeatures`), PET columns
        (:func:`pipeline.features.pet.pet_columns`), CT columns
        (:func:`pipeline.features.ct.ct_columns`), ``ct_*`` / ``pet_*`` radiomics and
        ``radiomics_reason``.
    """
    fcfg = cfg["features"]
    t = time.perf_counter()
    row = asdict(shape_features(mask))
    t = _tick(ctx, "shape", t)

    # ---- PET: the lesion expressed in the PET's frame (no resampling of the mask)
    frames = ctx.frames
    pet_mask, coverage, pet_reason = None, None, ctx.suv_reason
    pet_grid_vol = ctx.suv if ctx.suv is not None else ctx.activity
    if pet_grid_vol is not None:
        to_pet, why = frames.transform(frames.space_of_mask(mask), frames.pet_space or "nc")
        if why:
            pet_reason = f"lesion not mappable to the PET: {why}"
        else:
            pet_mask = mask if to_pet is None else replace(mask, grid=grid_through(mask.grid,
                                                                                   to_pet))
            if ctx.suv is not None:
                ss = 3 if mask.voxel_count <= AUTO_SUPERSAMPLE_MAX_VOXELS else 2
                coverage = lesion_coverage(pet_mask, ctx.suv.grid, supersample=ss)
    if pet_mask is None:
        prow = pet_columns(mask, None, activity=None, suv_reason=pet_reason, pcfg=fcfg["pet"])
    else:
        prow = pet_columns(pet_mask, ctx.suv, activity=ctx.activity, suv_reason=ctx.suv_reason,
                           pcfg=fcfg["pet"], coverage=coverage, sul_ratio=ctx.sul_ratio,
                           sul_reason=ctx.sul_reason, liver_ref=ctx.liver_ref)
    row.update(prow)
    t = _tick(ctx, "pet", t)

    # ---- CT
    row.update(ct_columns(mask, ctx, cfg, suv_max=prow.get("suv_max"), pet_coverage=coverage))
    t = _tick(ctx, "ct", t)

    # ---- radiomics
    if ctx.radiomics is not None:
        row.update(ctx.radiomics.lesion_columns(mask, ctx, cfg, pet_mask=pet_mask,
                                                pet_coverage=coverage))
    else:
        row["radiomics_reason"] = ctx.radiomics_reason
    _tick(ctx, "radiomics", t)
    ctx.timings_s["n_lesions"] = ctx.timings_s.get("n_lesions", 0) + 1
    return row
