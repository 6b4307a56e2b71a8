"""Organ masks from any source -> one structure vocabulary.

Three sources give organ masks: a DICOM SEG (SegmentLabel and coded SegmentedPropertyType, e.g.
TotalSegmentator's DICOM SEG output), an RTSTRUCT (ROIName: "Liver", "Lung_L", "Lt Lung",
"Spine" ...) and a TotalSegmentator NIfTI output folder (one ``<structure>.nii.gz`` per
structure). All of them go through the same mapping:

1. :func:`structure_name` turns a mask name (and, for SEG, its SNOMED CT type code and
   laterality modifier) into a **structure**: a canonical name such as ``liver``,
   ``lung_left``, ``kidney_right``, ``aorta``, ``inferior_vena_cava``, ``vertebral_column``,
   ``ribs``, ``heart``, ``small_bowel``. Lobes are merged into ``lung_left`` / ``lung_right``,
   vertebrae into ``vertebral_column``, ribs into ``ribs``, heart chambers into ``heart``.
2. :func:`canonical_organs` merges the masks that map to the same structure (union).
3. :func:`organ_term` maps a structure to the coarse **organ term** used for the lesion's
   ``organ`` column (``lung``, ``kidney``, ``vessel``, ``bone``, ``bowel`` ...).

Names are normalised first (lower case, spaces and hyphens -> ``_``); laterality tokens (``l``,
``lt``, ``left``, ``r``, ``rt``, ``right``) are taken out wherever they stand ("Lung_L",
"Lt Lung", "left lung", "lung_upper_lobe_left" all give ``lung_left``) and put back as a
``_left`` / ``_right`` suffix for paired structures (:data:`PAIRED`). A name that matches
nothing is kept normalised (with its laterality suffix): it is never guessed.

Reading the files is io work (:mod:`pipeline.io.totalseg`: the TotalSegmentator folder reader
and the SEG segment codes); this module maps what was read (:func:`structures_of_codes`,
:func:`totalseg_organs`).

Frames and units: masks are :class:`~pipeline.records.LesionMask` crops on a grid in LPS mm.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pipeline.errors import SegmentationError
from pipeline.geometry import BBox, Grid, bbox_of
from pipeline.io.totalseg import SegmentCode, read_totalseg_folder, seg_segment_codes
from pipeline.records import LesionMask, SegmentKind

log = logging.getLogger(__name__)

#: Laterality tokens (normalised name split on "_") -> side.
LATERALITY_TOKENS: dict[str, str] = {
    "l": "left", "lt": "left", "left": "left", "sin": "left",
    "r": "right", "rt": "right", "right": "right", "dx": "right",
}

#: Structures that exist on both sides: the side is kept as a ``_left`` / ``_right`` suffix.
PAIRED = frozenset({
    "lung", "kidney", "adrenal_gland", "ureter", "iliac_artery", "iliac_vena",
    "subclavian_artery", "common_carotid_artery", "brachiocephalic_vein", "humerus", "femur",
    "scapula", "clavicula", "hip", "breast", "autochthon", "iliopsoas", "gluteus_maximus",
    "gluteus_medius", "gluteus_minimus", "pleura",
})

#: Base names (laterality removed) -> structure. Checked before :data:`STRUCTURE_PATTERNS`.
STRUCTURE_ALIASES: dict[str, str] = {
    # lungs (lobes merged per side)
    "lung": "lung", "lungs": "lung", "pulmonary": "lung", "lung_upper_lobe": "lung",
    "lung_middle_lobe": "lung", "lung_lower_lobe": "lung", "upper_lobe": "lung",
    "middle_lobe": "lung", "lower_lobe": "lung", "lung_total": "lung", "total_lung": "lung",
    # abdomen
    "liver": "liver", "spleen": "spleen", "pancreas": "pancreas", "gallbladder": "gallbladder",
    "gall_bladder": "gallbladder", "stomach": "stomach", "esophagus": "esophagus",
    "oesophagus": "esophagus", "duodenum": "duodenum", "small_bowel": "small_bowel",
    "small_intestine": "small_bowel", "bowel_small": "small_bowel", "bowel": "bowel",
    "bowel_bag": "bowel", "bowelbag": "bowel", "colon": "colon", "large_bowel": "colon",
    "large_intestine": "colon", "bowel_large": "colon", "rectum": "colon", "sigmoid": "colon",
    "kidney": "kidney", "kidneys": "kidney", "kidney_cyst": "kidney", "adrenal": "adrenal_gland",
    "adrenal_gland": "adrenal_gland", "urinary_bladder": "urinary_bladder",
    "bladder": "urinary_bladder", "ureter": "ureter", "bile_duct": "bile_duct",
    "bile_ducts": "bile_duct", "common_bile_duct": "bile_duct", "cbd": "bile_duct",
    "biliary_tree": "bile_duct",
    # thorax, head and neck
    "heart": "heart", "pericardium": "heart", "atrial_appendage": "heart",
    "trachea": "trachea", "airway": "trachea", "bronchus": "trachea", "bronchi": "trachea",
    "lung_trachea_bronchia": "trachea", "brain": "brain", "thyroid": "thyroid_gland",
    "thyroid_gland": "thyroid_gland", "prostate": "prostate", "breast": "breast",
    "spinal_cord": "spinal_cord", "spinalcord": "spinal_cord", "cord": "spinal_cord",
    "spinal_canal": "spinal_canal", "spinal_canal_structure": "spinal_canal",
    "canal": "spinal_canal", "pleura": "pleura", "lung_pleural": "pleura",
    # vessels
    "aorta": "aorta", "ivc": "inferior_vena_cava", "inferior_vena_cava": "inferior_vena_cava",
    "vena_cava_inferior": "inferior_vena_cava", "svc": "superior_vena_cava",
    "superior_vena_cava": "superior_vena_cava", "vena_cava": "vena_cava",
    "portal_vein": "portal_vein", "portal_vein_and_splenic_vein": "portal_vein_and_splenic_vein",
    "pulmonary_artery": "pulmonary_artery", "pulmonary_vein": "pulmonary_vein",
    "iliac_artery": "iliac_artery", "iliac_vena": "iliac_vena", "iliac_vein": "iliac_vena",
    "brachiocephalic_trunk": "brachiocephalic_trunk",
    "brachiocephalic_vein": "brachiocephalic_vein", "subclavian_artery": "subclavian_artery",
    "common_carotid_artery": "common_carotid_artery", "carotid": "common_carotid_artery",
    "lung_vessels": "lung_vessels", "liver_vessels": "liver_vessels",
    "hepatic_vessels": "liver_vessels", "coronary_arteries": "coronary_arteries",
    # bones
    "vertebral_column": "vertebral_column", "spine": "vertebral_column",
    "spinal_column": "vertebral_column", "vertebrae": "vertebral_column",
    "vertebra": "vertebral_column", "vertebral_body": "vertebral_column",
    "rib": "ribs", "ribs": "ribs", "costal_cartilages": "ribs", "sternum": "sternum",
    "sacrum": "sacrum", "skull": "skull", "hip": "hip", "pelvis": "hip", "femur": "femur",
    "humerus": "humerus", "scapula": "scapula", "clavicle": "clavicula", "clavicula": "clavicula",
    "bone": "bone", "bones": "bone",
    # muscle and fat
    "skeletal_muscle": "skeletal_muscle", "muscle": "skeletal_muscle",
    "autochthon": "autochthon", "iliopsoas": "iliopsoas", "psoas": "iliopsoas",
    "gluteus_maximus": "gluteus_maximus", "gluteus_medius": "gluteus_medius",
    "gluteus_minimus": "gluteus_minimus", "subcutaneous_fat": "subcutaneous_fat",
    "torso_fat": "subcutaneous_fat", "fat": "subcutaneous_fat", "soft_tissue": "soft_tissue",
    # whole-body outlines
    "body": "body", "skin": "body", "external": "body", "body_outline": "body",
    "outline": "body", "body_trunc": "body", "body_extremities": "body", "patient": "body",
}

#: Glob patterns on base names (laterality removed), tried in order after the aliases.
STRUCTURE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("lung_*lobe*", "lung"),
    ("*_lobe_lung", "lung"),
    ("vertebrae_*", "vertebral_column"),
    ("vertebra_*", "vertebral_column"),
    ("rib_*", "ribs"),
    ("heart_*", "heart"),
    ("kidney_cyst*", "kidney"),
    ("spinal_cord*", "spinal_cord"),
    ("*bile_duct*", "bile_duct"),
)

#: SNOMED CT SegmentedPropertyType codes (TotalSegmentator's DICOM SEG mapping, DICOM CID 7166
#: and common organ codes) -> base structure (laterality comes from the modifier code).
SCT_STRUCTURES: dict[str, str] = {
    "10200004": "liver", "78961009": "spleen", "15776009": "pancreas", "28231008": "gallbladder",
    "69695003": "stomach", "32849002": "esophagus", "38848004": "duodenum",
    "30315005": "small_bowel", "71854001": "colon", "89837001": "urinary_bladder",
    "64033007": "kidney", "23451007": "adrenal_gland", "87953007": "ureter",
    "28273000": "bile_duct", "79741001": "bile_duct",
    "39607008": "lung", "44029006": "lung_left", "3341006": "lung_right",
    "45653009": "lung", "90572001": "lung", "72481006": "lung_right",
    "80891009": "heart", "82471001": "heart", "73829009": "heart", "74281007": "heart",
    "87878005": "heart", "53085002": "heart", "68786006": "heart",
    "44567001": "trachea", "110726009": "trachea", "12738006": "brain",
    "69748006": "thyroid_gland", "41216001": "prostate", "2748008": "spinal_cord",
    "15825003": "aorta", "64131007": "inferior_vena_cava", "48345005": "superior_vena_cava",
    "32764006": "portal_vein", "110765007": "portal_vein_and_splenic_vein",
    "81040000": "pulmonary_artery", "122972007": "pulmonary_vein", "73634005": "iliac_artery",
    "46027005": "iliac_vena", "12691009": "brachiocephalic_trunk",
    "29700009": "subclavian_artery", "32062004": "common_carotid_artery",
    "8887007": "brachiocephalic_vein", "41801008": "coronary_arteries",
    "421060004": "vertebral_column", "51282000": "vertebral_column",
    "3572006": "vertebral_column", "54735007": "sacrum", "113197003": "ribs",
    "56873002": "sternum", "89546000": "skull", "29836001": "hip", "71341001": "femur",
    "85050009": "humerus", "79601000": "scapula", "51299004": "clavicula",
    "127954009": "skeletal_muscle", "244849004": "autochthon", "68455001": "iliopsoas",
    "181674001": "gluteus_maximus", "78333006": "gluteus_medius",
    "75297007": "gluteus_minimus", "67769002": "subcutaneous_fat", "22943007": "body",
    # individual vertebrae (TotalSegmentator) and ribs
    **{c: "vertebral_column" for c in (
        "14806007", "39976000", "113205007", "5329002", "36978003", "36054005", "87391001",
        "64864005", "53733008", "1626008", "73071006", "56401006", "45296009", "62487009",
        "11068009", "82687006", "7610001", "12989004", "23215003", "66794005", "14293000",
        "36470004", "11994002", "49668003", "65985001")},
    **{c: "ribs" for c in (
        "48535007", "78247007", "25888004", "25523003", "15339008", "59558009", "24915002",
        "5953002", "22565002", "77644006", "58830002", "43993008")},
}

#: SNOMED CT laterality modifier codes -> side.
SCT_LATERALITY: dict[str, str] = {"7771000": "left", "24028007": "right"}

#: Structure (side suffix removed) -> organ term of the ``organ`` column.
STRUCTURE_TERMS: dict[str, str] = {
    "liver": "liver", "spleen": "spleen", "pancreas": "pancreas", "gallbladder": "gallbladder",
    "stomach": "stomach", "esophagus": "esophagus", "duodenum": "bowel",
    "small_bowel": "bowel", "colon": "bowel", "bowel": "bowel", "kidney": "kidney",
    "adrenal_gland": "adrenal", "urinary_bladder": "bladder", "ureter": "ureter",
    "bile_duct": "bile_duct", "lung": "lung", "pleura": "lung", "heart": "heart",
    "trachea": "airway", "brain": "brain", "thyroid_gland": "thyroid", "prostate": "prostate",
    "breast": "breast", "spinal_cord": "spinal_cord", "spinal_canal": "spinal_canal",
    "aorta": "vessel", "inferior_vena_cava": "vessel", "superior_vena_cava": "vessel",
    "vena_cava": "vessel", "portal_vein": "vessel", "portal_vein_and_splenic_vein": "vessel",
    "pulmonary_artery": "vessel", "pulmonary_vein": "vessel", "iliac_artery": "vessel",
    "iliac_vena": "vessel", "brachiocephalic_trunk": "vessel", "brachiocephalic_vein": "vessel",
    "subclavian_artery": "vessel", "common_carotid_artery": "vessel", "lung_vessels": "vessel",
    "liver_vessels": "vessel", "coronary_arteries": "vessel",
    "vertebral_column": "bone", "ribs": "bone", "sternum": "bone", "sacrum": "bone",
    "skull": "bone", "hip": "bone", "femur": "bone", "humerus": "bone", "scapula": "bone",
    "clavicula": "bone", "bone": "bone",
    "skeletal_muscle": "muscle", "autochthon": "muscle", "iliopsoas": "muscle",
    "gluteus_maximus": "muscle", "gluteus_medius": "muscle", "gluteus_minimus": "muscle",
    "subcutaneous_fat": "soft_tissue", "soft_tissue": "soft_tissue", "body": "body",
}

#: Glob patterns on normalised names for vessels the tables above do not list.
VESSEL_PATTERNS: tuple[str, ...] = ("*artery*", "*arteries*", "*_vein*", "*vena*", "*vessel*")



# --------------------------------------------------------------------------- names
def normalise_name(name: str) -> str:
    """Lower case, blanks stripped, spaces, hyphens, dots and commas -> single underscores."""
    s = re.sub(r"[\s\-.,/()]+", "_", str(name).strip().lower())
    return re.sub(r"_+", "_", s).strip("_")


def _split_laterality(norm: str) -> tuple[str, str]:
    """(base name without laterality tokens, side or "")."""
    tokens = [t for t in norm.split("_") if t]
    sides = {LATERALITY_TOKENS[t] for t in tokens if t in LATERALITY_TOKENS}
    base = [t for t in tokens if t not in LATERALITY_TOKENS]
    side = sides.pop() if len(sides) == 1 else ""
    if not base:  # a name made only of laterality tokens: keep it as it is
        return norm, ""
    return "_".join(base), side


def _base_structure(base: str) -> str | None:
    if base in STRUCTURE_ALIASES:
        return STRUCTURE_ALIASES[base]
    for pattern, structure in STRUCTURE_PATTERNS:
        if fnmatch.fnmatchcase(base, pattern):
            return structure
    return None


def _with_side(structure: str, side: str) -> str:
    if structure.endswith(("_left", "_right")):
        return structure
    if side and structure in PAIRED:
        return f"{structure}_{side}"
    return structure


def structure_name(name: str, *, code: str = "", laterality_code: str = "") -> str:
    """Canonical structure name of an organ mask (the one mapping for every source).

    Parameters
    ----------
    name : str
        SegmentLabel, ROIName or NIfTI file stem ("Lung_L", "lung_upper_lobe_left", "Spine").
    code : str, optional
        SNOMED CT CodeValue of the SEG's SegmentedPropertyTypeCodeSequence; when known
        (:data:`SCT_STRUCTURES`) it decides the structure, the name then only gives the side.
    laterality_code : str, optional
        CodeValue of SegmentedPropertyTypeModifierCodeSequence (7771000 left, 24028007 right).

    Returns
    -------
    str
        E.g. ``lung_left``, ``vertebral_column``, ``aorta``; an unknown name is returned
        normalised, with its side suffix (``mystery_organ``, ``ureter_left``).
    """
    norm = normalise_name(name)
    base, side = _split_laterality(norm)
    side = SCT_LATERALITY.get(str(laterality_code), side)
    structure = SCT_STRUCTURES.get(str(code)) if code else None
    if structure is None:
        structure = _base_structure(base)
    if structure is None:
        structure = base
    return _with_side(structure, side)


def organ_term(name: str) -> str:
    """Coarse organ term (``organ`` column vocabulary) of a mask name or structure name.

    ``lung_left`` -> ``lung``, ``vertebrae_L1`` -> ``bone``, ``inferior_vena_cava`` -> ``vessel``,
    ``kidney_left`` -> ``kidney``; an unknown name is returned normalised (never guessed).
    """
    structure = structure_name(name)
    base = re.sub(r"_(left|right)$", "", structure)
    if base in STRUCTURE_TERMS:
        return STRUCTURE_TERMS[base]
    if any(fnmatch.fnmatchcase(structure, p) for p in VESSEL_PATTERNS):
        return "vessel"
    return structure


# --------------------------------------------------------------------------- merging
def _union_bbox(boxes: Iterable[BBox]) -> BBox:
    boxes = list(boxes)
    return tuple(  # type: ignore[return-value]
        (min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3)
    )


def merge_masks(masks: list[LesionMask], name: str) -> LesionMask:
    """Union of masks on one grid, as one ORGAN :class:`LesionMask` named ``name``."""
    if len(masks) == 1 and masks[0].name == name and masks[0].kind == SegmentKind.ORGAN:
        return masks[0]
    first = masks[0]
    for m in masks[1:]:
        if not m.grid.same_as(first.grid):
            raise SegmentationError(
                f"organ masks {first.name!r} and {m.name!r} of structure {name!r} lie on "
                "different grids", hint="bring organ masks onto one grid before merging")
    bb = _union_bbox(m.bbox_zyx for m in masks)
    out = np.zeros(tuple(b - a for a, b in bb), dtype=bool)
    for m in masks:
        sl = tuple(slice(c[0] - u[0], c[1] - u[0]) for c, u in zip(m.bbox_zyx, bb))
        out[sl] |= np.asarray(m.crop, dtype=bool)
    tight = bbox_of(out)
    if tight is None:
        tight = tuple((0, 0) for _ in range(3))  # type: ignore[assignment]
        crop = out[:0, :0, :0]
    else:
        crop = out[tuple(slice(a, b) for a, b in tight)]
    box = tuple((u[0] + t[0], u[0] + t[1]) for u, t in zip(bb, tight))
    return LesionMask(
        name=name, source=first.source, grid=first.grid, bbox_zyx=box, crop=crop,
        kind=SegmentKind.ORGAN, source_uid=first.source_uid,
        referenced_series_uid=first.referenced_series_uid,
        segment_number=first.segment_number, tracking_uid="",
    )


def canonical_organs(
    organs: Mapping[str, LesionMask] | Iterable[LesionMask],
    *,
    segment_names: Mapping[int, str] | None = None,
) -> dict[str, LesionMask]:
    """Organ masks keyed by structure (:func:`structure_name`), masks of one structure merged.

    Parameters
    ----------
    organs : mapping name -> LesionMask, or iterable of LesionMask
        Organ masks of one study (SEG segments, RTSTRUCT ROIs, TotalSegmentator files), on
        one grid per structure.
    segment_names : mapping SegmentNumber -> structure, optional
        Structures decided from the SEG's codes (:func:`seg_structure_names`); used instead of
        the mask name for masks with that ``segment_number``.

    Returns
    -------
    dict structure -> LesionMask (kind ORGAN, ``name`` = the structure). Empty masks dropped.
    """
    items = list(organs.values()) if isinstance(organs, Mapping) else list(organs)
    groups: dict[str, list[LesionMask]] = {}
    for m in items:
        if m.voxel_count == 0:
            continue
        s = None
        if segment_names and m.segment_number in segment_names:
            s = segment_names[m.segment_number]
        s = s or structure_name(m.name)
        groups.setdefault(s, []).append(m)
    out = {}
    for s, ms in groups.items():
        out[s] = merge_masks(ms, s)
        if len(ms) > 1:
            log.debug("structure %s: merged %s", s, ", ".join(m.name for m in ms))
    return out


def structures_of_codes(codes: Mapping[int, SegmentCode] | None) -> dict[int, str] | None:
    """Structure of every segment of a DICOM SEG from its codes.

    SegmentedPropertyTypeCodeSequence decides when its code is known (:data:`SCT_STRUCTURES`,
    e.g. TotalSegmentator's DICOM SEG), with the side from
    SegmentedPropertyTypeModifierCodeSequence; otherwise the SegmentLabel is mapped.

    Parameters
    ----------
    codes : mapping SegmentNumber -> SegmentCode, or None
        As read by :func:`pipeline.io.totalseg.seg_segment_codes`.

    Returns
    -------
    dict SegmentNumber -> structure name (None when ``codes`` is None).
    """
    if codes is None:
        return None
    return {n: structure_name(c.label, code=c.code, laterality_code=c.laterality_code)
            for n, c in codes.items()}


def seg_structure_names(path: str | Path) -> dict[int, str]:
    """Structure of every segment of a DICOM SEG file (header only).

    :func:`pipeline.io.totalseg.seg_segment_codes` reads the codes, :func:`structures_of_codes`
    maps them.

    Returns
    -------
    dict SegmentNumber -> structure name.
    """
    return structures_of_codes(seg_segment_codes(path)) or {}


def totalseg_organs(folder: str | Path, *, grid: Grid | None = None,
                    source_uid: str = "") -> dict[str, LesionMask]:
    """Organ masks of a TotalSegmentator output folder keyed by structure, merged per structure.

    :func:`pipeline.io.totalseg.read_totalseg_folder` reads one mask per file (resampled onto
    ``grid`` when given); :func:`canonical_organs` maps the file names
    (``lung_upper_lobe_left`` -> ``lung_left``, ``vertebrae_T9`` -> ``vertebral_column`` ...)
    and merges masks of one structure.
    """
    return canonical_organs(read_totalseg_folder(folder, grid=grid, source_uid=source_uid))
