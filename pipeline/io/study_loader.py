"""Loading one study: the one place that turns a study-sheet row into volumes and masks.

Used by the study job (:func:`pipeline.study.run_study`) and by ``hitit suv``
(:mod:`pipeline.io.suv_cli`), so that both read the same series with the same rules:

* :class:`StudyInputs`: the series paths of one study (study-sheet row + the index's file table).
* :func:`load_images`: every image series once -> :class:`StudyImages` (CT volumes by role and by
  SeriesInstanceUID, PET in stored units, Bq/mL and SUVbw, the SUV audit, the grids).
  ``index.on_irregular`` of the configuration decides what happens to irregular slice spacing.
* :func:`read_masks`: the one mask dispatcher (DICOM SEG, RTSTRUCT, NIfTI / NRRD label map,
  TotalSegmentator folder), always with the configured ``index.lesion_name_patterns`` and
  ``index.organ_name_patterns``; :func:`read_mask_file` is the same dispatcher for a file given
  by path (``hitit suv --mask``).
* :func:`load_study_masks`: the study's lesion masks (a declared lesion segment / ROI without
  any voxel is kept as an empty mask: the study job writes its row with ``lesion_empty`` true)
  and its non-empty organ masks (:class:`StudyMasks`).

Errors: a missing or unusable CT or lesion mask raises (the study cannot do without them); an
unusable PET or organ mask becomes a warning and an empty value with its reason.

Frames and units: volumes and masks live on :class:`~pipeline.geometry.Grid` objects in LPS mm
with index order (z, y, x); CT in HU, PET in its stored units, Bq/mL or SUVbw (g/mL).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError, SegmentationError
from pipeline.geometry import Grid
from pipeline.records import LesionMask, SegmentKind, Volume

log = logging.getLogger(__name__)

#: Mask sources of the study sheet (``lesion_mask_source`` / ``organ_mask_source``).
MASK_SOURCES = ("seg", "rtstruct", "labelmap", "totalseg")

#: Study-sheet columns of the CT series and the role each one plays.
CT_ROLES = (("ct_series_uid", "noncontrast"), ("ce_ct_series_uid", "contrast"))


def lesion_ids(labels: Iterable[str]) -> list[str]:
    """Stable, readable lesion identifiers from lesion labels (order-independent for unique labels).

    Lowercase ASCII slug of the label; a label that occurs more than once gets ``-2``, ``-3`` ...
    in input order (SEG segment number / ROI number order).
    """
    out, seen = [], {}
    for label in labels:
        slug = re.sub(r"[^a-z0-9]+", "_", str(label).lower()).strip("_") or "lesion"
        n = seen.get(slug, 0) + 1
        seen[slug] = n
        out.append(slug if n == 1 else f"{slug}-{n}")
    return out


@dataclass(frozen=True, eq=False)
class StudyInputs:
    """Paths of the series of one study, from the study sheet and the index.

    Attributes
    ----------
    row : mapping
        One row of the study sheet (``cohort/studies.csv``): series UIDs by role, mask sources.
    files : pandas.DataFrame
        The index's file table (``path`` relative to ``root``, ``series_uid``,
        ``sop_instance_uid`` ...).
    root : Path
        Root of the archive.
    """

    row: Mapping
    files: pd.DataFrame
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def _rows(self, series_uid: str) -> pd.DataFrame:
        return self.files[self.files["series_uid"] == series_uid]

    def paths(self, series_uid: str) -> list[Path]:
        """Absolute paths of the files of one series, in file-table order."""
        return [self.root / p for p in self._rows(series_uid)["path"].tolist()]

    def sop_uids(self, series_uid: str) -> list[str]:
        """SOPInstanceUIDs of one series (empty ones left out)."""
        return [u for u in self._rows(series_uid)["sop_instance_uid"].tolist() if u]

    def uid(self, key: str) -> str:
        """A study-sheet value as text ("" for missing / NaN)."""
        v = self.row.get(key)
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


@dataclass(frozen=True, eq=False)
class StudyImages:
    """The image series of one study, each loaded once.

    Attributes
    ----------
    ct_by_role : dict role -> Volume
        ``noncontrast`` / ``contrast`` CT in HU (the same Volume object when one series plays
        both roles).
    ct_by_series_uid : dict SeriesInstanceUID -> Volume
        Every loaded CT once.
    pet_stored : Volume or None
        PET in its stored units (after rescale slope / intercept), as read.
    pet_activity_bqml : Volume or None
        PET activity concentration in Bq/mL (None when the units do not allow it).
    pet_suv : Volume or None
        PET in SUVbw (g/mL), or an SUV of another kind exactly as stored (its ``units`` say
        which: ``SUVlbm`` / ``SUVibw`` / ``SUVbsa``); None when SUV is unavailable or was refused
        by a plausibility limit (``suv_reason`` says why).
    suv_audit : SUVAudit or None
        How the SUV factor was derived (:func:`pipeline.io.suv.suv_audit`); None without PET.
    suv_reason : str
        Why there is no SUV ("" when there is).
    grids_by_series_uid : dict SeriesInstanceUID -> Grid
        Grids of every loaded series (CTs, then the PET), the targets of the masks.
    warnings : tuple of str
        Resampled / duplicate / replaced slices, SUV warnings, unusable PET.
    used_series : dict
        Study-sheet key -> SeriesInstanceUID of every series actually loaded.
    """

    ct_by_role: dict[str, Volume]
    ct_by_series_uid: dict[str, Volume]
    pet_stored: Volume | None
    pet_activity_bqml: Volume | None
    pet_suv: Volume | None
    suv_audit: object | None
    suv_reason: str
    grids_by_series_uid: dict[str, Grid]
    warnings: tuple[str, ...] = ()
    used_series: dict[str, str] = field(default_factory=dict)


def _ct_warnings(uid: str, vol: Volume) -> list[str]:
    return [f"CT {uid}: {n}" for n in vol.notes
            if n.startswith("RESAMPLED") or "duplicate" in n or "replaced by" in n]


def load_images(inputs: StudyInputs, cfg: dict, *, pet_required: bool = False) -> StudyImages:
    """Load the study's CT(s) and PET once, with the PET's SUV audit.

    Parameters
    ----------
    inputs : StudyInputs
        Series UIDs by role (``ct_series_uid``, ``ce_ct_series_uid``, ``pet_series_uid``).
    cfg : dict
        Validated configuration (``index.on_irregular``).
    pet_required : bool
        Raise when the PET cannot be loaded (``hitit suv``); default: the study goes on without
        PET and ``suv_reason`` says why.

    Returns
    -------
    StudyImages

    Raises
    ------
    PipelineError
        A CT cannot be loaded (:class:`~pipeline.errors.DicomReadError` ...), or the PET when
        ``pet_required``.
    """
    from pipeline.io import dicom, suv

    on_irregular = cfg["index"]["on_irregular"]
    warnings: list[str] = []
    used: dict[str, str] = {}
    cts: dict[str, Volume] = {}
    by_uid: dict[str, Volume] = {}
    for key, role in CT_ROLES:
        uid = inputs.uid(key)
        if not uid:
            continue
        if uid not in by_uid:
            by_uid[uid] = dicom.load_ct(inputs.paths(uid), series_uid=uid,
                                        on_irregular=on_irregular)
            warnings.extend(_ct_warnings(uid, by_uid[uid]))
        cts[role] = by_uid[uid]
        used[key] = uid
    grids: dict[str, Grid] = {uid: v.grid for uid, v in by_uid.items()}
    raw = activity = suv_vol = audit = None
    suv_reason = ""
    pet_uid = inputs.uid("pet_series_uid")
    if pet_uid:
        try:
            raw, headers = dicom.load_pet_activity(inputs.paths(pet_uid), series_uid=pet_uid,
                                                   on_irregular=on_irregular)
            used["pet_series_uid"] = pet_uid
            grids[pet_uid] = raw.grid
            limits = suv.SUVPlausibility.from_config(cfg)
            audit = suv.suv_audit(headers, file_hint=str(inputs.paths(pet_uid)[0]), strict=False,
                                  limits=limits)
            warnings.extend(f"SUV: {w}" for w in audit.warnings)
            # Bq/mL only when the units allow it (None for GML, CM2ML, CNTS without factor)
            activity = suv.to_activity_bqml(raw, audit)
            if audit.suv_is_bw:
                suv_vol = suv.to_suv(raw, audit)
                audit, refusal = suv.check_suv_bound(suv_vol, audit, limits)
                if refusal is not None:  # a physically impossible SUVmax: no rule sees it
                    suv_vol = None
            elif audit.stored_suv_available:  # SUVlbm/ibw/bsa as stored, never compared to SUVbw
                suv_vol = suv.to_suv(raw, audit, kind="stored")
                suv_reason = audit.suv_reason
            if suv_vol is None:
                suv_reason = f"SUV unavailable: {audit.suv_reason}"
                warnings.append(suv_reason)
        except PipelineError as exc:
            if pet_required:
                raise
            suv_reason = f"PET unusable: {exc}"
            warnings.append(suv_reason)
    else:
        suv_reason = "no PET series in this study"
    return StudyImages(ct_by_role=cts, ct_by_series_uid=by_uid, pet_stored=raw,
                       pet_activity_bqml=activity, pet_suv=suv_vol, suv_audit=audit,
                       suv_reason=suv_reason, grids_by_series_uid=grids,
                       warnings=tuple(warnings), used_series=used)


# --------------------------------------------------------------------------- masks
def name_patterns(cfg: dict) -> dict[str, tuple[str, ...]]:
    """The configured segment-name patterns, as keyword arguments of the SEG / RTSTRUCT readers."""
    return dict(lesion_name_patterns=tuple(cfg["index"]["lesion_name_patterns"]),
                organ_name_patterns=tuple(cfg["index"]["organ_name_patterns"]))


def mask_source_of(path: Path) -> str:
    """Which reader a mask file needs: ``labelmap``, ``totalseg``, ``seg`` or ``rtstruct``.

    Decided from content: NIfTI / NRRD by name, a TotalSegmentator folder by its file names,
    DICOM by Modality (0008,0060).

    Raises
    ------
    SegmentationError
        Unreadable file, or a DICOM object that is neither SEG nor RTSTRUCT.
    """
    import pydicom

    from pipeline.io import labelmap
    from pipeline.io.totalseg import is_totalseg_folder

    path = Path(path)
    if labelmap.is_labelmap(path):
        return "labelmap"
    if path.is_dir() and is_totalseg_folder(path):
        return "totalseg"
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise SegmentationError(f"cannot read the mask: {type(exc).__name__}: {exc}", file=path,
                                hint="give a DICOM SEG, an RTSTRUCT or a NIfTI / NRRD label "
                                "map") from exc
    modality = str(ds.get("Modality", ""))
    if modality in ("SEG", "RTSTRUCT"):
        return modality.lower()
    raise SegmentationError(f"unsupported mask file (Modality {modality or 'none'})", file=path,
                            tag="Modality (0008,0060)",
                            hint="give a DICOM SEG, an RTSTRUCT or a NIfTI / NRRD label map")


def read_mask_file(
    source: str,
    path: Path,
    grids: Mapping[str, Grid],
    cfg: dict,
    *,
    sop_uids_of=None,
    own_grid_when_unloaded: bool = False,
    mask_ref: str = "",
    warnings: list[str] | None = None,
    keep_empty_lesions: bool = False,
) -> list[LesionMask]:
    """Read one segmentation object onto the grid of the series it was drawn on.

    The one mask dispatcher (SEG, RTSTRUCT, label map, TotalSegmentator folder), always with the
    configured name patterns.

    Parameters
    ----------
    source : str
        One of :data:`MASK_SOURCES`.
    path : Path
        The SEG / RTSTRUCT file, the label map, or the TotalSegmentator folder.
    grids : mapping SeriesInstanceUID -> Grid
        Grids of the loaded image series, in load order (CTs first).
    cfg : dict
        Validated configuration (``index.lesion_name_patterns`` / ``organ_name_patterns``).
    sop_uids_of : callable, optional
        SeriesInstanceUID -> SOPInstanceUIDs of that series, to check an RTSTRUCT's contour
        references.
    own_grid_when_unloaded : bool
        When the referenced series is not loaded, read the mask on its own grid (the SEG's frame
        grid, the RTSTRUCT's contour planes at 1 mm, the label map's grid, each TotalSegmentator
        file's grid) instead of raising. ``hitit suv`` maps such masks to the PET by coverage.
    mask_ref : str
        The study sheet's reference (for ``source_uid`` of TotalSegmentator masks; default the
        folder name).
    warnings : list of str, optional
        Appended with the reader's warnings (e.g. an RTSTRUCT on a partly present series: the
        counts of absent instances and of skipped / rasterized contours).
    keep_empty_lesions : bool
        SEG / RTSTRUCT: keep a declared lesion (or unknown-kind) segment / ROI without any voxel
        as an empty mask (:func:`pipeline.io.seg.empty_mask`); label maps and TotalSegmentator
        folders declare no segment apart from its voxels.

    Returns
    -------
    list of LesionMask
        Every non-empty segment, lesions and organs (``kind``), on a grid of ``grids`` or (see
        ``own_grid_when_unloaded``) on its own; and the empty lesion segments with
        ``keep_empty_lesions``.

    Raises
    ------
    SegmentationError
        Unknown source, unreadable object, or a referenced series that is not loaded.
    """
    import pydicom

    from pipeline.io import labelmap, rtstruct, seg
    from pipeline.io.totalseg import read_totalseg_folder

    path = Path(path)
    pats = name_patterns(cfg)
    if source == "seg":
        if own_grid_when_unloaded:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            refs = seg.referenced_series_uids(ds)
            if not any(r in grids for r in refs):
                native = seg.seg_native_grid(path)
                return seg.read_seg(path, grids={(refs[0] if refs else "native"): native}, **pats)
        return seg.read_seg(path, grids=grids, warnings=warnings,
                            keep_empty_lesions=keep_empty_lesions, **pats)
    if source == "rtstruct":
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        refs, _ = rtstruct.rtstruct_references(ds)
        ref_uid = next((u for u in refs if u in grids), None)
        if ref_uid is None and own_grid_when_unloaded:
            native = rtstruct.rtstruct_native_grid(pydicom.dcmread(str(path)))
            return rtstruct.read_rtstruct(path, grid=native, series_uid=refs[0] if refs else "",
                                          **pats)
        if ref_uid is None:
            raise SegmentationError(
                f"RTSTRUCT refers to series {refs or '(none)'}, none of which is a loaded image "
                "series of this study",
                file=path, series_uid=str(ds.get("SeriesInstanceUID", "")),
                tag="RTReferencedSeriesSequence (3006,0014)",
                hint="add the referenced CT to the archive or fix the study sheet",
            )
        sops = sop_uids_of(ref_uid) if sop_uids_of is not None else None
        return rtstruct.read_rtstruct(path, grid=grids[ref_uid], series_uid=ref_uid,
                                      sop_instance_uids=sops, warnings=warnings,
                                      keep_empty_lesions=keep_empty_lesions, **pats)
    if source == "labelmap":
        if own_grid_when_unloaded and not labelmap.sidecar_path(path).exists():
            names, kind, ref_uid = {}, SegmentKind.UNKNOWN, ""
        else:
            side = labelmap.read_sidecar(path)
            names, kind = side["names"], SegmentKind(side["kind"])
            ref_uid = str(side.get("referenced_series_uid", ""))
        if ref_uid in grids:
            target = grids[ref_uid]
        elif own_grid_when_unloaded:
            own = labelmap.labelmap_grid(path)
            target = next((g for g in grids.values() if own.same_as(g)), own)
        else:
            raise SegmentationError(
                f"label map refers to series {ref_uid or '(none)'} which is not loaded for this "
                "study", file=path,
                hint="set referenced_series_uid in the JSON sidecar to the CT it was drawn on",
            )
        return labelmap.read_labelmap(path, grid=target, names=names, kind=kind,
                                      referenced_series_uid=ref_uid)
    if source == "totalseg":
        grid = None if own_grid_when_unloaded else next(iter(grids.values()), None)
        return list(read_totalseg_folder(path, grid=grid, source_uid=mask_ref).values())
    raise SegmentationError(f"unknown mask source {source!r}", file=path,
                            hint=f"use one of {', '.join(MASK_SOURCES)}")


def read_masks(inputs: StudyInputs, source: str, ref: str, grids: Mapping[str, Grid],
               cfg: dict, *, warnings: list[str] | None = None,
               keep_empty_lesions: bool = False) -> list[LesionMask]:
    """Read the segmentation object a study-sheet row names onto its referenced grid.

    Parameters
    ----------
    inputs : StudyInputs
    source : str
        ``seg`` / ``rtstruct`` (``ref`` is the SeriesInstanceUID of the object), ``labelmap`` /
        ``totalseg`` (``ref`` is a path relative to the archive root).
    ref : str
    grids : mapping SeriesInstanceUID -> Grid
        :attr:`StudyImages.grids_by_series_uid`.
    cfg : dict
        Validated configuration (name patterns).
    warnings : list of str, optional
        Appended with the reader's warnings (see :func:`read_mask_file`).
    keep_empty_lesions : bool
        See :func:`read_mask_file`.

    Returns
    -------
    list of LesionMask (see :func:`read_mask_file`).

    Raises
    ------
    SegmentationError
        No files for the object, unknown source, or its referenced series is not loaded.
    """
    if source in ("seg", "rtstruct"):
        paths = inputs.paths(ref)
        if not paths:
            raise SegmentationError(
                f"{source.upper()} series listed in the study sheet has no files", series_uid=ref,
                hint="re-run the index step or fix the study sheet's mask reference")
        path = paths[0]
    elif source in ("labelmap", "totalseg"):
        path = inputs.root / ref
    else:
        raise SegmentationError(f"unknown mask source {source!r} in the study sheet",
                                hint=f"use one of {', '.join(MASK_SOURCES)}")
    return read_mask_file(source, path, grids, cfg, sop_uids_of=inputs.sop_uids, mask_ref=ref,
                          warnings=warnings, keep_empty_lesions=keep_empty_lesions)


def mask_grid_series_uid(mask: LesionMask, grids: Mapping[str, Grid]) -> str:
    """SeriesInstanceUID of the loaded image series whose grid ``mask`` lies on ("" if none).

    The mask's ``referenced_series_uid`` when that series is loaded on the mask's grid, else the
    first loaded series with the same grid (CTs come first).
    """
    ref = mask.referenced_series_uid
    if ref in grids and grids[ref].same_as(mask.grid):
        return ref
    return next((u for u, g in grids.items() if g.same_as(mask.grid)), "")


@dataclass(frozen=True, eq=False)
class StudyMasks:
    """The masks of one study, on the grids of its loaded series.

    Attributes
    ----------
    lesions : tuple of LesionMask
        Lesion (and unknown-kind) segments, in reading order, the empty ones included
        (``voxel_count`` 0, :func:`pipeline.io.seg.is_empty_mask`; see :attr:`nonempty`).
    lesion_grid_series_uids : tuple of str
        Per lesion, the SeriesInstanceUID of the image series whose grid it lies on
        (:func:`mask_grid_series_uid`).
    organs : dict name -> LesionMask
        Non-empty organ segments of the organ mask source (empty when none or unusable).
    organ_segment_codes : dict SegmentNumber -> SegmentCode, or None
        The SEG codes when the organ source is a DICOM SEG (map them with
        :func:`pipeline.anatomy.organs.structures_of_codes`).
    warnings : tuple of str
    used_series : dict
        ``lesion_mask`` / ``organ_mask`` -> the study sheet's reference.
    """

    lesions: tuple[LesionMask, ...]
    lesion_grid_series_uids: tuple[str, ...]
    organs: dict[str, LesionMask]
    organ_segment_codes: dict | None = None
    warnings: tuple[str, ...] = ()
    used_series: dict[str, str] = field(default_factory=dict)

    @property
    def nonempty(self) -> tuple[LesionMask, ...]:
        """The lesion masks that hold at least one voxel, in reading order."""
        return tuple(m for m in self.lesions if m.voxel_count > 0)


#: The reason every feature of an empty lesion segment gives.
EMPTY_SEGMENT_REASON = "segment is empty (no voxel)"


def empty_lesion_columns(mask: LesionMask) -> dict:
    """The feature / anatomy columns of a lesion segment without any voxel.

    ``lesion_empty`` True, ``voxel_count`` 0, ``volume_ml`` / ``longest_diameter_mm`` /
    ``short_axis_mm`` 0 (a resolved lesion measures 0 mm, as RECIST records it); every declared
    ``*_reason`` column of the feature and anatomy producers says
    :data:`EMPTY_SEGMENT_REASON`; every other column (centroid included) is left out, i.e.
    empty. The identifiers (label, tracking UID, segment number) are the study job's.

    Parameters
    ----------
    mask : LesionMask
        The empty mask (:func:`pipeline.io.seg.is_empty_mask`).
    """
    from pipeline.columns import LESION_COLUMNS

    if mask.voxel_count:
        raise ValueError(f"mask {mask.name!r} is not empty ({mask.voxel_count} voxels)")
    row: dict = {"lesion_empty": True, "voxel_count": 0, "volume_ml": 0.0,
                 "longest_diameter_mm": 0.0, "short_axis_mm": 0.0}
    for c in LESION_COLUMNS:
        if c.producer != "study" and c.dtype == "str" and c.name.endswith("_reason"):
            row[c.name] = EMPTY_SEGMENT_REASON
    return row


def _unusable_lesion_segmentations(notes: str) -> str:
    """The reasons the study sheet's ``notes`` give for skipped lesion segmentations ("" if none).

    :func:`pipeline.sheet.build_study_sheet` writes them as ``"no lesion segmentation: "`` +
    one "source ref (file path): why" per candidate.
    """
    from pipeline.sheet import NO_LESION_SEGMENTATION

    head = NO_LESION_SEGMENTATION + ": "
    for part in (notes or "").split("; "):
        if part.startswith(head):
            return part[len(head):]
    return ""


def load_study_masks(inputs: StudyInputs, grids: Mapping[str, Grid], cfg: dict) -> StudyMasks:
    """The study's lesion masks (required) and organ masks (optional).

    Parameters
    ----------
    inputs : StudyInputs
        ``lesion_mask_source`` / ``lesion_mask_ref`` and ``organ_mask_source`` /
        ``organ_mask_ref`` of the study sheet.
    grids : mapping SeriesInstanceUID -> Grid
        :attr:`StudyImages.grids_by_series_uid`.
    cfg : dict
        Validated configuration.

    Returns
    -------
    StudyMasks

    A declared lesion segment (SEG segment, RTSTRUCT ROI) without any voxel is kept as an empty
    mask (a resolved lesion at follow-up, or a drawing error); when every lesion segment is
    empty the study goes on with a warning (e.g. a complete response), each becoming a row with
    ``lesion_empty`` true.

    Raises
    ------
    SegmentationError
        No lesion segmentation named, or it declares no lesion segment at all. An unusable organ
        source is a warning (organs then unknown), never an error.
    """
    from pipeline.io.totalseg import seg_segment_codes

    used: dict[str, str] = {}
    warnings: list[str] = []
    source, ref = inputs.uid("lesion_mask_source"), inputs.uid("lesion_mask_ref")
    if not source or not ref:
        why = _unusable_lesion_segmentations(inputs.uid("notes"))
        if why:
            raise SegmentationError(
                "no usable lesion segmentation: the study's lesion segmentation(s) cannot be "
                f"used: {why}",
                hint="add the referenced image series to the archive (or re-export the "
                "segmentation from the series in the archive), or name another segmentation in "
                "the study sheet",
            )
        raise SegmentationError(
            "no lesion segmentation (SEG, RTSTRUCT or label map) found for this study",
            hint="add a lesion segmentation to the archive or name one in the study sheet",
        )
    used["lesion_mask"] = ref
    lesions = [m for m in read_masks(inputs, source, ref, grids, cfg, warnings=warnings,
                                     keep_empty_lesions=True)
               if m.kind != SegmentKind.ORGAN]
    if not lesions:
        raise SegmentationError("the lesion segmentation holds no lesion segment (every segment "
                                "is an empty segment or an organ)",
                                series_uid=ref,
                                hint="check the segment names against index.lesion_name_patterns")
    if not any(m.voxel_count > 0 for m in lesions):
        msg = (f"every one of the {len(lesions)} lesion segment(s) of {source.upper()} {ref} is "
               "empty (no voxel): resolved lesions or a drawing error; each is reported with "
               "lesion_empty true")
        warnings.append(msg)
        log.warning(msg)
    organs: dict[str, LesionMask] = {}
    codes = None
    osrc, oref = inputs.uid("organ_mask_source"), inputs.uid("organ_mask_ref")
    if osrc and oref:
        try:
            for m in read_masks(inputs, osrc, oref, grids, cfg):
                if m.kind != SegmentKind.LESION and m.voxel_count > 0:
                    organs[m.name] = m
            if osrc == "seg":
                codes = seg_segment_codes(inputs.paths(oref)[0])
            used["organ_mask"] = oref
        except PipelineError as exc:
            warnings.append(f"organ masks unusable, organ will be unknown: {exc}")
            organs, codes = {}, None
    return StudyMasks(
        lesions=tuple(lesions),
        lesion_grid_series_uids=tuple(mask_grid_series_uid(m, grids) for m in lesions),
        organs=organs, organ_segment_codes=codes, warnings=tuple(warnings), used_series=used)
